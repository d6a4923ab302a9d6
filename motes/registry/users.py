"""Users, org memberships and roles, orgs, passwords (argon2id) and one-time password tokens.

users = Users(engine, cache, default_bucket="telemetry")
org, owner, setup = users.create_org(operator, actor, "acme", OwnerSpec("ana@acme.io"))
user, setup = users.add(org.id, principal, actor, "bo@acme.io", "Bo", "viewer", None)
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.common import (
    EMAIL,
    Actor,
    TTLCache,
    audit,
    check_name,
    hash_secret,
    new_id,
    new_secret,
    now_ns,
)
from motes.registry.crypto import check_password_rules, hash_password, verify_password
from motes.registry.models import (
    ROLE_PERMISSIONS,
    ROLES,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Org,
    Principal,
)
from motes.registry.sessions import Throttle
from motes.registry.tables import (
    buckets,
    invitations,
    memberships,
    orgs,
    password_tokens,
    refresh_tokens,
    sessions,
    users,
)
from motes.registry.tokens import Tokens

SETUP_TOKEN_SECONDS = 72 * 3600
SETUP_PREFIX = "mpw_"


@dataclass(frozen=True)
class User:
    id: str
    email: str
    name: str
    disabled: bool
    operator: bool
    created_ns: int
    last_login_ns: int | None
    role: str | None = None  # in the org it was read from

    @classmethod
    def of(cls, r: Any, role: str | None = None) -> User:
        return cls(
            r.id,
            r.email,
            r.name,
            bool(r.disabled),
            bool(r.operator),
            r.created_ns,
            r.last_login_ns,
            role,
        )


@dataclass(frozen=True)
class Invitation:
    """An existing account asked to join an org; it joins when the holder accepts."""

    id: str
    org: Org
    email: str
    role: str
    created_ns: int
    expires_ns: int
    code: str | None = None  # only when created: the inviter hands it to the invitee


INVITATION_SECONDS = 7 * 86400
INVITE_PREFIX = "miv_"


@dataclass(frozen=True)
class OwnerSpec:
    email: str
    name: str = ""
    password: str | None = None


def check_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise Invalid(f'invalid email "{email}"')
    return email


def check_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f'invalid role "{role}": use one of {", ".join(ROLES)}')
    return role


def insert_org(conn: sa.Connection, name: str, default_bucket: str) -> Org:
    check_name("org", name)
    org = Org(new_id(), name, now_ns())
    # checked first rather than caught: a savepoint would not hold on SQLite's Python driver
    # (releasing the outermost one commits), and a failed org must leave nothing behind
    if conn.execute(sa.select(orgs.c.id).where(orgs.c.name == name)).first() is not None:
        raise Conflict(f'org "{name}" already exists')
    conn.execute(orgs.insert().values(id=org.id, name=name, created_ns=org.created_ns))
    conn.execute(
        buckets.insert().values(
            id=new_id(),
            org_id=org.id,
            name=default_bucket,
            retention_seconds=0,
            created_ns=now_ns(),
        )
    )
    return org


class Users:
    def __init__(self, engine: Engine, cache: TTLCache, default_bucket: str) -> None:
        self.engine = engine
        self._cache = cache
        self._default_bucket = default_bucket
        self._guesses = Throttle(5, 900)

    # -- orgs -------------------------------------------------------------------------

    def create_org(
        self, by: Principal, actor: Actor, name: str, owner: OwnerSpec | None
    ) -> tuple[Org, User | None, str | None]:
        """A new org with its default bucket and owner, all in one transaction."""
        if not by.operator:
            raise Forbidden("only operators may create orgs")
        if by.kind == "user":
            if owner is not None:
                raise Invalid('"owner" is for operator tokens: you become the owner yourself')
        elif owner is None:
            raise Invalid('"owner" is required: {"email": ..., "password"?: ...}')
        try:
            with self.engine.begin() as conn:
                return self._create_org(conn, by, actor, name, owner)
        except sa.exc.IntegrityError as exc:  # lost a race for the name or the email
            raise Conflict(f'org "{name}" or its owner already exists') from exc
        finally:
            self._cache.clear()

    def _create_org(
        self, conn: sa.Connection, by: Principal, actor: Actor, name: str, owner: OwnerSpec | None
    ) -> tuple[Org, User | None, str | None]:
        org = insert_org(conn, name, self._default_bucket)
        audit(conn, actor, org.id, "org.create", f"org:{org.id}", name=name)
        if by.kind == "user":
            _insert_membership(conn, org.id, by.id, "owner")
            audit(conn, actor, org.id, "member.add", f"user:{by.id}", role="owner")
            return org, None, None
        assert owner is not None
        user, setup = self._add(
            conn, org.id, actor, owner.email, owner.name, "owner", owner.password
        )
        return org, user, setup

    def orgs_of(self, user_id: str) -> list[tuple[Org, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(orgs.c.id, orgs.c.name, orgs.c.created_ns, memberships.c.role)
                .join(memberships, memberships.c.org_id == orgs.c.id)
                .where(memberships.c.user_id == user_id)
                .order_by(memberships.c.created_ns, orgs.c.name)
            ).all()
        return [(Org(r.id, r.name, r.created_ns), r.role) for r in rows]

    def rename_org(self, org_id: str, actor: Actor, name: str) -> None:
        check_name("org", name)
        try:
            with self.engine.begin() as conn:
                conn.execute(orgs.update().where(orgs.c.id == org_id).values(name=name))
                audit(conn, actor, org_id, "org.rename", f"org:{org_id}", name=name)
        except sa.exc.IntegrityError as exc:
            raise Conflict(f'org "{name}" already exists') from exc

    # -- members ----------------------------------------------------------------------

    def add(
        self,
        org_id: str,
        by: Principal,
        actor: Actor,
        email: str,
        name: str,
        role: str,
        password: str | None,
    ) -> tuple[User | Invitation, str | None]:
        """Add a member: a new account for an unknown email (with a setup token when no
        password is given); an existing account is invited instead, since it may belong to
        another org whose admins, not this org's, speak for it. The invitation shows nothing
        of the account but the email it was asked for."""
        _check_grant(by, check_role(role))
        email = check_email(email)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(users.c.id).where(users.c.email == email)).first()
            if row is not None:
                if password is not None:
                    raise Conflict(
                        f'"{email}" already has an account: invite it without a password'
                    )
                return self._invite(conn, org_id, actor, row.id, email, role), None
            user, setup = self._add(conn, org_id, actor, email, name, role, password)
        self._cache.clear()
        return user, setup

    def _invite(
        self, conn: sa.Connection, org_id: str, actor: Actor, user_id: str, email: str, role: str
    ) -> Invitation:
        member = conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.org_id == org_id, memberships.c.user_id == user_id
            )
        ).first()
        if member is not None:
            raise Conflict(f'"{email}" is already a member')
        now = now_ns()
        conn.execute(
            invitations.delete().where(
                invitations.c.org_id == org_id,
                invitations.c.user_id == user_id,
                invitations.c.expires_ns <= now,
            )
        )
        if conn.execute(
            sa.select(invitations.c.id).where(
                invitations.c.org_id == org_id, invitations.c.user_id == user_id
            )
        ).first():
            raise Conflict(f'"{email}" is already invited')
        invitation_id = new_id()
        code = new_secret(INVITE_PREFIX)
        expires = now + INVITATION_SECONDS * 10**9
        conn.execute(
            invitations.insert().values(
                id=invitation_id,
                org_id=org_id,
                user_id=user_id,
                role=role,
                code_hash=hash_secret(code),
                created_ns=now,
                expires_ns=expires,
            )
        )
        audit(
            conn,
            actor,
            org_id,
            "member.invite",
            f"invitation:{invitation_id}",
            email=email,
            role=role,
        )
        org = conn.execute(sa.select(orgs).where(orgs.c.id == org_id)).one()
        return Invitation(
            invitation_id, Org(org.id, org.name, org.created_ns), email, role, now, expires, code
        )

    def invitations(
        self, org_id: str | None = None, user_id: str | None = None
    ) -> list[Invitation]:
        """Open invitations of an org (for its admins) or of an account (for its holder)."""
        query = (
            sa.select(invitations, users.c.email, orgs.c.name, orgs.c.created_ns.label("org_ns"))
            .join(users, users.c.id == invitations.c.user_id)
            .join(orgs, orgs.c.id == invitations.c.org_id)
            .where(invitations.c.expires_ns > now_ns())
            .order_by(invitations.c.created_ns)
        )
        if org_id is not None:
            query = query.where(invitations.c.org_id == org_id)
        if user_id is not None:
            query = query.where(invitations.c.user_id == user_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            Invitation(
                r.id, Org(r.org_id, r.name, r.org_ns), r.email, r.role, r.created_ns, r.expires_ns
            )
            for r in rows
        ]

    def revoke_invitation(self, org_id: str, invitation_id: str, actor: Actor) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(
                invitations.delete().where(
                    invitations.c.org_id == org_id, invitations.c.id == invitation_id
                )
            ).rowcount
            if not gone:
                raise NotFound(f'invitation "{invitation_id}" not found')
            audit(conn, actor, org_id, "member.invite_revoke", f"invitation:{invitation_id}")

    def answer_invitation(
        self, user_id: str, invitation_id: str, accept: bool, actor: Actor, code: str = ""
    ) -> None:
        """Accepting needs the invitation's code, which the inviter passed to the person by
        their own channel: an account whose password another org's admin chose must not join
        on its own (emails are not verified)."""
        with self.engine.begin() as conn:
            r = conn.execute(
                sa.select(invitations).where(
                    invitations.c.id == invitation_id,
                    invitations.c.user_id == user_id,
                    invitations.c.expires_ns > now_ns(),
                )
            ).first()
            if r is None:
                raise NotFound(f'invitation "{invitation_id}" not found')
            if accept and not hmac.compare_digest(r.code_hash, hash_secret(code)):
                raise Forbidden("wrong invitation code: ask whoever invited you for it")
            conn.execute(invitations.delete().where(invitations.c.id == invitation_id))
            if accept:
                _insert_membership(conn, r.org_id, user_id, r.role)
            action = "member.join" if accept else "member.decline"
            audit(conn, actor, r.org_id, action, f"user:{user_id}", role=r.role)
        self._cache.clear()

    def _add(
        self,
        conn: sa.Connection,
        org_id: str,
        actor: Actor,
        email: str,
        name: str,
        role: str,
        password: str | None,
    ) -> tuple[User, str | None]:
        email = check_email(email)
        if len(name) > 256:
            raise Invalid("a name has at most 256 characters")
        row = conn.execute(sa.select(users).where(users.c.email == email)).first()
        setup = None
        if row is None:
            user_id = new_id()
            now = now_ns()
            conn.execute(
                users.insert().values(
                    id=user_id,
                    email=email,
                    name=name,
                    password_hash=hash_password(password) if password is not None else None,
                    disabled=False,
                    operator=False,
                    created_ns=now,
                    password_changed_ns=now if password is not None else None,
                )
            )
            audit(conn, actor, org_id, "user.create", f"user:{user_id}", email=email)
            if password is None:
                setup = _issue_password_token(conn, user_id, org_id)
        else:
            user_id = row.id
            if password is not None:
                raise Conflict(f'"{email}" already has an account: add them without a password')
        exists = conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.org_id == org_id, memberships.c.user_id == user_id
            )
        ).first()
        if exists is not None:
            raise Conflict(f'"{email}" is already a member')
        _insert_membership(conn, org_id, user_id, role)
        audit(conn, actor, org_id, "member.add", f"user:{user_id}", role=role, email=email)
        return self._member(conn, org_id, user_id), setup

    def members(self, org_id: str) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(users, memberships.c.role)
                .join(memberships, memberships.c.user_id == users.c.id)
                .where(memberships.c.org_id == org_id)
                .order_by(users.c.email)
            ).all()
        return [User.of(r, r.role) for r in rows]

    def member(self, org_id: str, user_id: str) -> User:
        with self.engine.connect() as conn:
            return self._member(conn, org_id, user_id)

    def _member(self, conn: sa.Connection, org_id: str, user_id: str) -> User:
        r = conn.execute(
            sa.select(users, memberships.c.role)
            .join(memberships, memberships.c.user_id == users.c.id)
            .where(memberships.c.org_id == org_id, users.c.id == user_id)
        ).first()
        if r is None:
            raise NotFound(f'user "{user_id}" not found')
        return User.of(r, r.role)

    def user(self, user_id: str) -> User:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
        if r is None:
            raise NotFound(f'user "{user_id}" not found')
        return User.of(r)

    def update(
        self,
        org_id: str,
        user_id: str,
        by: Principal,
        actor: Actor,
        *,
        name: str | None = None,
        role: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        with self.engine.begin() as conn:
            current = self._member(conn, org_id, user_id)
            if name is not None and name != current.name:
                _check_grant(by, current.role or "viewer")
                _only_this_org(conn, org_id, user_id, "rename")
                if len(name) > 256:
                    raise Invalid("a name has at most 256 characters")
                conn.execute(users.update().where(users.c.id == user_id).values(name=name))
                audit(conn, actor, org_id, "user.update", f"user:{user_id}", name=name)
            if role is not None and role != current.role:
                _check_grant(by, check_role(role))
                _check_grant(by, current.role or "viewer")
                conn.execute(
                    memberships.update()
                    .where(memberships.c.org_id == org_id, memberships.c.user_id == user_id)
                    .values(role=role)
                )
                if current.role == "owner":
                    _keep_an_owner(conn, org_id)
                audit(conn, actor, org_id, "member.role", f"user:{user_id}", role=role)
                Tokens.deactivate_made_by(conn, org_id, user_id, actor)
            if disabled is not None and disabled != current.disabled:
                _only_this_org(conn, org_id, user_id, "disable or enable")
                _check_grant(by, current.role or "viewer")
                if disabled and current.role == "owner":
                    raise Conflict("an owner cannot be disabled: change the role first")
                conn.execute(users.update().where(users.c.id == user_id).values(disabled=disabled))
                if disabled:
                    _end_sessions(conn, user_id)
                action = "user.disable" if disabled else "user.enable"
                audit(conn, actor, org_id, action, f"user:{user_id}")
            user = self._member(conn, org_id, user_id)
        self._cache.clear()
        return user

    def remove(self, org_id: str, user_id: str, by: Principal, actor: Actor) -> None:
        with self.engine.begin() as conn:
            current = self._member(conn, org_id, user_id)
            _check_grant(by, current.role or "viewer")
            conn.execute(
                memberships.delete().where(
                    memberships.c.org_id == org_id, memberships.c.user_id == user_id
                )
            )
            if current.role == "owner":
                _keep_an_owner(conn, org_id)
            audit(conn, actor, org_id, "member.remove", f"user:{user_id}", email=current.email)
            Tokens.deactivate_made_by(conn, org_id, user_id, actor)
            left = conn.execute(
                sa.select(sa.func.count()).where(memberships.c.user_id == user_id)
            ).scalar_one()
            if not left:  # the account goes: its email can sign up or be invited afresh
                mine = sa.select(sessions.c.id).where(sessions.c.user_id == user_id)
                conn.execute(refresh_tokens.delete().where(refresh_tokens.c.session_id.in_(mine)))
                conn.execute(sessions.delete().where(sessions.c.user_id == user_id))
                conn.execute(password_tokens.delete().where(password_tokens.c.user_id == user_id))
                conn.execute(invitations.delete().where(invitations.c.user_id == user_id))
                conn.execute(users.delete().where(users.c.id == user_id))
                audit(conn, actor, org_id, "user.delete", f"user:{user_id}", email=current.email)
        self._cache.clear()

    # -- passwords --------------------------------------------------------------------

    def issue_reset(
        self, org_id: str, user_id: str, by: Principal, actor: Actor
    ) -> tuple[str, int]:
        with self.engine.begin() as conn:
            current = self._member(conn, org_id, user_id)
            _check_grant(by, current.role or "viewer")
            _only_this_org(conn, org_id, user_id, "reset the password of")
            token = _issue_password_token(conn, user_id, org_id)
            audit(conn, actor, org_id, "user.password_reset", f"user:{user_id}")
        return token, now_ns() + SETUP_TOKEN_SECONDS * 10**9

    def use_reset(self, token: str, password: str, actor: Actor) -> None:
        check_password_rules(password)
        digest = hash_secret(token)
        with self.engine.begin() as conn:
            r = conn.execute(
                sa.select(password_tokens).where(password_tokens.c.token_hash == digest)
            ).first()
            now = now_ns()
            claimed = conn.execute(  # one use, even when tried concurrently
                password_tokens.update()
                .where(
                    password_tokens.c.token_hash == digest,
                    password_tokens.c.used_ns.is_(None),
                    password_tokens.c.expires_ns > now,
                )
                .values(used_ns=now)
            ).rowcount
            if r is None or claimed != 1:
                raise Invalid("the reset token is unknown, used or expired: ask for a new one")
            # issued by one org's admin: no good once the account belongs to another org too
            _only_this_org(conn, r.org_id, r.user_id, "use this reset token for")
            self._set_password(conn, r.user_id, password)
            audit(
                conn,
                Actor(f"user:{r.user_id}", actor.remote),
                None,
                "user.password_set",
                f"user:{r.user_id}",
            )
        self._cache.clear()

    def change_password(self, user_id: str, current: str, password: str, actor: Actor) -> None:
        check_password_rules(password)
        mark = self._guesses.reserve(user_id)  # a stolen session must not guess the password
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(users.c.password_hash).where(users.c.id == user_id)).first()
        if r is None or not verify_password(r.password_hash, current):
            with self.engine.begin() as conn:
                audit(
                    conn, actor, None, "user.password_change", f"user:{user_id}", outcome="failure"
                )
            raise Invalid("the current password is wrong")
        self._guesses.release(user_id, mark)
        with self.engine.begin() as conn:
            self._set_password(conn, user_id, password)
            audit(conn, actor, None, "user.password_change", f"user:{user_id}")
        self._cache.clear()

    def _set_password(self, conn: sa.Connection, user_id: str, password: str) -> None:
        conn.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(password_hash=hash_password(password), password_changed_ns=now_ns())
        )
        _end_sessions(conn, user_id)
        _drop_password_tokens(conn, user_id)

    def make_operator(self, conn: sa.Connection, email: str, password: str, org_id: str) -> None:
        """The first start's operator account (settings ``init_admin_*``), owner of ``org_id``,
        written in the caller's transaction: a bad email or password leaves no org behind."""
        user, _ = self._add(conn, org_id, Actor("system"), email, "", "owner", password)
        conn.execute(users.update().where(users.c.id == user.id).values(operator=True))


def _check_grant(by: Principal, role: str) -> None:
    """Owners (and all-access tokens) handle owners; others handle roles whose every
    permission they hold themselves (a ``write:users`` token cannot make admins)."""
    if not by.allows("write", "users"):
        raise Forbidden("managing members needs write:users (admins and owners)")
    if role == "owner" and not by.all_access:
        raise Forbidden("only owners may make, change or remove owners")
    missing = [str(p) for p in ROLE_PERMISSIONS[role] if not by.holds(p)]
    if missing:
        raise Forbidden(f"you cannot make or change a {role}: you do not hold {', '.join(missing)}")


def _keep_an_owner(conn: sa.Connection, org_id: str) -> None:
    """Called after a change inside its transaction: raising rolls the change back."""
    owners = conn.execute(
        sa.select(sa.func.count()).where(
            memberships.c.org_id == org_id, memberships.c.role == "owner"
        )
    ).scalar_one()
    if not owners:
        raise Conflict("an org keeps at least one owner: make someone else owner first")


def _only_this_org(conn: sa.Connection, org_id: str, user_id: str, what: str) -> None:
    others = conn.execute(
        sa.select(sa.func.count()).where(
            memberships.c.user_id == user_id, memberships.c.org_id != org_id
        )
    ).scalar_one()
    if others:
        raise Conflict(
            f"this account also belongs to another org: you cannot {what} it; "
            "remove it from your org instead"
        )


def _drop_password_tokens(conn: sa.Connection, user_id: str) -> None:
    conn.execute(password_tokens.delete().where(password_tokens.c.user_id == user_id))


def _insert_membership(conn: sa.Connection, org_id: str, user_id: str, role: str) -> None:
    # a setup or reset token another org issued was meant for an account outside this org
    conn.execute(
        password_tokens.delete().where(
            password_tokens.c.user_id == user_id, password_tokens.c.org_id != org_id
        )
    )
    conn.execute(
        memberships.insert().values(org_id=org_id, user_id=user_id, role=role, created_ns=now_ns())
    )


def _issue_password_token(conn: sa.Connection, user_id: str, org_id: str) -> str:
    token = new_secret(SETUP_PREFIX)
    conn.execute(
        password_tokens.insert().values(
            token_hash=hash_secret(token),
            user_id=user_id,
            org_id=org_id,
            expires_ns=now_ns() + SETUP_TOKEN_SECONDS * 10**9,
        )
    )
    return token


def _end_sessions(conn: sa.Connection, user_id: str) -> None:
    conn.execute(
        sessions.update()
        .where(sessions.c.user_id == user_id, sessions.c.revoked_ns.is_(None))
        .values(revoked_ns=now_ns())
    )
