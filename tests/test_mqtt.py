"""The embedded broker against a real ``motes serve``, with real clients: paho-mqtt (3.1.1
and 5) and Debian's mosquitto_pub / mosquitto_sub."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from motes.mqtt import packets as pk
from tests.conftest import (
    AUTH,
    ServerProcess,
    expect,
    free_port,
    require_tool,
    running_server,
    start_server,
)
from tests.mqtt_clients import V5, V311, Paho, mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("mqtt") / "data", mqtt_port=free_port()) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        yield client


_made: dict[str, str] = {}


def device(http: httpx.Client, name: str) -> str:
    """A device with a key (made once per module); answers the key."""
    if name not in _made:
        _made[name] = expect(http.post("/api/v1/devices", json={"id": name}), 201)["key"]
    return _made[name]


def client(server: ServerProcess, http: httpx.Client, name: str, version: int = V5) -> Paho:
    return Paho(server.mqtt_port, name, name, device(http, name), version)


def points(http: httpx.Client, measurement: str, *tags: str) -> list[list[Any]]:
    params = [("bucket", "telemetry"), ("measurement", measurement), ("start", "-1h")]
    params += [("tag", t) for t in tags]
    r = http.get("/api/v1/query", params=params)
    if r.status_code == 404:  # no such measurement (yet)
        return []
    tables = expect(r)["tables"]
    return [row for table in tables for row in table["values"]]


def until(check: Any, seconds: float = 5) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# -- authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5])
def test_device_key_accepted_and_wrong_credentials_refused(
    server: ServerProcess, http: httpx.Client, version: int
) -> None:
    key = device(http, "auth-dev")
    ok = Paho(server.mqtt_port, "auth-dev", "auth-dev", key, version)
    assert ok.connect()[0] == 0
    ok.close()
    refused = 0x86  # bad user name or password (paho reports 3.1.1 code 4 as 0x86)
    for username, password in [("auth-dev", "mdk_wrong"), ("other-name", key), (None, None)]:
        bad = Paho(server.mqtt_port, "x", username, password, version)
        assert bad.connect()[0] == refused, (username, password)
        bad.close()


def test_api_token_connects_and_reads_telemetry(server: ServerProcess, http: httpx.Client) -> None:
    app = Paho(server.mqtt_port, "dashboard", "ops", "test-operator-token")
    assert app.connect()[0] == 0
    assert app.subscribe("devices/+/telemetry") == [1]
    dev = client(server, http, "tok-dev")
    dev.connect()
    assert dev.publish("devices/tok-dev/telemetry", "env temp=20.5") == 0
    got = app.next()
    assert (got.topic, got.payload) == ("devices/tok-dev/telemetry", b"env temp=20.5")
    dev.close()
    app.close()


# -- telemetry -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5])
def test_qos1_telemetry_is_stored_before_the_puback(
    server: ServerProcess, http: httpx.Client, version: int
) -> None:
    name = f"qos1-{version}"
    dev = client(server, http, name, version)
    dev.connect()
    for i in range(20):
        assert dev.publish(f"devices/{name}/telemetry", f"env,run=q1 temp={i}") == 0
    # acknowledged means durable: visible at once, no waiting
    assert sorted(r[1] for r in points(http, "env", f"device={name}")) == list(range(20))
    dev.close()


def test_qos2_is_stored_once_and_seed000_json_updates_the_record(
    server: ServerProcess, http: httpx.Client
) -> None:
    dev = client(server, http, "qos2-dev")
    dev.connect()
    now_ms = time.time_ns() // 1_000_000
    batch = {
        "deviceinfo": {"fw_ver": "2.1.0", "batt_lvl": 87},
        "tsdata": [{"timestamp": now_ms + i, "soil": 30.0 + i} for i in range(3)],
    }
    assert dev.publish("devices/qos2-dev/telemetry", json.dumps(batch), qos=2) == 0
    rows = points(http, "telemetry", "device=qos2-dev")
    assert [r[1] for r in rows] == [30.0, 31.0, 32.0]
    record = expect(http.get("/api/v1/devices/qos2-dev"))
    assert record["attributes"]["fw_ver"] == "2.1.0"
    dev.close()


def test_bad_payload_gets_payload_format_invalid_and_the_broker_stays_up(
    server: ServerProcess, http: httpx.Client
) -> None:
    dev = client(server, http, "bad-payload")
    dev.connect()
    assert dev.publish("devices/bad-payload/telemetry", "this is not line protocol") == 0x99
    assert dev.publish("devices/bad-payload/telemetry/json", "{not json") == 0x99
    assert dev.publish("devices/bad-payload/telemetry", "env temp=1") == 0  # same connection
    dev.close()
    old = client(server, http, "bad-payload-311", V311)
    old.connect()
    # 3.1.1 has no negative acknowledgement: acked (not retried forever), nothing stored
    assert old.publish("devices/bad-payload-311/telemetry", "garbage") == 0
    assert points(http, "garbage") == []
    old.close()


# -- ACLs ------------------------------------------------------------------------------------


def test_devices_touch_only_their_own_topics(server: ServerProcess, http: httpx.Client) -> None:
    a = client(server, http, "acl-a")
    b = client(server, http, "acl-b")
    a.connect()
    b.connect()
    assert b.subscribe("devices/acl-b/#") == [1]
    assert a.publish("devices/acl-b/telemetry", "env temp=66") == 0x87
    assert a.publish("devices/acl-a/commands/c1", "{}") == 0x87  # commands come down only
    assert a.publish("somewhere/else", "x") == 0x87
    b.none_within(0.3)
    assert points(http, "env", "device=acl-b") == []
    for topic_filter in [
        "devices/acl-b/#",
        "devices/+/telemetry",
        "#",
        "$SYS/#",
        "channels/+/messages",
    ]:
        assert a.subscribe(topic_filter) == [0x87], topic_filter
    assert a.subscribe("devices/acl-a/commands/+") == [1]
    a.close()
    b.close()


def test_channels_only_for_connected_devices(server: ServerProcess, http: httpx.Client) -> None:
    for name in ("ch-a", "ch-b", "ch-out"):
        device(http, name)
    expect(http.post("/api/v1/channels", json={"id": "plant-1"}), 201)
    for name in ("ch-a", "ch-b"):
        expect(http.put(f"/api/v1/channels/plant-1/devices/{name}"), 204)
    a, b, out = (client(server, http, n) for n in ("ch-a", "ch-b", "ch-out"))
    for c in (a, b, out):
        c.connect()
    assert b.subscribe("channels/plant-1/messages/#") == [1]
    assert out.subscribe("channels/plant-1/messages/#") == [0x87]
    senml = json.dumps([{"bn": "line-", "n": "temp", "u": "Cel", "v": 23.5}])
    assert a.publish("channels/plant-1/messages/line1", senml) == 0
    got = b.next()
    assert got.topic == "channels/plant-1/messages/line1"
    assert out.publish("channels/plant-1/messages", senml) == 0x87
    rows = points(http, "messages", "channel=plant-1", "subtopic=line1")
    assert len(rows) == 1
    b.none_within(0.3)
    for c in (a, b, out):
        c.close()


def test_orgs_have_separate_topic_spaces(server: ServerProcess, http: httpx.Client) -> None:
    owner = {"email": "mqtt-other@example.com", "password": "other-org-pw-1"}
    expect(http.post("/api/v1/orgs", json={"name": "mqtt-other", "owner": owner}), 201)
    form = {"grant_type": "password", "username": owner["email"], "password": owner["password"]}
    jwt = expect(http.post("/oauth/token", data=form, headers={"Authorization": ""}))
    headers = {"Authorization": f"Bearer {jwt['access_token']}"}
    made = http.post("/api/v1/devices", json={"id": "same-name"}, headers=headers)
    key_b = expect(made, 201)["key"]
    spy = Paho(server.mqtt_port, "spy", "ops", "test-operator-token")  # org "main" operator
    spy.connect()
    assert spy.subscribe("#") == [1]
    b = Paho(server.mqtt_port, "same-name", "same-name", key_b)
    assert b.connect()[0] == 0
    assert b.publish("devices/same-name/telemetry", "env temp=1") == 0
    spy.none_within(0.5)
    # a device of the spy's own org with the same id is seen (the subscription works)
    own = client(server, http, "same-name")
    own.connect()
    assert own.publish("devices/same-name/telemetry", "env temp=2") == 0
    assert spy.next().payload == b"env temp=2"
    own.close()
    b.close()
    spy.close()


# -- sessions, retained, will, keep-alive ----------------------------------------------------


def test_retained_message_reaches_later_subscribers(
    server: ServerProcess, http: httpx.Client
) -> None:
    a = client(server, http, "ret-a")
    a.connect()
    # 0x10: no matching subscribers, a success code; the message is kept all the same
    assert a.publish("devices/ret-a/state", "on", qos=1, retain=True) in (0, 0x10)
    a.close()
    app = Paho(server.mqtt_port, "ret-app", "ops", "test-operator-token")
    app.connect()
    app.subscribe("devices/ret-a/state")
    got = app.next()
    assert (got.payload, got.retain) == (b"on", True)
    app.close()


@pytest.mark.parametrize("version", [V311, V5])
def test_persistent_session_keeps_subscriptions_and_queues_qos1(
    server: ServerProcess, http: httpx.Client, version: int
) -> None:
    name = f"persist-{version}"
    sub = client(server, http, name, version)
    assert sub.connect(clean=False, session_expiry=300) == (0, False)
    assert sub.subscribe(f"devices/{name}/inbox", qos=1) == [1]
    sub.close()
    app = Paho(server.mqtt_port, f"sender-{version}", "ops", "test-operator-token")
    app.connect()
    for i in range(3):
        assert app.publish(f"devices/{name}/inbox", f"m{i}", qos=1) in (0, 0x10)
    app.close()
    again = client(server, http, name, version)
    assert again.connect(clean=False, session_expiry=300) == (0, True)  # session present
    assert [again.next().payload for _ in range(3)] == [b"m0", b"m1", b"m2"]
    again.close()


def test_last_will_on_lost_connection_and_device_goes_offline(
    server: ServerProcess, http: httpx.Client
) -> None:
    watcher = Paho(server.mqtt_port, "will-watch", "ops", "test-operator-token")
    watcher.connect()
    watcher.subscribe("devices/will-dev/status")
    dev = client(server, http, "will-dev")
    dev.connect(will=("devices/will-dev/status", b"offline", 1, False))
    assert until(lambda: expect(http.get("/api/v1/devices/will-dev"))["connected"])
    dev.drop()
    got = watcher.next()
    assert got.payload == b"offline"

    def offline() -> Any:
        record = expect(http.get("/api/v1/devices/will-dev"))
        return record if record["status"] == "offline" else None

    assert until(offline)["connected"] is False
    history = expect(http.get("/api/v1/devices/will-dev/status-history"))["history"]
    assert [(h["status"], h["reason"]) for h in history[:2]] == [
        ("offline", "last-will"),
        ("online", "connect"),
    ]
    watcher.close()


def test_keep_alive_timeout_closes_a_silent_client(
    server: ServerProcess, http: httpx.Client
) -> None:
    key = device(http, "silent")
    sock = socket.create_connection(("127.0.0.1", server.mqtt_port))
    sock.sendall(_connect_packet("silent", "silent", key, keepalive=1))
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    sock.settimeout(5)
    started = time.monotonic()
    assert sock.recv(10) == b""  # closed by the broker, 1.5 x keep-alive
    assert 1.0 < time.monotonic() - started < 3.5
    sock.close()


# -- commands ------------------------------------------------------------------------------


def test_command_round_trip_over_mqtt(server: ServerProcess, http: httpx.Client) -> None:
    dev = client(server, http, "cmd-dev")
    dev.connect()
    queued = expect(http.post("/api/v1/devices/cmd-dev/commands", json={"name": "reboot"}), 201)
    assert queued["state"] == "queued"  # not subscribed yet
    assert dev.subscribe("devices/cmd-dev/commands/+") == [1]
    got = dev.next()
    body = json.loads(got.payload)
    assert got.topic == f"devices/cmd-dev/commands/{queued['id']}"
    assert (body["id"], body["name"]) == (queued["id"], "reboot")
    state = until(
        lambda: (
            expect(http.get(f"/api/v1/devices/cmd-dev/commands/{queued['id']}"))["state"]
            == "delivered"
        )
    )
    assert state
    live = expect(
        http.post("/api/v1/devices/cmd-dev/commands", json={"name": "blink", "params": {"n": 3}}),
        201,
    )
    got = dev.next()
    assert json.loads(got.payload)["params"] == {"n": 3}
    answer = json.dumps({"status": "succeeded", "result": {"blinked": 3}})
    assert dev.publish(f"devices/cmd-dev/commands/{live['id']}/response", answer) == 0
    done = expect(http.get(f"/api/v1/devices/cmd-dev/commands/{live['id']}"))
    assert done["state"] == "succeeded"
    dev.close()


def test_command_by_http_polling(server: ServerProcess, http: httpx.Client) -> None:
    key = device(http, "poll-dev")
    made = expect(http.post("/api/v1/devices/poll-dev/commands", json={"name": "sync"}), 201)
    mine = {"Authorization": f"Device {key}"}
    pending = expect(http.get("/api/v1/devices/poll-dev/commands/pending", headers=mine))
    assert [c["id"] for c in pending] == [made["id"]]
    body = {"status": "failed", "error": "disk full"}
    url = f"/api/v1/devices/poll-dev/commands/{made['id']}/response"
    assert expect(http.post(url, json=body, headers=mine))["state"] == "failed"


# -- transports and tools ----------------------------------------------------------------------


def test_websocket_transport(server: ServerProcess, http: httpx.Client) -> None:
    ws = Paho(server.port, "ws-dev", "ws-dev", device(http, "ws-dev"), transport="websockets")
    assert ws.connect()[0] == 0
    assert ws.publish("devices/ws-dev/telemetry", "env temp=7") == 0
    assert [r[1] for r in points(http, "env", "device=ws-dev")] == [7]
    ws.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    env = {
        "MOTES_MQTT_TLS_CERT": str(cert),
        "MOTES_MQTT_TLS_KEY": str(key),
        "MOTES_MQTT_TLS_PORT": str(tls_port),
    }
    srv = start_server(tmp_path / "data", env=env)
    try:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as http_:
            made = expect(http_.post("/api/v1/devices", json={"id": "tls-dev"}), 201)
            dev = Paho(tls_port, "tls-dev", "tls-dev", made["key"], tls_ca=str(cert))
            assert dev.connect()[0] == 0
            assert dev.publish("devices/tls-dev/telemetry", "env temp=9") == 0
            assert [r[1] for r in points(http_, "env", "device=tls-dev")] == [9]
            dev.close()
        with socket.create_connection(("127.0.0.1", tls_port)) as plain:  # no TLS, no MQTT
            plain.sendall(_connect_packet("x", "tls-dev", made["key"]))
            plain.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert not plain.recv(4).startswith(b"\x20")  # never a CONNACK
    finally:
        srv.stop()


def test_mosquitto_pub_and_sub(server: ServerProcess, http: httpx.Client) -> None:
    require_tool("mosquitto_pub")
    require_tool("mosquitto_sub")
    key = device(http, "mq-dev")
    port = str(server.mqtt_port)
    sub = __import__("subprocess").Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-u", "ops", "-P", "test-operator-token",
         "-t", "devices/mq-dev/telemetry", "-C", "1", "-W", "10", "-q", "1"],
        stdout=-1, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    for version in ("mqttv311", "mqttv5"):
        done = mosquitto(
            "mosquitto_pub", server.mqtt_port, "-V", version, "-u", "mq-dev", "-P", key,
            "-i", "mq-dev", "-q", "1", "-t", "devices/mq-dev/telemetry", "-m", "env temp=3",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    out, _ = sub.communicate(timeout=15)
    assert out.strip() == "env temp=3"
    assert len(points(http, "env", "device=mq-dev")) >= 1
    refused = mosquitto(
        "mosquitto_pub", server.mqtt_port, "-u", "mq-dev", "-P", "mdk_nope", "-t", "x", "-m", "1"
    )
    assert refused.returncode != 0
    assert "not authorised" in refused.stderr.lower() or "bad user" in refused.stderr.lower()


def test_sys_topics_for_the_operator_only(server: ServerProcess, http: httpx.Client) -> None:
    ops = Paho(server.mqtt_port, "sys-ops", "ops", "test-operator-token")
    ops.connect()
    assert ops.subscribe("$SYS/broker/version") == [1]
    assert ops.next(timeout=15).payload.startswith(b"motes")
    ops.close()
    scoped = {"description": "reads", "permissions": ["read:devices", "read:buckets"]}
    token = expect(http.post("/api/v1/tokens", json=scoped), 201)["token"]
    reader = Paho(server.mqtt_port, "sys-reader", "app", token)
    assert reader.connect()[0] == 0
    assert reader.subscribe("$SYS/#") == [0x87]  # not the operator
    assert reader.subscribe("devices/+/telemetry") == [1]
    reader.close()


# -- hostile traffic -------------------------------------------------------------------------


def test_malformed_and_hostile_traffic_leaves_others_unaffected(
    server: ServerProcess, http: httpx.Client
) -> None:
    dev = client(server, http, "steady")
    dev.connect()
    junk = [
        b"\xff\xff\xff\xff\xff",  # bad type and a 5-byte length
        b"\x10\x05\x00\x04MQTT",  # CONNECT cut short, then nothing
        b"\x30\x03\x00\x01a",  # PUBLISH before CONNECT
        b"\x10" + b"\xff\xff\xff\x7f",  # 256 MB announced
        b"GET / HTTP/1.1\r\n\r\n",
    ]
    for data in junk:
        s = socket.create_connection(("127.0.0.1", server.mqtt_port))
        s.sendall(data)
        s.settimeout(12)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            s.recv(100)
        s.close()
    flood = [socket.create_connection(("127.0.0.1", server.mqtt_port)) for _ in range(300)]
    assert dev.publish("devices/steady/telemetry", "env temp=1") == 0
    for s in flood:
        s.close()
    assert dev.publish("devices/steady/telemetry", "env temp=2") == 0
    fresh = client(server, http, "steady-2")
    assert fresh.connect()[0] == 0
    fresh.close()
    dev.close()


def _connect_packet(client_id: str, user: str, password: str, keepalive: int = 60) -> bytes:
    def s(x: str) -> bytes:
        raw = x.encode()
        return len(raw).to_bytes(2, "big") + raw

    body = s("MQTT") + bytes([4, 0xC2]) + keepalive.to_bytes(2, "big")
    body += s(client_id) + s(user) + s(password)
    return bytes([0x10, len(body)]) + body


# -- durability across kill -9 -----------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_acknowledged_publishes_survive_kill_9(tmp_path: Path, qos: int) -> None:
    """QoS 1: PUBACK, QoS 2: PUBREC: both leave only once the message is durable."""
    srv = start_server(tmp_path / "data", mqtt_port=free_port())
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as http_:
        key = expect(http_.post("/api/v1/devices", json={"id": "crash"}), 201)["key"]
    sock = socket.create_connection(("127.0.0.1", srv.mqtt_port))
    sock.sendall(_connect_packet("crash", "crash", key))
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    acked: set[int] = set()
    sent = 0
    buf = b""
    sock.settimeout(0.5)
    deadline = time.monotonic() + 3
    base = time.time_ns()
    while time.monotonic() < deadline:
        for _ in range(50):
            sent += 1
            topic = b"devices/crash/telemetry"
            payload = f"k n={sent} {base + sent}".encode()
            body = (
                len(topic).to_bytes(2, "big")
                + topic
                + (sent % 65535 + 1).to_bytes(2, "big")
                + payload
            )
            sock.sendall(bytes([0x30 | qos << 1, len(body)]) + body)
        with contextlib.suppress(TimeoutError):
            buf += sock.recv(65536)
        while len(buf) >= 4:
            assert buf[0] == (0x40 if qos == 1 else 0x50)
            acked.add(int.from_bytes(buf[2:4], "big"))
            buf = buf[4:]
        if len(acked) > 2000:
            break
    srv.proc.kill()  # kill -9 while publishes are in flight
    srv.proc.wait()
    sock.close()
    assert acked
    again = start_server(tmp_path / "data")
    with httpx.Client(base_url=again.url, headers=AUTH, timeout=30) as http_:
        rows = points(http_, "k", "device=crash")
    stored = {int(r[1]) for r in rows}
    # every acked packet id's message is stored (ids 2..65535 are unique in this run)
    lost = {pid for pid in acked if (pid - 1) not in stored}
    assert not lost, f"{len(lost)} acknowledged message(s) lost"
    again.stop()


def test_session_takeover_closes_the_first_connection(
    server: ServerProcess, http: httpx.Client
) -> None:
    first = client(server, http, "twice")
    first.connect()
    second = client(server, http, "twice")
    assert second.connect()[0] == 0
    assert first.disconnects.get(timeout=5) == 0x8E  # session taken over
    assert second.publish("devices/twice/telemetry", "env temp=5") == 0
    second.close()


def test_qos2_delivery_and_shared_subscriptions(server: ServerProcess, http: httpx.Client) -> None:
    subs = [Paho(server.mqtt_port, f"share-{i}", "ops", "test-operator-token") for i in range(2)]
    for s in subs:
        s.connect()
        assert s.subscribe("$share/workers/devices/share-dev/jobs", qos=2) == [2]
    exact = Paho(server.mqtt_port, "exact", "ops", "test-operator-token")
    exact.connect()
    assert exact.subscribe("devices/share-dev/jobs", qos=2) == [2]
    dev = client(server, http, "share-dev")
    dev.connect()
    for i in range(10):
        assert dev.publish("devices/share-dev/jobs", f"job-{i}", qos=2) == 0
    got = [exact.next() for _ in range(10)]
    assert [g.payload for g in got] == [f"job-{i}".encode() for i in range(10)]
    assert {g.qos for g in got} == {2}
    exact.none_within(0.3)  # exactly once
    shares = [[], []]
    for n, s in enumerate(subs):
        while True:
            try:
                shares[n].append(s.next(timeout=0.5).payload)
            except Exception:
                break
    assert sorted(shares[0] + shares[1]) == sorted(f"job-{i}".encode() for i in range(10))
    assert shares[0] and shares[1]  # the group split them
    for c in (*subs, exact, dev):
        c.close()


def test_mqtt5_properties_are_forwarded_and_expired_messages_dropped(
    server: ServerProcess, http: httpx.Client
) -> None:
    watcher = Paho(server.mqtt_port, "props-watch", "ops", "test-operator-token")
    watcher.connect(clean=False, session_expiry=60)
    watcher.subscribe("devices/props-dev/events")
    dev = client(server, http, "props-dev")
    dev.connect()
    dev.publish(
        "devices/props-dev/events",
        "door open",
        UserProperty=[("site", "lab-2")],
        ContentType="text/plain",
        MessageExpiryInterval=60,
    )
    got = watcher.next()
    assert got.properties.UserProperty == [("site", "lab-2")]
    assert got.properties.ContentType == "text/plain"
    assert 0 < got.properties.MessageExpiryInterval <= 60
    watcher.close()  # offline, session kept: what comes now is queued for it
    dev.publish("devices/props-dev/events", "short-lived", MessageExpiryInterval=1)
    dev.publish("devices/props-dev/events", "long-lived", MessageExpiryInterval=60)
    time.sleep(2.2)
    again = Paho(server.mqtt_port, "props-watch", "ops", "test-operator-token")
    assert again.connect(clean=False, session_expiry=60) == (0, True)
    assert again.next().payload == b"long-lived"  # the expired one is not delivered
    again.none_within(0.3)
    again.close()
    dev.close()


def test_a_will_on_the_telemetry_topic_is_stored(server: ServerProcess, http: httpx.Client) -> None:
    dev = client(server, http, "will-store")
    dev.connect(will=("devices/will-store/telemetry", b"power lost=true", 1, False))
    dev.drop()
    rows = until(lambda: points(http, "power", "device=will-store"))
    assert [r[1] for r in rows] == [True]


# -- runs of publishes (the hot path) ----------------------------------------------------------


class RawClient:
    """An MQTT client over a plain socket, for sending many packets in one write."""

    def __init__(self, port: int, name: str, key: str, version: int = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = bytearray()
        self.sock.sendall(pk.encode_connect(name, name, key, 60, True, version))
        first, body = self.packets(1)[0]
        assert first == 0x20 and pk.decode_connack(body)[1] == 0

    def packets(self, count: int) -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        while len(got) < count:
            frames, used = pk.split(self.buf, 1 << 20)
            del self.buf[:used]
            got += frames
            if len(got) < count:
                data = self.sock.recv(65536)
                assert data, f"connection closed after {len(got)} of {count} packets"
                self.buf += data
        return got

    def pubacks(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` PUBACKs: (packet id, reason code)."""
        frames = self.packets(count)
        assert {first for first, _ in frames} == {0x40}, frames
        return [(int.from_bytes(b[:2], "big"), b[2] if len(b) > 2 else 0) for _, b in frames]

    def close(self) -> None:
        self.sock.close()


def test_a_run_of_publishes_is_acked_in_order_each_with_its_own_code(
    server: ServerProcess, http: httpx.Client
) -> None:
    """200 publishes in one write take the hot path (one body per run). A bad message in
    the middle gets its own PUBACK code and rejection entry; the others are stored and
    acknowledged as if they had come one by one."""
    key = device(http, "run-dev")
    raw = RawClient(server.mqtt_port, "run-dev", key)
    base = time.time_ns()
    payloads = [f"runm v={i} {base + i}".encode() for i in range(1, 201)]
    payloads[99] = b"this is not line protocol"  # message 100: nothing in it is good
    payloads[149] = f"runm v=150 {base + 150}\nrunm v=oops=1".encode()  # 150: line 2 bad
    raw.sock.sendall(
        b"".join(
            pk.encode_publish("devices/run-dev/telemetry", p, 1, False, False, n, 5)
            for n, p in enumerate(payloads, 1)
        )
    )
    acks = raw.pubacks(200)
    raw.close()
    assert [packet_id for packet_id, _ in acks] == list(range(1, 201))
    codes = {packet_id: code for packet_id, code in acks if code}
    assert codes == {100: 0x99}  # message 150 was partly stored: a success with a report
    stored = until(lambda: len(points(http, "runm", "device=run-dev")) == 199 or None)
    assert stored, f"{len(points(http, 'runm', 'device=run-dev'))} points stored, not 199"
    found = until(
        lambda: (
            len(r := expect(http.get("/api/v1/devices/run-dev/rejections"))["rejections"]) >= 2
            and r
        )
    )
    errors = sorted(r["error"] for r in found)
    assert errors[0].startswith("line 1: ") and "nothing stored" in errors[0], errors
    assert errors[1].startswith("line 2: ") and "1 point(s) stored" in errors[1], errors


def test_a_run_reaches_subscribers_in_order_and_json_runs_are_stored(
    server: ServerProcess, http: httpx.Client
) -> None:
    """Seed-000 JSON and mixed QoS 0 / 1 in one write: each stored, QoS 1 ones acked in
    order, and a subscriber gets every message in the order it was published."""
    key = device(http, "run-json")
    watcher = Paho(server.mqtt_port, "run-watch", "ops", "test-operator-token")
    watcher.connect()
    assert watcher.subscribe("devices/run-json/telemetry") == [1]
    raw = RawClient(server.mqtt_port, "run-json", key, version=4)
    now_ms = time.time_ns() // 1_000_000
    payloads = [
        json.dumps({"tsdata": [{"timestamp": now_ms + i, "runj": float(i)}]}).encode()
        for i in range(1, 51)
    ]
    qos = [0 if n % 5 == 0 else 1 for n in range(1, 51)]  # every fifth: QoS 0, no PUBACK
    raw.sock.sendall(
        b"".join(
            pk.encode_publish("devices/run-json/telemetry", p, q, False, False, n if q else 0, 4)
            for n, (p, q) in enumerate(zip(payloads, qos, strict=True), 1)
        )
    )
    acks = raw.pubacks(40)
    raw.close()
    assert [packet_id for packet_id, _ in acks] == [n for n in range(1, 51) if n % 5]
    assert [watcher.next().payload for _ in payloads] == payloads
    watcher.close()
    rows = until(lambda: len(r := points(http, "telemetry", "device=run-json")) == 50 and r)
    assert rows and sorted(row[-1] for row in rows) == [float(i) for i in range(1, 51)], rows
