"""The identity commands (orgs, users, devices, channels, tokens, secrets, login) and
``motes db upgrade``, against the real server.

The CLI's httpx client talks to the in-process app (``AppTransport``); one smoke test
runs ``motes`` as a process against ``motes serve``. Expectations follow
docs/identity.md, the contract; where a server message is asserted, it is read from the
server itself, so the test checks that the CLI shows it as ``Error: <message>``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, text
from starlette.testclient import TestClient

from motes.app import create_app
from motes.cli.client import MotesClient
from motes.cli.main import main
from motes.cli.profiles import Profiles
from motes.registry.migrations import alembic_config
from motes.settings import Settings
from tests.conftest import AUTH, TOKEN, start_server

ENV_NAMES = ("MOTES_URL", "MOTES_TOKEN", "MOTES_ORG", "MOTES_PROFILE", "MOTES_BUCKET")
ONCE = "Store it now: it will not be shown again."
ANA = ("ana@example.com", "ana-password-1")


@pytest.fixture(autouse=True)
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "configs.toml"
    monkeypatch.setenv("MOTES_CONFIG_PATH", str(path))
    return path


class AppTransport(httpx.BaseTransport):
    """The in-process app as the transport of the CLI's httpx client."""

    def __init__(self, app: TestClient) -> None:
        self.app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = [(k, v) for k, v in request.headers.multi_items() if k not in ("host",)]
        answer = self.app.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            headers=sent,
            content=request.read(),
        )
        dropped = ("content-encoding", "content-length", "transfer-encoding")
        headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in dropped]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


@dataclass
class Cli:
    """``motes ARGS`` against the app; the operator token unless ``token`` says otherwise."""

    app: TestClient
    token: str | None = TOKEN
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, input: str | None = None, token: str | None = "") -> Result:
        chosen = self.token if token == "" else token
        env = {**self.env, **({"MOTES_TOKEN": chosen} if chosen else {})}
        factory = functools.partial(MotesClient, transport=AppTransport(self.app))
        return CliRunner().invoke(main, list(args), obj=factory, env=env, input=input)

    def ok(self, *args: str, input: str | None = None, token: str | None = "") -> str:
        result = self(*args, input=input, token=token)
        assert result.exit_code == 0, result.output
        return result.stdout

    def json(self, *args: str, token: str | None = "") -> Any:
        return json.loads(self.ok(*args, "--json", token=token))

    def fails(self, *args: str, token: str | None = "") -> str:
        """stderr of a command that must fail with exit code 1."""
        result = self(*args, token=token)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        return result.stderr


@pytest.fixture
def app(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def cli(app: TestClient) -> Cli:
    return Cli(app)


def shown(output: str, label: str) -> str:
    """The value printed once after ``label:`` (a key, token or setup token)."""
    match = re.search(rf"^{re.escape(label)}.*: (\S+)$", output, re.MULTILINE)
    assert match, f"no {label!r} in {output!r}"
    return match.group(1)


def table(output: str) -> list[list[str]]:
    """A fixed-width table's rows as cells (split at runs of 2+ spaces), header first."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


def server_message(response: httpx.Response) -> str:
    assert response.status_code >= 400, response.text
    message: str = response.json()["message"]
    return message


def make_org_with_owner(cli: Cli, org: str = "acme", owner: tuple[str, str] = ANA) -> str:
    email, password = owner
    cli.ok("orgs", "create", org, "--owner-email", email, "--owner-password", password)
    return org


def device_write(app: TestClient, device: str, key: str) -> int:
    headers = {"Authorization": f"Thing {key}", "Content-Type": "text/plain"}
    url = f"/api/v1/devices/{device}/telemetry"
    return app.post(url, content=b"env t=21.5", headers=headers).status_code


# -- whoami, orgs -----------------------------------------------------------------------------


def test_whoami_with_the_operator_token(cli: Cli) -> None:
    me = cli.json("whoami")
    assert me["kind"] == "token"
    assert me["org"]["name"] == "main"
    rows = dict(row[:2] for row in table(cli.ok("whoami")) if len(row) >= 2)
    assert rows["Kind"] == "token" and rows["Org"] == "main"
    assert TOKEN not in cli.ok("whoami")


def test_orgs_create_with_an_owner_and_list(cli: Cli, app: TestClient) -> None:
    made = cli.ok("orgs", "create", "acme", "--owner-email", ANA[0], "--owner-password", ANA[1])
    assert table(made)[1][1] == "acme"
    assert ANA[0] in made
    assert "Setup token" not in made and ANA[1] not in made

    (org,) = cli.json("orgs", "list")["orgs"]
    assert org["name"] == "main"
    assert table(cli.ok("orgs", "list"))[0] == ["ID", "Name", "Role", "Created"]
    assert org["createdAt"]  # docs/identity.md: {"id", "name", "role"?, "createdAt"}


def test_an_owner_without_password_gets_a_setup_token_once(cli: Cli, app: TestClient) -> None:
    made = cli.ok("orgs", "create", "beta", "--owner-email", "bo@example.com")

    setup = shown(made, "Setup token")
    assert ONCE in made
    answer = app.post("/api/v1/password", json={"resetToken": setup, "password": "bo-password-1"})
    assert answer.status_code == 204, answer.text
    grant = {"grant_type": "password", "username": "bo@example.com", "password": "bo-password-1"}
    assert app.post("/oauth/token", data=grant).status_code == 200


def test_org_errors_show_the_server_message(cli: Cli, app: TestClient) -> None:
    make_org_with_owner(cli)
    again = app.post("/api/v1/orgs", json={"name": "acme"}, headers=AUTH)
    assert cli.fails("orgs", "create", "acme") == f"Error: {server_message(again)}\n"
    usage = cli("orgs", "create", "x", "--owner-password", "p")
    assert usage.exit_code == 2 and "need --owner-email" in usage.output


# -- users ------------------------------------------------------------------------------------


def test_users_lifecycle(cli: Cli, app: TestClient) -> None:
    made = cli.json(
        "users",
        "create",
        "cy@example.com",
        "--role",
        "member",
        "--name",
        "Cy",
        "--password",
        "cy-pass-12",
    )
    user_id = made["id"]
    assert (made["email"], made["role"], made["name"]) == ("cy@example.com", "member", "Cy")

    rows = table(cli.ok("users", "list"))
    assert rows[0] == ["ID", "Email", "Name", "Role", "Disabled", "Created", "Last login"]
    assert [user_id, "cy@example.com", "Cy", "member", "false"] in [row[:5] for row in rows]

    changed = cli.json("users", "update", user_id, "--role", "admin", "--name", "Cy D")
    assert (changed["role"], changed["name"]) == ("admin", "Cy D")
    assert cli.json("users", "update", user_id, "--disable")["disabled"] is True
    assert cli.json("users", "update", user_id, "--enable")["disabled"] is False
    nothing = cli("users", "update", user_id)
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output

    reset = cli.ok("users", "reset-password", user_id)
    token = shown(reset, "Reset token")
    assert ONCE in reset
    done = app.post("/api/v1/password", json={"resetToken": token, "password": "cy-new-pass-1"})
    assert done.status_code == 204, done.text

    assert cli.ok("users", "delete", user_id) == f"User {user_id} removed from org main.\n"
    assert "cy@example.com" not in cli.ok("users", "list")


def test_users_create_prompts_for_the_password_and_checks_the_role(
    cli: Cli, app: TestClient
) -> None:
    result = cli(
        "users",
        "create",
        "dee@example.com",
        "--role",
        "viewer",
        "--password-prompt",
        input="dee-pass-123\ndee-pass-123\n",
    )
    assert result.exit_code == 0, result.output
    assert "dee-pass-123" not in result.output  # typed hidden
    grant = {"grant_type": "password", "username": "dee@example.com", "password": "dee-pass-123"}
    assert app.post("/oauth/token", data=grant).status_code == 200

    wrong_role = cli("users", "create", "x@example.com", "--role", "god")
    assert wrong_role.exit_code == 2


def test_a_user_without_password_gets_a_setup_token(cli: Cli) -> None:
    made = cli.ok("users", "create", "eve@example.com", "--role", "member")
    assert shown(made, "Setup token").strip()
    assert ONCE in made


# -- login, whoami, refresh, logout -----------------------------------------------------------


def test_login_refresh_and_logout(cli: Cli, app: TestClient, config_path: Path) -> None:
    make_org_with_owner(cli)
    user = Cli(app, token=None)

    signed_in = user.ok("login", "--email", ANA[0], input=ANA[1] + "\n")

    assert "Signed in as ana@example.com to org acme as owner" in signed_in
    assert ANA[1] not in signed_in
    profile = Profiles.load().get("default")
    assert Profiles.load().active_name == "default"
    assert profile.org == "acme" and profile.token and profile.refresh_token
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    me = user.json("whoami")
    assert (me["kind"], me["email"], me["org"]["name"], me["role"]) == (
        "user",
        ANA[0],
        "acme",
        "owner",
    )

    # The access token has expired (here: is garbage): the client refreshes and saves.
    profiles = Profiles.load()
    profiles.update("default", token="expired-access-token")
    profiles.save()
    assert user.json("whoami")["email"] == ANA[0]
    refreshed = Profiles.load().get("default")
    assert refreshed.token not in (None, "expired-access-token")
    assert refreshed.refresh_token not in (None, profile.refresh_token)  # rotated, saved

    # Acting in acme: what ana makes there is not visible from main.
    user.ok("devices", "create", "ana-1")
    assert "ana-1" in user.ok("devices", "list")
    assert "ana-1" not in cli.ok("devices", "list", "--org", "main")
    # the operator token with the profile's org (acme), which it does not belong to
    assert cli.fails("devices", "list").startswith("Error: ")

    assert "Signed out" in user.ok("logout")
    after = Profiles.load().get("default")
    assert (after.token, after.refresh_token, after.org) == (None, None, "acme")
    dead = app.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refreshed.refresh_token},
    )
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert user.fails("whoami").endswith("pass --token or set MOTES_TOKEN\n")
    assert "not signed in" in user.fails("logout")


def test_a_write_refreshes_an_expired_session(cli: Cli, app: TestClient, tmp_path: Path) -> None:
    make_org_with_owner(cli)
    user = Cli(app, token=None)
    user.ok("login", "--email", ANA[0], "--password", ANA[1])
    user.ok("buckets", "create", "plants")
    profiles = Profiles.load()
    profiles.update("default", token="expired-access-token")
    profiles.save()
    data = tmp_path / "plants.lp"
    data.write_text("soil,device=d1 moisture=35i 1700000000\n")

    written = user.ok("write", "-f", str(data), "--bucket", "plants", "--precision", "s")

    assert "Wrote 1 lines" in written
    assert Profiles.load().get("default").token != "expired-access-token"


def test_login_with_a_wrong_password(cli: Cli, app: TestClient, config_path: Path) -> None:
    make_org_with_owner(cli)
    form = {"grant_type": "password", "username": ANA[0], "password": "wrong-password"}
    expected = app.post("/oauth/token", data=form).json()["error_description"]

    result = Cli(app, token=None)("login", "--email", ANA[0], "--password", "wrong-password")

    assert result.exit_code == 1
    assert result.stderr == f"Error: {expected}\n"
    assert not config_path.exists()


def test_an_ended_session_asks_to_sign_in_again(cli: Cli, app: TestClient) -> None:
    make_org_with_owner(cli)
    user = Cli(app, token=None)
    user.ok("login", "--email", ANA[0], "--password", ANA[1])
    profiles = Profiles.load()
    profiles.update("default", token="expired", refresh_token="not-a-refresh-token")
    profiles.save()

    assert user.fails("whoami").splitlines()[-1] == "sign in again with `motes login`"


def test_login_into_a_named_profile_keeps_the_other_profiles(cli: Cli, app: TestClient) -> None:
    make_org_with_owner(cli)
    cli.ok("config", "create", "ops", "-t", TOKEN)
    user = Cli(app, token=None)

    user.ok("login", "--email", ANA[0], "--password", ANA[1], "--profile", "ana")

    assert Profiles.load().active_name == "ops"
    assert Profiles.load().get("ops").token == TOKEN
    assert user.json("whoami")["kind"] == "token"  # the active profile: the operator
    assert user.json("whoami", "--profile", "ana")["email"] == ANA[0]
    kept = user("login", "--email", ANA[0], "--password", ANA[1])  # into ops, the active one
    assert kept.exit_code == 2 and "profile ops holds an API token" in kept.output
    assert Profiles.load().get("ops").token == TOKEN
    clash = user(
        "login", "--email", ANA[0], "--password", ANA[1], "--profile", "ana", "--url", "http://x:1"
    )
    assert clash.exit_code == 2 and "profile ana is for http://127.0.0.1:8086" in clash.output


# -- devices ----------------------------------------------------------------------------------


def test_devices_lifecycle(cli: Cli, app: TestClient) -> None:
    made = cli.ok(
        "devices",
        "create",
        "greenhouse-1",
        "--name",
        "Greenhouse 1",
        "--tag",
        "lab",
        "--tag",
        "north",
        "--metadata",
        '{"site": "n"}',
        "--bucket",
        "telemetry",
    )
    key = shown(made, "Device key")
    assert key.startswith("mdk_") and ONCE in made
    assert table(made)[1][:4] == ["greenhouse-1", "Greenhouse 1", "lab,north", "telemetry"]
    assert device_write(app, "greenhouse-1", key) == 204
    cli.ok("devices", "create", "cellar-2", "--tag", "cellar")

    assert [r[0] for r in table(cli.ok("devices", "list", "--tag", "lab"))[1:]] == ["greenhouse-1"]
    assert [r[0] for r in table(cli.ok("devices", "list", "--search", "GREEN"))[1:]] == [
        "greenhouse-1"
    ]
    limited = cli("devices", "list", "--limit", "1")
    assert len(table(limited.stdout)) == 2 and "1 of 2 devices shown" in limited.stderr
    listing = cli.ok("devices", "list")
    assert key not in listing and table(listing)[0] == [
        "ID",
        "Name",
        "Tags",
        "Bucket",
        "Key",
        "Disabled",
        "Status",
        "Last seen",
    ]
    assert cli.json("devices", "list", "--meta", "site=n")["total"] == 1

    details = dict(
        row[:2] for row in table(cli.ok("devices", "show", "greenhouse-1"))[1:] if len(row) == 2
    )
    assert details["Metadata"] == '{"site":"n"}' and details["Tags"] == "lab,north"
    assert key not in cli.ok("devices", "show", "greenhouse-1")
    assert "history" in cli.json("devices", "show", "greenhouse-1")

    updated = cli.json("devices", "update", "greenhouse-1", "--name", "GH 1", "--tag", "lab")
    assert (updated["name"], updated["tags"], updated["metadata"]) == (
        "GH 1",
        ["lab"],
        {"site": "n"},
    )

    rotated = cli.ok("devices", "rotate-key", "greenhouse-1")
    new_key = shown(rotated, "New key of greenhouse-1")
    assert ONCE in rotated and new_key != key
    assert device_write(app, "greenhouse-1", key) == 401
    assert device_write(app, "greenhouse-1", new_key) == 204

    assert (
        cli.ok("devices", "revoke-key", "greenhouse-1") == "Device greenhouse-1 has no key now.\n"
    )
    assert device_write(app, "greenhouse-1", new_key) == 401

    assert cli.ok("devices", "delete", "greenhouse-1") == "Device greenhouse-1 deleted.\n"
    missing = app.get("/api/v1/devices/greenhouse-1", headers=AUTH)
    assert cli.fails("devices", "show", "greenhouse-1") == f"Error: {server_message(missing)}\n"


def test_device_errors_show_the_server_message(cli: Cli, app: TestClient) -> None:
    cli.ok("devices", "create", "d1")
    again = app.post("/api/v1/devices", json={"id": "d1"}, headers=AUTH)
    assert cli.fails("devices", "create", "d1") == f"Error: {server_message(again)}\n"
    bad = cli("devices", "create", "d2", "--metadata", "[1]")
    assert bad.exit_code == 2 and "must be a JSON object" in bad.output


def test_devices_import(cli: Cli, app: TestClient, tmp_path: Path) -> None:
    good = tmp_path / "devices.csv"
    good.write_text(
        "id,name,tags,metadata,bucket\n"
        'pump-1,Pump 1,a;b,"{""site"": ""n""}",telemetry\n'
        "pump-2,,,,\n"
    )

    out = cli.ok("devices", "import", str(good))

    rows = table(out)
    assert rows[0] == ["ID", "Name", "Bucket", "Key"]
    keys = {row[0]: row[-1] for row in rows[1:3]}
    assert set(keys) == {"pump-1", "pump-2"} and all(k.startswith("mdk_") for k in keys.values())
    assert "will not be shown again" in out
    assert device_write(app, "pump-1", keys["pump-1"]) == 204
    pump = cli.json("devices", "show", "pump-1")
    assert (pump["tags"], pump["metadata"]) == (["a", "b"], {"site": "n"})

    bad = tmp_path / "bad.csv"
    bad.write_text(
        'id,name,tags,metadata,bucket\nok-1,,,,\nok-2,,,"not json",\nbad id!,,,,\nok-3,,,"[1]",\n'
    )
    answer = app.post(
        "/api/v1/devices/bulk",
        content=bad.read_bytes(),
        headers={**AUTH, "Content-Type": "text/csv"},
    )
    assert answer.status_code == 400
    listed = answer.json().get("errors", [])

    stderr = cli.fails("devices", "import", str(bad))

    assert stderr.startswith(f"Error: {answer.json()['message']}\n")
    assert all(f"line {e['line']}: {e['message']}" in stderr for e in listed)
    assert "ok-1" not in cli.ok("devices", "list")  # all or nothing
    # docs/identity.md: "any bad line is 400 listing every bad line"
    assert sorted(e.get("line") for e in listed) == [3, 4, 5]


# -- channels ---------------------------------------------------------------------------------


def channel_values(app: TestClient, channel: str) -> list[Any]:
    """Every value stored with tag channel=<channel> in bucket telemetry, any measurement."""
    found: list[Any] = []
    measurements = app.get("/api/v1/buckets/telemetry/measurements", headers=AUTH).json()
    for name in measurements.get("measurements", []):
        params = {
            "bucket": "telemetry",
            "measurement": name,
            "tag": f"channel:{channel}",
            "start": "-1h",
        }
        for t in app.get("/api/v1/query", params=params, headers=AUTH).json().get("tables", []):
            found += [value for row in t["values"] for value in row[1:]]
    return found


def test_channels_lifecycle_and_publish(cli: Cli, app: TestClient, tmp_path: Path) -> None:
    made = cli.ok("channels", "create", "alerts", "--name", "Alerts", "--bucket", "telemetry")
    assert table(made)[0] == ["ID", "Name", "Bucket", "Created"]
    assert table(made)[1][:3] == ["alerts", "Alerts", "telemetry"]
    key = shown(cli.ok("devices", "create", "pub-1"), "Device key")

    assert cli.ok("channels", "connect", "alerts", "pub-1") == (
        "Device pub-1 connected to channel alerts.\n"
    )
    assert table(cli.ok("channels", "devices", "alerts")) == [["Device"], ["pub-1"]]
    assert cli.json("channels", "devices", "alerts")["devices"] == ["pub-1"]

    cli.ok(
        "channels",
        "publish",
        "alerts",
        "--subtopic",
        "lab/1",
        "--content-type",
        "text/plain",
        "--data",
        "env t=21.5",
    )
    senml = tmp_path / "message.json"
    senml.write_text('[{"n": "t", "v": 42.25}]')
    # a device publishes with its key, as a device would
    published = cli.ok("channels", "publish", "alerts", "-f", str(senml), token=key)
    assert published == f"Published {senml.stat().st_size} bytes to channel alerts.\n"
    assert {21.5, 42.25} <= set(channel_values(app, "alerts"))

    neither = cli("channels", "publish", "alerts")
    assert neither.exit_code == 2 and "exactly one of" in neither.output

    cli.ok("channels", "disconnect", "alerts", "pub-1")
    assert cli.json("channels", "devices", "alerts")["devices"] == []
    assert [c["id"] for c in cli.json("channels", "list")["channels"]] == ["alerts"]
    assert cli.ok("channels", "delete", "alerts") == "Channel alerts deleted.\n"
    assert cli.json("channels", "list")["channels"] == []


# -- tokens -----------------------------------------------------------------------------------


def test_tokens_lifecycle(cli: Cli, app: TestClient) -> None:
    (bucket,) = [b["id"] for b in cli.json("buckets", "list") if b["name"] == "telemetry"]
    made = cli.ok(
        "tokens",
        "create",
        "--description",
        "grafana",
        "--read-bucket",
        bucket,
        "--expires-in",
        "30d",
    )
    secret = shown(made, "Token")
    assert ONCE in made

    (listed,) = [t for t in cli.json("tokens", "list")["tokens"] if t["description"] == "grafana"]
    assert listed["permissions"] == [f"read:buckets/{bucket}"]
    assert listed["status"] == "active" and listed["expiresAt"]
    assert secret not in cli.ok("tokens", "list") + json.dumps(cli.json("tokens", "list"))

    assert "telemetry" in cli.ok("buckets", "list", token=secret)  # it reads ...
    write = app.post(
        "/api/v2/write?bucket=telemetry",
        content=b"m v=1",
        headers={"Authorization": f"Token {secret}"},
    )
    assert write.status_code == 403  # ... and only reads

    everything = cli.json("tokens", "create")
    assert everything["permissions"] == ["all"] and everything["token"]

    off = cli.json("tokens", "update", listed["id"], "--deactivate", "--description", "off")
    assert (off["status"], off["description"]) == ("inactive", "off")
    assert cli.fails("buckets", "list", token=secret).startswith("Error: ")
    assert cli.json("tokens", "update", listed["id"], "--activate")["status"] == "active"
    assert "telemetry" in cli.ok("buckets", "list", token=secret)
    assert cli("tokens", "update", listed["id"]).exit_code == 2

    assert cli.ok("tokens", "delete", listed["id"]) == f"Token {listed['id']} deleted.\n"
    assert listed["id"] not in cli.ok("tokens", "list")


def test_a_scoped_token_is_refused_with_the_server_message(cli: Cli, app: TestClient) -> None:
    secret = cli.json("tokens", "create", "--permission", "read:devices")["token"]
    refused = app.get("/api/v1/users", headers={"Authorization": f"Token {secret}"})
    assert refused.status_code == 403

    stderr = cli.fails("users", "list", token=secret)

    assert stderr.splitlines()[0] == f"Error: {server_message(refused)}"


# -- secrets ----------------------------------------------------------------------------------


def test_secrets_are_set_listed_by_key_and_deleted(cli: Cli) -> None:
    assert cli.ok("secrets", "set", "pb_secret", "--value", "sqps8LCY6z8XuZ2k") == (
        "Secret pb_secret set.\n"
    )
    prompted = cli("secrets", "set", "webhook", input="hidden-value\n")
    assert prompted.exit_code == 0, prompted.output
    assert "hidden-value" not in prompted.output

    listing = cli.ok("secrets", "list") + json.dumps(cli.json("secrets", "list"))
    assert [s["key"] for s in cli.json("secrets", "list")["secrets"]] == ["pb_secret", "webhook"]
    assert "sqps8LCY6z8XuZ2k" not in listing and "hidden-value" not in listing
    assert table(cli.ok("secrets", "list"))[0] == ["Key", "Created", "Updated"]

    assert cli.ok("secrets", "delete", "pb_secret") == "Secret pb_secret deleted.\n"
    assert [s["key"] for s in cli.json("secrets", "list")["secrets"]] == ["webhook"]


# -- db upgrade -------------------------------------------------------------------------------


def test_db_upgrade_brings_a_new_registry_to_the_head(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    url = f"sqlite:///{data / 'registry.sqlite'}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    first = CliRunner().invoke(main, ["db", "upgrade", "--data-dir", str(data)])
    again = CliRunner().invoke(main, ["db", "upgrade", "--data-dir", str(data)])

    assert first.exit_code == 0, first.output
    assert first.stdout == f"Registry at {url}: revision {head} (the newest).\n"
    assert again.stdout == first.stdout
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == head
    assert {"orgs", "buckets"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_db_upgrade_takes_settings_like_serve(tmp_path: Path) -> None:
    config = tmp_path / "motes.toml"
    config.write_text(f"data_dir = {json.dumps(str(tmp_path / 'from-file'))}\n")
    registry = tmp_path / "elsewhere.sqlite"

    from_file = CliRunner().invoke(main, ["db", "upgrade", "--config", str(config)])
    by_url = CliRunner().invoke(main, ["db", "upgrade", "--registry-url", f"sqlite:///{registry}"])

    assert from_file.exit_code == 0 and by_url.exit_code == 0, from_file.output + by_url.output
    assert (tmp_path / "from-file" / "registry.sqlite").exists()
    assert registry.exists()


def test_db_upgrade_errors_hide_the_password() -> None:
    url = "postgresql://motes:hunter22@127.0.0.1:1/motes"
    result = CliRunner().invoke(main, ["db", "upgrade", "--registry-url", url])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: cannot upgrade the registry at postgresql://motes:***@")
    assert "hunter22" not in result.output
    bad = CliRunner().invoke(main, ["db", "upgrade", "--registry-url", "no url"])
    assert bad.exit_code == 1 and "invalid registry URL" in bad.stderr


# -- the real process -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_profile_drives_the_cli_process(tmp_path: Path, config_path: Path) -> None:
    server = start_server(tmp_path / "server-data")
    try:
        env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}

        def motes(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "motes.cli.main", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        assert motes("config", "create", "local", "-u", server.url, "-t", TOKEN).returncode == 0
        made = motes("devices", "create", "sensor-1", "--tag", "lab")
        assert made.returncode == 0, made.stderr
        key = shown(made.stdout, "Device key")
        answer = httpx.post(
            f"{server.url}/api/v1/devices/sensor-1/telemetry",
            content=b"env t=1",
            headers={"Authorization": f"Thing {key}", "Content-Type": "text/plain"},
        )
        assert answer.status_code == 204, answer.text
        listing = motes("devices", "list")
        assert "sensor-1" in listing.stdout and key not in listing.stdout
    finally:
        server.stop()
