"""Sign-in sessions for OAuth2 (RFC 6749): password and refresh-token grants, JWT access tokens.

A session is one sign-in: a chain of rotating refresh tokens, and the access tokens they
issued (they carry the session id, ``sid``). Revoking the session stops both at once;
presenting a refresh token that was already used revokes it too (a stolen copy).

sessions = Sessions(engine, cache, signing_key, access_seconds=900, refresh_seconds=30 * 86400)
pair = sessions.password_grant("ana@acme.io", "...", client_id="web", scope="", remote="10.0.0.5")
principal = sessions.authenticate(pair.access_token, org_id=None, org_name=None)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import jwt
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.common import (
    EMAIL,
    Actor,
    TTLCache,
    audit,
    hash_secret,
    new_id,
    new_secret,
    now_ns,
)
from motes.registry.crypto import verify_password
from motes.registry.models import (
    ROLE_PERMISSIONS,
    Forbidden,
    Org,
    Principal,
    RegistryError,
    Throttled,
    Unauthorized,
)
from motes.registry.tables import memberships, orgs, refresh_tokens, sessions, users

REFRESH_PREFIX = "mrt_"
ISSUER = "motes"


class OAuthError(RegistryError):
    """An RFC 6749 §5.2 error: ``error`` is the registered code."""

    def __init__(
        self, error: str, message: str, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.error = error
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    scope: str


@dataclass(frozen=True)
class _Standing:
    """What a valid access token's holder is, cached briefly per session."""

    user_id: str
    email: str
    operator: bool
    orgs: tuple[tuple[Org, str], ...]


class Throttle:
    """Failed sign-ins per key within a sliding window; over the limit -> wait it out."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window = window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        with self._lock:
            times = self._prune(key)
            if times is not None and len(times) >= self.limit:
                wait = int(times[0] + self.window - time.monotonic()) + 1
                raise Throttled(f"too many failed sign-ins: retry in {wait} s", wait)

    def reserve(self, key: str) -> float:
        """Count an attempt as failed before checking it, so concurrent guesses cannot all
        pass :meth:`check`; :meth:`release` takes the mark back when the attempt succeeds."""
        with self._lock:
            times = self._prune(key)
            if times is not None and len(times) >= self.limit:
                wait = int(times[0] + self.window - time.monotonic()) + 1
                raise Throttled(f"too many failed sign-ins: retry in {wait} s", wait)
            mark = time.monotonic()
            self._failures.setdefault(key, deque()).append(mark)
            return mark

    def release(self, key: str, mark: float) -> None:
        with self._lock:
            times = self._failures.get(key)
            if times is not None and mark in times:
                times.remove(mark)

    def fail(self, key: str) -> None:
        with self._lock:
            self._prune(key)
            self._failures.setdefault(key, deque()).append(time.monotonic())

    def _prune(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = time.monotonic() - self.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times


class Sessions:
    def __init__(
        self,
        engine: Engine,
        cache: TTLCache,
        signing_key: bytes,
        access_seconds: int,
        refresh_seconds: int,
    ) -> None:
        self.engine = engine
        self._cache = cache
        self._key = signing_key
        self.access_seconds = access_seconds
        self.refresh_seconds = refresh_seconds
        self.per_account = Throttle(5, 900)
        self.per_address = Throttle(20, 900)

    # -- grants -----------------------------------------------------------------------

    def password_grant(
        self, email: str, password: str, client_id: str | None, scope: str, remote: str | None
    ) -> TokenPair:
        email = email.strip().lower()
        account, address = "a:" + email, "r:" + (remote or "")
        try:
            self.per_address.check(address)
            mark = self.per_account.reserve(account)
        except Throttled as exc:
            raise OAuthError("slow_down", exc.message, 429, exc.retry_after) from exc
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(users).where(users.c.email == email)).first()
        ok = verify_password(r.password_hash if r is not None else None, password)
        if r is None or not ok or r.disabled:
            self.per_address.fail(address)
            with self.engine.begin() as conn:
                audit(
                    conn,
                    Actor("anonymous", remote),
                    None,
                    "auth.login",
                    f"user:{r.id}" if r is not None else "",
                    outcome="failure",
                    # a password typed into the name field must not land in the log
                    email=email if EMAIL.match(email) else "(not an email)",
                    reason="disabled" if ok and r is not None else "wrong credentials",
                )
            raise OAuthError("invalid_grant", "wrong email or password")
        self.per_account.release(account, mark)
        session_id = new_id()
        now = now_ns()
        with self.engine.begin() as conn:
            conn.execute(
                sessions.insert().values(
                    id=session_id,
                    user_id=r.id,
                    client_id=(client_id or "")[:128] or None,
                    scope=scope[:512],
                    remote=remote,
                    created_ns=now,
                    expires_ns=now + self.refresh_seconds * 10**9,
                )
            )
            conn.execute(users.update().where(users.c.id == r.id).values(last_login_ns=now))
            refresh = self._new_refresh(conn, session_id)
            audit(
                conn,
                Actor(f"user:{r.id}", remote),
                None,
                "auth.login",
                f"user:{r.id}",
                email=email,
                client=client_id,
            )
        # scopes do not narrow a session (the member's role decides), so none is claimed
        return TokenPair(self._access(r.id, session_id), self.access_seconds, refresh, "")

    def refresh_grant(self, refresh: str, remote: str | None) -> TokenPair:
        digest = hash_secret(refresh)
        now = now_ns()
        reused = False
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(refresh_tokens, sessions)
                .join(sessions, sessions.c.id == refresh_tokens.c.session_id)
                .where(refresh_tokens.c.token_hash == digest)
            ).first()
            if row is None:
                raise OAuthError("invalid_grant", "unknown refresh token")
            if row.revoked_ns is not None or row.expires_ns <= now:
                raise OAuthError("invalid_grant", "the session has ended: sign in again")
            actor = Actor(f"user:{row.user_id}", remote)
            if row.used_ns is not None:
                # a used token comes back: someone holds a copy; end the session for both
                conn.execute(
                    sessions.update().where(sessions.c.id == row.session_id).values(revoked_ns=now)
                )
                audit(
                    conn,
                    actor,
                    None,
                    "auth.refresh_reuse",
                    f"session:{row.session_id}",
                    outcome="failure",
                )
                reused = True
        if reused:  # raised once the revocation is committed
            self._cache.clear()
            raise OAuthError("invalid_grant", "refresh token already used: session revoked")
        with self.engine.begin() as conn:
            user = conn.execute(sa.select(users.c.disabled).where(users.c.id == row.user_id))
            if user.scalar_one_or_none() in (None, True):
                raise OAuthError("invalid_grant", "the account is disabled")
            claimed = conn.execute(
                refresh_tokens.update()
                .where(refresh_tokens.c.token_hash == digest, refresh_tokens.c.used_ns.is_(None))
                .values(used_ns=now)
            ).rowcount
            if claimed:
                new_refresh = self._new_refresh(conn, row.session_id)
        if not claimed:  # presented twice at once: as much a copy as a later replay
            self._end_reused(row.session_id, Actor(f"user:{row.user_id}", remote))
            raise OAuthError("invalid_grant", "refresh token already used: session revoked")
        return TokenPair(
            self._access(row.user_id, row.session_id),
            self.access_seconds,
            new_refresh,
            "",
        )

    def _end_reused(self, session_id: str, actor: Actor) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sessions.update().where(sessions.c.id == session_id).values(revoked_ns=now_ns())
            )
            audit(
                conn, actor, None, "auth.refresh_reuse", f"session:{session_id}", outcome="failure"
            )
        self._cache.clear()

    def revoke(self, token: str, remote: str | None) -> None:
        """RFC 7009: end the session of a refresh or access token; unknown tokens are fine."""
        session_id = None
        if token.count(".") == 2:
            try:
                session_id = self._claims(token).get("sid")
            except Unauthorized:
                return
        else:
            with self.engine.connect() as conn:
                session_id = conn.execute(
                    sa.select(refresh_tokens.c.session_id).where(
                        refresh_tokens.c.token_hash == hash_secret(token)
                    )
                ).scalar_one_or_none()
        if session_id is not None:
            self.end(str(session_id), remote)

    def end(self, session_id: str, remote: str | None) -> None:
        with self.engine.begin() as conn:
            user_id = conn.execute(
                sa.select(sessions.c.user_id).where(sessions.c.id == session_id)
            ).scalar_one_or_none()
            if user_id is None:
                return
            conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.revoked_ns.is_(None))
                .values(revoked_ns=now_ns())
            )
            audit(
                conn, Actor(f"user:{user_id}", remote), None, "auth.logout", f"session:{session_id}"
            )
        self._cache.clear()

    def _new_refresh(self, conn: sa.Connection, session_id: str) -> str:
        token = new_secret(REFRESH_PREFIX)
        conn.execute(
            refresh_tokens.insert().values(
                token_hash=hash_secret(token), session_id=session_id, created_ns=now_ns()
            )
        )
        return token

    # -- access tokens ----------------------------------------------------------------

    def _access(self, user_id: str, session_id: str) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user_id,
            "sid": session_id,
            "iat": now,
            "exp": now + self.access_seconds,
            "jti": new_id(),
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "sub", "sid", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("unauthorized access: the access token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("unauthorized access: invalid access token") from exc
        return claims

    def authenticate_account(self, token: str) -> Principal:
        """The signed-in user as an account, whatever orgs it belongs to (maybe none yet):
        for answering invitations. ``org_id`` is empty: it reaches no org's objects."""
        if token.count(".") != 2:
            raise Forbidden("only signed-in users have invitations")
        claims = self._claims(token)
        standing = self._standing(str(claims["sub"]), str(claims["sid"]))
        return Principal(
            "user",
            standing.user_id,
            "",
            session_id=str(claims["sid"]),
            label=standing.email,
        )

    def authenticate(self, token: str, org_id: str | None, org_name: str | None) -> Principal:
        """The user behind an access token, acting in the named org or their first one."""
        claims = self._claims(token)
        standing = self._standing(str(claims["sub"]), str(claims["sid"]))
        chosen: tuple[Org, str] | None = None
        for org, role in standing.orgs:
            if (org_id is None and org_name is None) or org.id == org_id or org.name == org_name:
                chosen = (org, role)
                break
        if chosen is None:
            if not standing.orgs:
                raise Forbidden("this account belongs to no org")
            raise Forbidden(f'no access to org "{org_id or org_name}"')
        org, role = chosen
        return Principal(
            "user",
            standing.user_id,
            org.id,
            ROLE_PERMISSIONS[role],
            all_access=role == "owner",
            role=role,
            operator=standing.operator,
            session_id=str(claims["sid"]),
            label=standing.email,
        )

    def _standing(self, user_id: str, session_id: str) -> _Standing:
        key = f"s:{session_id}"
        cached: _Standing | None = self._cache.get(key)
        if cached is not None:
            return cached
        generation = self._cache.generation
        with self.engine.connect() as conn:
            s = conn.execute(
                sa.select(sessions.c.revoked_ns, sessions.c.expires_ns, sessions.c.user_id).where(
                    sessions.c.id == session_id
                )
            ).first()
            if (
                s is None
                or s.user_id != user_id
                or s.revoked_ns is not None
                or s.expires_ns <= now_ns()
            ):
                raise Unauthorized("unauthorized access: the session has ended")
            u = conn.execute(sa.select(users).where(users.c.id == user_id)).first()
            if u is None or u.disabled:
                raise Unauthorized("unauthorized access: the account is disabled")
            rows = conn.execute(
                sa.select(orgs.c.id, orgs.c.name, memberships.c.role)
                .join(memberships, memberships.c.org_id == orgs.c.id)
                .where(memberships.c.user_id == user_id)
                .order_by(memberships.c.created_ns, orgs.c.name)
            ).all()
        standing = _Standing(
            user_id, u.email, bool(u.operator), tuple((Org(r.id, r.name), r.role) for r in rows)
        )
        self._cache.put(key, standing, generation)
        return standing
