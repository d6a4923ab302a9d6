"""Shared fixtures: an in-process app (ASGI) and a real ``motes serve`` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from motes.app import create_app
from motes.settings import Settings

TOKEN = "test-operator-token"
AUTH = {"Authorization": f"Token {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", init_token=TOKEN, http_port=free_port())


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=AUTH) as c:
        yield c


@dataclass
class ServerProcess:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def start_server(
    data_dir: Path, port: int | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``motes serve`` and wait for /health; its stderr goes to a log beside the data."""
    port = port or free_port()
    full_env = {**os.environ, "MOTES_INIT_TOKEN": TOKEN, **(env or {})}
    log = data_dir.parent / f"{data_dir.name}-{port}.log"
    cmd = [sys.executable, "-m", "motes.cli.main", "serve", "--data-dir", str(data_dir)]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*cmd, "--http-port", str(port)], env=full_env, stdout=subprocess.DEVNULL, stderr=err
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"motes serve exited: {log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return ServerProcess(url, data_dir, proc, port, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("motes serve did not become healthy in 60 s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path / "server-data")
    yield srv
    if srv.proc.poll() is None:
        srv.stop()
