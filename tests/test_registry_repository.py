"""The registry's services on every database engine it supports (SQLite, PostgreSQL).

One suite, run through ``Registry.open(url)`` on each ``migrated_registry_url``: what a caller of
the services notices — who may sign in, which keys work, what is stored, what the audit log
says — must not depend on the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, profiles

from motes.registry import common as common_module
from motes.registry import crypto
from motes.registry import devices as devices_module
from motes.registry import secrets as secrets_module
from motes.registry import service as service_module
from motes.registry import sessions as sessions_module
from motes.registry import tokens as tokens_module
from motes.registry import users as users_module
from motes.registry.common import Actor
from motes.registry.devices import DeviceSpec
from motes.registry.models import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Permission,
    Principal,
    Unauthorized,
)
from motes.registry.service import Registry
from motes.registry.sessions import OAuthError, TokenPair
from motes.registry.tables import metadata
from motes.registry.tables import secrets as secrets_table
from motes.registry.users import SETUP_TOKEN_SECONDS, Invitation, OwnerSpec, User

MASTER_KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))
PASSWORD = "correct horse battery"
NEW_PASSWORD = "battery staple horse"
REMOTE = "10.0.0.7"
HOUR_NS = 3600 * 10**9


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    # argon2id at the production cost takes 0.1-0.5 s a hash; no rule tested here depends on
    # the cost, so hash with the cheapest argon2id parameters to keep the suite fast
    monkeypatch.setattr(crypto, "_hasher", PasswordHasher.from_parameters(profiles.CHEAPEST))


@pytest.fixture
def registry(migrated_registry_url: str) -> Iterator[Registry]:
    registry = Registry.open(migrated_registry_url, master_key=MASTER_KEY)
    yield registry
    registry.close()


@pytest.fixture
def operator(registry: Registry) -> Principal:
    """The first start's operator token, all access in the org "main"."""
    token = registry.bootstrap("main", "telemetry", None)
    assert token is not None
    return registry.authenticate("token", token)


@pytest.fixture
def reopen(migrated_registry_url: str) -> Iterator[Callable[..., Registry]]:
    """Another process on the same database: nothing cached, only what was committed."""
    opened: list[Registry] = []

    def open_again(master_key: bytes = MASTER_KEY) -> Registry:
        opened.append(Registry.open(migrated_registry_url, master_key=master_key))
        return opened[-1]

    yield open_again
    for registry in opened:
        registry.close()


# -- helpers ---------------------------------------------------------------------------------


def actor(by: Principal) -> Actor:
    return Actor(by.actor, REMOTE, by.label)


def add_user(
    registry: Registry, by: Principal, email: str, role: str, org_id: str | None = None
) -> User:
    user, setup = registry.users.add(org_id or by.org_id, by, actor(by), email, "", role, PASSWORD)
    assert setup is None
    return user


def grant(registry: Registry, email: str, password: str = PASSWORD) -> TokenPair:
    return registry.sessions.password_grant(email, password, "test-client", "", REMOTE)


def sign_in(
    registry: Registry, email: str, password: str = PASSWORD, org_id: str | None = None
) -> Principal:
    pair = grant(registry, email, password)
    return registry.authenticate("bearer", pair.access_token, org_id=org_id)


def snapshot(registry: Registry) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every registry table: equal snapshots mean nothing was written.

    ``credential_epoch`` is left out: it only tells other processes to re-check the
    credentials they cached, and bumping it after a failed change is harmless."""
    with registry.engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(map(repr, row)) for row in conn.execute(sa.select(table))), key=str
            )
            for table in metadata.sorted_tables
            if table.name != "credential_epoch"
        }


def events(registry: Registry, org_id: str, action: str | None = None) -> list[tuple[str, str]]:
    """(action, target) of the org's audit events, oldest first."""
    found = registry.audit_events(org_id, limit=1000, action=action)
    return [(e.action, e.target) for e in reversed(found)]


def oauth_error(call: Callable[[], object]) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        call()
    return caught.value


# -- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_creates_org_bucket_and_operator_token_once(registry: Registry) -> None:
    token = "init-token-of-sixteen-chars"
    assert registry.bootstrap("main", "telemetry", token) == token
    operator = registry.authenticate("token", token)
    org = registry.org_by_name("main")
    assert (operator.kind, operator.org_id, operator.operator, operator.all_access) == (
        "token",
        org.id,
        True,
        True,
    )
    assert [b.name for b in registry.buckets(org.id)] == ["telemetry"]
    assert events(registry, org.id) == [("org.create", f"org:{org.id}")]
    before = snapshot(registry)
    assert registry.bootstrap("other", "data", "another-token-of-16-chars") is None
    assert snapshot(registry) == before
    with pytest.raises(Unauthorized):
        registry.authenticate("token", "another-token-of-16-chars")


def test_bootstrap_makes_the_init_admin_an_operator_who_owns_the_first_org(
    registry: Registry,
) -> None:
    assert registry.bootstrap("main", "telemetry", None, "Root@Example.com", PASSWORD)
    admin = sign_in(registry, "root@example.com")
    assert (admin.role, admin.operator, admin.org_id) == (
        "owner",
        True,
        registry.org_by_name("main").id,
    )
    _, owner, setup = registry.users.create_org(admin, actor(admin), "lab", None)
    assert (owner, setup) == (None, None)  # the operator user is the owner
    assert [(o.name, role) for o, role in registry.users.orgs_of(admin.id)] == [
        ("main", "owner"),
        ("lab", "owner"),
    ]


@pytest.mark.parametrize(
    ("email", "password"), [("root@example.com", "short"), ("not an email", PASSWORD)]
)
def test_bootstrap_is_all_or_nothing(registry: Registry, email: str, password: str) -> None:
    empty = snapshot(registry)
    with pytest.raises(Invalid):
        registry.bootstrap("main", "telemetry", None, email, password)
    assert snapshot(registry) == empty
    # the next start sets up from scratch, and its token is shown again
    token = registry.bootstrap("main", "telemetry", None, "root@example.com", PASSWORD)
    assert token is not None and registry.authenticate("token", token).operator
    assert sign_in(registry, "root@example.com").operator


def test_bootstrap_failing_midway_leaves_nothing(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_insert_token(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    empty = snapshot(registry)
    monkeypatch.setattr(service_module, "insert_token", broken_insert_token)
    with pytest.raises(RuntimeError):
        registry.bootstrap("main", "telemetry", None)
    assert snapshot(registry) == empty


# -- orgs ------------------------------------------------------------------------------------


def test_operator_creates_an_org_with_its_owner_in_one_go(
    registry: Registry, operator: Principal
) -> None:
    org, owner, setup = registry.users.create_org(
        operator, actor(operator), "acme", OwnerSpec("Ana@Acme.io", "Ana")
    )
    assert owner is not None and setup is not None
    assert (owner.email, owner.role) == ("ana@acme.io", "owner")
    assert [b.name for b in registry.buckets(org.id)] == ["telemetry"]
    assert registry.org_by_name("acme") == org
    # the owner has no password yet: the setup token sets it, then they sign in as owner
    with pytest.raises(OAuthError):
        grant(registry, "ana@acme.io")
    registry.users.use_reset(setup, PASSWORD, Actor("anonymous"))
    ana = sign_in(registry, "ana@acme.io")
    assert (ana.org_id, ana.role, ana.all_access, ana.operator) == (org.id, "owner", True, False)
    with pytest.raises(Forbidden):  # owners are not operators: no orgs of their own making
        registry.users.create_org(ana, actor(ana), "acme2", None)
    assert [a for a, _ in events(registry, org.id)] == [
        "org.create",
        "user.create",
        "member.add",
        "auth.login",  # failed: no password yet
        "user.password_set",
        "auth.login",
    ]


def test_duplicate_org_name_is_a_conflict_and_creates_nothing(
    registry: Registry, operator: Principal
) -> None:
    registry.users.create_org(operator, actor(operator), "acme", OwnerSpec("a@acme.io"))
    before = snapshot(registry)
    with pytest.raises(Conflict):
        registry.users.create_org(operator, actor(operator), "acme", OwnerSpec("b@acme.io"))
    with pytest.raises(Conflict):
        registry.users.create_org(operator, actor(operator), "main", OwnerSpec("b@acme.io"))
    assert snapshot(registry) == before


def test_an_invalid_owner_leaves_no_half_created_org(
    registry: Registry, operator: Principal
) -> None:
    before = snapshot(registry)
    with pytest.raises(Invalid):
        registry.users.create_org(operator, actor(operator), "acme", OwnerSpec("not-an-email"))
    with pytest.raises(Invalid):
        registry.users.create_org(
            operator, actor(operator), "acme", OwnerSpec("ana@acme.io", password="short")
        )
    assert snapshot(registry) == before
    with pytest.raises(NotFound):
        registry.org_by_name("acme")
    org, _, _ = registry.users.create_org(
        operator, actor(operator), "acme", OwnerSpec("ana@acme.io")
    )
    assert registry.org_by_name("acme") == org


# -- users -----------------------------------------------------------------------------------


def test_admins_add_members_once(registry: Registry, operator: Principal) -> None:
    add_user(registry, operator, "admin@example.com", "admin")
    admin = sign_in(registry, "admin@example.com")
    viewer = add_user(registry, admin, "Viewer@Example.com", "viewer")
    assert [(u.email, u.role) for u in registry.users.members(operator.org_id)] == [
        ("admin@example.com", "admin"),
        ("viewer@example.com", "viewer"),
    ]
    assert sign_in(registry, "viewer@example.com").role == "viewer"
    before = snapshot(registry)
    with pytest.raises(Conflict):  # already a member
        registry.users.add(
            admin.org_id, admin, actor(admin), "viewer@example.com", "", "member", None
        )
    with pytest.raises(Conflict):  # an existing account keeps its password
        registry.users.add(
            admin.org_id, admin, actor(admin), "viewer@example.com", "", "member", "x" * 12
        )
    with pytest.raises(Forbidden):  # only owners make owners
        registry.users.add(admin.org_id, admin, actor(admin), "o@example.com", "", "owner", None)
    assert snapshot(registry) == before
    assert ("member.add", f"user:{viewer.id}") in events(registry, operator.org_id)


def test_the_last_owner_can_be_neither_removed_nor_demoted(
    registry: Registry, operator: Principal
) -> None:
    ana = add_user(registry, operator, "ana@example.com", "owner")
    before = snapshot(registry)
    with pytest.raises(Conflict):
        registry.users.update(operator.org_id, ana.id, operator, actor(operator), role="admin")
    with pytest.raises(Conflict):
        registry.users.remove(operator.org_id, ana.id, operator, actor(operator))
    assert snapshot(registry) == before
    assert registry.users.member(operator.org_id, ana.id).role == "owner"
    add_user(registry, operator, "bo@example.com", "owner")
    demoted = registry.users.update(
        operator.org_id, ana.id, operator, actor(operator), role="admin"
    )
    assert demoted.role == "admin"


def test_disabling_a_user_ends_their_sessions_at_once(
    registry: Registry, operator: Principal
) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    pair = grant(registry, "viewer@example.com")
    assert registry.authenticate("bearer", pair.access_token).id == viewer.id  # now cached
    disabled = registry.users.update(
        operator.org_id, viewer.id, operator, actor(operator), disabled=True
    )
    assert disabled.disabled
    with pytest.raises(Unauthorized):
        registry.authenticate("bearer", pair.access_token)
    assert oauth_error(
        lambda: registry.sessions.refresh_grant(pair.refresh_token, REMOTE)
    ).error == ("invalid_grant")
    assert oauth_error(lambda: grant(registry, "viewer@example.com")).error == "invalid_grant"
    assert ("user.disable", f"user:{viewer.id}") in events(registry, operator.org_id)
    registry.users.update(operator.org_id, viewer.id, operator, actor(operator), disabled=False)
    assert sign_in(registry, "viewer@example.com").id == viewer.id


def test_reset_tokens_work_once_and_expire_after_72_hours(
    registry: Registry, operator: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    session = grant(registry, "viewer@example.com")
    first, expires_ns = registry.users.issue_reset(
        operator.org_id, viewer.id, operator, actor(operator)
    )
    second, _ = registry.users.issue_reset(operator.org_id, viewer.id, operator, actor(operator))
    issued_ns = time.time_ns()
    assert expires_ns - issued_ns == pytest.approx(SETUP_TOKEN_SECONDS * 10**9, abs=60 * 10**9)

    monkeypatch.setattr(users_module, "now_ns", lambda: issued_ns + 71 * HOUR_NS)
    registry.users.use_reset(first, NEW_PASSWORD, Actor("anonymous", REMOTE))
    with pytest.raises(Unauthorized):  # a reset ends the sessions
        registry.authenticate("bearer", session.access_token)
    with pytest.raises(OAuthError):
        grant(registry, "viewer@example.com", PASSWORD)
    assert sign_in(registry, "viewer@example.com", NEW_PASSWORD).id == viewer.id
    with pytest.raises(Invalid):  # one time only
        registry.users.use_reset(first, PASSWORD, Actor("anonymous", REMOTE))

    monkeypatch.setattr(users_module, "now_ns", lambda: issued_ns + 73 * HOUR_NS)
    with pytest.raises(Invalid):  # expired
        registry.users.use_reset(second, PASSWORD, Actor("anonymous", REMOTE))
    assert sign_in(registry, "viewer@example.com", NEW_PASSWORD).id == viewer.id
    assert [a for a, _ in events(registry, operator.org_id) if "password" in a] == [
        "user.password_reset",
        "user.password_reset",
        "user.password_set",
    ]


def test_changing_the_password_ends_every_session(registry: Registry, operator: Principal) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    phone, laptop = grant(registry, "viewer@example.com"), grant(registry, "viewer@example.com")
    with pytest.raises(Invalid):  # the current password is checked
        registry.users.change_password(viewer.id, "wrong password", NEW_PASSWORD, Actor("x"))
    assert registry.authenticate("bearer", phone.access_token).id == viewer.id
    registry.users.change_password(
        viewer.id, PASSWORD, NEW_PASSWORD, Actor(f"user:{viewer.id}", REMOTE)
    )
    for pair in (phone, laptop):
        with pytest.raises(Unauthorized):
            registry.authenticate("bearer", pair.access_token)
        with pytest.raises(OAuthError):
            registry.sessions.refresh_grant(pair.refresh_token, REMOTE)
    with pytest.raises(OAuthError):
        grant(registry, "viewer@example.com", PASSWORD)
    assert sign_in(registry, "viewer@example.com", NEW_PASSWORD).id == viewer.id
    assert ("user.password_change", f"user:{viewer.id}") in events(registry, operator.org_id)


def test_one_orgs_admin_cannot_disable_or_reset_an_account_shared_with_another_org(
    registry: Registry, operator: Principal
) -> None:
    acme, _, _ = registry.users.create_org(
        operator, actor(operator), "acme", OwnerSpec("ana@acme.io", password=PASSWORD)
    )
    ana = sign_in(registry, "ana@acme.io")
    shared = add_user(registry, ana, "shared@example.com", "viewer")
    add_user(registry, operator, "admin@example.com", "admin")
    admin = sign_in(registry, "admin@example.com")
    invited, _ = registry.users.add(
        admin.org_id, admin, actor(admin), "shared@example.com", "", "member", None
    )
    assert isinstance(invited, Invitation)  # an existing account is invited, not added
    with pytest.raises(NotFound):  # the invitation is its holder's to answer
        registry.users.answer_invitation(ana.id, invited.id, True, actor(ana), invited.code or "")
    with pytest.raises(Forbidden):  # the code the inviter passed on is needed
        registry.users.answer_invitation(shared.id, invited.id, True, Actor(f"user:{shared.id}"))
    registry.users.answer_invitation(
        shared.id, invited.id, True, Actor(f"user:{shared.id}"), invited.code or ""
    )
    before = snapshot(registry)
    with pytest.raises(Conflict):
        registry.users.update(admin.org_id, shared.id, admin, actor(admin), disabled=True)
    with pytest.raises(Conflict):
        registry.users.issue_reset(admin.org_id, shared.id, admin, actor(admin))
    assert snapshot(registry) == before
    # removing them from the admin's own org is fine; the account lives on in acme
    registry.users.remove(admin.org_id, shared.id, admin, actor(admin))
    assert sign_in(registry, "shared@example.com").org_id == acme.id
    assert [o.name for o, _ in registry.users.orgs_of(shared.id)] == ["acme"]


# -- sessions --------------------------------------------------------------------------------


def test_password_grant_signs_in(registry: Registry, operator: Principal) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    assert registry.users.user(viewer.id).last_login_ns is None
    pair = registry.sessions.password_grant(" Viewer@Example.com ", PASSWORD, "web", "read", REMOTE)
    assert (pair.expires_in, pair.scope) == (900, "")  # roles, not scopes, decide
    assert pair.refresh_token.startswith("mrt_")
    principal = registry.authenticate("bearer", pair.access_token)
    assert (principal.kind, principal.id, principal.org_id, principal.role) == (
        "user",
        viewer.id,
        operator.org_id,
        "viewer",
    )
    assert principal.allows("read", "devices") and not principal.allows("write", "devices")
    assert registry.users.user(viewer.id).last_login_ns is not None
    login = registry.audit_events(operator.org_id, action="auth.login")[0]
    assert (login.actor, login.outcome, login.remote) == (f"user:{viewer.id}", "success", REMOTE)


def test_wrong_credentials_are_refused_and_audited(registry: Registry, operator: Principal) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    error = oauth_error(lambda: grant(registry, "viewer@example.com", "wrong password"))
    assert (error.error, error.status) == ("invalid_grant", 400)
    assert oauth_error(lambda: grant(registry, "nobody@example.com")).error == "invalid_grant"
    failed = registry.audit_events(operator.org_id, action="auth.login")
    assert [(e.target, e.outcome, e.remote, e.details["email"]) for e in failed] == [
        (f"user:{viewer.id}", "failure", REMOTE, "viewer@example.com")
    ]


def test_sign_ins_are_throttled_after_five_failures(
    registry: Registry, operator: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    other = add_user(registry, operator, "other@example.com", "viewer")
    for _ in range(5):
        assert oauth_error(lambda: grant(registry, "viewer@example.com", "guess1234")).error == (
            "invalid_grant"
        )
    throttled = oauth_error(lambda: grant(registry, "viewer@example.com"))  # even the right one
    assert (throttled.error, throttled.status) == ("slow_down", 429)
    assert sign_in(registry, "other@example.com").id == other.id  # others still sign in
    later = time.monotonic() + 15 * 60 + 1
    monkeypatch.setattr(
        sessions_module, "time", SimpleNamespace(monotonic=lambda: later, time=time.time)
    )
    assert sign_in(registry, "viewer@example.com").id == viewer.id


def test_refresh_tokens_rotate(registry: Registry, operator: Principal) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    first = grant(registry, "viewer@example.com")
    second = registry.sessions.refresh_grant(first.refresh_token, REMOTE)
    third = registry.sessions.refresh_grant(second.refresh_token, REMOTE)
    assert len({first.refresh_token, second.refresh_token, third.refresh_token}) == 3
    assert registry.authenticate("bearer", third.access_token).id == viewer.id
    assert registry.authenticate("bearer", first.access_token).id == viewer.id  # same session


def test_reusing_a_refresh_token_revokes_the_session(
    registry: Registry, operator: Principal
) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    first = grant(registry, "viewer@example.com")
    second = registry.sessions.refresh_grant(first.refresh_token, REMOTE)
    assert registry.authenticate("bearer", second.access_token).id == viewer.id  # cached
    stolen = oauth_error(lambda: registry.sessions.refresh_grant(first.refresh_token, REMOTE))
    assert stolen.error == "invalid_grant"
    with pytest.raises(OAuthError):
        registry.sessions.refresh_grant(second.refresh_token, REMOTE)
    with pytest.raises(Unauthorized):
        registry.authenticate("bearer", second.access_token)
    reuse = registry.audit_events(operator.org_id, action="auth.refresh_reuse")
    assert [e.outcome for e in reuse] == ["failure"]
    assert sign_in(registry, "viewer@example.com").id == viewer.id  # a new sign-in works


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_revoking_ends_the_session_at_once(
    registry: Registry, operator: Principal, which: str
) -> None:
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    pair = grant(registry, "viewer@example.com")
    other = grant(registry, "viewer@example.com")
    registry.authenticate("bearer", pair.access_token)  # cached
    registry.sessions.revoke(getattr(pair, which), REMOTE)
    with pytest.raises(Unauthorized):
        registry.authenticate("bearer", pair.access_token)
    with pytest.raises(OAuthError):
        registry.sessions.refresh_grant(pair.refresh_token, REMOTE)
    assert registry.authenticate("bearer", other.access_token).id == viewer.id  # lives on
    registry.sessions.revoke("mrt_unknown", REMOTE)  # RFC 7009: unknown tokens are fine
    assert len(registry.audit_events(operator.org_id, action="auth.logout")) == 1


# -- devices ---------------------------------------------------------------------------------


def test_a_device_key_authenticates_as_its_device(registry: Registry, operator: Principal) -> None:
    bucket = registry.find_bucket(operator.org_id, "telemetry")
    device, key = registry.devices.create(
        operator.org_id,
        actor(operator),
        DeviceSpec("gh-1", "Greenhouse", {"site": "north"}, ("a", "b"), bucket.id, ("read:orgs",)),
    )
    assert key.startswith("mdk_") and device.key_prefix == key[:12]
    assert (device.name, device.metadata, device.tags, device.bucket_id) == (
        "Greenhouse",
        {"site": "north"},
        ("a", "b"),
        bucket.id,
    )
    principal = registry.authenticate("thing", key)
    assert (principal.kind, principal.id, principal.org_id, principal.bucket_id) == (
        "device",
        "gh-1",
        operator.org_id,
        bucket.id,
    )
    assert principal.permissions == (Permission("read", "orgs"),)
    assert registry.authenticate("token", key).id == "gh-1"  # recognised by its prefix
    with pytest.raises(Invalid):  # devices only read
        registry.devices.create(
            operator.org_id, actor(operator), DeviceSpec("gh-2", permissions=("write:buckets",))
        )
    with pytest.raises(Conflict):
        registry.devices.create(operator.org_id, actor(operator), DeviceSpec("gh-1"))
    assert events(registry, operator.org_id)[-1] == ("device.create", "device:gh-1")


def test_rotating_revoking_or_disabling_stops_the_old_key_at_once(
    registry: Registry, operator: Principal
) -> None:
    by = actor(operator)
    _, old = registry.devices.create(operator.org_id, by, DeviceSpec("gh-1"))
    registry.authenticate("thing", old)  # cached
    new = registry.devices.rotate_key(operator.org_id, "gh-1", by)
    with pytest.raises(Unauthorized):
        registry.authenticate("thing", old)
    assert registry.authenticate("thing", new).id == "gh-1"
    assert registry.devices.get(operator.org_id, "gh-1").key_prefix == new[:12]

    registry.devices.update(operator.org_id, "gh-1", by, disabled=True)
    with pytest.raises(Unauthorized):
        registry.authenticate("thing", new)
    registry.devices.update(operator.org_id, "gh-1", by, disabled=False)
    assert registry.authenticate("thing", new).id == "gh-1"

    registry.devices.revoke_key(operator.org_id, "gh-1", by)
    with pytest.raises(Unauthorized):
        registry.authenticate("thing", new)
    assert registry.devices.get(operator.org_id, "gh-1").key_prefix is None
    with pytest.raises(NotFound):
        registry.devices.rotate_key(operator.org_id, "nope", by)
    assert [a for a, t in events(registry, operator.org_id) if t == "device:gh-1"] == [
        "device.create",
        "device.key_rotate",
        "device.update",
        "device.update",
        "device.key_revoke",
    ]


def test_bulk_create_is_all_or_nothing(registry: Registry, operator: Principal) -> None:
    by = actor(operator)
    created = registry.devices.create_many(
        operator.org_id, by, [DeviceSpec("a"), DeviceSpec("b", tags=("x",))]
    )
    assert [d.id for d, _ in created] == ["a", "b"]
    assert all(registry.authenticate("thing", key).id == d.id for d, key in created)
    before = snapshot(registry)
    with pytest.raises(Conflict):  # listed twice
        registry.devices.create_many(operator.org_id, by, [DeviceSpec("c"), DeviceSpec("c")])
    with pytest.raises(Conflict):  # exists already
        registry.devices.create_many(operator.org_id, by, [DeviceSpec("d"), DeviceSpec("a")])
    with pytest.raises(Invalid):  # a bad line
        registry.devices.create_many(operator.org_id, by, [DeviceSpec("e"), DeviceSpec("no id")])
    assert snapshot(registry) == before
    assert registry.devices.search(operator.org_id)[1] == 2


def test_device_search_filters_and_counts(registry: Registry, operator: Principal) -> None:
    by = actor(operator)
    specs = [
        DeviceSpec(f"sensor-{i:02}", tags=("outdoor", "solar") if i % 2 else ("indoor",))
        for i in range(1, 8)
    ]
    specs += [
        DeviceSpec("gw", "Main SENSOR gateway", {"site": "north", "floor": 2}),
        DeviceSpec("a_b", metadata={"site": "south"}),
        DeviceSpec("axb", metadata={"site": "north"}),
    ]
    registry.devices.create_many(operator.org_id, by, specs)
    org = operator.org_id

    def ids(found: tuple[list[Any], int]) -> tuple[list[str], int]:
        return [d.id for d in found[0]], found[1]

    assert ids(registry.devices.search(org, text="Sensor", limit=3, offset=3)) == (
        ["sensor-03", "sensor-04", "sensor-05"],
        8,  # ids and names, case-insensitive: the gateway's name matches too
    )
    assert ids(registry.devices.search(org, text="sensor", offset=7)) == (["sensor-07"], 8)
    assert ids(registry.devices.search(org, text="a_b")) == (["a_b"], 1)  # "_" is no wildcard
    assert ids(registry.devices.search(org, text="%")) == ([], 0)
    assert ids(registry.devices.search(org, tags=["outdoor", "solar"], limit=2)) == (
        ["sensor-01", "sensor-03"],
        4,
    )
    assert ids(registry.devices.search(org, tags=["outdoor", "indoor"])) == ([], 0)
    assert ids(registry.devices.search(org, metadata={"site": "north"})) == (["axb", "gw"], 2)
    assert ids(registry.devices.search(org, metadata={"site": "north", "floor": "2"})) == (
        ["gw"],
        1,
    )
    other, _, _ = registry.users.create_org(operator, by, "acme", OwnerSpec("o@acme.io"))
    assert registry.devices.search(other.id) == ([], 0)  # other orgs see none of them


def test_sending_data_registers_a_device_without_a_key(
    registry: Registry, operator: Principal, reopen: Callable[..., Registry]
) -> None:
    bucket = registry.find_bucket(operator.org_id, "telemetry")
    registry.devices.touch(operator.org_id, "auto-1", bucket.id)
    registry.devices.record_attributes(operator.org_id, "auto-1", {"fw": "1.0"}, bucket.id)
    device = reopen().devices.get(operator.org_id, "auto-1")
    assert (device.key_prefix, device.bucket_id, device.attributes) == (
        None,
        bucket.id,
        {"fw": "1.0"},
    )
    # provisioning it later gives it a key and keeps what it reported
    provisioned, key = registry.devices.create(
        operator.org_id, actor(operator), DeviceSpec("auto-1", name="Auto")
    )
    assert (provisioned.name, provisioned.attributes) == ("Auto", {"fw": "1.0"})
    assert registry.authenticate("thing", key).id == "auto-1"


def test_attributes_merge_and_keep_history(
    registry: Registry, operator: Principal, reopen: Callable[..., Registry]
) -> None:
    bucket = registry.find_bucket(operator.org_id, "telemetry")
    registry.devices.create(operator.org_id, actor(operator), DeviceSpec("gh-1"))
    record = registry.devices.record_attributes
    record(operator.org_id, "gh-1", {"fw": "1.0", "model": "x1"}, bucket.id)
    record(operator.org_id, "gh-1", {"fw": "1.1"}, bucket.id)
    record(operator.org_id, "gh-1", {"fw": "1.1"}, bucket.id)  # no change: no history
    other = reopen()
    device = other.devices.get(operator.org_id, "gh-1")
    assert device.attributes == {"fw": "1.1", "model": "x1"}
    assert device.attributes_updated_ns is not None
    assert [h["attributes"] for h in other.devices.history(operator.org_id, "gh-1")] == [
        {"fw": "1.1"},
        {"fw": "1.0", "model": "x1"},
    ]


def test_flush_seen_persists_last_seen(
    registry: Registry, operator: Principal, reopen: Callable[..., Registry]
) -> None:
    bucket = registry.find_bucket(operator.org_id, "telemetry")
    registry.devices.create(operator.org_id, actor(operator), DeviceSpec("gh-1"))
    before = time.time_ns()
    registry.devices.touch(operator.org_id, "gh-1", bucket.id)
    seen = registry.devices.get(operator.org_id, "gh-1").last_seen_ns
    assert seen is not None and seen >= before
    assert reopen().devices.get(operator.org_id, "gh-1").last_seen_ns is None  # not yet written
    registry.devices.flush_seen()
    assert reopen().devices.get(operator.org_id, "gh-1").last_seen_ns == seen


# -- channels --------------------------------------------------------------------------------


def test_only_connected_devices_pass_the_channel_check(
    registry: Registry, operator: Principal
) -> None:
    org, by = operator.org_id, actor(operator)
    channel = registry.devices.create_channel(org, by, "alarms", "Alarms", {"level": 1}, None)
    assert (channel.id, channel.name, channel.metadata) == ("alarms", "Alarms", {"level": 1})
    with pytest.raises(Conflict):
        registry.devices.create_channel(org, by, "alarms", "", {}, None)
    registry.devices.create_many(org, by, [DeviceSpec("gh-1"), DeviceSpec("gh-2")])
    with pytest.raises(Forbidden):
        registry.devices.check_connected(org, "alarms", "gh-1")
    registry.devices.connect(org, "alarms", "gh-1", by)
    registry.devices.connect(org, "alarms", "gh-1", by)  # again: no change
    registry.devices.check_connected(org, "alarms", "gh-1")
    with pytest.raises(Forbidden):
        registry.devices.check_connected(org, "alarms", "gh-2")
    with pytest.raises(NotFound):
        registry.devices.connect(org, "alarms", "ghost", by)
    assert registry.devices.channel_devices(org, "alarms") == ["gh-1"]
    assert registry.devices.device_channels(org, "gh-1") == ["alarms"]
    registry.devices.disconnect(org, "alarms", "gh-1", by)
    with pytest.raises(Forbidden):
        registry.devices.check_connected(org, "alarms", "gh-1")
    with pytest.raises(NotFound):
        registry.devices.disconnect(org, "alarms", "gh-1", by)
    assert [a for a, t in events(registry, org) if t == "channel:alarms"] == [
        "channel.create",
        "channel.connect",
        "channel.disconnect",
    ]


def test_deleting_a_device_removes_its_connections(registry: Registry, operator: Principal) -> None:
    org, by = operator.org_id, actor(operator)
    registry.devices.create_channel(org, by, "alarms", "", {}, None)
    registry.devices.create(org, by, DeviceSpec("gh-1"))
    registry.devices.connect(org, "alarms", "gh-1", by)
    registry.devices.delete(org, "gh-1", by)
    assert registry.devices.channel_devices(org, "alarms") == []
    registry.devices.create(org, by, DeviceSpec("gh-1"))  # the same id again: a new device
    with pytest.raises(Forbidden):
        registry.devices.check_connected(org, "alarms", "gh-1")
    assert ("device.delete", "device:gh-1") in events(registry, org)


# -- tokens ----------------------------------------------------------------------------------


def test_scoped_tokens_hold_exactly_their_permissions(
    registry: Registry, operator: Principal
) -> None:
    bucket = registry.find_bucket(operator.org_id, "telemetry")
    info, secret = registry.tokens.create(
        operator, actor(operator), "grafana", [f"read:buckets/{bucket.id}", "read:devices"]
    )
    assert secret.startswith("mtk_") and not info.all_access and info.active
    principal = registry.authenticate("token", secret)
    assert (principal.kind, principal.id, principal.org_id) == ("token", info.id, bucket.org_id)
    assert principal.allows("read", "buckets", bucket.id)
    assert not principal.allows("read", "buckets", "another")
    assert not principal.allows("write", "buckets", bucket.id)
    assert principal.allows("read", "devices") and not principal.allows("read", "tokens")
    assert events(registry, operator.org_id)[-1] == ("token.create", f"token:{info.id}")


def test_nobody_grants_more_than_they_hold(registry: Registry, operator: Principal) -> None:
    add_user(registry, operator, "admin@example.com", "admin")
    add_user(registry, operator, "owner@example.com", "owner")
    admin = sign_in(registry, "admin@example.com")
    owner = sign_in(registry, "owner@example.com")
    before = snapshot(registry)
    with pytest.raises(Forbidden):
        registry.tokens.create(admin, actor(admin), "", ["write:orgs"])
    with pytest.raises(Forbidden):  # only all-access principals make all-access tokens
        registry.tokens.create(admin, actor(admin), "", None)
    assert snapshot(registry) == before
    made, _ = registry.tokens.create(admin, actor(admin), "", ["read:users", "write:devices"])
    assert [str(p) for p in made.permissions] == ["read:users", "write:devices"]
    assert made.created_by == f"user:{admin.id}"
    everything, _ = registry.tokens.create(owner, actor(owner), "", None)
    assert everything.all_access

    _, narrow = registry.tokens.create(owner, actor(owner), "", ["read:buckets/b1"])
    holder = registry.authenticate("token", narrow)
    with pytest.raises(Forbidden):
        registry.tokens.create(holder, actor(holder), "", ["read:buckets"])
    with pytest.raises(Forbidden):
        registry.tokens.create(holder, actor(holder), "", None)
    same, _ = registry.tokens.create(holder, actor(holder), "", ["read:buckets/b1"])
    assert same.permissions == (Permission("read", "buckets/b1"),)


def test_inactive_expired_or_deleted_tokens_stop_at_once(
    registry: Registry,
    operator: Principal,
    monkeypatch: pytest.MonkeyPatch,
    reopen: Callable[..., Registry],
) -> None:
    org, by = operator.org_id, actor(operator)
    info, secret = registry.tokens.create(operator, by, "ci", ["read:buckets"])
    registry.authenticate("token", secret)  # cached
    registry.tokens.update(operator, info.id, by, None, active=False)
    with pytest.raises(Unauthorized):
        registry.authenticate("token", secret)
    registry.tokens.update(operator, info.id, by, None, active=True)
    assert registry.authenticate("token", secret).id == info.id
    registry.tokens.delete(operator, info.id, by)
    with pytest.raises(Unauthorized):
        registry.authenticate("token", secret)
    with pytest.raises(NotFound):
        registry.tokens.get(org, info.id)

    short, short_secret = registry.tokens.create(operator, by, "", ["read:buckets"], 3600)
    assert short.expires_ns is not None
    registry.authenticate("token", short_secret)  # cached
    later = short.expires_ns + 1
    monkeypatch.setattr(tokens_module, "now_ns", lambda: later)
    monkeypatch.setattr(tokens_module, "time", SimpleNamespace(time_ns=lambda: later))
    with pytest.raises(Unauthorized):
        registry.authenticate("token", short_secret)
    with pytest.raises(Unauthorized):  # and in a process that never saw it
        reopen().authenticate("token", short_secret)
    assert [a for a, _ in events(registry, org) if a.startswith("token.")] == [
        "token.create",
        "token.update",
        "token.update",
        "token.delete",
        "token.create",
    ]


def test_token_use_is_recorded(
    registry: Registry, operator: Principal, reopen: Callable[..., Registry]
) -> None:
    info, secret = registry.tokens.create(operator, actor(operator), "", ["read:buckets"])
    assert info.last_used_ns is None
    before = time.time_ns()
    registry.authenticate("token", secret)
    used = registry.tokens.get(operator.org_id, info.id).last_used_ns
    assert used is not None and used >= before
    assert reopen().tokens.get(operator.org_id, info.id).last_used_ns == used


# -- secrets ---------------------------------------------------------------------------------


def test_secret_values_are_stored_sealed_and_never_listed(
    registry: Registry, operator: Principal
) -> None:
    org, by = operator.org_id, actor(operator)
    registry.secrets.put(org, by, {"slack": "https://hooks.example/abc", "smtp": "hunter22"})
    listed = registry.secrets.list(org)
    assert [s.key for s in listed] == ["slack", "smtp"]
    assert {f for s in listed for f in vars(s)} == {"key", "created_ns", "updated_ns"}
    assert registry.secrets.value(org, "smtp") == "hunter22"
    registry.secrets.put(org, by, {"smtp": "hunter23"})
    assert registry.secrets.value(org, "smtp") == "hunter23"
    with registry.engine.connect() as conn:
        stored = conn.execute(sa.select(secrets_table)).all()
    assert len(stored) == 2
    for row in stored:
        sealed = bytes(row.nonce) + bytes(row.ciphertext)
        assert b"hunter" not in sealed and b"hooks.example" not in sealed
    before = snapshot(registry)
    with pytest.raises(Invalid):  # all or none
        registry.secrets.put(org, by, {"ok": "value", "": "no key"})
    assert snapshot(registry) == before
    registry.secrets.delete(org, "smtp", by)
    with pytest.raises(NotFound):
        registry.secrets.value(org, "smtp")
    assert [a for a, _ in events(registry, org) if a.startswith("secret.")] == [
        "secret.put",
        "secret.put",
        "secret.put",
        "secret.delete",
    ]


def test_secrets_open_only_with_the_master_key_under_their_own_org_and_key(
    registry: Registry, operator: Principal, reopen: Callable[..., Registry]
) -> None:
    org = operator.org_id
    registry.secrets.put(org, actor(operator), {"slack": "https://hooks.example/abc"})
    assert reopen().secrets.value(org, "slack") == "https://hooks.example/abc"
    with pytest.raises(Invalid):
        reopen(OTHER_KEY).secrets.value(org, "slack")
    acme, _, _ = registry.users.create_org(
        operator, actor(operator), "acme", OwnerSpec("o@acme.io")
    )
    with registry.engine.begin() as conn:
        row = conn.execute(sa.select(secrets_table)).one()
        for org_id, key in ((org, "copied"), (acme.id, "slack")):
            copy = {**row._asdict(), "org_id": org_id, "key": key}
            conn.execute(secrets_table.insert().values(**copy))
    with pytest.raises(Invalid):
        registry.secrets.value(org, "copied")
    with pytest.raises(Invalid):
        registry.secrets.value(acme.id, "slack")


# -- audit -----------------------------------------------------------------------------------


class AuditDown(Exception):
    pass


def test_changes_and_their_audit_events_commit_together(
    registry: Registry, operator: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If anything fails once the event is written, neither the change nor the event stays."""
    org, by = operator.org_id, actor(operator)
    bucket = registry.find_bucket(org, "telemetry")
    add_user(registry, operator, "viewer@example.com", "viewer")
    viewer = next(u for u in registry.users.members(org) if u.role == "viewer")
    registry.devices.create(org, by, DeviceSpec("gh-1"))
    registry.devices.create_channel(org, by, "alarms", "", {}, None)
    token, _ = registry.tokens.create(operator, by, "", ["read:buckets"])
    registry.secrets.put(org, by, {"smtp": "hunter22"})
    real_audit = common_module.audit

    def audit_then_fail(conn: sa.Connection, *args: Any, **kwargs: Any) -> None:
        real_audit(conn, *args, **kwargs)
        raise AuditDown

    for module in (
        users_module,
        sessions_module,
        devices_module,
        tokens_module,
        secrets_module,
        service_module,
    ):
        monkeypatch.setattr(module, "audit", audit_then_fail)
    changes: list[Callable[[], object]] = [
        lambda: registry.users.create_org(operator, by, "acme", OwnerSpec("o@acme.io")),
        lambda: add_user(registry, operator, "new@example.com", "viewer"),
        lambda: registry.users.update(org, viewer.id, operator, by, role="member"),
        lambda: registry.users.update(org, viewer.id, operator, by, disabled=True),
        lambda: registry.users.remove(org, viewer.id, operator, by),
        lambda: registry.users.issue_reset(org, viewer.id, operator, by),
        lambda: registry.users.change_password(viewer.id, PASSWORD, NEW_PASSWORD, by),
        lambda: registry.rename_org(org, by, "renamed"),
        lambda: registry.create_bucket(org, "more", 0, by),
        lambda: registry.delete_bucket(bucket, by),
        lambda: registry.devices.create(org, by, DeviceSpec("gh-2")),
        lambda: registry.devices.update(org, "gh-1", by, name="renamed"),
        lambda: registry.devices.rotate_key(org, "gh-1", by),
        lambda: registry.devices.delete(org, "gh-1", by),
        lambda: registry.devices.create_channel(org, by, "more", "", {}, None),
        lambda: registry.devices.connect(org, "alarms", "gh-1", by),
        lambda: registry.devices.delete_channel(org, "alarms", by),
        lambda: registry.tokens.create(operator, by, "", ["read:buckets"]),
        lambda: registry.tokens.update(operator, token.id, by, "renamed", None),
        lambda: registry.tokens.delete(operator, token.id, by),
        lambda: registry.secrets.put(org, by, {"smtp": "changed", "new": "value"}),
        lambda: registry.secrets.delete(org, "smtp", by),
        lambda: registry.sessions.password_grant("viewer@example.com", PASSWORD, "", "", REMOTE),
    ]
    before = snapshot(registry)
    for change in changes:
        with pytest.raises(AuditDown):
            change()
        assert snapshot(registry) == before


def test_every_change_is_audited_and_failed_changes_are_not(
    registry: Registry, operator: Principal
) -> None:
    org, by = operator.org_id, actor(operator)
    viewer = add_user(registry, operator, "viewer@example.com", "viewer")
    registry.create_bucket(org, "more", 3600, by)
    registry.devices.create(org, by, DeviceSpec("gh-1"))
    registry.devices.create_channel(org, by, "alarms", "", {}, None)
    registry.devices.connect(org, "alarms", "gh-1", by)
    token, _ = registry.tokens.create(operator, by, "", ["read:buckets"])
    registry.secrets.put(org, by, {"smtp": "hunter22"})
    registry.rename_org(org, by, "renamed")
    registry.users.remove(org, viewer.id, operator, by)
    done = events(registry, org)
    assert [a for a, _ in done] == [
        "org.create",
        "user.create",
        "member.add",
        "bucket.create",
        "device.create",
        "channel.create",
        "channel.connect",
        "token.create",
        "secret.put",
        "org.rename",
        "member.remove",
        "user.delete",
    ]
    last = registry.audit_events(org, limit=1)[0]
    assert (last.actor, last.remote, last.outcome) == (operator.actor, REMOTE, "success")
    assert last.details["email"] == "viewer@example.com"
    assert done[7] == ("token.create", f"token:{token.id}")

    failing: list[Callable[[], object]] = [
        lambda: registry.create_bucket(org, "more", 0, by),
        lambda: registry.devices.create(org, by, DeviceSpec("gh-1")),
        lambda: registry.devices.create_channel(org, by, "alarms", "", {}, None),
        lambda: registry.devices.disconnect(org, "alarms", "ghost", by),
        lambda: registry.tokens.delete(operator, "ghost", by),
        lambda: registry.secrets.delete(org, "ghost", by),
        lambda: registry.users.create_org(operator, by, "renamed", OwnerSpec("o@x.io")),
    ]
    for change in failing:
        with pytest.raises((Conflict, NotFound)):
            change()
    assert events(registry, org) == done
