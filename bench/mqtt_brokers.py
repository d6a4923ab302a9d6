"""The brokers the MQTT benchmark measures, each started on free loopback ports in a temp dir.

- ``mosquitto``: ``/usr/sbin/mosquitto -c <tmp>/mosquitto.conf`` (anonymous, no persistence,
  queue and in-flight limits from the command line; see ``mosquitto_conf``).
- ``motes``: ``motes serve --data-dir <tmp> --http-port <free> --mqtt-port <free>`` with
  ``MOTES_INIT_TOKEN``; bucket ``mqtt`` and the devices provisioned with keys through
  ``POST /api/v1/devices/bulk`` (CSV), as ``bench/device_auth.py`` does. Each connection
  logs in with client id = username = device id and password = device key.
- ``amqtt``, ``mqttools``: the pure-Python brokers, run by the Python of a separate
  virtualenv (``--venv``, default ``/tmp/venv-brokers``) so they never enter this one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import motes
from bench.common import free_port, stop_process, tree_rss, wait_http
from bench.mqtt_codec import V5, V311
from bench.mqtt_conn import Client

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
VENV = Path("/tmp/venv-brokers")
MOTES_BUCKET, MEASUREMENT = "mqtt", "m"
BULK_CHUNK = 5_000  # devices per bulk request (the API takes at most 10,000)

AMQTT_SCRIPT = """
import asyncio, logging, sys
logging.basicConfig(level=logging.WARNING)
from amqtt.broker import Broker
config = {
    "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{sys.argv[1]}"}},
    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
}
async def main():
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Unavailable(RuntimeError):
    """The target cannot run here (missing binary, or no MQTT listener yet)."""


def device_id(i: int) -> str:
    return f"mq{i:05d}"


def wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll until something accepts TCP connections on ``port``; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Broker:
    """A broker process this benchmark started; subclasses say how."""

    name = "?"
    version: int | None = None  # protocol level it insists on (None: the one asked for)
    max_qos = 1
    logins = True  # takes username/password
    has_store = False  # Motes: messages are counted in its store, not by a subscriber
    streams_to_subscriber = False  # sends QoS 1 deliveries without waiting for PUBACKs

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"bench-mqtt-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.settings = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return tree_rss(self.pid)

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with (self.root / "broker.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if not wait_tcp(self.port, self.proc, 60.0):
            tail = self.log_tail()
            self.close()
            raise RuntimeError(f"{self.name} did not listen on {self.port}: {tail}")

    def clients(self, n: int) -> list[Client]:
        """The identities of connections 0..n-1: client id = device id."""
        return (
            [Client(device_id(i), device_id(i), "x") for i in range(n)]
            if self.logins
            else [Client(device_id(i)) for i in range(n)]
        )

    def subscriber(self) -> Client:
        """The counting subscriber's identity."""
        return (
            Client("bench-counter", "bench-counter", "x")
            if self.logins
            else Client("bench-counter")
        )

    def log_tail(self, chars: int = 2000) -> str:
        path = self.root / "broker.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def mosquitto_conf(port: int, max_queued: int, max_inflight: int) -> str:
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_connections -1",
            # defaults 1000 and 20: with 1000 a QoS 1 subscriber that falls 1,000 messages
            # behind loses messages (99 % of them in this benchmark); 0 = no limit
            f"max_queued_messages {max_queued}",
            f"max_inflight_messages {max_inflight}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "connection_messages false",
            "",
        ]
    )


class Mosquitto(Broker):
    name = "mosquitto"

    def __init__(self, max_queued: int = 0, max_inflight: int = 20) -> None:
        if not os.path.exists(MOSQUITTO):
            raise Unavailable(f"{MOSQUITTO} not found")
        super().__init__()
        conf = self.root / "mosquitto.conf"
        conf.write_text(mosquitto_conf(self.port, max_queued, max_inflight))
        self.settings = f"max_queued_messages {max_queued}, max_inflight_messages {max_inflight}"
        self.streams_to_subscriber = max_inflight == 0
        self._spawn([MOSQUITTO, "-c", str(conf)])


class PythonBroker(Broker):
    """amqtt (MQTT 3.1.1, QoS 0-2) or mqttools (MQTT 5 only, QoS 0 only, no logins)."""

    def __init__(self, name: str, venv: Path = VENV) -> None:
        self.name = name
        python = venv / "bin" / "python"
        if not python.exists():
            raise Unavailable(
                f"{python} not found: python -m venv {venv} && "
                f"{venv}/bin/pip install amqtt mqttools"
            )
        super().__init__()
        if name == "amqtt":
            cmd = [str(python), "-c", AMQTT_SCRIPT, str(self.port)]
            self.version = V311
            self.settings = "AnonymousAuthPlugin only (no event/packet loggers, no $SYS)"
        else:
            cmd = [str(python), "-m", "mqttools", "broker", "--host", "127.0.0.1"]
            cmd += ["--port", str(self.port)]
            self.version, self.max_qos, self.logins = V5, 0, False
            self.settings = "CLI defaults (log level error)"
        self._spawn(cmd)


class Motes(Broker):
    """``motes serve`` with MQTT; its devices provisioned with keys into bucket ``mqtt``."""

    name = "motes"
    has_store = True

    def __init__(self, devices: int) -> None:
        super().__init__()
        http = free_port()
        while http == self.port:
            http = free_port()
        token = secrets.token_hex(16)
        cmd = [*motes.serve_command(), "--data-dir", str(self.root / "data")]
        cmd += ["--http-port", str(http), "--mqtt-port", str(self.port)]
        env = {**os.environ, "MOTES_INIT_TOKEN": token}
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(motes.REPO_ROOT), env.get("PYTHONPATH")])
        )
        with (self.root / "broker.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.server = motes.MotesServer(f"http://127.0.0.1:{http}", token, self.proc, None)
        try:
            wait_http(f"{self.server.url}/health", 200, self.proc, 120.0)
            if not wait_tcp(self.port, self.proc, 10.0):
                raise Unavailable(
                    f"motes serve answers HTTP but does not listen on --mqtt-port {self.port}: "
                    "this build has no MQTT broker yet"
                )
            self.server.create_bucket(MOTES_BUCKET)
            self.keys = self.provision(devices)
        except Exception:
            print(self.log_tail(), file=sys.stderr)
            self.close()
            raise
        self.settings = f"{len(self.keys):,} devices with keys in bucket {MOTES_BUCKET}"

    def provision(self, devices: int) -> dict[str, str]:
        """Devices 0..devices-1 in bucket ``mqtt`` (bulk CSV); their keys by id."""
        keys: dict[str, str] = {}
        for lo in range(0, devices, BULK_CHUNK):
            rows = "".join(
                f"{device_id(i)},Sensor {i},{MOTES_BUCKET}\n"
                for i in range(lo, min(devices, lo + BULK_CHUNK))
            )
            resp = httpx.post(
                f"{self.server.url}/api/v1/devices/bulk",
                content=("id,name,bucket\n" + rows).encode(),
                headers={**self.server.headers, "Content-Type": "text/csv"},
                timeout=300.0,
            )
            if resp.status_code != 201:
                raise RuntimeError(f"provisioning: {resp.status_code} {resp.text[:300]}")
            keys.update({d["id"]: d["key"] for d in orjson.loads(resp.content)["devices"]})
        return keys

    def clients(self, n: int) -> list[Client]:
        if n > len(self.keys):
            raise ValueError(f"{n} connections but {len(self.keys)} devices provisioned")
        return [Client(device_id(i), device_id(i), self.keys[device_id(i)]) for i in range(n)]

    def subscriber(self) -> Client:
        """An app's login: any user name, the operator token as password."""
        return Client("bench-counter", "bench", self.server.token)

    def count(self, start_ns: int, stop_ns: int) -> int:
        """Points stored in measurement ``m`` of bucket ``mqtt`` between start and stop."""
        return self.server.count_points(MOTES_BUCKET, MEASUREMENT, start_ns, stop_ns)

    def latest_params(self) -> tuple[str, dict[str, str], dict[str, str]]:
        """URL, parameters and headers of the latest-value query of one device (a dashboard
        tile's question; polling every device's latest value every 5 ms loaded the server
        with queries, which then slowed the writes being measured)."""
        params = {
            "bucket": MOTES_BUCKET,
            "measurement": MEASUREMENT,
            "epoch": "ns",
            "tag": f"device:{device_id(0)}",
        }
        return f"{self.server.url}/api/v1/latest", params, self.server.headers


def start(name: str, args: Any) -> Broker:
    """The broker ``name`` started with the options in ``args`` (see ``bench/mqtt.py``)."""
    if name == "mosquitto":
        return Mosquitto(args.mosquitto_max_queued, args.mosquitto_max_inflight)
    if name == "motes":
        return Motes(args.devices)
    if name in ("amqtt", "mqttools"):
        return PythonBroker(name, Path(args.venv))
    raise ValueError(f"unknown target {name!r}")
