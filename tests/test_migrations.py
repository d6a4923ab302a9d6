"""The registry's Alembic migrations on every engine: an empty database reaches the newest
schema, that schema is the one ``motes.registry.tables`` describes, a registry made by
the first release (revision 0001) keeps its devices and operator token through 0002, and
one at 0002 keeps its devices through 0003 (commands and status)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from motes.registry import migrations
from motes.registry.common import SYSTEM, hash_secret
from motes.registry.service import Registry
from motes.registry.tables import metadata

OPERATOR_SECRET = "operator-secret-from-the-first-start"
CI_SECRET = "an-all-access-token-made-later"
SCOPED_SECRET = "a-scoped-token-made-later"


@pytest.fixture
def engine(registry_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(registry_url)
    yield engine
    engine.dispose()


def head(url: str) -> str | None:
    return ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


#: NOT NULL columns added to tables that may hold rows: the migration gives them server
#: defaults so the rows there get values; the tables (and so every insert) always set them,
#: hence ``tables.py`` declares no server default for them
SERVER_DEFAULTS = {
    ("tokens", "active"),  # 0002
    ("tokens", "operator"),
    ("devices", "connected"),  # 0003
    ("devices", "status"),
}


def is_intended(diff: Any) -> bool:
    return (
        isinstance(diff, list)
        and len(diff) == 1
        and diff[0][0] == "modify_default"
        and (diff[0][2], diff[0][3]) in SERVER_DEFAULTS
    )


def test_an_empty_database_upgrades_to_the_schema_of_the_tables(
    registry_url: str, engine: sa.Engine
) -> None:
    assert revision(engine) is None
    migrations.upgrade(registry_url)
    assert revision(engine) == head(registry_url) == "0003"
    migrations.upgrade(registry_url)  # again: nothing to do
    assert revision(engine) == "0003"
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, metadata)
    assert [d for d in differences if not is_intended(d)] == []
    # the intended ones only: a schema change shows up above
    assert len(differences) == len(SERVER_DEFAULTS)


# -- from revision 0001 ----------------------------------------------------------------------

# the 0001 tables as that release wrote them (only the columns the test fills)
orgs_0001 = sa.table("orgs", sa.column("id"), sa.column("name"), sa.column("created_ns"))
buckets_0001 = sa.table(
    "buckets",
    sa.column("id"),
    sa.column("org_id"),
    sa.column("name"),
    sa.column("retention_seconds"),
    sa.column("created_ns"),
)
tokens_0001 = sa.table(
    "tokens",
    sa.column("id"),
    sa.column("org_id"),
    sa.column("description"),
    sa.column("token_hash"),
    sa.column("all_access", sa.Boolean),
    sa.column("permissions", sa.JSON),
    sa.column("created_ns"),
)
devices_0001 = sa.table(
    "devices",
    sa.column("org_id"),
    sa.column("bucket_id"),
    sa.column("device"),
    sa.column("attributes", sa.JSON),
    sa.column("attributes_updated_ns"),
    sa.column("last_seen_ns"),
)
history_0001 = sa.table(
    "device_attribute_history",
    sa.column("org_id"),
    sa.column("bucket_id"),
    sa.column("device"),
    sa.column("time_ns"),
    sa.column("attributes", sa.JSON),
)


def fill_0001(engine: sa.Engine) -> None:
    """A first-release registry: device "gh-1" wrote to two buckets, "gh-2" to one."""

    def token(token_id: str, description: str, secret: str, *perms: str) -> dict[str, Any]:
        return {
            "id": token_id,
            "org_id": "o1",
            "description": description,
            "token_hash": hash_secret(secret),
            "all_access": not perms,
            "permissions": list(perms),
            "created_ns": 1,
        }

    def device(bucket: str, name: str, attributes: dict[str, Any], ns: int) -> dict[str, Any]:
        return {
            "org_id": "o1",
            "bucket_id": bucket,
            "device": name,
            "attributes": attributes,
            "attributes_updated_ns": ns,
            "last_seen_ns": ns,
        }

    def change(bucket: str, name: str, attributes: dict[str, Any], ns: int) -> dict[str, Any]:
        return {
            "org_id": "o1",
            "bucket_id": bucket,
            "device": name,
            "time_ns": ns,
            "attributes": attributes,
        }

    with engine.begin() as conn:
        conn.execute(orgs_0001.insert().values(id="o1", name="main", created_ns=1))
        conn.execute(
            buckets_0001.insert(),
            [
                {"id": b, "org_id": "o1", "name": b, "retention_seconds": 0, "created_ns": 1}
                for b in ("b1", "b2")
            ],
        )
        conn.execute(
            tokens_0001.insert(),
            [
                token("t1", "operator token (all access)", OPERATOR_SECRET),
                token("t2", "ci", CI_SECRET),
                token("t3", "operator token (all access)", SCOPED_SECRET, "read:buckets"),
            ],
        )
        conn.execute(
            devices_0001.insert(),
            [  # gh-1's newest attributes are b2's (300), older ones b1's (200)
                device("b2", "gh-1", {"fw": "1.1", "site": "north"}, 300),
                device("b1", "gh-1", {"fw": "1.0", "model": "x1"}, 200),
                device("b1", "gh-2", {"fw": "0.9"}, 100),
            ],
        )
        conn.execute(
            history_0001.insert(),
            [
                change("b1", "gh-1", {"fw": "1.0", "model": "x1"}, 200),
                change("b2", "gh-1", {"fw": "1.1", "site": "north"}, 300),
                change("b1", "gh-2", {"fw": "0.9"}, 100),
                change("b2", "gh-1", {"fw": "0.1"}, 50),
            ],
        )


@pytest.fixture
def registry_0002(registry_url: str, engine: sa.Engine) -> Iterator[Registry]:
    """A registry filled at revision 0001, then opened (so upgraded) by this release."""
    migrations.upgrade(registry_url, "0001")
    assert revision(engine) == "0001"
    fill_0001(engine)
    registry = Registry.open(registry_url)
    yield registry
    registry.close()


def test_per_bucket_device_records_merge_into_one_per_org(registry_0002: Registry) -> None:
    devices = registry_0002.devices
    found, total = devices.search("o1")
    assert ([d.id for d in found], total) == (["gh-1", "gh-2"], 2)
    gh1 = devices.get("o1", "gh-1")
    assert gh1.attributes == {"fw": "1.1", "model": "x1", "site": "north"}  # newest wins
    assert (gh1.attributes_updated_ns, gh1.last_seen_ns, gh1.bucket_id) == (300, 300, "b2")
    assert (gh1.key_prefix, gh1.name, gh1.tags, gh1.disabled) == (None, "", (), False)
    assert [(h["time_ns"], h["attributes"]) for h in devices.history("o1", "gh-1")] == [
        (300, {"fw": "1.1", "site": "north"}),
        (200, {"fw": "1.0", "model": "x1"}),
        (50, {"fw": "0.1"}),
    ]
    gh2 = devices.get("o1", "gh-2")
    assert (gh2.attributes, gh2.bucket_id, gh2.last_seen_ns) == ({"fw": "0.9"}, "b1", 100)
    assert devices.history("o1", "gh-2") == [{"time_ns": 100, "attributes": {"fw": "0.9"}}]
    # the records work as this release's: a deviceinfo update merges into the migrated one
    devices.record_attributes("o1", "gh-1", {"fw": "1.2"}, "b1")
    assert devices.get("o1", "gh-1").attributes == {"fw": "1.2", "model": "x1", "site": "north"}


def test_the_first_start_token_becomes_the_operator_token(registry_0002: Registry) -> None:
    operator = registry_0002.authenticate("token", OPERATOR_SECRET)
    assert (operator.org_id, operator.all_access, operator.operator) == ("o1", True, True)
    ci = registry_0002.authenticate("token", CI_SECRET)
    assert (ci.all_access, ci.operator) == (True, False)
    scoped = registry_0002.authenticate("token", SCOPED_SECRET)  # its name alone is not enough
    assert (scoped.all_access, scoped.operator) == (False, False)
    assert all(t.active and t.expires_ns is None for t in registry_0002.tokens.list("o1"))


# -- from revision 0002 ----------------------------------------------------------------------

devices_0002 = sa.table(
    "devices",
    sa.column("org_id"),
    sa.column("id"),
    sa.column("name"),
    sa.column("metadata", sa.JSON),
    sa.column("tags", sa.JSON),
    sa.column("bucket_id"),
    sa.column("permissions", sa.JSON),
    sa.column("disabled", sa.Boolean),
    sa.column("key_hash"),
    sa.column("key_prefix"),
    sa.column("attributes", sa.JSON),
    sa.column("last_seen_ns"),
    sa.column("created_ns"),
)
DEVICE_KEY = "mdk_a-key-made-by-release-0002"


@pytest.fixture
def registry_0003(registry_url: str, engine: sa.Engine) -> Iterator[Registry]:
    """A registry at revision 0002 with a provisioned device, then opened by this release."""
    migrations.upgrade(registry_url, "0002")
    with engine.begin() as conn:
        conn.execute(orgs_0001.insert().values(id="o1", name="main", created_ns=1))
        conn.execute(
            devices_0002.insert().values(
                org_id="o1",
                id="gh-1",
                name="Greenhouse",
                metadata={"site": "n"},
                tags=["lab"],
                bucket_id=None,
                permissions=[],
                disabled=False,
                key_hash=hash_secret(DEVICE_KEY),
                key_prefix=DEVICE_KEY[:12],
                attributes={"fw": "1.0"},
                last_seen_ns=100,
                created_ns=1,
            )
        )
    registry = Registry.open(registry_url)
    yield registry
    registry.close()


def test_devices_of_0002_start_offline_and_take_commands(registry_0003: Registry) -> None:
    devices = registry_0003.devices
    device = devices.get("o1", "gh-1")
    assert (device.name, device.attributes, device.last_seen_ns) == (
        "Greenhouse",
        {"fw": "1.0"},
        100,
    )
    assert (device.status, device.connected, device.expected_interval_seconds) == (
        "offline",
        False,
        None,
    )
    assert registry_0003.authenticate("thing", DEVICE_KEY).id == "gh-1"
    devices.set_connected("o1", "gh-1", True, "connect")
    assert devices.get("o1", "gh-1").status == "online"
    assert [c.reason for c in devices.status_history("o1", "gh-1")] == ["connect"]
    command = registry_0003.commands.create("o1", "gh-1", "reboot", {}, 60, SYSTEM)
    assert [c.id for c in registry_0003.commands.pending("o1", "gh-1")] == [command.id]
