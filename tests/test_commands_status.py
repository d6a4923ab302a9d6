"""Device commands (persistent RPC) and device online status.

The services on every registry engine (SQLite, PostgreSQL) through ``Registry.open``; the
HTTP API in process over ASGI, as users and devices meet it (docs/identity.md, "Commands
and status"); and the CLI's ``motes devices commands``. Time is moved by giving the
services a clock or a ``now_ns``, never by sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from motes.app import create_app
from motes.registry import devices as devices_module
from motes.registry.commands import Command
from motes.registry.common import Actor
from motes.registry.devices import DeviceSpec
from motes.registry.models import Conflict, Invalid, NotFound, Principal
from motes.registry.service import Registry
from motes.registry.users import OwnerSpec
from motes.settings import Settings
from tests.conftest import AUTH, TOKEN, free_port
from tests.test_cli_identity import Cli, table

S = 10**9  # one second in ns
BY = Actor("token:t1", "10.0.0.7", "ci")


# -- the services, on every engine ------------------------------------------------------------


@pytest.fixture
def registry(migrated_registry_url: str) -> Iterator[Registry]:
    registry = Registry.open(migrated_registry_url)
    yield registry
    registry.close()


@pytest.fixture
def operator(registry: Registry) -> Principal:
    token = registry.bootstrap("main", "telemetry", None)
    assert token is not None
    return registry.authenticate("token", token)


@pytest.fixture
def org(registry: Registry, operator: Principal) -> str:
    """The org "main" with devices gh-1 and gh-2."""
    specs = [DeviceSpec("gh-1"), DeviceSpec("gh-2")]
    registry.devices.create_many(operator.org_id, BY, specs)
    return operator.org_id


@pytest.fixture
def reopen(migrated_registry_url: str) -> Iterator[Callable[[], Registry]]:
    """Another process (or this one after a restart) on the same database."""
    opened: list[Registry] = []

    def open_again() -> Registry:
        opened.append(Registry.open(migrated_registry_url))
        return opened[-1]

    yield open_again
    for registry in opened:
        registry.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now


def test_a_command_goes_from_queued_to_succeeded(registry: Registry, org: str) -> None:
    commands = registry.commands
    cmd = commands.create(org, "gh-1", "reboot", {"delay": 5}, 3600, BY)
    made = (cmd.state, cmd.attempts, cmd.created_by, cmd.params)
    assert made == ("queued", 0, BY.name, {"delay": 5})
    assert cmd.expires_ns == cmd.created_ns + 3600 * S
    assert [c.id for c in commands.pending(org, "gh-1")] == [cmd.id]
    assert commands.pending(org, "gh-2") == []
    commands.mark_sent(org, cmd.id)
    commands.mark_sent(org, cmd.id)  # published again (the device reconnected)
    sent = commands.get(org, cmd.id)
    assert (sent.state, sent.attempts) == ("sent", 2) and sent.sent_ns is not None
    commands.mark_delivered(org, cmd.id)
    assert commands.get(org, cmd.id).state == "delivered"
    assert commands.pending(org, "gh-1") == []  # the device has it
    with pytest.raises(NotFound):  # not gh-2's command
        commands.complete(org, "gh-2", cmd.id, True, None, None)
    done = commands.complete(org, "gh-1", cmd.id, True, {"uptime": 3}, None)
    assert (done.state, done.response, done.error) == ("succeeded", {"uptime": 3}, None)
    assert done.completed_ns is not None
    with pytest.raises(Conflict):
        commands.complete(org, "gh-1", cmd.id, False, None, "again")
    assert commands.get(org, cmd.id) == done
    failed = commands.create(org, "gh-1", "calibrate", None, 60, BY)
    answer = commands.complete(org, "gh-1", failed.id, False, None, "sensor busy")
    assert (answer.state, answer.error) == ("failed", "sensor busy")
    events = registry.audit_events(org, action="command.create")
    assert [e.target for e in events] == [f"command:{failed.id}", f"command:{cmd.id}"]
    assert events[1].details == {"by": "ci", "device": "gh-1", "name": "reboot"}


@pytest.mark.parametrize(
    ("name", "params", "timeout"),
    [
        ("no spaces", {}, 60),
        ("a/b", {}, 60),  # an MQTT topic level
        ("x" * 129, {}, 60),
        ("reboot\n", {}, 60),
        ("reboot", {}, 0),
        ("reboot", {}, 30 * 86400 + 1),
        ("reboot", {"blob": "x" * 70_000}, 60),
        ("reboot", {"n": 2**70}, 60),  # no JSON number this server can store
        ("reboot", object(), 60),
    ],
)
def test_bad_commands_are_refused(
    registry: Registry, org: str, name: str, params: Any, timeout: int
) -> None:
    with pytest.raises(Invalid):
        registry.commands.create(org, "gh-1", name, params, timeout, BY)
    assert registry.commands.list(org, "gh-1") == []


def test_commands_need_an_existing_device_of_the_org(
    registry: Registry, org: str, operator: Principal
) -> None:
    with pytest.raises(NotFound):
        registry.commands.create(org, "ghost", "reboot", {}, 60, BY)
    cmd = registry.commands.create(org, "gh-1", "reboot", {}, 60, BY)
    owner = OwnerSpec("ana@other.io", "Ana", None)
    other = registry.users.create_org(operator, BY, "other", owner)[0]
    registry.devices.create(other.id, BY, DeviceSpec("gh-1"))
    with pytest.raises(NotFound):
        registry.commands.get(other.id, cmd.id)
    assert registry.commands.list(other.id, "gh-1") == []
    assert registry.commands.pending(other.id, "gh-1") == []
    with pytest.raises(NotFound):
        registry.commands.complete(other.id, "gh-1", cmd.id, True, None, None)
    with pytest.raises(NotFound):
        registry.commands.cancel(other.id, cmd.id, BY)
    assert registry.commands.get(org, cmd.id).state == "queued"


def test_commands_expire_when_their_time_is_up(registry: Registry, org: str) -> None:
    clock = Clock()
    commands = registry.commands
    commands.clock = clock
    first = commands.create(org, "gh-1", "a", {}, 60, BY)
    second = commands.create(org, "gh-1", "b", {}, 120, BY)
    commands.mark_delivered(org, second.id)
    assert commands.expire_due(clock.now + 59 * S) == 0
    assert commands.expire_due(clock.now + 60 * S) == 1
    assert commands.get(org, first.id).state == "expired"
    assert commands.get(org, first.id).completed_ns == clock.now + 60 * S
    clock.now += 121 * S  # past the second one's time, before any sweep
    with pytest.raises(Conflict):  # an answer too late does not count
        commands.complete(org, "gh-1", second.id, True, None, None)
    assert commands.get(org, second.id).state == "expired"
    third = commands.create(org, "gh-1", "c", {}, 60, BY)
    clock.now += 61 * S
    assert commands.pending(org, "gh-1") == []  # expired on the way
    assert commands.get(org, third.id).state == "expired"
    with pytest.raises(Conflict):
        commands.cancel(org, third.id, BY)


def test_cancel_only_open_commands_and_audit_it(registry: Registry, org: str) -> None:
    commands = registry.commands
    queued = commands.create(org, "gh-1", "a", {}, 60, BY)
    delivered = commands.create(org, "gh-1", "b", {}, 60, BY)
    commands.mark_delivered(org, delivered.id)
    assert commands.cancel(org, queued.id, BY).state == "canceled"
    assert commands.cancel(org, delivered.id, BY).state == "canceled"
    with pytest.raises(Conflict):
        commands.cancel(org, queued.id, BY)
    with pytest.raises(Conflict):
        commands.complete(org, "gh-1", delivered.id, True, None, None)
    with pytest.raises(NotFound):
        commands.cancel(org, "0123456789abcdef", BY)
    assert commands.pending(org, "gh-1") == []
    events = registry.audit_events(org, action="command.cancel")
    assert [e.target for e in events] == [f"command:{delivered.id}", f"command:{queued.id}"]


def test_list_pages_newest_first_and_filters_by_state(registry: Registry, org: str) -> None:
    clock = Clock()
    commands = registry.commands
    commands.clock = clock
    made = []
    for n in range(5):
        clock.now += S
        made.append(commands.create(org, "gh-1", f"c{n}", {"n": n}, 60, BY).id)
    commands.mark_delivered(org, made[1])
    newest = list(reversed(made))
    assert [c.id for c in commands.list(org, "gh-1", limit=2)] == newest[:2]
    assert [c.id for c in commands.list(org, "gh-1", limit=2, after=newest[1])] == newest[2:4]
    assert [c.id for c in commands.list(org, "gh-1", after=newest[4])] == []
    assert [c.id for c in commands.list(org, "gh-1", state="delivered")] == [made[1]]
    assert [c.name for c in commands.pending(org, "gh-1")] == ["c0", "c2", "c3", "c4"]
    with pytest.raises(Invalid):
        commands.list(org, "gh-1", state="done")
    with pytest.raises(Invalid):  # a cursor of another device
        commands.list(org, "gh-2", after=made[0])
    with pytest.raises(NotFound):
        commands.list(org, "ghost")


def test_states_survive_a_restart(
    registry: Registry, org: str, reopen: Callable[[], Registry]
) -> None:
    cmd = registry.commands.create(org, "gh-1", "reboot", {"delay": 5}, 60, BY)
    registry.commands.mark_sent(org, cmd.id)
    later = reopen()
    again = later.commands.get(org, cmd.id)
    assert (again.state, again.attempts, again.params) == ("sent", 1, {"delay": 5})
    assert [c.id for c in later.commands.pending(org, "gh-1")] == [cmd.id]
    later.commands.complete(org, "gh-1", cmd.id, True, [1, "two"], None)
    assert registry.commands.get(org, cmd.id).response == [1, "two"]


def test_listeners_hear_of_commands_once_committed(
    registry: Registry, org: str, reopen: Callable[[], Registry]
) -> None:
    other = reopen()
    heard: list[tuple[Command, str]] = []

    def listener(command: Command) -> None:  # another connection sees it: it is committed
        heard.append((command, other.commands.get(command.org_id, command.id).state))

    def broken(command: Command) -> None:
        raise RuntimeError("the broker is gone")

    registry.commands.listen(broken)
    registry.commands.listen(listener)
    cmd = registry.commands.create(org, "gh-1", "reboot", {}, 60, BY)  # broken does not fail it
    assert heard == [(cmd, "queued")]
    with pytest.raises(NotFound):
        registry.commands.create(org, "ghost", "reboot", {}, 60, BY)
    assert len(heard) == 1


def test_deleting_a_device_deletes_its_commands_and_status(registry: Registry, org: str) -> None:
    cmd = registry.commands.create(org, "gh-1", "reboot", {}, 60, BY)
    registry.devices.set_connected(org, "gh-1", True, "connect")
    registry.devices.delete(org, "gh-1", BY)
    registry.devices.create(org, BY, DeviceSpec("gh-1"))
    with pytest.raises(NotFound):
        registry.commands.get(org, cmd.id)
    assert registry.devices.status_history(org, "gh-1") == []
    assert registry.devices.get(org, "gh-1").status == "offline"


# -- status -----------------------------------------------------------------------------------


def history(registry: Registry, org: str, device: str) -> list[tuple[str, str]]:
    """(status, reason), oldest first."""
    return [(c.status, c.reason) for c in reversed(registry.devices.status_history(org, device))]


def test_connects_and_disconnects_move_the_status(
    registry: Registry, org: str, reopen: Callable[[], Registry]
) -> None:
    devices, t = registry.devices, time.time_ns()
    devices.set_connected(org, "gh-1", True, "connect", t)
    device = devices.get(org, "gh-1")
    assert (device.status, device.connected, device.connected_ns) == ("online", True, t)
    assert device.status_ns == t and device.last_seen_ns == t  # a connect is traffic
    devices.set_connected(org, "gh-1", True, "connect", t + S)  # again: no change of status
    devices.set_connected(org, "gh-1", False, "last-will", t + 2 * S)
    devices.set_connected(org, "gh-1", True, "connect", t + 3 * S)
    devices.set_connected(org, "gh-1", False, "keep-alive timeout", t + 4 * S)
    devices.set_connected(org, "gh-1", True, "connect", t + 4 * S - 1)  # late: ignored
    devices.set_connected(org, "ghost", True, "connect")  # unknown: ignored
    device = reopen().devices.get(org, "gh-1")
    assert (device.status, device.connected) == ("offline", False)
    assert (device.connected_ns, device.disconnected_ns) == (t + 3 * S, t + 4 * S)
    assert history(registry, org, "gh-1") == [
        ("online", "connect"),
        ("offline", "last-will"),
        ("online", "connect"),
        ("offline", "keep-alive timeout"),
    ]
    newest = devices.status_history(org, "gh-1", limit=1)
    assert [c.at_ns for c in newest] == [t + 4 * S]
    assert [c.reason for c in devices.status_history(org, "gh-1", before=newest[0].id)] == [
        "connect",
        "last-will",
        "connect",
    ]
    assert history(registry, org, "gh-2") == []


def test_a_connected_device_goes_stale_without_data_and_back(
    registry: Registry, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices, t = registry.devices, time.time_ns()
    devices.update(org, "gh-1", BY, expected_interval_seconds=60)
    devices.set_connected(org, "gh-1", True, "connect", t)
    assert devices.sweep_status(t + 60 * S) == 0
    assert devices.sweep_status(t + 61 * S) == 1
    assert devices.get(org, "gh-1").status == "stale"
    assert devices.sweep_status(t + 62 * S) == 0
    bucket = registry.find_bucket(org, "telemetry").id
    monkeypatch.setattr(devices_module, "now_ns", lambda: t + 70 * S)
    devices.touch(org, "gh-1", bucket)  # data again, only in memory so far
    assert devices.sweep_status(t + 71 * S) == 1
    assert devices.get(org, "gh-1").status == "online"
    # no connection, but data within the interval: still online, until the interval passes
    devices.set_connected(org, "gh-1", False, "disconnect", t + 80 * S)
    assert devices.get(org, "gh-1").status == "online"
    assert devices.sweep_status(t + 130 * S) == 0
    assert devices.sweep_status(t + 131 * S) == 1
    assert history(registry, org, "gh-1") == [
        ("online", "connect"),
        ("stale", "no data within 60 s"),
        ("online", "data"),
        ("offline", "no data within 60 s"),
    ]
    assert devices.get(org, "gh-1").status_ns == t + 131 * S


def test_http_data_makes_a_device_with_an_interval_online(
    registry: Registry, org: str, reopen: Callable[[], Registry]
) -> None:
    devices = registry.devices
    devices.update(org, "gh-1", BY, expected_interval_seconds=300)
    bucket = registry.find_bucket(org, "telemetry").id
    devices.touch(org, "gh-1", bucket)
    devices.touch(org, "gh-2", bucket)  # no interval: its status needs a connection
    devices.flush_seen()
    assert reopen().devices.sweep_status() == 1  # any process, once the data is written
    assert registry.devices.sweep_status() == 0
    assert (devices.get(org, "gh-1").status, devices.get(org, "gh-2").status) == (
        "online",
        "offline",
    )
    assert history(registry, org, "gh-1") == [("online", "data")]


def test_changing_the_interval_recomputes_the_status(registry: Registry, org: str) -> None:
    devices = registry.devices
    devices.set_connected(org, "gh-1", True, "connect", time.time_ns() - 120 * S)
    assert devices.get(org, "gh-1").status == "online"
    assert devices.update(org, "gh-1", BY, expected_interval_seconds=60).status == "stale"
    cleared = devices.update(org, "gh-1", BY, expected_interval_seconds=0)
    assert (cleared.status, cleared.expected_interval_seconds) == ("online", None)
    assert history(registry, org, "gh-1")[1:] == [
        ("stale", "expected interval changed"),
        ("online", "expected interval changed"),
    ]
    for bad in (-1, 365 * 86400 + 1):
        with pytest.raises(Invalid):
            devices.update(org, "gh-1", BY, expected_interval_seconds=bad)
    with pytest.raises(Invalid):
        devices.create(org, BY, DeviceSpec("gh-3", expected_interval_seconds=0))
    made, _ = devices.create(org, BY, DeviceSpec("gh-3", expected_interval_seconds=30))
    assert (made.expected_interval_seconds, made.status, made.connected) == (30, "offline", False)


# -- the HTTP API -----------------------------------------------------------------------------

JSON = dict[str, Any]


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", init_token=TOKEN, http_port=free_port())


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings), headers=AUTH) as c:
        yield c


def bearer(c: TestClient, form: dict[str, str]) -> dict[str, str]:
    """Sign in with the password grant ``form``: the access token's Authorization header."""
    return {"Authorization": "Bearer " + ok(c.post("/oauth/token", data=form))["access_token"]}


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.text}"
    return r.json() if r.content else None


def device(c: TestClient, device_id: str, **extra: Any) -> dict[str, str]:
    """Provision a device; its key's Authorization header."""
    made = ok(c.post("/api/v1/devices", json={"id": device_id, **extra}), 201)
    return {"Authorization": f"Thing {made['key']}"}


def send(c: TestClient, device_id: str, name: str = "reboot", **body: Any) -> JSON:
    url = f"/api/v1/devices/{device_id}/commands"
    made: JSON = ok(c.post(url, json={"name": name, **body}), 201)
    return made


def test_a_command_over_http_from_send_to_answer(client: TestClient) -> None:
    thing = device(client, "gh-1")
    made = send(client, "gh-1", params={"delay": 5}, timeoutSeconds=600)
    assert (made["state"], made["params"], made["attempts"], made["deviceId"]) == (
        "queued",
        {"delay": 5},
        0,
        "gh-1",
    )
    assert made["createdAt"].endswith("Z") and made["sentAt"] is None
    listed = ok(client.get("/api/v1/devices/gh-1/commands"))["commands"]
    assert [c["id"] for c in listed] == [made["id"]]
    peek = client.head("/api/v1/devices/gh-1/commands/pending", headers=thing)
    assert peek.status_code == 200  # HEAD sends no body: nothing counts as delivered
    polled = ok(client.get("/api/v1/devices/gh-1/commands/pending", headers=thing))
    assert [(c["id"], c["state"]) for c in polled] == [(made["id"], "delivered")]
    assert ok(client.get("/api/v1/devices/gh-1/commands/pending", headers=thing)) == []
    url = f"/api/v1/devices/gh-1/commands/{made['id']}"
    answer = {"status": "succeeded", "result": {"uptime": 12}}
    done = ok(client.post(url + "/response", headers=thing, json=answer))
    assert (done["state"], done["response"], done["error"]) == ("succeeded", {"uptime": 12}, None)
    assert ok(client.get(url)) == done
    assert ok(client.get(url, headers=thing)) == done  # a device reads its own commands
    again = client.post(url + "/response", headers=thing, json={"status": "failed"})
    assert (again.status_code, again.json()["code"]) == (409, "conflict")
    missing = client.post(
        "/api/v1/devices/gh-1/commands/0123456789abcdef/response", headers=thing, json=answer
    )
    assert missing.status_code == 404
    failed = send(client, "gh-1", "calibrate")
    answer = {"status": "failed", "error": "sensor busy"}
    url = f"/api/v1/devices/gh-1/commands/{failed['id']}/response"
    assert ok(client.post(url, headers=thing, json=answer))["error"] == "sensor busy"
    states = ok(client.get("/api/v1/devices/gh-1/commands", params={"state": "failed"}))
    assert [c["name"] for c in states["commands"]] == ["calibrate"]


def test_a_long_poll_wakes_when_a_command_is_created(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    thing = device(client, "gh-1")
    registry = client.app.state.registry  # type: ignore[attr-defined]
    deliver = registry.commands.deliver

    async def scenario() -> tuple[Any, float, int]:
        loop = asyncio.get_running_loop()
        polled_once = asyncio.Event()
        calls = 0

        def counting_deliver(org_id: str, device_id: str) -> list[Command]:
            nonlocal calls
            found: list[Command] = deliver(org_id, device_id)
            calls += 1
            loop.call_soon_threadsafe(polled_once.set)
            return found

        monkeypatch.setattr(registry.commands, "deliver", counting_deliver)
        transport = httpx.ASGITransport(client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            started = loop.time()
            url = "/api/v1/devices/gh-1/commands/pending?wait=30"
            poll = asyncio.create_task(http.get(url, headers=thing))
            await polled_once.wait()  # the poll found nothing and waits now
            made = await http.post(
                "/api/v1/devices/gh-1/commands", headers=AUTH, json={"name": "open-valve"}
            )
            assert made.status_code == 201, made.text
            answer = await poll
            return answer, loop.time() - started, calls

    answer, took, calls = asyncio.run(scenario())
    assert answer.status_code == 200, answer.text
    assert [c["name"] for c in answer.json()] == ["open-valve"]
    assert answer.json()[0]["state"] == "delivered"
    assert took < 10 and calls == 2  # woken by the create, not by the 30 s timeout


def test_a_long_poll_answers_an_empty_list_when_nothing_comes(client: TestClient) -> None:
    thing = device(client, "gh-1")
    started = time.monotonic()
    assert ok(client.get("/api/v1/devices/gh-1/commands/pending?wait=1", headers=thing)) == []
    assert 0.9 < time.monotonic() - started < 10


def test_expired_and_canceled_commands_over_http(client: TestClient) -> None:
    thing = device(client, "gh-1")
    registry = client.app.state.registry  # type: ignore[attr-defined]
    short = send(client, "gh-1", "a", timeoutSeconds=60)
    assert registry.commands.expire_due(time.time_ns() + 61 * S) == 1
    url = f"/api/v1/devices/gh-1/commands/{short['id']}"
    expired = ok(client.get(url))
    assert (expired["state"], expired["completedAt"] is not None) == ("expired", True)
    late = client.post(url + "/response", headers=thing, json={"status": "succeeded"})
    assert late.status_code == 409
    assert client.delete(url).status_code == 409

    doomed = send(client, "gh-1", "b")
    url = f"/api/v1/devices/gh-1/commands/{doomed['id']}"
    assert ok(client.delete(url))["state"] == "canceled"
    assert client.delete(url).status_code == 409
    assert ok(client.get("/api/v1/devices/gh-1/commands/pending", headers=thing)) == []
    answered = client.post(url + "/response", headers=thing, json={"status": "succeeded"})
    assert answered.status_code == 409
    audit = ok(client.get("/api/v1/audit", params={"action": "command.cancel"}))["events"]
    assert [e["target"] for e in audit] == [f"command:{doomed['id']}"]


def test_devices_poll_and_answer_only_their_own_commands(client: TestClient) -> None:
    thing1, thing2 = device(client, "gh-1"), device(client, "gh-2")
    mine = send(client, "gh-1")
    assert client.get("/api/v1/devices/gh-1/commands/pending", headers=thing2).status_code == 403
    assert client.get("/api/v1/devices/gh-1/commands", headers=thing2).status_code == 403
    answer = {"status": "succeeded"}
    url = f"/api/v1/devices/gh-1/commands/{mine['id']}/response"
    assert client.post(url, headers=thing2, json=answer).status_code == 403
    theirs = f"/api/v1/devices/gh-2/commands/{mine['id']}"  # gh-2's path, gh-1's command
    assert client.post(theirs + "/response", headers=thing2, json=answer).status_code == 404
    assert client.get(theirs).status_code == 404
    assert client.delete(theirs).status_code == 404
    # only the device itself polls, and devices do not send commands
    assert client.get("/api/v1/devices/gh-1/commands/pending").status_code == 403
    assert client.post(url, json=answer).status_code == 403
    made = client.post("/api/v1/devices/gh-1/commands", headers=thing1, json={"name": "x"})
    assert made.status_code == 403
    assert ok(client.get(f"/api/v1/devices/gh-1/commands/{mine['id']}"))["state"] == "queued"


def test_roles_and_orgs_bound_who_sees_and_sends_commands(client: TestClient) -> None:
    device(client, "gh-1")
    mine = send(client, "gh-1")
    owner = {"email": "ana@other.io", "password": "correct horse battery"}
    ok(client.post("/api/v1/orgs", json={"name": "other", "owner": owner}), 201)
    form = {"grant_type": "password", "username": owner["email"], "password": owner["password"]}
    other = bearer(client, form)
    ok(client.post("/api/v1/devices", headers=other, json={"id": "gh-1"}), 201)
    assert ok(client.get("/api/v1/devices/gh-1/commands", headers=other)) == {"commands": []}
    url = f"/api/v1/devices/gh-1/commands/{mine['id']}"
    assert client.get(url, headers=other).status_code == 404
    assert client.delete(url, headers=other).status_code == 404
    assert client.get(url + "?org=main", headers=other).status_code == 403
    viewer = {"email": "vi@other.io", "role": "viewer", "password": "correct horse battery"}
    ok(client.post("/api/v1/users", headers=other, json=viewer), 201)
    form["username"] = viewer["email"]
    seen = bearer(client, form)
    assert client.get("/api/v1/devices/gh-1/commands", headers=seen).status_code == 200
    refused = client.post("/api/v1/devices/gh-1/commands", headers=seen, json={"name": "x"})
    assert refused.status_code == 403
    # a token for one device sends commands to that device only
    token = {"permissions": ["write:devices/gh-1"]}
    scoped = "Token " + ok(client.post("/api/v1/tokens", json=token), 201)["token"]
    device(client, "gh-2")
    one = {"Authorization": scoped}
    for target, status in (("gh-1", 201), ("gh-2", 403)):
        url = f"/api/v1/devices/{target}/commands"
        assert client.post(url, headers=one, json={"name": "x"}).status_code == status


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/commands", {"name": "no spaces"}, "name"),
        ("POST", "/commands", {"name": "x" * 129}, "name"),
        ("POST", "/commands", {"name": "a", "timeoutSeconds": 0}, "timeoutSeconds"),
        ("POST", "/commands", {"name": "a", "timeoutSeconds": 2_592_001}, "timeoutSeconds"),
        ("POST", "/commands", {"name": "a", "colour": "red"}, "colour"),
        ("POST", "/commands", {"params": {}}, "name"),
        ("GET", "/commands?state=done", None, "state"),
        ("GET", "/commands?limit=0", None, "limit"),
        ("GET", "/commands/pending?wait=61", None, "wait"),
        ("POST", "/commands/{id}/response", {"status": "done"}, "status"),
        ("POST", "/commands/{id}/response", {"status": "failed", "error": "x" * 5000}, "error"),
        ("GET", "/status-history?before=-1", None, "before"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: TestClient, method: str, path: str, body: Any, field: str
) -> None:
    thing = device(client, "gh-1")
    made = send(client, "gh-1")
    url = "/api/v1/devices/gh-1" + path.replace("{id}", made["id"])
    headers = thing if "pending" in path or "response" in path else AUTH
    r = client.request(method, url, json=body, headers=headers)
    assert r.status_code == 400, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


def test_a_big_params_object_is_a_400(client: TestClient) -> None:
    device(client, "gh-1")
    r = client.post("/api/v1/devices/gh-1/commands", json={"name": "a", "params": "x" * 70_000})
    assert (r.status_code, r.json()["code"]) == (400, "invalid")
    assert client.post("/api/v1/devices/ghost/commands", json={"name": "a"}).status_code == 404


def test_commands_survive_a_restart_of_the_server(app_settings: Settings) -> None:
    with TestClient(create_app(app_settings), headers=AUTH) as c:
        thing = device(c, "gh-1")
        made = send(c, "gh-1", params={"delay": 5})
        delivered = send(c, "gh-1", "second")
        c.app.state.registry.commands.mark_delivered(  # type: ignore[attr-defined]
            c.app.state.registry.org_by_name("main").id,  # type: ignore[attr-defined]
            delivered["id"],
        )
    with TestClient(create_app(app_settings), headers=AUTH) as c:
        listed = ok(c.get("/api/v1/devices/gh-1/commands"))["commands"]
        states = {x["name"]: x["state"] for x in listed}
        assert states == {"reboot": "queued", "second": "delivered"}
        polled = ok(c.get("/api/v1/devices/gh-1/commands/pending", headers=thing))
        assert [(p["id"], p["params"]) for p in polled] == [(made["id"], {"delay": 5})]


def test_the_device_record_shows_its_status(client: TestClient) -> None:
    thing = device(client, "gh-1", expectedIntervalSeconds=60)
    record = ok(client.get("/api/v1/devices/gh-1"))
    assert {k: record[k] for k in ("status", "connected", "expectedIntervalSeconds")} == {
        "status": "offline",
        "connected": False,
        "expectedIntervalSeconds": 60,
    }
    assert (record["lastConnect"], record["lastDisconnect"], record["statusChangedAt"]) == (
        None,
        None,
        None,
    )
    url = "/api/v1/devices/gh-1/telemetry"
    sent = client.post(url, headers={**thing, "Content-Type": "text/plain"}, content=b"env t=1")
    assert sent.status_code == 204
    registry = client.app.state.registry  # type: ignore[attr-defined]
    registry.devices.flush_seen()  # what the app does every 5 s, and the sweep every 2 s
    registry.devices.sweep_status()
    record = ok(client.get("/api/v1/devices/gh-1", headers=thing))
    assert (record["status"], record["statusChangedAt"] is not None) == ("online", True)
    changes = ok(client.get("/api/v1/devices/gh-1/status-history", headers=thing))["history"]
    assert [(c["status"], c["reason"]) for c in changes] == [("online", "data")]
    org_id = registry.org_by_name("main").id
    registry.devices.set_connected(org_id, "gh-1", True, "connect")
    record = ok(client.get("/api/v1/devices", params={"search": "gh-1"}))["devices"][0]
    assert (record["connected"], record["lastConnect"] is not None) == (True, True)
    patched = ok(client.patch("/api/v1/devices/gh-1", json={"expectedIntervalSeconds": 0}))
    assert patched["expectedIntervalSeconds"] is None
    bad = client.patch("/api/v1/devices/gh-1", json={"expectedIntervalSeconds": -5})
    assert bad.status_code == 400
    assert client.get("/api/v1/devices/ghost/status-history").status_code == 404
    other = device(client, "gh-2")
    assert client.get("/api/v1/devices/gh-1/status-history", headers=other).status_code == 403


def test_bulk_import_takes_expected_intervals(client: TestClient) -> None:
    csv = "id,name,expected_interval_seconds\npump-1,Pump,300\npump-2,,\n"
    headers = {"Content-Type": "text/csv"}
    made = ok(client.post("/api/v1/devices/bulk", content=csv, headers=headers), 201)
    assert [d["expectedIntervalSeconds"] for d in made["devices"]] == [300, None]
    bad = "id,expected_interval_seconds\npump-3,5m\npump-4,0\n"
    r = client.post("/api/v1/devices/bulk", content=bad, headers=headers)
    assert r.status_code == 400 and [e["line"] for e in r.json()["errors"]] == [2, 3]


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_sends_lists_and_cancels_commands(client: TestClient) -> None:
    cli = Cli(client)
    made = cli.json("devices", "create", "pump-3", "--expected-interval", "5m")
    assert made["expectedIntervalSeconds"] == 300
    updated = cli.json("devices", "update", "pump-3", "--expected-interval", "90")
    assert updated["expectedIntervalSeconds"] == 90
    assert "Status" in table(cli.ok("devices", "list"))[0]
    options = ("--params", '{"delay": 5}', "--timeout", "1h")
    sent = cli.json("devices", "commands", "send", "pump-3", "reboot", *options)
    assert (sent["name"], sent["params"], sent["state"]) == ("reboot", {"delay": 5}, "queued")
    other = cli.ok("devices", "commands", "send", "pump-3", "calibrate")
    assert table(other)[0][:3] == ["ID", "Name", "State"]
    rows = table(cli.ok("devices", "commands", "list", "pump-3"))
    assert [r[1:3] for r in rows[1:]] == [["calibrate", "queued"], ["reboot", "queued"]]
    canceled = cli.ok("devices", "commands", "cancel", "pump-3", sent["id"])
    assert canceled == f"Command {sent['id']} of pump-3 canceled.\n"
    listed = cli.json("devices", "commands", "list", "pump-3", "--state", "canceled")
    assert [c["id"] for c in listed["commands"]] == [sent["id"]]
    assert "final already" in cli.fails("devices", "commands", "cancel", "pump-3", sent["id"])
    bad = cli("devices", "commands", "send", "pump-3", "x", "--params", "{")
    assert bad.exit_code == 2 and "--params" in bad.stderr
