"""Shared fixtures: an in-process app (ASGI), a real ``motes serve`` process, and empty
registry databases on every supported engine (SQLite file, PostgreSQL server)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from motes.app import create_app
from motes.registry import migrations
from motes.registry.tables import metadata
from motes.settings import Settings

TOKEN = "test-operator-token"
AUTH = {"Authorization": f"Token {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_tool(name: str) -> str:
    """The path of a command-line tool the test needs; skipped where it is missing, except
    where MOTES_REQUIRE_MOSQUITTO=1 (CI) makes a missing tool a failure."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("MOTES_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(f"{name} is required (apt-get install mosquitto mosquitto-clients)")
        pytest.skip(f"{name} not installed (apt-get install mosquitto mosquitto-clients)")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", init_token=TOKEN, http_port=free_port(), mqtt_port=0
    )


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
    mqtt_port: int = 0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def start_server(
    data_dir: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    mqtt_port: int = 0,
) -> ServerProcess:
    """Start ``motes serve`` and wait for /health; its stderr goes to a log beside the data.
    MQTT listens on ``mqtt_port`` (0: off, so parallel servers don't fight over 1883)."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "MOTES_INIT_TOKEN": TOKEN,
        "MOTES_MQTT_PORT": str(mqtt_port),
        **(env or {}),
    }
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
                return ServerProcess(url, data_dir, proc, port, log, mqtt_port)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("motes serve did not become healthy in 60 s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "server-data") as srv:
        yield srv


@contextmanager
def running_server(data_dir: Path, **options: Any) -> Iterator[ServerProcess]:
    """``start_server(data_dir, **options)``, stopped at the end unless it died already."""
    srv = start_server(data_dir, **options)
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            srv.stop()


def expect(r: httpx.Response, status: int = 200) -> Any:
    """The JSON of a response that must have ``status`` (the request and body otherwise)."""
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.text}"
    return r.json() if r.content else None


# -- registry databases ----------------------------------------------------------------------

#: the PostgreSQL server the registry tests use (trust auth), making databases of their own
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: set to 1 where PostgreSQL must be tested (CI): an unreachable server fails those tests
REQUIRE_POSTGRES = "MOTES_REQUIRE_POSTGRES"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT connection pool to the server's ``postgres`` database, for CREATE DATABASE."""
    engine = sa.create_engine(
        POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}"
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES}=1)", pytrace=False)
        pytest.skip(f"{reason} (set {REQUIRE_POSTGRES}=1 to fail instead)")
    yield engine
    engine.dispose()


@contextmanager
def postgres_database(admin: sa.Engine) -> Iterator[str]:
    """The URL of a new, empty database, dropped (connections and all) afterwards."""
    name = f"motes_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty registry database (no tables) on each engine, new for every test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.sqlite'}"
    else:
        with postgres_database(request.getfixturevalue("postgres_admin")) as url:
            yield url


@pytest.fixture(scope="session")
def sqlite_registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry-template") / "registry.sqlite"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="module")
def postgres_registry_database(postgres_admin: sa.Engine) -> Iterator[str]:
    with postgres_database(postgres_admin) as url:
        migrations.upgrade(url)
        yield url


@pytest.fixture(params=ENGINES)
def migrated_registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A registry database at the newest schema holding no rows, on each engine.

    A copy of a migrated file for SQLite; on PostgreSQL, where creating a database takes a
    second, one migrated database per test module whose tables are emptied for every test.
    """
    if request.param == "sqlite":
        path = tmp_path / "registry.sqlite"
        shutil.copyfile(request.getfixturevalue("sqlite_registry_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_registry_database")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # DELETE beats TRUNCATE on tables this small
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    return url
