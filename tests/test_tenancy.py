"""Tenant isolation, built from the app's own route table (docs/identity.md: "nothing in one
org is visible from another — through any endpoint").

Two orgs, A and B, each with users of every role, an all-access and a scoped token, a device
with a key on a channel, a second bucket, telemetry, channel messages and a secret. Every route
of ``create_app`` is called by every credential of A, and by nobody, with B's objects in its
path parameters, with ``?orgID=``/``?org=`` naming B, and with B's buckets in the query. The
answers must be 401, 403 or 404, never 5xx, and no answer may carry anything of B; afterwards
B, read by its own owner, is exactly as it was.

The cases come from ``app.routes``: a new route is covered without touching this file, and a
new path parameter fails :func:`test_every_path_parameter_has_a_foreign_value` until someone
decides which of B's objects goes in it.

What counts as a leak: any of B's identifiers, names, keys, values or telemetry markers in an
answer's bytes (body and headers), except those the request itself carried — an error may
well say 'device "sensor-bx9k2" not found' back to whoever asked for it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from motes.app import create_app
from motes.settings import Settings
from tests.conftest import TOKEN

PASSWORD = "correct-horse-9"
ROLES = ("owner", "admin", "member", "viewer")
#: B's telemetry value: distinctive enough that finding it in an answer means a leak
B_NUMBER, A_NUMBER = 73519.8642, 11.5
NOW_MS = int(time.time() * 1000)
JSON, SENML = "application/json", "application/senml+json"
FORM = "application/x-www-form-urlencoded"

#: the routes that answer without credentials. Any other route must answer 401 to nobody,
#: so a new endpoint that forgets to authenticate fails the test
PUBLIC = {
    "/health",
    "/ping",
    "/api/v1/openapi.json",
    "/oauth/token",
    "/oauth/revoke",
    "/api/v1/password",
}
DENIED = {401, 403, 404}
#: (how the org is named, B's buckets in the query): the org not at all (the credential's
#: own), or B's by id or name; buckets none ("bare"), B's by name or by id
COMBOS = [
    ("own org", "bare"),
    ("own org", "bucket name"),
    ("own org", "bucket id"),
    ("orgID=B", "bare"),
    ("org=B", "bare"),
    ("orgID=B", "bucket id"),
    ("org=B", "bucket name"),
]


# -- the route table --------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteMethod:
    method: str
    path: str  # as routed: /api/v1/channels/{channel}/messages/{subtopic:path}
    params: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def fill(self, values: dict[str, str]) -> str:
        """The path with ``values`` in; a ``:path`` parameter keeps its slashes."""

        def value(m: re.Match[str]) -> str:
            return quote(values[m[1]], safe="/" if m[2] == ":path" else "")

        return re.sub(r"\{(\w+)(:\w+)?\}", value, self.path)


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[RouteMethod]:
    for route in routes:
        if isinstance(route, Mount):
            yield from walk(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                yield RouteMethod(method, prefix + route.path, tuple(route.param_convertors))


ROUTES = list(walk(create_app(Settings(data_dir=Path("unused"))).routes))


# -- the two orgs -----------------------------------------------------------------------------


@dataclass
class Tenant:
    """One org and everything in it; ``mark`` is part of every name given to its objects."""

    mark: str
    number: float
    org_id: str = ""
    org_name: str = ""
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> user + "jwt"
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)  # "all"/"scoped" -> token
    default_bucket_id: str = ""
    bucket_id: str = ""
    bucket_name: str = ""
    device_key: str = ""
    key_prefix: str = ""
    invitation_id: str = ""
    command_id: str = ""

    @property
    def device_id(self) -> str:
        return f"sensor-{self.mark}"

    @property
    def channel_id(self) -> str:
        return f"chan-{self.mark}"

    @property
    def measurement(self) -> str:
        return f"m-{self.mark}"

    @property
    def secret_key(self) -> str:
        return f"secret-{self.mark}"

    def owner(self) -> dict[str, str]:
        return bearer(self.users["owner"]["jwt"])

    def identifiers(self) -> dict[str, str]:
        """Everything of this org a foreigner must never see, by what it is."""
        m = self.mark
        found = {
            "org id": self.org_id,
            "org name": self.org_name,
            "default bucket id": self.default_bucket_id,
            "bucket id": self.bucket_id,
            "bucket name": self.bucket_name,
            "device id": self.device_id,
            "device name": f"Sensor {m}",
            "device metadata": f"room-{m}",
            "device tag": f"tag-{m}",
            "device key": self.device_key,
            "device key prefix": self.key_prefix,
            "device attribute": f"fw-{m}",
            "channel id": self.channel_id,
            "channel name": f"Channel {m}",
            "channel metadata": f"chanmeta-{m}",
            "secret key": self.secret_key,
            "secret value": f"secretvalue-{m}",
            "measurement": self.measurement,
            "field": f"f{m}",
            "tag key": f"k{m}",
            "tag value": f"v-{m}",
            "string value": f"note-{m}",
            "number": repr(self.number),
            "unit": f"unit-{m}",
            "message name": f"msg-{m}",
            "subtopic": f"sub-{m}",
            "invitation id": self.invitation_id,
            "command id": self.command_id,
            "command name": f"cmd-{m}",
            "command param": f"param-{m}",
            "rejection": f"refused-{m}",
        }
        for role, user in self.users.items():
            found |= {f"{role} id": user["id"], f"{role} email": user["email"]}
            found |= {f"{role} name": user["name"], f"{role} access token": user["jwt"]}
        for kind, token in self.tokens.items():
            found |= {f"{kind} token id": token["id"], f"{kind} token": token["token"]}
            found[f"{kind} token description"] = token["description"]
        return {what: value for what, value in found.items() if value}


def bearer(jwt: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt}"}


def sign_in(c: TestClient, email: str) -> str:
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    jwt: str = ok(c.post("/oauth/token", data=form))["access_token"]
    return jwt


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.text}"
    return r.json() if r.content else None


def make_tenant(c: TestClient, mark: str, number: float, sign_in_all: bool) -> Tenant:
    t = Tenant(mark, number)
    owner = {"email": f"owner@{mark}.test", "name": f"Owner {mark}", "password": PASSWORD}
    operator = {"Authorization": f"Token {TOKEN}"}
    made = ok(
        c.post("/api/v1/orgs", headers=operator, json={"name": f"org-{mark}", "owner": owner}), 201
    )
    t.org_id, t.org_name = made["org"]["id"], made["org"]["name"]
    t.users["owner"] = {**made["owner"], "jwt": sign_in(c, owner["email"])}
    h = t.owner()
    for role in ROLES[1:]:
        body = {"email": f"{role}@{mark}.test", "name": f"{role.title()} {mark}", "role": role}
        user = ok(c.post("/api/v1/users", headers=h, json={**body, "password": PASSWORD}), 201)
        t.users[role] = {**user, "jwt": sign_in(c, user["email"]) if sign_in_all else ""}
    bucket = ok(c.post("/api/v1/buckets", headers=h, json={"name": f"plants-{mark}"}), 201)
    t.bucket_id, t.bucket_name = bucket["id"], bucket["name"]
    listed = ok(c.get("/api/v1/buckets", headers=h))["buckets"]
    t.default_bucket_id = next(b["id"] for b in listed if b["name"] == "telemetry")
    channel = {"id": t.channel_id, "name": f"Channel {mark}", "bucket": t.bucket_name}
    channel["metadata"] = {"note": f"chanmeta-{mark}"}
    ok(c.post("/api/v1/channels", headers=h, json=channel), 201)
    device = {"id": t.device_id, "name": f"Sensor {mark}", "bucket": t.bucket_name}
    device |= {"metadata": {"room": f"room-{mark}"}, "tags": [f"tag-{mark}"]}
    device["permissions"] = ["read:buckets", "read:devices", "read:channels"]
    made = ok(c.post("/api/v1/devices", headers=h, json=device), 201)
    t.device_key, t.key_prefix = made["key"], made["keyPrefix"]
    ok(c.put(f"/api/v1/channels/{t.channel_id}/devices/{t.device_id}", headers=h), 204)
    command = {"name": f"cmd-{mark}", "params": {"note": f"param-{mark}"}}
    url = f"/api/v1/devices/{t.device_id}/commands"
    t.command_id = ok(c.post(url, headers=h, json=command), 201)["id"]
    scoped = [f"write:buckets/{t.bucket_id}", "write:devices", "write:channels"]
    scoped += [f"read:{kind}" for kind in ("buckets", "devices", "channels", "tokens")]
    scoped += [f"read:{kind}" for kind in ("users", "secrets", "audit", "orgs")]
    for kind, perms in (("all", {}), ("scoped", {"permissions": scoped})):
        body = {"description": f"{kind} {mark}", **perms}
        t.tokens[kind] = ok(c.post("/api/v1/tokens", headers=h, json=body), 201)
    secret = {"value": f"secretvalue-{mark}"}
    ok(c.put(f"/api/v1/secrets/{t.secret_key}", headers=h, json=secret), 204)
    # an open invitation of an account that lives in a third org
    outsider = {"email": f"outsider@{mark}.test", "password": PASSWORD}
    third = {"name": f"org-third-{mark}", "owner": outsider}
    ok(c.post("/api/v1/orgs", headers=operator, json=third), 201)
    invite = {"email": outsider["email"], "role": "viewer"}
    t.invitation_id = ok(c.post("/api/v1/users", headers=h, json=invite), 202)["id"]
    write_telemetry(c, t)
    return t


def refuse_mqtt(app: Starlette, t: Tenant) -> None:
    """A refused MQTT publish of the tenant's device, as the broker records it."""
    topic = f"devices/{t.device_id}/telemetry"
    item = (t.org_id, t.device_id, time.time_ns(), "mqtt", topic, f"refused-{t.mark}")
    app.state.registry.rejections.record([item])


def write_telemetry(c: TestClient, t: Tenant) -> None:
    """Data through every write path: the device's key, line protocol v2 and v1, a channel."""
    m, thing = t.mark, {"Authorization": f"Thing {t.device_key}"}
    token = {"Authorization": f"Token {t.tokens['all']['token']}"}
    row = {"timestamp": NOW_MS, f"f{m}": t.number, "note": f"note-{m}"}
    batch = {"deviceinfo": {"fw": f"fw-{m}"}, "tsdata": [row]}
    url = f"/api/v1/devices/{t.device_id}/telemetry?measurement={t.measurement}"
    ok(c.post(url, headers=thing, json=batch), 204)
    line = f'{t.measurement},k{m}=v-{m} f{m}={t.number},note="note-{m}" {NOW_MS}'
    url = f"/api/v2/write?bucket={t.bucket_name}&precision=ms"
    ok(c.post(url, headers=token, content=line), 204)
    ok(c.post("/write?db=telemetry&precision=ms", headers=token, content=line), 204)
    senml = orjson.dumps([{"bn": f"msg-{m}:", "n": "level", "v": t.number}])
    url = f"/api/v1/channels/{t.channel_id}/messages/sub-{m}"
    ok(c.post(url, headers={**thing, "Content-Type": SENML}, content=senml), 204)
    schema = {"fields": {f"f{m}": {"type": "float", "unit": f"unit-{m}"}}, "strict": False}
    path = f"/api/v1/buckets/{t.bucket_id}/measurements/{t.measurement}/schema"
    ok(c.put(path, headers=t.owner(), json=schema))


def snapshot(c: TestClient, app: Starlette, t: Tenant) -> dict[str, Any]:
    """All of ``t``'s state its owner can read, data included."""
    app.state.registry.devices.flush_seen()  # last-seen times as stored, not as pending
    h = t.owner()

    def get(path: str, **params: Any) -> Any:
        return ok(c.get(path, headers=h, params=params))

    events = get("/api/v1/audit", limit=1000)["events"]
    state: dict[str, Any] = {
        "me": get("/api/v1/me"),  # the owner's orgs too: A must not have added them to its own
        "org": get(f"/api/v1/orgs/{t.org_id}"),
        "users": get("/api/v1/users"),
        "buckets": get("/api/v1/buckets"),
        "devices": get("/api/v1/devices"),
        "channels": get("/api/v1/channels"),
        "tokens": get("/api/v1/tokens"),
        "secrets": get("/api/v1/secrets"),  # values are never shown: updatedAt tells
        # failed sign-ins with B's emails (A's probes of /oauth/token) are B's to see
        "audit": [e for e in events if e["action"] != "auth.login"],
    }
    for d in state["devices"]["devices"]:
        state[f"device {d['id']}"] = get(f"/api/v1/devices/{d['id']}")
        state[f"commands {d['id']}"] = get(f"/api/v1/devices/{d['id']}/commands")
        state[f"status {d['id']}"] = get(f"/api/v1/devices/{d['id']}/status-history")
        state[f"rejections {d['id']}"] = get(f"/api/v1/devices/{d['id']}/rejections")
    for ch in state["channels"]["channels"]:
        state[f"channel {ch['id']}"] = get(f"/api/v1/channels/{ch['id']}/devices")
    for b in state["buckets"]["buckets"]:
        for name in get(f"/api/v1/buckets/{b['id']}/measurements")["measurements"]:
            q = {"bucket": b["id"], "measurement": name, "start": "0", "epoch": "ns"}
            state[f"data {b['name']} {name}"] = get("/api/v1/query", **q)
    return state


@dataclass
class World:
    app: Starlette
    setup: TestClient  # sets up, signs in, checks; its address is never throttled by probes
    probe: httpx.AsyncClient  # the cases: from an address of its own, 5xx as answers
    loop: asyncio.AbstractEventLoop  # runs ``probe``: in-loop ASGI costs a third of TestClient
    a: Tenant
    b: Tenant
    b_before: dict[str, Any]
    principals: dict[str, dict[str, str]]  # A's credentials, and nobody's
    adopted: set[str] = field(default_factory=set)  # B's names that A has made its own too
    bare_successes: set[tuple[str, str, str]] = field(default_factory=set)  # who, route, path
    cases: int = 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("tenancy"), init_token=TOKEN))
    with TestClient(app) as setup:
        a = make_tenant(setup, "aq4z7", A_NUMBER, sign_in_all=True)
        b = make_tenant(setup, "bx9k2", B_NUMBER, sign_in_all=False)
        for t in (a, b):
            refuse_mqtt(app, t)
        principals = {f"{role} JWT": bearer(a.users[role]["jwt"]) for role in ROLES}
        principals["all-access token"] = {"Authorization": f"Token {a.tokens['all']['token']}"}
        principals["scoped token"] = {"Authorization": f"Token {a.tokens['scoped']['token']}"}
        principals["device key"] = {"Authorization": f"Thing {a.device_key}"}
        principals["nobody"] = {}
        client = ("203.0.113.7", 40000)
        transport = httpx.ASGITransport(app, raise_app_exceptions=False, client=client)
        loop = asyncio.new_event_loop()
        probe = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        try:
            yield World(app, setup, probe, loop, a, b, snapshot(setup, app, b), principals)
        finally:
            loop.run_until_complete(probe.aclose())
            loop.close()


# -- what goes into a request -----------------------------------------------------------------


def foreign_values(b: Tenant) -> dict[str, list[str]]:
    """B's objects for each path parameter name of the route table."""
    return {
        "org": [b.org_id, b.org_name],
        "bucket": [b.bucket_id, b.bucket_name, b.default_bucket_id],
        "measurement": [b.measurement],
        "key": [b.secret_key, f"k{b.mark}"],  # a secret's key; a tag key
        "device": [b.device_id],
        "channel": [b.channel_id],
        "user": [b.users["owner"]["id"], b.users["viewer"]["id"]],
        "token": [b.tokens["all"]["id"], b.tokens["scoped"]["id"]],
        "subtopic": [f"sub-{b.mark}/x"],
        "invitation": [b.invitation_id],
        "command": [b.command_id],
    }


def query_of(b: Tenant, mode: str, variant: str) -> dict[str, str]:
    org = {"own org": {}, "orgID=B": {"orgID": b.org_id}, "org=B": {"org": b.org_name}}[mode]
    if variant == "bare":
        return org
    # what the query routes require besides the bucket, so they get as far as the bucket
    needed = {"measurement": b.measurement, "q": "SHOW DATABASES", "start": "0"}
    if variant == "bucket name":
        return {**org, **needed, "bucket": b.bucket_name, "db": b.bucket_name}
    return {
        **org,
        **needed,
        "bucket": b.default_bucket_id,
        "db": b.bucket_id,
        "bucketID": b.bucket_id,
    }


WITHOUT_BUCKET = ("bucket", "bucketID", "db")


def body_of(rm: RouteMethod, b: Tenant) -> tuple[str | None, bytes]:
    """A small valid body for the route, naming B's objects where it takes them; ``{}`` for
    routes not listed here."""
    if rm.method in ("GET", "HEAD", "DELETE"):
        return None, b""
    renamed = (JSON, {"name": "renamed-by-a"})
    points = (JSON, [{"measurement": "probe", "fields": {"v": 1}}])
    senml = (SENML, [{"n": "probe", "v": 1}])
    login = {"grant_type": "password", "username": b.users["viewer"]["email"]}
    bodies: dict[tuple[str, str], tuple[str, Any]] = {
        ("POST", "/api/v2/write"): ("text/plain", "probe,src=a v=1"),
        ("POST", "/write"): ("text/plain", "probe,src=a v=1"),
        ("POST", "/query"): (FORM, urlencode({"q": "SHOW DATABASES"})),
        ("POST", "/api/v1/devices/{device}/telemetry"): (
            JSON,
            {"tsdata": [{"timestamp": NOW_MS, "probe": 1}]},
        ),
        ("POST", "/api/v1/buckets/{bucket}/points"): points,
        ("POST", "/api/v1/buckets"): (JSON, {"name": "probe", "org": b.org_name}),
        ("PUT", "/api/v1/buckets/{bucket}/measurements/{measurement}/schema"): (
            JSON,
            {"fields": {"probe": {"type": "float"}}, "strict": False},
        ),
        ("POST", "/oauth/token"): (FORM, urlencode({**login, "password": "not-the-password"})),
        ("POST", "/oauth/revoke"): (FORM, urlencode({"token": "not-a-token"})),
        ("PUT", "/api/v1/me/password"): (JSON, {"currentPassword": "not-it", "password": "short"}),
        ("POST", "/api/v1/password"): (JSON, {"resetToken": "not-a-token", "password": "x" * 12}),
        ("POST", "/api/v1/orgs"): (JSON, {"name": "probe-org"}),
        ("PATCH", "/api/v1/orgs/{org}"): renamed,
        ("POST", "/api/v1/users"): (JSON, {"email": "probe@a.test", "role": "viewer"}),
        ("PATCH", "/api/v1/users/{user}"): renamed,
        ("POST", "/api/v1/devices"): (JSON, {"id": "probe", "bucket": b.bucket_id}),
        ("POST", "/api/v1/devices/bulk"): ("text/csv", f"id,bucket\nprobe,{b.bucket_id}\n"),
        ("PATCH", "/api/v1/devices/{device}"): renamed,
        ("POST", "/api/v1/devices/{device}/commands"): (JSON, {"name": "probe"}),
        ("POST", "/api/v1/devices/{device}/commands/{command}/response"): (
            JSON,
            {"status": "succeeded", "result": {"probe": 1}},
        ),
        ("POST", "/api/v1/channels"): (JSON, {"id": "probe", "bucket": b.bucket_id}),
        ("PATCH", "/api/v1/channels/{channel}"): renamed,
        ("POST", "/api/v1/channels/{channel}/messages"): senml,
        ("POST", "/api/v1/channels/{channel}/messages/{subtopic:path}"): senml,
        ("POST", "/api/v1/tokens"): (JSON, {"description": "probe", "permissions": ["read:orgs"]}),
        ("PATCH", "/api/v1/tokens/{token}"): (JSON, {"status": "inactive"}),
        ("PATCH", "/api/v1/secrets"): (JSON, {"probe": "set-by-a"}),
        ("PUT", "/api/v1/secrets/{key}"): (JSON, {"value": "set-by-a"}),
    }
    content_type, body = bodies.get((rm.method, rm.path), (JSON, {}))
    return content_type, body.encode() if isinstance(body, str) else orjson.dumps(body)


# -- one request, and what its answer may be --------------------------------------------------


@dataclass
class Answer:
    status: int
    text: str
    problems: list[str]

    @property
    def success(self) -> bool:
        return 200 <= self.status < 300


def send(w: World, who: str, rm: RouteMethod, path: str, query: dict[str, str]) -> Answer:
    """Send one case; its answer with the problems any answer may have (5xx, B's data)."""
    content_type, body = body_of(rm, w.b)
    headers = w.principals[who] | ({"Content-Type": content_type} if content_type else {})
    url = path + ("?" + urlencode(query) if query else "")
    request = w.probe.request(rm.method, url, headers=headers, content=body or None)
    r = w.loop.run_until_complete(request)
    w.cases += 1
    problems = [f"{r.status_code} server error"] if r.status_code >= 500 else []
    sent = (unquote(url) + "\n" + body.decode("utf-8", "replace")).lower()
    answer = (r.content + b"\n" + str(r.headers.items()).encode()).lower()
    for what, value in w.b.identifiers().items():
        needle = value.lower()
        if needle not in sent and value not in w.adopted and needle.encode() in answer:
            problems.append(f"B's {what} ({value!r}) in the answer")
    return Answer(r.status_code, r.text[:300], problems)


def check(w: World, who: str, rm: RouteMethod, path: str, mode: str, variant: str) -> list[str]:
    query = query_of(w.b, mode, variant)
    got = send(w, who, rm, path, query)
    _keep_signed_in(w, who, got)
    problems = got.problems + _status_problems(w, who, rm, path, mode, variant, got)
    if mode == "own org" and not rm.params and got.success:
        problems += _bucket_made_no_difference(w, who, rm, path, variant, query, got)
    case = f"{who} [{mode}, {variant}] {rm.method} {path}?{urlencode(query)}"
    return [f"{case}: {p} — {got.text}" for p in problems]


def _bucket_made_no_difference(
    w: World, who: str, rm: RouteMethod, path: str, variant: str, query: dict[str, str], got: Answer
) -> list[str]:
    """No B object in the path: the route acts in A's org and may ignore a bucket in the
    query, but it must not be B's bucket that turned a refusal into a success."""
    key = (who, str(rm), path)
    if variant == "bare":
        w.bare_successes.add(key)
        return []
    if key in w.bare_successes or rm.path in PUBLIC:
        return []  # succeeds without any query as well
    without = {k: v for k, v in query.items() if k not in WITHOUT_BUCKET}
    bare = send(w, who, rm, path, without)
    _keep_signed_in(w, who, bare)
    if bare.success:
        return bare.problems
    return [*bare.problems, f"{got.status} with B's bucket in the query, {bare.status} without"]


def _status_problems(
    w: World, who: str, rm: RouteMethod, path: str, mode: str, variant: str, got: Answer
) -> list[str]:
    if rm.path in PUBLIC:
        return []  # answers everyone alike: only 5xx and leaks count
    if who == "nobody":
        return [] if got.status == 401 else [f"{got.status} without credentials, expected 401"]
    if mode == "own org" and not rm.params:
        return []  # A's own org and no object of B's named: anything but a leak or a 5xx
    names_in_a, bare_only = NAMES_IN_OWN_ORG.get((rm.method, rm.path), (None, False))
    if names_in_a and got.success and mode == "own org" and (variant == "bare" or not bare_only):
        return names_in_a(w, path)
    # a request without the parameters a route requires is a 400 whatever the org; the same
    # requests with them (variants "bucket id", "bucket name") must be refused
    allowed = DENIED | ({400} if variant == "bare" and mode != "own org" else set())
    return [] if got.status in allowed else [f"{got.status}, expected 401/403/404"]


def _keep_signed_in(w: World, who: str, got: Answer) -> None:
    """A POST /api/v1/logout in A's own org ends A's session, as it should: sign in again."""
    if not (who.endswith("JWT") and got.success):
        return
    if w.setup.get("/api/v1/me", headers=w.principals[who]).status_code == 401:
        w.principals[who] = bearer(sign_in(w.setup, w.a.users[who.split()[0]]["email"]))


# -- where A may answer 2xx: B's *name* used in A's own org ------------------------------------


def _device_registered_in_a(w: World, path: str) -> list[str]:
    """Telemetry for a device id A has not provisioned registers that id *in A* (docs: "every
    device that sent data has a record"); B's device of the same id is untouched (checked at
    the end). A's record is removed again, so the next cases meet an unknown id once more; the
    id stays in A's data, so from now on it is also a name of A's and no leak."""
    device_id = unquote(path.split("/")[4])
    h = w.principals["all-access token"]
    r = w.setup.get(f"/api/v1/devices/{device_id}", headers=h)
    if r.status_code != 200 or r.json()["bucket"] != "telemetry":
        return [f"answered 2xx, but A has no record of {device_id}: {r.text[:200]}"]
    ok(w.setup.delete(f"/api/v1/devices/{device_id}", headers=h), 204)
    w.adopted.add(device_id)
    return []


def _secret_set_in_a(w: World, path: str) -> list[str]:
    """Secret keys are names within an org: the PUT sets A's own secret of that name (B's
    stays as it was: its updatedAt is checked at the end). Deleted again; A's audit log keeps
    the name, which is now also A's."""
    key = unquote(path.rsplit("/", 1)[1])
    h = w.principals["all-access token"]
    if key not in [s["key"] for s in ok(w.setup.get("/api/v1/secrets", headers=h))["secrets"]]:
        return [f"answered 2xx, but A has no secret {key}"]
    ok(w.setup.delete(f"/api/v1/secrets/{key}", headers=h), 204)
    w.adopted.add(key)
    return []


def _reads_own_bucket(w: World, path: str) -> list[str]:
    """The device id only filters A's own bucket by tag: no rows, or A's own (docs: "an
    unknown device, or one that sent nothing yet, gives []"); B's rows would be a leak."""
    return []


#: routes that, in A's own org, act on A with one of B's names: how to check what A got, and
#: whether that holds only without B's bucket in the query (routes that read the bucket there
#: must refuse B's)
NAMES_IN_OWN_ORG: dict[tuple[str, str], tuple[Callable[[World, str], list[str]], bool]] = {
    ("POST", "/api/v1/devices/{device}/telemetry"): (_device_registered_in_a, True),
    ("GET", "/api/v1/devices/{device}/telemetry"): (_reads_own_bucket, True),
    ("HEAD", "/api/v1/devices/{device}/telemetry"): (_reads_own_bucket, True),
    ("PUT", "/api/v1/secrets/{key}"): (_secret_set_in_a, False),
}


# -- the tests --------------------------------------------------------------------------------


def test_every_path_parameter_has_a_foreign_value(world: World) -> None:
    known = foreign_values(world.b)
    missing = {f"{rm}: {{{p}}}" for rm in ROUTES for p in rm.params if p not in known}
    assert not missing, "give these path parameters one of B's objects in foreign_values()"


def test_only_the_public_routes_answer_without_credentials(world: World) -> None:
    """Every route, called by nobody with B's objects filled in: 401, or public and silent."""
    values = foreign_values(world.b)
    answered = set()
    for rm in ROUTES:
        path = rm.fill({p: values[p][0] for p in rm.params if p in values})
        got = send(world, "nobody", rm, path, {})
        assert not got.problems, f"{rm}: {got.problems} {got.text}"
        if got.status != 401:
            answered.add(rm.path)
    assert answered == PUBLIC


@pytest.mark.parametrize("rm", ROUTES, ids=str)
def test_foreign_objects_are_out_of_reach(world: World, rm: RouteMethod) -> None:
    """Every credential of A on B's objects: 401/403/404, and nothing of B in any answer."""
    assert rm in set(walk(world.app.routes))
    values = foreign_values(world.b)
    if any(p not in values for p in rm.params):
        pytest.fail(f"no foreign value for a parameter of {rm}: add it to foreign_values()")
    problems: list[str] = []
    for combo in product(*(values[p] for p in rm.params)):
        path = rm.fill(dict(zip(rm.params, combo, strict=True)))
        for who, (mode, variant) in product(world.principals, COMBOS):
            problems += check(world, who, rm, path, mode, variant)
    assert not problems, "\n".join(problems)


def test_the_foreign_org_is_unchanged(world: World) -> None:
    """After the matrix (file order), B, read by its own owner, is as it was."""
    after = snapshot(world.setup, world.app, world.b)
    keys = set(after) | set(world.b_before)
    changed = {
        k: (world.b_before.get(k), after.get(k))
        for k in keys
        if after.get(k) != world.b_before.get(k)
    }
    assert not changed
    assert len(after["users"]["users"]) == len(ROLES)
    assert f"data {world.b.bucket_name} {world.b.measurement}" in after  # there was data to leak
    assert after[f"rejections {world.b.device_id}"]["rejections"]  # and a refused message


def test_no_permission_on_a_foreign_bucket_can_be_granted(world: World) -> None:
    """Docs: "nobody can create a token with a permission they do not hold". A's owner holds
    nothing on B's buckets (bucket ids are global, unlike device and channel ids, which name
    objects of the token's own org), so tokens and devices naming them must be refused. Where
    one is created anyway, it must at least reach nothing of B."""
    b, setup = world.b, world.setup
    perms = [f"read:buckets/{b.bucket_id}", f"write:buckets/{b.bucket_id}"]
    perms.append(f"read:buckets/{b.default_bucket_id}")
    granted = []
    for who, perm in product(("owner JWT", "all-access token"), perms):
        h = world.principals[who]
        r = setup.post("/api/v1/tokens", headers=h, json={"permissions": [perm]})
        if r.status_code not in (400, 403, 404):
            granted.append(f"{who}: POST /api/v1/tokens {perm} -> {r.status_code}")
            granted += _reaches_nothing_of_b(world, f"Token {r.json()['token']}")
            ok(setup.delete(f"/api/v1/tokens/{r.json()['id']}", headers=h), 204)
        if perm.startswith("read:"):  # devices may only be granted reads
            r = setup.post(
                "/api/v1/devices", headers=h, json={"id": "probe", "permissions": [perm]}
            )
            if r.status_code not in (400, 403, 404):
                granted.append(f"{who}: POST /api/v1/devices {perm} -> {r.status_code}")
                granted += _reaches_nothing_of_b(world, f"Thing {r.json()['key']}")
                ok(setup.delete("/api/v1/devices/probe", headers=h), 204)
    assert not granted, "\n".join(granted)


def _reaches_nothing_of_b(world: World, credential: str) -> list[str]:
    b, h, found = world.b, {"Authorization": credential}, []
    for bucket in (b.bucket_id, b.default_bucket_id):
        query = {"bucket": bucket, "measurement": b.measurement, "start": "0"}
        for path in ("/api/v1/query", f"/api/v1/buckets/{bucket}/measurements"):
            r = world.setup.get(path, headers=h, params=query)
            if r.status_code not in DENIED:
                found.append(f"  and it reads {path} of B's bucket {bucket}: {r.text[:200]}")
        points = [{"measurement": "probe", "fields": {"v": 1}}]
        r = world.setup.post(f"/api/v1/buckets/{bucket}/points", headers=h, json=points)
        if r.status_code not in DENIED:
            found.append(f"  and it writes to B's bucket {bucket}: {r.status_code}")
    return found


def test_adding_a_foreign_account_reveals_nothing_of_it(world: World) -> None:
    """An admin of A adds an email that has an account in B (docs: "an email that already has
    an account is added to this org"). A must learn nothing of that account, and B's admins
    must keep control of their member — yet resetting a password is refused (409) for users
    who also belong to another org, so A could lock B out of it."""
    b, admin = world.b, world.principals["admin JWT"]
    member = b.users["member"]
    added = world.setup.post(
        "/api/v1/users", headers=admin, json={"email": member["email"], "role": "viewer"}
    )
    leaked = [
        what
        for what, v in b.identifiers().items()
        if v != member["email"] and v.lower() in added.text.lower()
    ]
    reset = world.setup.post(f"/api/v1/users/{member['id']}/password-reset", headers=b.owner())
    if added.status_code == 201:
        owner = world.principals["owner JWT"]
        ok(world.setup.delete(f"/api/v1/users/{added.json()['id']}", headers=owner), 204)
    assert (leaked, reset.status_code) == ([], 201), (added.text, reset.text)
