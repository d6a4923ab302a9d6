"""Refused MQTT messages reach the device's owner (docs/mqtt.md): a real ``motes serve`` with
paho clients, and the registry's store of them on every engine."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from motes.mqtt.platform import Rejection as Refused
from motes.mqtt.rejections import RejectionBuffer
from motes.registry.common import SYSTEM
from motes.registry.devices import DeviceSpec
from motes.registry.rejections import KEEP, MAX_ERROR, MAX_TOPIC
from motes.registry.service import Registry
from motes.registry.tables import device_rejections
from tests.conftest import AUTH, ServerProcess, expect, free_port, running_server, start_server
from tests.mqtt_clients import V5, V311, Paho

# -- the store, on every engine ----------------------------------------------------------------


@pytest.fixture
def registry(migrated_registry_url: str) -> Iterator[Registry]:
    registry = Registry.open(migrated_registry_url)
    registry.bootstrap("main", "telemetry", None)
    yield registry
    registry.close()


def org_of(registry: Registry) -> str:
    return registry.org_by_name("main").id


def item(org: str, device: str | None, n: int, error: str = "bad") -> tuple[Any, ...]:
    return (org, device, 1_000 + n, "mqtt", f"devices/{device}/telemetry/{n}", error)


def stored(registry: Registry, device: str | None) -> int:
    where = (
        device_rejections.c.device_id.is_(None)
        if device is None
        else device_rejections.c.device_id == device
    )
    with registry.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(device_rejections).where(where)
        return int(conn.execute(query).scalar_one())


def test_record_and_list_newest_first_with_paging(registry: Registry) -> None:
    org = org_of(registry)
    long_error, long_topic = "e" * 5000, "t/" * 1000
    registry.rejections.record(
        [
            item(org, "gh-1", 1),
            item(org, "gh-2", 2),
            item(org, None, 3),  # a token's refusal: nobody's device
            (org, "gh-1", 1_004, "mqtt", long_topic, long_error),
            item("other-org", "gh-1", 5),
        ]
    )
    newest, oldest = registry.rejections.list(org, "gh-1")
    assert (newest.at_ns, oldest.at_ns) == (1_004, 1_001)
    assert newest.id > oldest.id
    assert (len(newest.error), len(newest.topic)) == (MAX_ERROR, MAX_TOPIC)
    assert (oldest.transport, oldest.topic, oldest.error) == (
        "mqtt",
        "devices/gh-1/telemetry/1",
        "bad",
    )
    assert [r.at_ns for r in registry.rejections.list(org, "gh-1", limit=1)] == [1_004]
    assert registry.rejections.list(org, "gh-1", before=newest.id) == [oldest]
    assert [r.at_ns for r in registry.rejections.list(org, "gh-2")] == [1_002]
    assert [r.at_ns for r in registry.rejections.list("other-org", "gh-1")] == [1_005]
    assert stored(registry, None) == 1
    registry.rejections.record([])  # nothing to do


def test_each_device_keeps_its_newest_thousand(registry: Registry) -> None:
    org = org_of(registry)
    registry.rejections.record([item(org, "quiet", 0)])
    registry.rejections.record([item(org, "noisy", n) for n in range(600)])
    registry.rejections.record([item(org, "noisy", n) for n in range(600, 1_050)])
    kept = registry.rejections.list(org, "noisy", limit=KEEP + 10)
    assert [r.at_ns for r in kept] == [1_000 + n for n in reversed(range(50, 1_050))]
    # one batch larger than what is kept: its newest
    registry.rejections.record([item(org, None, n) for n in range(1_200)])
    assert stored(registry, None) == KEEP
    registry.rejections.record([item(org, None, 5_000)])
    assert stored(registry, None) == KEEP
    assert stored(registry, "quiet") == 1  # others' are left alone


def test_deleting_a_device_deletes_its_rejections(registry: Registry) -> None:
    org = org_of(registry)
    for name in ("gone", "stays"):
        registry.devices.create(org, SYSTEM, DeviceSpec(name))
    registry.rejections.record([item(org, "gone", 1), item(org, "stays", 2)])
    registry.devices.delete(org, "gone", SYSTEM)
    assert registry.rejections.list(org, "gone") == []
    assert len(registry.rejections.list(org, "stays")) == 1


# -- the buffer between the event loop and the registry -------------------------------------


def test_the_buffer_keeps_the_newest_and_retries_a_failed_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[tuple[Any, ...]] = []
    down = True

    def record(items: list[tuple[Any, ...]]) -> None:
        if down:
            raise RuntimeError("database is down")
        written.extend(items)

    buffer = RejectionBuffer(record, limit=3)
    for n in range(5):
        buffer.add(Refused(n, "org1", "gh-1", f"devices/gh-1/telemetry/{n}", "bad"))
    with caplog.at_level(logging.WARNING, "motes.mqtt"):
        asyncio.run(buffer.flush())  # fails: kept for the next flush
    assert "2 refused MQTT messages were not recorded" in caplog.text
    down = False
    asyncio.run(buffer.flush())
    assert [(i[0], i[1], i[2], i[3]) for i in written] == [
        ("org1", "gh-1", n, "mqtt") for n in (2, 3, 4)
    ]
    asyncio.run(buffer.flush())  # nothing left
    assert len(written) == 3


# -- a real server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("rejections") / "data", mqtt_port=free_port()
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        yield client


def connected(server: ServerProcess, http: httpx.Client, name: str, version: int = V5) -> Paho:
    key = expect(http.post("/api/v1/devices", json={"id": name}), 201)["key"]
    dev = Paho(server.mqtt_port, name, name, key, version)
    assert dev.connect()[0] == 0
    return dev


def rejections(http: httpx.Client, device: str, **headers: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = expect(
        http.get(f"/api/v1/devices/{device}/rejections", headers=headers)
    )["rejections"]
    return found


def until(check: Callable[[], Any], seconds: float = 10) -> Any:
    deadline = time.monotonic() + seconds
    while not (got := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return got


slow = pytest.mark.slow  # these start server processes


@slow
@pytest.mark.parametrize(("version", "ack"), [(V5, 0x99), (V311, 0)])
def test_a_bad_payload_is_shown_to_the_owner(
    server: ServerProcess, http: httpx.Client, version: int, ack: int
) -> None:
    name = f"bad-lp-{version}"
    dev = connected(server, http, name, version)
    topic = f"devices/{name}/telemetry"
    assert dev.publish(topic, "env temp=") == ack  # 3.1.1: acked, not resent forever
    dev.close()
    (entry,) = until(lambda: rejections(http, name))
    assert (entry["transport"], entry["topic"]) == ("mqtt", topic)
    assert entry["error"].startswith("line 1: ")
    assert "nothing stored" in entry["error"]
    assert entry["time"].endswith("Z")


@slow
def test_a_publish_to_another_devices_topic_is_shown_to_the_publisher(
    server: ServerProcess, http: httpx.Client
) -> None:
    intruder = connected(server, http, "intruder")
    victim = connected(server, http, "victim")
    assert intruder.publish("devices/victim/telemetry", "env temp=66") == 0x87
    intruder.close()
    victim.close()
    (entry,) = until(lambda: rejections(http, "intruder"))
    assert entry["topic"] == "devices/victim/telemetry"
    assert "not authorized to publish" in entry["error"]
    assert rejections(http, "victim") == []
    # the device itself may read its own, not another's
    key = expect(http.post("/api/v1/devices/intruder/key"), 201)["key"]
    own = rejections(http, "intruder", Authorization=f"Thing {key}")
    assert [e["id"] for e in own] == [entry["id"]]
    r = http.get("/api/v1/devices/victim/rejections", headers={"Authorization": f"Thing {key}"})
    assert r.status_code == 403


@slow
def test_another_orgs_token_sees_nothing(server: ServerProcess, http: httpx.Client) -> None:
    dev = connected(server, http, "private")
    assert dev.publish("devices/private/telemetry", "no good") == 0x99
    dev.close()
    assert until(lambda: rejections(http, "private"))
    owner = {"email": "rejections-other@example.com", "password": "other-org-pw-1"}
    expect(http.post("/api/v1/orgs", json={"name": "rejections-other", "owner": owner}), 201)
    form = {"grant_type": "password", "username": owner["email"], "password": owner["password"]}
    jwt = expect(http.post("/oauth/token", data=form, headers={"Authorization": ""}))
    bearer = {"Authorization": f"Bearer {jwt['access_token']}"}
    token = expect(http.post("/api/v1/tokens", json={"description": "b"}, headers=bearer), 201)
    other = {"Authorization": f"Token {token['token']}"}
    r = http.get("/api/v1/devices/private/rejections", headers=other)
    assert r.status_code in (403, 404), r.text
    assert "no good" not in r.text


@slow
def test_rejections_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start_server(data, mqtt_port=free_port())
    try:
        with httpx.Client(base_url=srv.url, timeout=30, headers=AUTH) as http:
            dev = connected(srv, http, "restarted")
            # stopped at once: the last flush on the way out writes it
            assert dev.publish("devices/restarted/telemetry", "env temp=") == 0x99
            dev.close()
        assert srv.stop(signal.SIGTERM) == 0
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    again = start_server(data, mqtt_port=free_port())
    try:
        with httpx.Client(base_url=again.url, timeout=30, headers=AUTH) as http:
            (entry,) = rejections(http, "restarted")
            assert entry["topic"] == "devices/restarted/telemetry"
    finally:
        again.stop()
