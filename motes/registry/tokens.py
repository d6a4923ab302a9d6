"""API tokens: all-access or scoped (``influx auth create`` style), shown once, stored hashed.

tokens = Tokens(engine, cache)
info, secret = tokens.create(principal, actor, "grafana", ["read:buckets/0a1b..."], expires_in=0)
principal = tokens.authenticate(secret)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.common import (
    Actor,
    TTLCache,
    audit,
    hash_secret,
    new_id,
    new_secret,
    now_ns,
)
from motes.registry.models import (
    Forbidden,
    Invalid,
    NotFound,
    Permission,
    Principal,
    Unauthorized,
)
from motes.registry.tables import tokens

TOKEN_PREFIX = "mtk_"
LAST_USED_EVERY_NS = 60 * 10**9  # last-used times are written at most once a minute


@dataclass(frozen=True)
class TokenInfo:
    id: str
    org_id: str
    description: str
    all_access: bool
    permissions: tuple[Permission, ...]
    active: bool
    created_ns: int
    expires_ns: int | None
    last_used_ns: int | None
    created_by: str | None
    operator: bool = False

    @classmethod
    def of(cls, r: Any) -> TokenInfo:
        return cls(
            r.id,
            r.org_id,
            r.description,
            bool(r.all_access),
            tuple(Permission.parse(p) for p in r.permissions),
            bool(r.active),
            r.created_ns,
            r.expires_ns,
            r.last_used_ns,
            r.created_by,
            bool(r.operator),
        )


def insert_token(
    conn: sa.Connection,
    org_id: str,
    description: str,
    secret: str,
    *,
    all_access: bool,
    permissions: tuple[Permission, ...] = (),
    operator: bool = False,
    created_by: str | None = None,
    expires_ns: int | None = None,
) -> str:
    token_id = new_id()
    conn.execute(
        tokens.insert().values(
            id=token_id,
            org_id=org_id,
            description=description,
            token_hash=hash_secret(secret),
            all_access=all_access,
            permissions=[str(p) for p in permissions],
            created_ns=now_ns(),
            created_by=created_by,
            active=True,
            operator=operator,
            expires_ns=expires_ns,
        )
    )
    return token_id


class Tokens:
    def __init__(self, engine: Engine, cache: TTLCache) -> None:
        self.engine = engine
        self._cache = cache
        self._last_used: dict[str, int] = {}

    def create(
        self,
        by: Principal,
        actor: Actor,
        description: str,
        permissions: list[str] | None,
        expires_in_seconds: int = 0,
    ) -> tuple[TokenInfo, str]:
        """A new token of ``by``'s org; the secret is returned once, only its hash is kept.

        Nobody hands out more than they hold: each permission must be held by ``by``, and an
        all-access token needs an all-access creator.
        """
        perms = tuple(dict.fromkeys(Permission.parse(p) for p in permissions or []))
        if permissions is None and not by.all_access:
            raise Forbidden("only owners and all-access tokens may create all-access tokens")
        for p in perms:
            if not by.holds(p):
                raise Forbidden(f'you cannot grant "{p}": you do not hold it')
        if by.kind == "device":
            raise Forbidden("devices cannot create tokens")
        if len(description) > 512:
            raise Invalid("a description has at most 512 characters")
        secret = new_secret(TOKEN_PREFIX)
        expires = now_ns() + expires_in_seconds * 10**9 if expires_in_seconds else None
        if by.expires_ns is not None:  # a token never outlives the one that made it
            expires = min(expires or by.expires_ns, by.expires_ns)
        with self.engine.begin() as conn:
            token_id = insert_token(
                conn,
                by.org_id,
                description,
                secret,
                all_access=permissions is None,
                permissions=perms,
                created_by=actor.name,
                expires_ns=expires,
            )
            audit(
                conn,
                actor,
                by.org_id,
                "token.create",
                f"token:{token_id}",
                permissions=[str(p) for p in perms] or ["all"],
            )
        return self.get(by.org_id, token_id), secret

    def list(self, org_id: str) -> list[TokenInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(tokens).where(tokens.c.org_id == org_id).order_by(tokens.c.created_ns)
            ).all()
        return [self._with_last_used(TokenInfo.of(r)) for r in rows]

    def get(self, org_id: str, token_id: str) -> TokenInfo:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(tokens).where(tokens.c.org_id == org_id, tokens.c.id == token_id)
            ).first()
        if r is None:
            raise NotFound(f'token "{token_id}" not found')
        return self._with_last_used(TokenInfo.of(r))

    def _with_last_used(self, info: TokenInfo) -> TokenInfo:
        used = self._last_used.get(info.id)
        if used is None or (info.last_used_ns or 0) >= used:
            return info
        return TokenInfo(**{**info.__dict__, "last_used_ns": used})

    def _check_manage(self, by: Principal, token: TokenInfo) -> None:
        if (token.all_access or token.operator) and not by.all_access:
            raise Forbidden("only owners and all-access tokens may change all-access tokens")
        if token.operator and not by.operator:
            raise Forbidden("only the operator may change the operator token")

    def update(
        self,
        by: Principal,
        token_id: str,
        actor: Actor,
        description: str | None,
        active: bool | None,
    ) -> TokenInfo:
        org_id = by.org_id
        self._check_manage(by, self.get(org_id, token_id))
        values: dict[str, Any] = {}
        if description is not None:
            values["description"] = description
        if active is not None:
            values["active"] = active
        if values:
            with self.engine.begin() as conn:
                conn.execute(
                    tokens.update()
                    .where(tokens.c.org_id == org_id, tokens.c.id == token_id)
                    .values(**values)
                )
                audit(conn, actor, org_id, "token.update", f"token:{token_id}", **values)
            self._cache.clear()
        return self.get(org_id, token_id)

    def delete(self, by: Principal, token_id: str, actor: Actor) -> None:
        org_id = by.org_id
        self._check_manage(by, self.get(org_id, token_id))
        with self.engine.begin() as conn:
            gone = conn.execute(
                tokens.delete().where(tokens.c.org_id == org_id, tokens.c.id == token_id)
            ).rowcount
            if not gone:
                raise NotFound(f'token "{token_id}" not found')
            audit(conn, actor, org_id, "token.delete", f"token:{token_id}")
        self._cache.clear()

    @staticmethod
    def deactivate_made_by(conn: sa.Connection, org_id: str, user_id: str, actor: Actor) -> None:
        """A member leaves or changes role: the tokens they made in the org stop, since they
        may hold what the member no longer does."""
        made = conn.execute(
            tokens.update()
            .where(
                tokens.c.org_id == org_id,
                tokens.c.created_by == f"user:{user_id}",
                tokens.c.active.is_(True),
            )
            .values(active=False)
        ).rowcount
        if made:
            audit(conn, actor, org_id, "token.deactivate", f"user:{user_id}", tokens=made)

    def authenticate(self, secret: str) -> Principal:
        digest = hash_secret(secret)
        cached: Principal | None = self._cache.get("t:" + digest)
        if cached is None:
            generation = self._cache.generation
            with self.engine.connect() as conn:
                r = conn.execute(sa.select(tokens).where(tokens.c.token_hash == digest)).first()
            if r is None:
                raise Unauthorized("unauthorized access: invalid token")
            if not r.active:
                raise Unauthorized("unauthorized access: the token is inactive")
            if r.expires_ns is not None and r.expires_ns <= now_ns():
                raise Unauthorized("unauthorized access: the token has expired")
            info = TokenInfo.of(r)
            cached = Principal(
                "token",
                info.id,
                info.org_id,
                info.permissions,
                all_access=info.all_access,
                operator=info.operator,
                label=info.description,
                expires_ns=info.expires_ns,
            )
            self._cache.put("t:" + digest, cached, generation)
            self._note_use(info.id, info.last_used_ns)
        elif cached.expires_ns is not None and cached.expires_ns <= time.time_ns():
            raise Unauthorized("unauthorized access: the token has expired")
        else:
            self._last_used[cached.id] = now_ns()
        return cached

    def _note_use(self, token_id: str, stored_ns: int | None) -> None:
        now = now_ns()
        self._last_used[token_id] = now
        if stored_ns is None or now - stored_ns > LAST_USED_EVERY_NS:
            with self.engine.begin() as conn:
                conn.execute(
                    tokens.update().where(tokens.c.id == token_id).values(last_used_ns=now)
                )
