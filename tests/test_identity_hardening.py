"""Regressions from the security review of the identity layer: each test is an attack that
worked once and must keep failing."""

from __future__ import annotations

import threading
from pathlib import Path

from starlette.testclient import TestClient

from tests.conftest import TOKEN
from tests.test_identity_api import JSON, PASSWORD, SEED_000, app_client, make_org, sign_in

__all__ = ["app_client"]  # the fixture, imported for pytest


def test_an_account_another_org_set_up_cannot_join_by_itself(app_client: TestClient) -> None:
    c = app_client
    a, b = make_org(c, "acme"), make_org(c, "beta")
    # acme's admin claims an email of beta's domain and knows its password
    made = c.post(
        "/api/v1/users",
        json={"email": "cfo@beta.io", "role": "viewer", "password": "attacker-knows"},
        headers={"Authorization": a["admin"]},
    )
    assert made.status_code == 201
    invite = c.post(
        "/api/v1/users",
        json={"email": "cfo@beta.io", "role": "admin"},
        headers={"Authorization": b["owner"]},
    ).json()
    attacker = {"Authorization": sign_in(c, "cfo@beta.io", "attacker-knows")}
    r = c.post(f"/api/v1/me/invitations/{invite['id']}", json={}, headers=attacker)
    assert r.status_code == 403  # the code went to the real person, not to the account
    assert c.get("/api/v1/secrets?org=beta", headers=attacker).status_code == 403


def test_reset_tokens_die_when_the_account_joins_another_org(app_client: TestClient) -> None:
    c = app_client
    a, b = make_org(c, "acme"), make_org(c, "beta")
    viewer = next(
        u
        for u in c.get("/api/v1/users", headers={"Authorization": a["owner"]}).json()["users"]
        if u["email"] == "viewer@acme.io"
    )
    reset = c.post(
        f"/api/v1/users/{viewer['id']}/password-reset", headers={"Authorization": a["admin"]}
    ).json()["resetToken"]
    invite = c.post(
        "/api/v1/users",
        json={"email": "viewer@acme.io", "role": "admin"},
        headers={"Authorization": b["owner"]},
    ).json()
    joined = c.post(
        f"/api/v1/me/invitations/{invite['id']}",
        json={"code": invite["code"]},
        headers={"Authorization": a["viewer"]},
    )
    assert joined.status_code == 204
    used = c.post("/api/v1/password", json={"resetToken": reset, "password": "attacker-pass"})
    assert used.status_code == 400
    sign_in(c, "viewer@acme.io")  # the password is still the holder's


def test_nobody_makes_roles_above_what_they_hold(app_client: TestClient) -> None:
    c = app_client
    a = make_org(c, "acme")
    token = c.post(
        "/api/v1/tokens",
        json={"permissions": ["write:users"]},
        headers={"Authorization": a["admin"]},
    ).json()["token"]
    scoped = {"Authorization": f"Token {token}"}
    for role in ("admin", "member", "viewer"):
        r = c.post(
            "/api/v1/users",
            json={"email": f"new-{role}@acme.io", "role": role, "password": PASSWORD},
            headers=scoped,
        )
        assert r.status_code == 403, (role, r.text)


def test_tokens_stop_with_their_makers_membership_and_never_outlive_their_maker(
    app_client: TestClient,
) -> None:
    c = app_client
    a = make_org(c, "acme")
    owner, admin = {"Authorization": a["owner"]}, {"Authorization": a["admin"]}
    made = c.post("/api/v1/tokens", json={"permissions": ["read:secrets"]}, headers=admin).json()
    held = {"Authorization": f"Token {made['token']}"}
    assert c.get("/api/v1/secrets", headers=held).status_code == 200
    users = c.get("/api/v1/users", headers=owner).json()["users"]
    admin_id = next(u["id"] for u in users if u["email"] == "admin@acme.io")
    assert (
        c.patch(f"/api/v1/users/{admin_id}", json={"role": "viewer"}, headers=owner).status_code
        == 200
    )
    assert c.get("/api/v1/secrets", headers=held).status_code == 401
    short = c.post(
        "/api/v1/tokens",
        json={"permissions": ["read:devices", "write:tokens"], "expiresIn": "1h"},
        headers=owner,
    ).json()
    child = c.post(
        "/api/v1/tokens",
        json={"permissions": ["read:devices"]},
        headers={"Authorization": f"Token {short['token']}"},
    ).json()
    assert child["expiresAt"] == short["expiresAt"]


def test_admins_cannot_touch_all_access_or_operator_tokens(app_client: TestClient) -> None:
    c = app_client
    admin_email = "admin@main.io"
    made = c.post(
        "/api/v1/users", json={"email": admin_email, "role": "admin", "password": PASSWORD}
    )
    assert made.status_code == 201
    admin = {"Authorization": sign_in(c, admin_email)}
    for t in c.get("/api/v1/tokens").json()["tokens"]:
        if t["permissions"] == ["all"]:
            assert c.delete(f"/api/v1/tokens/{t['id']}", headers=admin).status_code == 403
            off = c.patch(f"/api/v1/tokens/{t['id']}", json={"status": "inactive"}, headers=admin)
            assert off.status_code == 403
    assert c.get("/api/v1/me").status_code == 200  # the operator token still works


def test_concurrent_guesses_do_not_slip_past_the_throttle(app_client: TestClient) -> None:
    c = app_client
    make_org(c, "acme")
    registry = c.app.state.registry  # type: ignore[attr-defined]
    outcomes: list[str] = []

    def guess(i: int) -> None:
        try:
            registry.sessions.password_grant(
                "viewer@acme.io", f"guess-{i}", None, "", f"10.0.0.{i}"
            )
        except Exception as exc:
            outcomes.append(getattr(exc, "error", type(exc).__name__))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("invalid_grant") == 5 and outcomes.count("slow_down") == 11


def test_a_refresh_token_presented_twice_at_once_ends_the_session(app_client: TestClient) -> None:
    c = app_client
    make_org(c, "acme")
    form = {"grant_type": "password", "username": "viewer@acme.io", "password": PASSWORD}
    grant = c.post("/oauth/token", data=form).json()
    sessions = c.app.state.registry.sessions  # type: ignore[attr-defined]
    results: list[object] = []
    barrier = threading.Barrier(2)

    def refresh() -> None:
        barrier.wait()
        try:
            results.append(sessions.refresh_grant(grant["refresh_token"], None))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) <= 1
    for pair in winners:  # whoever won holds a revoked session: both copies are dead
        again = c.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": pair.refresh_token},  # type: ignore[attr-defined]
        )
        assert again.status_code == 400


def test_extreme_values_are_4xx_not_5xx(app_client: TestClient) -> None:
    c = app_client
    long = c.post("/api/v1/tokens", json={"permissions": ["read:devices"], "expiresIn": "15000w"})
    assert long.status_code == 201
    assert c.get("/api/v1/audit", params={"before": 2**63}).status_code == 400


def test_deviceinfo_needs_write_on_devices(app_client: TestClient) -> None:
    c = app_client
    bucket = c.get("/api/v1/buckets").json()["buckets"][0]["id"]
    token = c.post("/api/v1/tokens", json={"permissions": [f"write:buckets/{bucket}"]}).json()
    scoped = {**JSON, "Authorization": f"Token {token['token']}"}
    r = c.post("/api/v1/devices/d1/telemetry", content=SEED_000, headers=scoped)
    assert r.status_code == 403 and "write:devices" in r.json()["message"]
    plain = b'{"tsdata": [{"timestamp": 1582046738255, "t": 1.0}]}'
    assert c.post("/api/v1/devices/d1/telemetry", content=plain, headers=scoped).status_code == 204
    assert c.get("/api/v1/devices/d1").status_code == 404  # data only: no record made


def test_password_change_guesses_are_throttled_and_audited(app_client: TestClient) -> None:
    c = app_client
    a = make_org(c, "acme")
    viewer = {"Authorization": a["viewer"]}
    body = {"currentPassword": "guess-guess", "password": "new password 1"}
    codes = [c.put("/api/v1/me/password", json=body, headers=viewer).status_code for _ in range(7)]
    assert codes == [400] * 5 + [429] * 2
    events = c.get("/api/v1/audit", headers={"Authorization": a["owner"]}).json()["events"]
    failed = [e for e in events if e["action"] == "user.password_change"]
    assert len(failed) == 5 and all(e["outcome"] == "failure" for e in failed)


def test_a_short_master_key_file_is_refused(tmp_path: Path) -> None:
    from motes.registry.crypto import load_master_key
    from motes.registry.models import Invalid

    path = tmp_path / "secret-key"
    path.write_text("AAAA\n")
    try:
        load_master_key(None, path)
    except Invalid as exc:
        assert "32 random bytes" in exc.message
    else:
        raise AssertionError("a 3-byte key was accepted")
    assert TOKEN  # the operator token of the fixtures is unaffected


def test_a_key_revoked_in_one_process_stops_in_another_within_seconds(tmp_path: Path) -> None:
    import time

    from motes.registry.common import EPOCH_CHECK_SECONDS, SYSTEM
    from motes.registry.devices import DeviceSpec
    from motes.registry.models import Unauthorized
    from motes.registry.service import Registry

    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    one, two = Registry.open(url), Registry.open(url)  # two server processes, one registry
    try:
        one.bootstrap("main", "telemetry", TOKEN)
        org = one.org_by_name("main").id
        _, key = one.devices.create(org, SYSTEM, DeviceSpec("sample"))
        assert two.authenticate("thing", key).id == "sample"  # verified and cached in "two"
        one.devices.revoke_key(org, "sample", SYSTEM)
        started = time.monotonic()
        while True:
            try:
                two.authenticate("thing", key)
            except Unauthorized:
                break
            assert time.monotonic() - started < EPOCH_CHECK_SECONDS + 1, "still accepted"
            time.sleep(0.05)
    finally:
        one.close()
        two.close()


def test_a_bucket_deleted_in_one_process_is_gone_in_another_within_seconds(
    tmp_path: Path,
) -> None:
    import time

    import pytest

    from motes.registry.common import EPOCH_CHECK_SECONDS
    from motes.registry.models import NotFound
    from motes.registry.service import Registry

    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    one, two = Registry.open(url), Registry.open(url)
    try:
        one.bootstrap("main", "telemetry", TOKEN)
        org = one.org_by_name("main").id
        doomed = one.create_bucket(org, "doomed", 0)
        assert two.find_bucket(org, "doomed").id == doomed.id  # cached in "two"
        one.delete_bucket(doomed)
        time.sleep(EPOCH_CHECK_SECONDS + 0.1)
        two.authenticate("token", TOKEN)  # every request authenticates first: the epoch check
        with pytest.raises(NotFound):
            two.find_bucket(org, "doomed")
    finally:
        one.close()
        two.close()
