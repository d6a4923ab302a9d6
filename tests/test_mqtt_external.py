"""External-broker mode against a real Mosquitto we start: Motes processes consume with a
shared subscription and split the load; the auth/ACL hooks answer in EMQX's and
mosquitto-go-auth's shapes."""

from __future__ import annotations

import base64
import getpass
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import (
    AUTH,
    TOKEN,
    ServerProcess,
    expect,
    free_port,
    postgres_database,
    require_tool,
    start_server,
)
from tests.mqtt_clients import mosquitto

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto of our own on a free port (anonymous: the hooks are tested on their own)."""
    binary = require_tool("mosquitto")
    port = free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while mosquitto("mosquitto_pub", port, "-t", "ping", "-m", "x").returncode != 0:
        assert time.monotonic() < deadline, "mosquitto did not start"
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def shared_registry(postgres_admin: sa.Engine) -> Iterator[dict[str, str]]:
    """Settings two Motes processes share: one registry on PostgreSQL, one master key."""
    with postgres_database(postgres_admin) as url:
        yield {
            "MOTES_REGISTRY_URL": url,
            "MOTES_SECRET_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }


@pytest.fixture(scope="module")
def pair(
    broker: int, shared_registry: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    env = {**shared_registry, "MOTES_MQTT_URL": f"mqtt://127.0.0.1:{broker}"}
    first = start_server(tmp_path_factory.mktemp("ext-a") / "data", env=env)
    second = start_server(tmp_path_factory.mktemp("ext-b") / "data", env=env)
    yield [first, second]
    for srv in (first, second):
        if srv.proc.poll() is None:
            srv.stop()


def stored(srv: ServerProcess, device: str) -> int:
    params = {
        "bucket": "telemetry",
        "measurement": "ext",
        "start": "-1h",
        "tag": f"device={device}",
    }
    r = httpx.get(srv.url + "/api/v1/query", params=params, headers=AUTH, timeout=30)
    if r.status_code == 404:
        return 0
    return sum(len(t["values"]) for t in expect(r)["tables"])


def test_shared_subscription_splits_the_load_and_loses_nothing(
    broker: int, pair: list[ServerProcess]
) -> None:
    expect(httpx.post(pair[0].url + "/api/v1/devices", json={"id": "ext-1"}, headers=AUTH), 201)
    now = time.time_ns()
    lines = "\n".join(f"ext v={i} {now + i}" for i in range(400)) + "\n"
    sent = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker), "-q", "1", "-i", "ext-1",
         "-t", "devices/ext-1/telemetry", "-l"],
        input=lines, text=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr

    def counts() -> list[int]:
        return [stored(srv, "ext-1") for srv in pair]

    deadline = time.monotonic() + 20
    while sum(counts()) < 400 and time.monotonic() < deadline:
        time.sleep(0.2)
    got = counts()
    assert sum(got) == 400, got  # every message stored exactly once, across the two
    assert all(n > 0 for n in got), f"one process took everything: {got}"


def test_commands_go_out_through_the_external_broker(
    broker: int, pair: list[ServerProcess]
) -> None:
    expect(httpx.post(pair[0].url + "/api/v1/devices", json={"id": "ext-cmd"}, headers=AUTH), 201)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker), "-t", "devices/ext-cmd/commands/+",
         "-C", "1", "-W", "15", "-q", "1"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    url = pair[1].url + "/api/v1/devices/ext-cmd/commands"
    made = expect(httpx.post(url, json={"name": "reboot"}, headers=AUTH), 201)
    out, _ = sub.communicate(timeout=20)
    assert made["id"] in out and "reboot" in out
    state = expect(httpx.get(f"{url}/{made['id']}", headers=AUTH))["state"]
    assert state == "sent"


# -- hooks -------------------------------------------------------------------------------------


HOOK_ENV = {"MOTES_MQTT_HOOK_SECRET": "s3cret-hook"}
HOOK_AUTH = {"Authorization": "Bearer s3cret-hook"}


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    srv = start_server(tmp_path_factory.mktemp("hooks") / "data", env=HOOK_ENV)
    with httpx.Client(base_url=srv.url, timeout=30, headers=HOOK_AUTH) as http:
        key = expect(http.post("/api/v1/devices", json={"id": "hook-dev"}, headers=AUTH), 201)
        yield http, key["key"]
    srv.stop()


def test_emqx_hooks(hooks: tuple[httpx.Client, str]) -> None:
    http, key = hooks

    def auth(username: str, password: str) -> dict[str, Any]:
        body = {"username": username, "password": password, "clientid": "c1"}
        return dict(expect(http.post("/api/v1/mqtt/auth", json=body)))

    assert auth("hook-dev", key) == {"result": "allow", "is_superuser": False}
    assert auth("hook-dev", "mdk_wrong")["result"] == "deny"
    assert auth("someone-else", key)["result"] == "deny"
    assert auth("motes", TOKEN) == {"result": "allow", "is_superuser": True}
    assert auth("not-the-service-user", TOKEN)["result"] == "deny"

    def acl(topic: str, action: str) -> str:
        body = {"username": "hook-dev", "clientid": "c1", "topic": topic, "action": action}
        return str(expect(http.post("/api/v1/mqtt/acl", json=body))["result"])

    assert acl("devices/hook-dev/telemetry", "publish") == "allow"
    assert acl("devices/other/telemetry", "publish") == "deny"
    assert acl("devices/hook-dev/commands/+", "subscribe") == "allow"
    assert acl("devices/hook-dev/commands/c1", "publish") == "deny"
    assert acl("#", "subscribe") == "deny"


def test_mosquitto_go_auth_hooks(hooks: tuple[httpx.Client, str]) -> None:
    http, key = hooks
    form = {"username": "hook-dev", "password": key, "clientid": "c1"}
    assert http.post("/api/v1/mqtt/go-auth/user", data=form).status_code == 200
    form["password"] = "mdk_nope"
    assert http.post("/api/v1/mqtt/go-auth/user", data=form).status_code == 403
    assert (
        http.post("/api/v1/mqtt/go-auth/superuser", data={"username": "hook-dev"}).status_code
        == 403
    )
    assert (
        http.post("/api/v1/mqtt/go-auth/superuser", data={"username": "motes"}).status_code == 200
    )

    def acl(topic: str, acc: int) -> int:
        body = {"username": "hook-dev", "clientid": "c1", "topic": topic, "acc": acc}
        return http.post("/api/v1/mqtt/go-auth/acl", json=body).status_code

    assert acl("devices/hook-dev/telemetry", 2) == 200
    assert acl("devices/other/telemetry", 2) == 403
    assert acl("devices/hook-dev/commands/x", 1) == 200
    assert acl("devices/hook-dev/commands/x", 3) == 403  # may read, not write, commands
    assert acl("devices/hook-dev/x", 9) == 403


def test_ids_in_two_orgs_are_refused_on_a_shared_broker(hooks: tuple[httpx.Client, str]) -> None:
    http, _ = hooks
    owner = {"email": "twin@example.com", "password": "twin-org-pw-1"}
    expect(http.post("/api/v1/orgs", json={"name": "twins", "owner": owner}, headers=AUTH), 201)
    form = {"grant_type": "password", "username": owner["email"], "password": owner["password"]}
    jwt = expect(http.post("/oauth/token", data=form))["access_token"]
    # a fresh id (the locator caches answers 30 s): made in the first org, then in "twins"
    fresh = {"id": "twin-2"}
    expect(http.post("/api/v1/devices", json=fresh, headers=AUTH), 201)
    other = http.post("/api/v1/devices", json=fresh, headers={"Authorization": f"Bearer {jwt}"})
    other_key = expect(other, 201)["key"]
    body = {"username": "twin-2", "password": other_key, "clientid": "c3"}
    assert expect(http.post("/api/v1/mqtt/auth", json=body))["result"] == "deny"


def test_hooks_are_off_without_the_secret_and_need_it(
    hooks: tuple[httpx.Client, str], tmp_path: Path
) -> None:
    http, _ = hooks
    body = {"username": "motes", "password": TOKEN}
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        assert http.post("/api/v1/mqtt/auth", json=body, headers=headers).status_code == 401
    srv = start_server(tmp_path / "data")  # no MOTES_MQTT_HOOK_SECRET: hooks off
    try:
        answer = httpx.post(srv.url + "/api/v1/mqtt/auth", json=body, headers=HOOK_AUTH)
        assert answer.status_code == 401
    finally:
        srv.stop()


def test_motes_worker_consumes_and_exits_cleanly(
    broker: int, shared_registry: dict[str, str], tmp_path: Path
) -> None:
    """`motes worker`: no HTTP, just the consumer; SIGTERM flushes and exits 0."""
    env = {**os.environ, **shared_registry, "MOTES_INIT_TOKEN": TOKEN}
    admin = start_server(tmp_path / "admin", env=shared_registry)
    expect(httpx.post(admin.url + "/api/v1/devices", json={"id": "wk-1"}, headers=AUTH), 201)
    data = tmp_path / "worker"
    log = tmp_path / "worker.log"
    err = log.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "motes.cli.main", "worker", "--data-dir", str(data),
         "--mqtt-url", f"mqtt://127.0.0.1:{broker}"],
        env={**env, "MOTES_MQTT_SHARE_GROUP": "wk"}, stderr=err, text=True,
    )  # fmt: skip
    try:
        now = time.time_ns()
        lines = "\n".join(f"ext v={i} {now + i}" for i in range(50)) + "\n"
        deadline = time.monotonic() + 20
        while True:  # until the worker has subscribed, messages have no taker
            sent = subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker), "-q", "1",
                 "-t", "devices/wk-1/telemetry", "-l"],
                input=lines, text=True, capture_output=True, timeout=30,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            time.sleep(1)
            if "consuming from" in log.read_text() or time.monotonic() > deadline:
                break
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker), "-q", "1",
             "-t", "devices/wk-1/telemetry", "-m", f"ext v=99 {now + 99}"],
            check=True, timeout=30,
        )  # fmt: skip
        time.sleep(1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()
        err.close()
    admin.stop()
    reader = start_server(data, env=shared_registry)  # the worker's store, read back
    try:
        assert stored(reader, "wk-1") >= 1
    finally:
        reader.stop()


# -- Mosquitto dynamic security ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynsec_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Mosquitto with the dynamic-security plugin (Debian ships it), admin/admin-pw."""
    binary = require_tool("mosquitto")
    ctrl = require_tool("mosquitto_ctrl")
    plugin = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
    if not plugin.exists():
        found = list(Path("/usr/lib").glob("**/mosquitto_dynamic_security.so"))
        if not found:
            pytest.skip("mosquitto's dynamic-security plugin is not installed")
        plugin = found[0]
    here = tmp_path_factory.mktemp("dynsec")
    state = here / "dynamic-security.json"
    subprocess.run([ctrl, "dynsec", "init", str(state), "admin", "admin-pw"], check=True,
                   capture_output=True)  # fmt: skip
    port = free_port()
    conf = here / "mosquitto.conf"
    conf.write_text(
        # as root, mosquitto drops to user "mosquitto", who may not read pytest's 0700 dirs
        f"user {getpass.getuser()}\n"
        f"per_listener_settings false\nlistener {port} 127.0.0.1\nallow_anonymous false\n"
        f"plugin {plugin}\nplugin_opt_config_file {state}\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    args = ("-u", "admin", "-P", "admin-pw", "-t", "ping", "-m", "x")
    while mosquitto("mosquitto_pub", port, *args).returncode != 0:
        assert time.monotonic() < deadline, "mosquitto did not start"
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


def test_dynamic_security_follows_devices_and_channels(dynsec_broker: int, tmp_path: Path) -> None:
    port = dynsec_broker
    env = {
        "MOTES_MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "MOTES_MQTT_DYNSEC_URL": f"mqtt://admin:admin-pw@127.0.0.1:{port}",
    }
    srv = start_server(tmp_path / "data", env=env)
    http = httpx.Client(base_url=srv.url, headers=AUTH, timeout=30)
    try:
        key = expect(http.post("/api/v1/devices", json={"id": "dyn-1"}), 201)["key"]

        def pub(
            user: str, password: str, topic: str, message: str
        ) -> subprocess.CompletedProcess[str]:
            return mosquitto("mosquitto_pub", port, "-V", "mqttv5", "-u", user, "-P", password,
                             "-q", "1", "-t", topic, "-m", message)  # fmt: skip

        # the device's client appears at the broker, and the worker (its own dynsec client)
        # subscribes, within moments; until then a publish is refused or has no taker
        deadline = time.monotonic() + 15
        while stored(srv, "dyn-1") == 0:
            assert time.monotonic() < deadline, "nothing from the device reached the store"
            pub("dyn-1", key, "devices/dyn-1/telemetry", "ext v=1")
            time.sleep(0.3)
        assert pub("dyn-1", "mdk_wrong", "devices/dyn-1/telemetry", "ext v=2").returncode != 0
        denied = pub("dyn-1", key, "devices/other/telemetry", "ext v=3")
        assert "not authori" in (denied.stderr + denied.stdout).lower()
        # the worker consumes as the service user dynsec made for it: the data arrived above
        new_key = expect(http.post("/api/v1/devices/dyn-1/key"), 201)["key"]
        time.sleep(1)
        assert pub("dyn-1", key, "devices/dyn-1/telemetry", "ext v=4").returncode != 0
        assert pub("dyn-1", new_key, "devices/dyn-1/telemetry", "ext v=5").returncode == 0
        expect(http.post("/api/v1/channels", json={"id": "dyn-ch"}), 201)
        chan = pub("dyn-1", new_key, "channels/dyn-ch/messages", '[{"n":"t","v":1}]')
        assert "not authori" in (chan.stderr + chan.stdout).lower()
        expect(http.put("/api/v1/channels/dyn-ch/devices/dyn-1"), 204)
        time.sleep(1)
        chan = pub("dyn-1", new_key, "channels/dyn-ch/messages", '[{"n":"t","v":1}]')
        assert chan.returncode == 0 and "not authori" not in chan.stderr.lower()
        expect(http.delete("/api/v1/devices/dyn-1"), 204)
        time.sleep(1)
        assert pub("dyn-1", new_key, "devices/dyn-1/telemetry", "ext v=6").returncode != 0
    finally:
        http.close()
        srv.stop()
