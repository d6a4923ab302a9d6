"""An org's secret store: values sealed with AES-256-GCM, never returned by the API.

store = Secrets(engine, SecretBox(derive(master, "secrets")))
store.put("org1", actor, {"slack_webhook": "https://..."})
store.value("org1", "slack_webhook")    # for the platform's own use (notifications)
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from motes.registry.common import Actor, audit, now_ns
from motes.registry.crypto import SecretBox
from motes.registry.models import Invalid, NotFound
from motes.registry.tables import secrets

MAX_KEY = 256
MAX_VALUE = 64 * 1024


@dataclass(frozen=True)
class SecretInfo:
    key: str
    created_ns: int
    updated_ns: int


class Secrets:
    def __init__(self, engine: Engine, box: SecretBox) -> None:
        self.engine = engine
        self._box = box

    def put(self, org_id: str, actor: Actor, values: dict[str, str]) -> None:
        """Set several secrets in one transaction: all of them or none."""
        if not values:
            raise Invalid("give at least one secret")
        for key, value in values.items():
            if not key or len(key) > MAX_KEY or not key.isprintable():
                raise Invalid(f'invalid secret key "{key[:40]}": 1-{MAX_KEY} printable characters')
            if not isinstance(value, str) or len(value.encode()) > MAX_VALUE:
                raise Invalid(f'secret "{key}": the value must be a string of at most 64 KiB')
        now = now_ns()
        with self.engine.begin() as conn:
            for key, value in values.items():
                nonce, sealed = self._box.seal(value, f"{org_id}/{key}")
                where = (secrets.c.org_id == org_id, secrets.c.key == key)
                updated = conn.execute(
                    secrets.update()
                    .where(*where)
                    .values(nonce=nonce, ciphertext=sealed, updated_ns=now)
                ).rowcount
                if not updated:
                    conn.execute(
                        secrets.insert().values(
                            org_id=org_id,
                            key=key,
                            nonce=nonce,
                            ciphertext=sealed,
                            created_ns=now,
                            updated_ns=now,
                        )
                    )
                audit(conn, actor, org_id, "secret.put", f"secret:{key}")

    def list(self, org_id: str) -> list[SecretInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(secrets.c.key, secrets.c.created_ns, secrets.c.updated_ns)
                .where(secrets.c.org_id == org_id)
                .order_by(secrets.c.key)
            ).all()
        return [SecretInfo(r.key, r.created_ns, r.updated_ns) for r in rows]

    def delete(self, org_id: str, key: str, actor: Actor) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(
                secrets.delete().where(secrets.c.org_id == org_id, secrets.c.key == key)
            ).rowcount
            if not gone:
                raise NotFound(f'secret "{key}" not found')
            audit(conn, actor, org_id, "secret.delete", f"secret:{key}")

    def value(self, org_id: str, key: str) -> str:
        with self.engine.connect() as conn:
            r = conn.execute(
                sa.select(secrets.c.nonce, secrets.c.ciphertext).where(
                    secrets.c.org_id == org_id, secrets.c.key == key
                )
            ).first()
        if r is None:
            raise NotFound(f'secret "{key}" not found')
        return self._box.open(r.nonce, r.ciphertext, f"{org_id}/{key}")
