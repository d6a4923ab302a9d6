"""The identity API as its users meet it: OAuth2 sign-in, roles, devices and keys, channels,
tokens, secrets, audit — and clear 4xx answers with nothing half-created."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from motes.app import create_app
from motes.settings import Settings
from tests.conftest import AUTH, TOKEN, free_port, start_server

PASSWORD = "correct horse battery"
SEED_000 = b'{"deviceinfo": {"fw": "1.2"}, "tsdata": [{"timestamp": 1582046738255, "t": 21.5}]}'
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", init_token=TOKEN, http_port=free_port())
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


def sign_in(client: TestClient | httpx.Client, email: str, password: str = PASSWORD) -> str:
    r = client.post(
        "/oauth/token", data={"grant_type": "password", "username": email, "password": password}
    )
    assert r.status_code == 200, r.text
    return f"Bearer {r.json()['access_token']}"


def make_org(client: TestClient, name: str) -> dict[str, str]:
    """An org whose owner signs in; members of every other role too. Returns auth headers."""
    r = client.post(
        "/api/v1/orgs",
        json={"name": name, "owner": {"email": f"owner@{name}.io", "password": PASSWORD}},
    )
    assert r.status_code == 201, r.text
    owner = sign_in(client, f"owner@{name}.io")
    roles = {"owner": owner}
    for role in ("admin", "member", "viewer"):
        email = f"{role}@{name}.io"
        made = client.post(
            "/api/v1/users",
            json={"email": email, "role": role, "password": PASSWORD},
            headers={"Authorization": owner},
        )
        assert made.status_code == 201, made.text
        roles[role] = sign_in(client, email)
    return roles


# -- OAuth2 with a real server and a standard client -----------------------------------------


@pytest.mark.slow
def test_oauth_password_refresh_rotation_and_revocation(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path / "data",
        env={"MOTES_INIT_ADMIN_EMAIL": "ops@example.com", "MOTES_INIT_ADMIN_PASSWORD": PASSWORD},
    )
    try:
        with httpx.Client(base_url=srv.url) as http:
            # seed 003's device: a hand-built form body and Basic client credentials
            form = f"grant_type=password&scope=trust&password={PASSWORD}&username=ops@example.com"
            basic = base64.b64encode(b"web:secret").decode()
            r = http.post(
                "/oauth/token",
                content=form.replace(" ", "+"),
                headers={
                    "Authorization": f"Basic {basic}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
            assert r.status_code == 200, r.text
            assert r.headers["cache-control"] == "no-store"
            grant = r.json()
            assert grant["token_type"] == "Bearer" and grant["expires_in"] == 900
            assert grant["scope"] == ""  # roles, not requested scopes, decide (RFC 6749 3.3)
            bearer = {"Authorization": f"Bearer {grant['access_token']}"}
            me = http.get("/api/v1/me", headers=bearer).json()
            assert me["email"] == "ops@example.com" and me["role"] == "owner"

            # rotation: each refresh answers a new refresh token and retires the old one
            r = http.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]},
            )
            assert r.status_code == 200, r.text
            second = r.json()
            assert second["refresh_token"] != grant["refresh_token"]
            fresh = {"Authorization": f"Bearer {second['access_token']}"}
            assert http.get("/api/v1/me", headers=fresh).status_code == 200

            # the retired token comes back (a stolen copy): the whole session ends
            r = http.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": grant["refresh_token"]},
            )
            assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
            assert http.get("/api/v1/me", headers=fresh).status_code == 401
            r = http.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"]},
            )
            assert r.status_code == 400

            # logout and RFC 7009 revocation end their sessions at once
            a = sign_in(http, "ops@example.com")
            assert http.post("/api/v1/logout", headers={"Authorization": a}).status_code == 204
            assert http.get("/api/v1/me", headers={"Authorization": a}).status_code == 401
            r = http.post(
                "/oauth/token",
                data={
                    "grant_type": "password",
                    "username": "ops@example.com",
                    "password": PASSWORD,
                },
            ).json()
            revoked = http.post("/oauth/revoke", data={"token": r["refresh_token"]})
            assert revoked.status_code == 200
            header = {"Authorization": f"Bearer {r['access_token']}"}
            assert http.get("/api/v1/me", headers=header).status_code == 401
            refreshed = http.post(
                "/oauth/token",
                data={"grant_type": "refresh_token", "refresh_token": r["refresh_token"]},
            )
            assert refreshed.status_code == 400
    finally:
        srv.stop()
    assert "correct horse" not in srv.log.read_text()  # no secret is ever logged


def test_oauth_errors_follow_rfc_6749(app_client: TestClient) -> None:
    c = app_client
    make_org(c, "acme")

    def token(**form: str) -> httpx.Response:
        return c.post("/oauth/token", data=form)

    assert token(grant_type="client_credentials").json()["error"] == "unsupported_grant_type"
    assert token().json()["error"] == "invalid_request"
    assert token(grant_type="password", username="owner@acme.io").json()["error"] == (
        "invalid_request"
    )
    wrong = token(grant_type="password", username="owner@acme.io", password="nope-nope")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    unknown = token(grant_type="password", username="nobody@acme.io", password="nope-nope")
    assert unknown.json() == wrong.json()  # no hint whether the account exists
    as_json = c.post("/oauth/token", json={"grant_type": "password"})
    assert as_json.status_code == 400 and "x-www-form-urlencoded" in as_json.text


def test_failed_sign_ins_are_throttled_and_audited(app_client: TestClient) -> None:
    c = app_client
    make_org(c, "acme")
    for _ in range(5):
        r = c.post(
            "/oauth/token",
            data={"grant_type": "password", "username": "viewer@acme.io", "password": "guess-it"},
        )
        assert r.status_code == 400
    # the sixth try is refused before the password is looked at, even a right one
    r = c.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "viewer@acme.io", "password": PASSWORD},
    )
    assert r.status_code == 429 and r.json()["error"] == "slow_down"
    assert int(r.headers["retry-after"]) > 0
    owner = sign_in(c, "owner@acme.io")  # other accounts are unaffected
    events = c.get("/api/v1/audit", headers={"Authorization": owner}).json()["events"]
    failed = [e for e in events if e["action"] == "auth.login" and e["outcome"] == "failure"]
    assert len(failed) == 5 and failed[0]["details"]["email"] == "viewer@acme.io"
    assert all("guess" not in orjson.dumps(e).decode() for e in events)


def test_password_change_and_reset_end_sessions(app_client: TestClient) -> None:
    c = app_client
    roles = make_org(c, "acme")
    viewer = {"Authorization": roles["viewer"]}
    r = c.put(
        "/api/v1/me/password",
        json={"currentPassword": "wrong-one", "password": "new password 1"},
        headers=viewer,
    )
    assert r.status_code == 400 and "current password" in r.json()["message"]
    r = c.put(
        "/api/v1/me/password",
        json={"currentPassword": PASSWORD, "password": "new password 1"},
        headers=viewer,
    )
    assert r.status_code == 204
    assert c.get("/api/v1/me", headers=viewer).status_code == 401
    again = {"Authorization": sign_in(c, "viewer@acme.io", "new password 1")}

    owner = {"Authorization": roles["owner"]}
    users = c.get("/api/v1/users", headers=owner).json()["users"]
    viewer_id = next(u["id"] for u in users if u["email"] == "viewer@acme.io")
    reset = c.post(f"/api/v1/users/{viewer_id}/password-reset", headers=owner)
    assert reset.status_code == 201
    code = reset.json()["resetToken"]
    done = c.post("/api/v1/password", json={"resetToken": code, "password": "third password"})
    assert done.status_code == 204
    assert c.get("/api/v1/me", headers=again).status_code == 401
    reused = c.post("/api/v1/password", json={"resetToken": code, "password": "fourth password"})
    assert reused.status_code == 400  # one time only
    sign_in(c, "viewer@acme.io", "third password")


# -- roles -------------------------------------------------------------------------------------


def test_roles_bound_what_members_may_do(app_client: TestClient) -> None:
    c = app_client
    roles = make_org(c, "acme")
    h = {role: {"Authorization": value} for role, value in roles.items()}
    # viewers read, never write
    assert c.get("/api/v1/devices", headers=h["viewer"]).status_code == 200
    assert c.post("/api/v1/devices", json={"id": "d1"}, headers=h["viewer"]).status_code == 403
    assert c.post("/api/v1/buckets", json={"name": "b"}, headers=h["viewer"]).status_code == 403
    # members manage devices and data, not people, tokens or secrets
    assert c.post("/api/v1/devices", json={"id": "d1"}, headers=h["member"]).status_code == 201
    new_user = {"email": "x@acme.io", "role": "viewer"}
    assert c.post("/api/v1/users", json=new_user, headers=h["member"]).status_code == 403
    assert c.get("/api/v1/tokens", headers=h["member"]).status_code == 403
    assert c.get("/api/v1/secrets", headers=h["member"]).status_code == 403
    assert c.get("/api/v1/audit", headers=h["member"]).status_code == 403
    # admins manage members but cannot make owners; owners can
    owner_user = {"email": "y@acme.io", "role": "owner"}
    assert c.post("/api/v1/users", json=owner_user, headers=h["admin"]).status_code == 403
    assert c.post("/api/v1/users", json=owner_user, headers=h["owner"]).status_code == 201
    # nobody hands out more than they hold
    grant = {"permissions": ["write:users"]}
    assert c.post("/api/v1/tokens", json=grant, headers=h["admin"]).status_code == 201
    assert c.post("/api/v1/tokens", json={}, headers=h["admin"]).status_code == 403  # all access
    assert (
        c.post(
            "/api/v1/tokens", json={"permissions": ["write:orgs"]}, headers=h["admin"]
        ).status_code
        == 403
    )
    # the last owner stays
    users = c.get("/api/v1/users", headers=h["owner"]).json()["users"]
    ids = {u["email"]: u["id"] for u in users}
    assert c.delete(f"/api/v1/users/{ids['y@acme.io']}", headers=h["owner"]).status_code == 204
    demote = c.patch(
        f"/api/v1/users/{ids['owner@acme.io']}", json={"role": "admin"}, headers=h["owner"]
    )
    assert demote.status_code == 409 and "owner" in demote.json()["message"]


# -- devices and keys --------------------------------------------------------------------------


def test_device_keys_write_only_their_own_telemetry_and_stop_at_once(
    app_client: TestClient,
) -> None:
    c = app_client
    made = c.post(
        "/api/v1/devices",
        json={"id": "sample", "name": "Greenhouse", "tags": ["north"], "metadata": {"floor": 2}},
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("mdk_") and made.json()["keyPrefix"] == key[:12]
    assert "key" not in c.get("/api/v1/devices/sample").json()  # shown once
    for scheme in ("Thing", "Device", "Token", "Bearer"):
        r = c.post(
            "/api/v1/devices/sample/telemetry",
            content=SEED_000,
            headers={**JSON, "Authorization": f"{scheme} {key}"},
        )
        assert r.status_code == 204, (scheme, r.text)
    device = {**JSON, "Authorization": f"Thing {key}"}
    other = c.post("/api/v1/devices/other/telemetry", content=SEED_000, headers=device)
    assert other.status_code == 403 and "own telemetry" in other.json()["message"]
    lp = c.post("/api/v2/write?bucket=telemetry", content=b"m f=1", headers=device)
    assert lp.status_code == 403
    assert c.get("/api/v1/devices", headers=device).status_code == 403
    record = c.get("/api/v1/devices/sample", headers=device).json()
    assert record["attributes"] == {"fw": "1.2"} and record["latest"]["t"]["value"] == 21.5

    rotated = c.post("/api/v1/devices/sample/key")
    assert rotated.status_code == 201
    r = c.post("/api/v1/devices/sample/telemetry", content=SEED_000, headers=device)
    assert r.status_code == 401  # the old key stopped at once
    fresh = {**JSON, "Authorization": f"Thing {rotated.json()['key']}"}
    assert (
        c.post("/api/v1/devices/sample/telemetry", content=SEED_000, headers=fresh).status_code
        == 204
    )
    assert c.patch("/api/v1/devices/sample", json={"disabled": True}).status_code == 200
    assert (
        c.post("/api/v1/devices/sample/telemetry", content=SEED_000, headers=fresh).status_code
        == 401
    )
    assert c.patch("/api/v1/devices/sample", json={"disabled": False}).status_code == 200
    assert c.delete("/api/v1/devices/sample/key").status_code == 204
    assert (
        c.post("/api/v1/devices/sample/telemetry", content=SEED_000, headers=fresh).status_code
        == 401
    )
    assert c.get("/api/v1/devices/sample").json()["keyPrefix"] is None


def test_unprovisioned_devices_register_themselves_by_sending_data(app_client: TestClient) -> None:
    c = app_client
    assert (
        c.post("/api/v1/devices/auto-1/telemetry", content=SEED_000, headers=JSON).status_code
        == 204
    )
    record = c.get("/api/v1/devices/auto-1").json()
    assert record["keyPrefix"] is None and record["attributes"] == {"fw": "1.2"}
    assert record["lastSeen"] is not None
    # provisioning it later gives it a key, keeping its record
    made = c.post("/api/v1/devices", json={"id": "auto-1", "name": "now known"})
    assert made.status_code == 201 and made.json()["attributes"] == {"fw": "1.2"}
    assert c.post("/api/v1/devices", json={"id": "auto-1"}).status_code == 409


def test_device_search_and_pagination(app_client: TestClient) -> None:
    c = app_client
    for i in range(12):
        body = {
            "id": f"sensor-{i:02d}",
            "name": f"Room {i}",
            "tags": ["even"] if i % 2 == 0 else ["odd"],
            "metadata": {"floor": i % 3},
        }
        assert c.post("/api/v1/devices", json=body).status_code == 201
    page = c.get("/api/v1/devices", params={"tag": "even", "limit": 4, "offset": 4}).json()
    assert page["total"] == 6 and [d["id"] for d in page["devices"]] == ["sensor-08", "sensor-10"]
    found = c.get("/api/v1/devices", params={"search": "ROOM 1", "meta.floor": "1"}).json()
    assert [d["id"] for d in found["devices"]] == ["sensor-01", "sensor-10"]
    bad = c.get("/api/v1/devices", params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "limit"


def test_bulk_provisioning_is_all_or_nothing(app_client: TestClient) -> None:
    c = app_client
    csv = b'id,name,tags,metadata\nd1,One,a;b,{"x": 1}\nd 2,Two,,\nd3,Three,,{bad json\n'
    r = c.post("/api/v1/devices/bulk", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 400
    assert [e["line"] for e in r.json()["errors"]] == [3, 4]
    assert c.get("/api/v1/devices").json()["total"] == 0  # nothing was created
    good = b'id,name,tags,metadata\nd1,One,a;b,{"x": 1}\nd2,Two,,\n'
    r = c.post("/api/v1/devices/bulk", content=good, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text
    made = r.json()["devices"]
    assert [d["id"] for d in made] == ["d1", "d2"] and made[0]["tags"] == ["a", "b"]
    assert len({d["key"] for d in made}) == 2
    dup = c.post(
        "/api/v1/devices/bulk", content=b"id\nd3\nd1\n", headers={"Content-Type": "text/csv"}
    )
    assert dup.status_code == 409
    assert c.get("/api/v1/devices").json()["total"] == 2  # d3 was not created either


# -- channels ----------------------------------------------------------------------------------


def test_only_connected_devices_publish_on_a_channel(app_client: TestClient) -> None:
    c = app_client
    keys = {d: c.post("/api/v1/devices", json={"id": d}).json()["key"] for d in ("a", "b")}
    assert c.post("/api/v1/channels", json={"id": "kitchen"}).status_code == 201
    assert c.put("/api/v1/channels/kitchen/devices/a").status_code == 204
    assert c.get("/api/v1/channels/kitchen/devices").json() == {"devices": ["a"]}
    senml = b'[{"bn": "room:", "n": "temp", "u": "Cel", "v": 21.5}]'
    r = c.post(
        "/api/v1/channels/kitchen/messages/sensors/temp",
        content=senml,
        headers={"Authorization": f"Thing {keys['a']}"},
    )
    assert r.status_code == 204, r.text
    r = c.post(
        "/api/v1/channels/kitchen/messages",
        content=senml,
        headers={"Authorization": f"Thing {keys['b']}"},
    )
    assert r.status_code == 403 and "not connected" in r.json()["message"]
    rows = c.get(
        "/api/v1/query", params={"measurement": "messages", "start": "0", "tag": "channel:kitchen"}
    ).json()["tables"]
    assert len(rows) == 1
    assert rows[0]["tags"] == {
        "channel": "kitchen",
        "device": "a",
        "publisher": "device:a",
        "subtopic": "sensors.temp",
    }
    assert c.delete("/api/v1/devices/a").status_code == 204
    assert c.get("/api/v1/channels/kitchen/devices").json() == {"devices": []}


# -- tokens, secrets, audit --------------------------------------------------------------------


def test_tokens_are_scoped_expire_and_deactivate(app_client: TestClient) -> None:
    c = app_client
    bucket = c.get("/api/v1/buckets").json()["buckets"][0]
    made = c.post(
        "/api/v1/tokens",
        json={"description": "grafana", "permissions": [f"read:buckets/{bucket['id']}"]},
    )
    assert made.status_code == 201
    info = made.json()
    scoped = {"Authorization": f"Token {info['token']}"}
    assert c.get("/api/v1/latest", headers=scoped).status_code == 200
    assert (
        c.post("/api/v2/write?bucket=telemetry", content=b"m f=1", headers=scoped).status_code
        == 403
    )
    listed = c.get("/api/v1/tokens").json()["tokens"]
    mine = next(t for t in listed if t["id"] == info["id"])
    assert "token" not in mine and mine["lastUsedAt"] is not None
    assert c.patch(f"/api/v1/tokens/{info['id']}", json={"status": "inactive"}).status_code == 200
    assert c.get("/api/v1/latest", headers=scoped).status_code == 401
    bad = c.post("/api/v1/tokens", json={"permissions": ["fly:buckets"]})
    assert bad.status_code == 400 and "invalid permission" in bad.json()["message"]
    short = c.post("/api/v1/tokens", json={"permissions": ["read:devices"], "expiresIn": 1})
    assert short.status_code == 201 and short.json()["expiresAt"] is not None
    time.sleep(1.1)
    expired = c.get("/api/v1/devices", headers={"Authorization": f"Token {short.json()['token']}"})
    assert expired.status_code == 401 and "expired" in expired.json()["message"]


def test_secret_values_are_never_returned(app_client: TestClient) -> None:
    c = app_client
    assert (
        c.patch("/api/v1/secrets", json={"webhook": "s3cr3t-value", "k2": "v2"}).status_code == 204
    )
    assert c.put("/api/v1/secrets/webhook", json={"value": "s3cr3t-value-2"}).status_code == 204
    listed = c.get("/api/v1/secrets")
    assert [s["key"] for s in listed.json()["secrets"]] == ["k2", "webhook"]
    assert "s3cr3t" not in listed.text
    audit = c.get("/api/v1/audit").text
    assert "s3cr3t" not in audit and "secret.put" in audit
    assert (
        c.app.state.registry.secrets.value(  # type: ignore[attr-defined]
            c.get("/api/v1/me").json()["org"]["id"], "webhook"
        )
        == "s3cr3t-value-2"
    )
    raw = (Path(c.app.state.settings.data_dir) / "registry.sqlite").read_bytes()  # type: ignore[attr-defined]
    assert b"s3cr3t" not in raw
    assert c.delete("/api/v1/secrets/webhook").status_code == 204
    assert c.delete("/api/v1/secrets/webhook").status_code == 404


def test_nothing_half_created_on_failure(app_client: TestClient) -> None:
    c = app_client
    r = c.post("/api/v1/orgs", json={"name": "acme", "owner": {"email": "not-an-email"}})
    assert r.status_code == 400 and "email" in r.json()["message"]
    assert (
        c.post("/api/v1/orgs", json={"name": "acme", "owner": {"email": "o@acme.io"}}).status_code
        == 201
    )  # the name was not taken by the failed attempt
    r = c.post("/api/v1/orgs", json={"name": "acme", "owner": {"email": "p@acme.io"}})
    assert r.status_code == 409
    r = c.post("/api/v1/orgs", json={"name": "bad name!", "owner": {"email": "q@acme.io"}})
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "body", "expect"),
    [
        ("post", "/api/v1/devices", {"id": ""}, "id"),
        ("post", "/api/v1/devices", {"id": "ok", "extra": 1}, "extra"),
        ("post", "/api/v1/devices", {"id": "ok", "permissions": ["write:buckets"]}, "read"),
        ("post", "/api/v1/devices", {"id": "ok", "bucket": "missing"}, "missing"),
        ("post", "/api/v1/devices", {"id": "ok", "metadata": [1]}, "metadata"),
        ("post", "/api/v1/channels", {"id": "has space"}, "channel"),
        ("post", "/api/v1/users", {"email": "a@b.c", "role": "king"}, "role"),
        (
            "post",
            "/api/v1/users",
            {"email": "a@b.c", "role": "viewer", "password": "short"},
            "password",
        ),
        ("post", "/api/v1/tokens", {"permissions": []}, "permissions"),
        (
            "post",
            "/api/v1/tokens",
            {"permissions": ["read:devices"], "expiresIn": "soon"},
            "duration",
        ),
        ("patch", "/api/v1/secrets", {"k": 1}, "k"),
        ("patch", "/api/v1/secrets", {}, "secret"),
    ],
)
def test_bad_input_gets_a_clear_400(
    app_client: TestClient, method: str, path: str, body: object, expect: str
) -> None:
    r = getattr(app_client, method)(path, json=body)
    assert r.status_code in (400, 404), r.text
    assert expect in r.text


def test_removing_a_member_from_their_last_org_deletes_the_account(app_client: TestClient) -> None:
    c = app_client
    roles = make_org(c, "acme")
    owner = {"Authorization": roles["owner"]}
    users = c.get("/api/v1/users", headers=owner).json()["users"]
    viewer_id = next(u["id"] for u in users if u["email"] == "viewer@acme.io")
    assert c.delete(f"/api/v1/users/{viewer_id}", headers=owner).status_code == 204
    assert c.get("/api/v1/me", headers={"Authorization": roles["viewer"]}).status_code == 401
    r = c.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "viewer@acme.io", "password": PASSWORD},
    )
    assert r.status_code == 400
    # the email is free again: invited anew, the person sets a fresh password
    again = c.post(
        "/api/v1/users", json={"email": "viewer@acme.io", "role": "member"}, headers=owner
    )
    assert again.status_code == 201 and again.json()["setupToken"]
    set_pw = c.post(
        "/api/v1/password",
        json={"resetToken": again.json()["setupToken"], "password": "brand new pass"},
    )
    assert set_pw.status_code == 204
    sign_in(c, "viewer@acme.io", "brand new pass")


def test_an_existing_account_is_invited_and_joins_only_by_accepting(
    app_client: TestClient,
) -> None:
    c = app_client
    acme = make_org(c, "acme")
    beta = make_org(c, "beta")
    beta_owner = {"Authorization": beta["owner"]}
    invited = c.post(
        "/api/v1/users", json={"email": "member@acme.io", "role": "viewer"}, headers=beta_owner
    )
    assert invited.status_code == 202, invited.text
    body = invited.json()
    assert set(body) == {"id", "org", "email", "role", "createdAt", "expiresAt", "code"}
    assert body["org"]["name"] == "beta"  # nothing of the account but the email asked for
    listed = c.get("/api/v1/invitations", headers=beta_owner).json()["invitations"]
    assert [i["id"] for i in listed] == [body["id"]]
    member = {"Authorization": acme["member"]}
    # not a member until accepted
    assert c.get("/api/v1/devices?org=beta", headers=member).status_code == 403
    mine = c.get("/api/v1/me/invitations", headers=member).json()["invitations"]
    assert [(i["id"], i["org"]["name"], i["role"]) for i in mine] == [
        (body["id"], "beta", "viewer")
    ]
    # accepting needs the code the inviter passes on: an account another org's admin set up
    # (and so can sign in to) cannot join by itself
    wrong = c.post(
        f"/api/v1/me/invitations/{body['id']}", json={"code": "miv_guess"}, headers=member
    )
    assert wrong.status_code == 403
    accept = {"code": body["code"]}
    ok = c.post(f"/api/v1/me/invitations/{body['id']}", json=accept, headers=member)
    assert ok.status_code == 204
    assert c.get("/api/v1/devices?org=beta", headers=member).status_code == 200
    orgs = c.get("/api/v1/orgs", headers=member).json()["orgs"]
    assert [(o["name"], o["role"]) for o in orgs] == [("acme", "member"), ("beta", "viewer")]
    # an invitation is for its account only, and used once
    again = c.post(f"/api/v1/me/invitations/{body['id']}", json=accept, headers=member)
    assert again.status_code == 404
    other = c.post(
        "/api/v1/users", json={"email": "viewer@acme.io", "role": "viewer"}, headers=beta_owner
    ).json()
    theirs = {"code": other["code"]}
    stolen = c.post(f"/api/v1/me/invitations/{other['id']}", json=theirs, headers=member)
    assert stolen.status_code == 404
    viewer = {"Authorization": acme["viewer"]}
    assert c.delete(f"/api/v1/me/invitations/{other['id']}", headers=viewer).status_code == 204
    assert c.get("/api/v1/invitations", headers=beta_owner).json()["invitations"] == []
