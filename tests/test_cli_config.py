"""``motes config`` profiles: storage (TOML, mode 0600) and the precedence of
option > MOTES_* variable > profile > default in every client command.

What the CLI sends is recorded by an httpx transport: these tests are about which URL,
token and org the CLI picks, not about the server's answer.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from motes.cli.client import MotesClient
from motes.cli.main import main
from motes.cli.profiles import Profile, Profiles

ENV_NAMES = ("MOTES_URL", "MOTES_TOKEN", "MOTES_ORG", "MOTES_PROFILE", "MOTES_BUCKET")


@pytest.fixture(autouse=True)
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "conf" / "configs.toml"
    monkeypatch.setenv("MOTES_CONFIG_PATH", str(path))
    yield path


class Recorder(httpx.BaseTransport):
    """Records each request and answers like an empty bucket list."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"buckets": []})

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def motes(
    *args: str, env: dict[str, str] | None = None, recorder: Recorder | None = None
) -> Result:
    factory = functools.partial(MotesClient, transport=recorder or Recorder())
    return CliRunner().invoke(main, list(args), obj=factory, env=env)


def create(name: str, *options: str) -> None:
    result = motes("config", "create", name, *options)
    assert result.exit_code == 0, result.output


# -- storage ----------------------------------------------------------------------------------


def test_create_writes_a_private_toml_file_and_lists_without_tokens(config_file: Path) -> None:
    result = motes(
        "config", "create", "local", "-u", "http://127.0.0.1:8086", "-t", "s3cret-one", "-o", "main"
    )
    create("cloud", "--url", "https://motes.example.com", "--token", "s3cret-two", "--org", "acme")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Active  Name   URL                    Org",
        "*       local  http://127.0.0.1:8086  main",
    ]
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert tomllib.loads(config_file.read_text()) == {
        "cloud": {"url": "https://motes.example.com", "token": "s3cret-two", "org": "acme"},
        "local": {
            "url": "http://127.0.0.1:8086",
            "token": "s3cret-one",
            "org": "main",
            "active": True,
        },
    }
    listing = motes("config", "list")
    assert listing.stdout.splitlines() == [
        "Active  Name   URL                        Org",
        "        cloud  https://motes.example.com  acme",
        "*       local  http://127.0.0.1:8086      main",
    ]
    assert motes("config").stdout == listing.stdout  # `motes config` alone lists too
    as_json = json.loads(motes("config", "list", "--json").stdout)
    assert as_json == [
        {"name": "cloud", "url": "https://motes.example.com", "org": "acme", "active": False},
        {"name": "local", "url": "http://127.0.0.1:8086", "org": "main", "active": True},
    ]
    assert "s3cret" not in listing.output + motes("config", "list", "--json").output


def test_use_and_delete(config_file: Path) -> None:
    create("a", "-t", "token-a")
    create("b", "-t", "token-b", "--active")
    assert Profiles.load().active_name == "b"

    used = motes("config", "use", "a")
    assert used.stdout == "Profile a is active.\n"
    assert Profiles.load().active_name == "a"

    deleted = motes("config", "delete", "a")
    assert deleted.exit_code == 0
    assert "No profile is active now" in deleted.stdout
    assert [p.name for p in Profiles.load()] == ["b"]
    assert Profiles.load().active is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["config", "use", "nope"], "Error: no profile named 'nope'"),
        (["config", "delete", "nope"], "Error: no profile named 'nope'"),
        (["config", "create", "a"], "Error: profile 'a' already exists"),
        (["config", "create", "my profile"], "Error: invalid profile name 'my profile'"),
        (["buckets", "list", "--profile", "nope"], "Error: no profile named 'nope'"),
    ],
)
def test_profile_mistakes_are_one_clear_line(args: list[str], message: str) -> None:
    create("a")
    result = motes(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.output


def test_values_survive_a_round_trip(config_file: Path) -> None:
    odd = 'quote " back\\slash tab\t newline\n bell\x07 del\x7f ünï €'
    profiles = Profiles.load()
    profiles.add(Profile("odd", "http://h", token=odd, org=odd, refresh_token=odd))
    profiles.save()

    (loaded,) = Profiles.load()
    assert (loaded.token, loaded.org, loaded.refresh_token) == (odd, odd, odd)


def test_saving_narrows_an_existing_file_to_0600(config_file: Path) -> None:
    config_file.parent.mkdir()
    config_file.write_text('[a]\nurl = "http://h"\nactive = true\n')
    config_file.chmod(0o644)

    create("b")

    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert [p.name for p in Profiles.load()] == ["a", "b"]
    assert Profiles.load().active_name == "a"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[a\nurl=1", "cannot read profiles"),
        ('a = "x"\n', "[a] is not a profile"),
        ("[a]\nurl = 1\n", "url must be a string"),
    ],
)
def test_a_broken_file_is_reported(config_file: Path, text: str, message: str) -> None:
    config_file.parent.mkdir()
    config_file.write_text(text)

    result = motes("buckets", "list")

    assert result.exit_code == 1
    assert message in result.stderr and str(config_file) in result.stderr


# -- precedence -------------------------------------------------------------------------------


def sent(recorder: Recorder) -> tuple[str, str | None, str | None]:
    """URL (without the query), Authorization header and ?org= of the last request."""
    request = recorder.last
    url = str(request.url.copy_with(query=None))
    return url, request.headers.get("authorization"), request.url.params.get("org")


def test_without_profiles_the_defaults_apply() -> None:
    recorder = Recorder()
    assert motes("buckets", "list", recorder=recorder).exit_code == 0
    assert sent(recorder) == ("http://127.0.0.1:8086/api/v1/buckets", None, "main")


def test_the_active_profile_supplies_url_token_and_org() -> None:
    create("cloud", "-u", "https://cloud.example.com", "-t", "profile-token", "-o", "acme")
    recorder = Recorder()

    assert motes("buckets", "list", recorder=recorder).exit_code == 0

    assert sent(recorder) == (
        "https://cloud.example.com/api/v1/buckets",
        "Token profile-token",
        "acme",
    )


def test_a_profile_without_org_falls_back_to_the_default() -> None:
    create("bare", "-u", "http://bare:1")
    recorder = Recorder()
    motes("buckets", "list", recorder=recorder)
    assert sent(recorder) == ("http://bare:1/api/v1/buckets", None, "main")


def test_environment_beats_profile_and_options_beat_environment() -> None:
    create("cloud", "-u", "https://cloud.example.com", "-t", "profile-token", "-o", "acme")
    env = {"MOTES_URL": "http://env:1", "MOTES_TOKEN": "env-token", "MOTES_ORG": "env-org"}
    recorder = Recorder()

    motes("buckets", "list", env=env, recorder=recorder)
    assert sent(recorder) == ("http://env:1/api/v1/buckets", "Token env-token", "env-org")

    motes(
        "buckets",
        "list",
        "--url",
        "http://opt:2",
        "--token",
        "opt-token",
        env=env,
        recorder=recorder,
    )
    assert sent(recorder) == ("http://opt:2/api/v1/buckets", "Token opt-token", "env-org")

    motes(
        "buckets", "list", "--org", "opt-org", env={"MOTES_TOKEN": "env-token"}, recorder=recorder
    )
    assert sent(recorder) == (
        "https://cloud.example.com/api/v1/buckets",
        "Token env-token",
        "opt-org",
    )


def test_profile_option_and_variable_choose_a_profile_other_than_the_active_one() -> None:
    create("a", "-u", "http://a:1", "-t", "token-a")
    create("b", "-u", "http://b:2", "-t", "token-b", "-o", "org-b")
    recorder = Recorder()

    motes("buckets", "list", "--profile", "b", recorder=recorder)
    assert sent(recorder) == ("http://b:2/api/v1/buckets", "Token token-b", "org-b")

    motes("buckets", "list", env={"MOTES_PROFILE": "b"}, recorder=recorder)
    assert sent(recorder)[0] == "http://b:2/api/v1/buckets"

    motes("buckets", "list", "--profile", "a", env={"MOTES_PROFILE": "b"}, recorder=recorder)
    assert sent(recorder) == ("http://a:1/api/v1/buckets", "Token token-a", "main")


def test_version_asks_the_profiles_server() -> None:
    create("a", "-u", "http://a:1")
    recorder = Recorder()
    motes("version", recorder=recorder)
    assert str(recorder.last.url) == "http://a:1/health"


def test_a_signed_in_profile_sends_its_token_as_bearer(config_file: Path) -> None:
    profiles = Profiles.load()
    profiles.add(Profile("me", "http://h:1", token="access", org="acme", refresh_token="r1"))
    profiles.save()
    recorder = Recorder()

    motes("buckets", "list", recorder=recorder)
    assert sent(recorder)[1] == "Bearer access"

    motes("buckets", "list", env={"MOTES_TOKEN": "api-token"}, recorder=recorder)
    assert sent(recorder)[1] == "Token api-token"  # a token given outright is not the session's


def test_the_profiles_file_is_never_needed_to_exist(config_file: Path) -> None:
    assert motes("config", "list").stdout == "Active  Name  URL  Org\n"
    assert not config_file.exists()
    assert not os.path.exists(config_file.parent)
