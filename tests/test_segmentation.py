"""Seed 002 (Plant Buddy): three ways to keep customers' data apart, end to end against a real
``motes serve`` with real clients (httpx, and influxdb-client for line protocol).

a) one bucket for everyone, a ``user`` tag on every point: the app filters per user;
b) a bucket per user, with a token per user scoped to it;
c) an org per customer: the server keeps them apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from tests.conftest import AUTH, ServerProcess, expect, start_server

pytestmark = pytest.mark.slow

PASSWORD = "plant-buddy-9"
USERS = ("alice", "bob")
PAIRS = (("alice", "bob"), ("bob", "alice"))  # (user, the other user)
#: each user's readings, distinct so a row in the wrong answer is recognisable
MOISTURE = {"alice": [31.5, 32.25, 33.0], "bob": [71.5, 72.25]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("segmentation") / "data")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def new_org(http: httpx.Client, name: str) -> tuple[str, dict[str, str]]:
    """The operator creates ``name`` with an owner, who signs in: (org id, owner's headers)."""
    owner = {"email": f"owner@{name}.example", "password": PASSWORD}
    body = {"name": name, "owner": owner}
    made = expect(http.post("/api/v1/orgs", headers=AUTH, json=body), 201)
    form = {"grant_type": "password", "username": owner["email"], "password": PASSWORD}
    signed_in = expect(http.post("/oauth/token", data={**form, "client_id": "plant-buddy-web"}))
    assert signed_in["token_type"] == "Bearer"
    return made["org"]["id"], {"Authorization": f"Bearer {signed_in['access_token']}"}


def new_token(http: httpx.Client, owner: dict[str, str], *permissions: str) -> dict[str, str]:
    body = {"description": " ".join(permissions), "permissions": list(permissions)}
    secret = expect(http.post("/api/v1/tokens", headers=owner, json=body), 201)["token"]
    return {"Authorization": f"Token {secret}"}


def new_bucket(http: httpx.Client, owner: dict[str, str], name: str) -> str:
    made = expect(http.post("/api/v1/buckets", headers=owner, json={"name": name}), 201)
    return str(made["id"])


def query(http: httpx.Client, headers: dict[str, str], bucket: str, *tags: str) -> httpx.Response:
    params = [("bucket", bucket), ("measurement", "plant"), ("start", "-1h")]
    params += [("tag", tag) for tag in tags]
    return http.get("/api/v1/query", headers=headers, params=params)


def moisture_by_user(tables: list[dict[str, Any]]) -> dict[str, list[float]]:
    """``{user tag: sorted moisture values}`` of a query answer (``"?"``: no user tag)."""
    found: dict[str, list[float]] = {}
    for table in tables:
        column = table["columns"].index("moisture")
        values = found.setdefault(table["tags"].get("user", "?"), [])
        values += [row[column] for row in table["values"]]
    return {user: sorted(values) for user, values in found.items()}


def test_one_bucket_with_a_user_tag(http: httpx.Client) -> None:
    """Plant Buddy's first design: one bucket, a ``user`` tag on each point. Motes keeps the
    bucket apart from other buckets and orgs, but *not* one user's points from another's: a
    token reads a whole bucket or nothing, so the app holds the read token and must always add
    ``tag=user:<signed-in user>`` itself — isolation here is the app's job."""
    _, owner = new_org(http, "plantbuddy-shared")
    bucket_id = new_bucket(http, owner, "plants")
    now_ms = int(time.time() * 1000)
    for user in USERS:
        device = {"id": f"{user}-fern", "bucket": "plants", "metadata": {"user": user}}
        key = expect(http.post("/api/v1/devices", headers=owner, json=device), 201)["key"]
        points = [
            {"measurement": "plant", "tags": {"user": user}, "fields": {"moisture": value}}
            | {"time": now_ms - 1000 * i}
            for i, value in enumerate(MOISTURE[user])
        ]
        thing = {"Authorization": f"Thing {key}"}
        expect(http.post(f"/api/v1/devices/{user}-fern/telemetry", headers=thing, json=points), 204)
    app = new_token(http, owner, f"read:buckets/{bucket_id}")

    for user in USERS:
        tables = expect(query(http, app, "plants", f"user:{user}"))["tables"]
        assert moisture_by_user(tables) == {user: sorted(MOISTURE[user])}
        assert {t["tags"]["device"] for t in tables} == {f"{user}-fern"}
    everyone = moisture_by_user(expect(query(http, app, "plants"))["tables"])
    assert everyone == {user: sorted(MOISTURE[user]) for user in USERS}

    # a token can't be scoped below the bucket: the token the app would hand "alice" reads
    # bob's points as soon as it asks for them ...
    alices = new_token(http, owner, f"read:buckets/{bucket_id}")
    bobs_points = expect(query(http, alices, "plants", "user:bob"))["tables"]
    assert moisture_by_user(bobs_points) == {"bob": sorted(MOISTURE["bob"])}
    # ... and a permission that tries to name a tag is no permission at all (docs/identity.md:
    # "read:<type>", optionally "/<id>" of one object), so it must be refused, not stored
    below = {"permissions": [f"read:buckets/{bucket_id}/user:alice"]}
    r = http.post("/api/v1/tokens", headers=owner, json=below)
    if r.status_code == 201:  # stored anyway: at least it reads nothing, not alice's points
        narrow = {"Authorization": f"Token {r.json()['token']}"}
        assert query(http, narrow, "plants", "user:alice").status_code == 403
    assert r.status_code == 400, r.text


def test_a_bucket_per_user(http: httpx.Client, server: ServerProcess) -> None:
    """A bucket per user and a token per user holding read and write on that bucket only."""
    org_id, owner = new_org(http, "plantbuddy-buckets")
    ids = {user: new_bucket(http, owner, f"{user}-data") for user in USERS}
    tokens = {
        user: new_token(http, owner, f"read:buckets/{ids[user]}", f"write:buckets/{ids[user]}")
        for user in USERS
    }
    now_ns = time.time_ns()
    for user, other in PAIRS:
        secret = tokens[user]["Authorization"].removeprefix("Token ")
        with InfluxDBClient(url=server.url, token=secret, org=org_id) as client:
            writer = client.write_api(write_options=SYNCHRONOUS)
            lines = [
                f"plant,sensor={user}-fern moisture={value} {now_ns - i * 10**9}"
                for i, value in enumerate(MOISTURE[user])
            ]
            writer.write(f"{user}-data", org_id, lines)
            with pytest.raises(ApiException) as refused:
                writer.write(f"{other}-data", org_id, f"plant,sensor={user}-fern moisture=0")
            assert refused.value.status == 403

    for user, other in PAIRS:
        mine = tokens[user]
        tables = expect(query(http, mine, f"{user}-data"))["tables"]
        assert moisture_by_user(tables) == {"?": sorted(MOISTURE[user])}  # no user tag here
        assert query(http, mine, f"{other}-data").status_code == 403
        assert query(http, mine, ids[other]).status_code == 403
        points = [{"measurement": "plant", "fields": {"moisture": 0}}]
        r = http.post(f"/api/v1/buckets/{ids[other]}/points", headers=mine, json=points)
        assert r.status_code == 403
        listed = expect(http.get("/api/v1/buckets", headers=mine))["buckets"]
        assert [b["name"] for b in listed] == [f"{user}-data"]
    for user in USERS:  # the other user's attempts left nothing behind
        tables = expect(query(http, owner, f"{user}-data"))["tables"]
        assert [t["tags"] for t in tables] == [{"sensor": f"{user}-fern"}]


def test_an_org_per_customer(http: httpx.Client) -> None:
    """Each customer an org of its own: its owner signs in and provisions, and the other
    customer's owner sees nothing of it, by id, by name or in a list."""
    names = ("acme-plants", "globex-gardens")
    customers = {name: provision_customer(http, name) for name in names}
    for name, other in (names, names[::-1]):
        mine, theirs = customers[name], customers[other]
        h = mine["owner"]
        assert listed(http, h, "orgs", "name") == [name]
        assert listed(http, h, "devices", "id") == [f"{name}-sensor"]
        assert listed(http, h, "devices", "id", search=other) == []
        assert listed(http, h, "tokens", "description") == [f"{name} app"]
        assert listed(http, h, "users", "id") == [mine["user"]]
        assert other not in http.get("/api/v1/audit", headers=h).text
        for path in (
            f"/api/v1/devices/{other}-sensor",
            f"/api/v1/tokens/{theirs['token']}",
            f"/api/v1/users/{theirs['user']}",
            f"/api/v1/orgs/{theirs['org']}",
            f"/api/v1/orgs/{other}",
            f"/api/v1/buckets/{theirs['bucket']}/measurements",
        ):
            r = http.get(path, headers=h)
            assert r.status_code in (403, 404), f"{path}: {r.status_code} {r.text}"
            assert f"{other} sensor" not in r.text and "42.5" not in r.text
        params = {"bucket": theirs["bucket"], "measurement": "telemetry", "start": "-1h"}
        assert http.get("/api/v1/query", headers=h, params=params).status_code == 404
        for named in ({"orgID": theirs["org"]}, {"org": other}):
            assert http.get("/api/v1/devices", headers=h, params=named).status_code == 403


def provision_customer(http: httpx.Client, name: str) -> dict[str, Any]:
    """A customer's org, its owner signed in, a device that has sent data and an app token."""
    org_id, owner = new_org(http, name)
    device = {"id": f"{name}-sensor", "name": f"{name} sensor", "tags": [name]}
    key = expect(http.post("/api/v1/devices", headers=owner, json=device), 201)["key"]
    batch = {"tsdata": [{"timestamp": int(time.time() * 1000), "moisture": 42.5}]}
    thing = {"Authorization": f"Thing {key}"}
    expect(http.post(f"/api/v1/devices/{name}-sensor/telemetry", headers=thing, json=batch), 204)
    body = {"description": f"{name} app", "permissions": ["read:buckets", "read:devices"]}
    token = expect(http.post("/api/v1/tokens", headers=owner, json=body), 201)
    buckets = expect(http.get("/api/v1/buckets", headers=owner))["buckets"]
    me = expect(http.get("/api/v1/me", headers=owner))
    return {
        "org": org_id,
        "owner": owner,
        "user": me["id"],
        "token": token["id"],
        "bucket": buckets[0]["id"],
    }


def listed(
    http: httpx.Client, h: dict[str, str], kind: str, field: str, **params: str
) -> list[str]:
    """``field`` of each item of ``GET /api/v1/<kind>``."""
    answer = expect(http.get(f"/api/v1/{kind}", headers=h, params=params))
    return [item[field] for item in answer[kind]]
