"""Connection profiles of the CLI, like ``influx config``: name, URL, token, org.

They live in one TOML file, ``$MOTES_CONFIG_PATH`` or ``~/.config/motes/configs.toml``,
written with mode 0600 because it holds tokens; one profile is active:

    profiles = Profiles.load(config_path())
    profiles.add(Profile("local", "http://127.0.0.1:8086", token="...", org="main"))
    profiles.use("local")
    profiles.save()

    target = resolve(profiles, url=None, token=None, org=None, profile=None)

:func:`resolve` applies the precedence of every client command: the command-line option
(or its ``MOTES_*`` variable, which click has already folded into it), then the profile
(``--profile``/``MOTES_PROFILE``, else the active one), then the defaults.

File format (a table per profile, the active one marked)::

    [local]
    url = "http://127.0.0.1:8086"
    token = "..."
    org = "main"
    active = true
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from motes.cli.client import DEFAULT_URL, MotesError

DEFAULT_ORG = "main"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CREDENTIALS = ("token", "org", "refresh_token")
_FIELDS = ("url", *_CREDENTIALS)


class ProfileError(MotesError):
    """The profiles file cannot be read or written, or names no such profile."""


@dataclass(frozen=True)
class Profile:
    """One server to talk to; ``refresh_token`` is set while signed in with ``motes login``."""

    name: str
    url: str = DEFAULT_URL
    token: str | None = None
    org: str | None = None
    refresh_token: str | None = None


@dataclass(frozen=True)
class Target:
    """Where a client command goes and as whom, after precedence.

    ``profile`` is the profile consulted (if any); ``signed_in`` says the token is that
    profile's ``motes login`` session, which the client may refresh and save back.
    """

    url: str
    token: str | None
    org: str
    profile: Profile | None = None
    signed_in: bool = False


def config_path() -> Path:
    """``$MOTES_CONFIG_PATH``, else ``~/.config/motes/configs.toml``."""
    given = os.environ.get("MOTES_CONFIG_PATH")
    return Path(given) if given else Path.home() / ".config" / "motes" / "configs.toml"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ProfileError(f"invalid profile name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


class Profiles:
    """The profiles file in memory; nothing changes on disk until :meth:`save`."""

    def __init__(self, path: Path, profiles: list[Profile], active: str | None) -> None:
        self.path = path
        self._profiles = {p.name: p for p in profiles}
        self.active_name = active if active in self._profiles else None

    @classmethod
    def load(cls, path: Path | None = None) -> Profiles:
        """The file at ``path`` (default :func:`config_path`); no file means no profiles."""
        path = path or config_path()
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            return cls(path, [], None)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProfileError(f"cannot read profiles from {path}: {exc}") from exc
        profiles = [_parse(path, name, table) for name, table in data.items()]
        active = next((name for name, table in data.items() if table.get("active") is True), None)
        return cls(path, profiles, active)

    def __iter__(self) -> Iterator[Profile]:
        return iter(sorted(self._profiles.values(), key=lambda p: p.name))

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def get(self, name: str) -> Profile:
        try:
            return self._profiles[name]
        except KeyError:
            raise ProfileError(
                f"no profile named {name!r} in {self.path}: see `motes config list`"
            ) from None

    @property
    def active(self) -> Profile | None:
        return self._profiles[self.active_name] if self.active_name else None

    def add(self, profile: Profile) -> None:
        """Add a new profile; the first one becomes active."""
        check_name(profile.name)
        if profile.name in self._profiles:
            raise ProfileError(f"profile {profile.name!r} already exists")
        self._profiles[profile.name] = profile
        if self.active_name is None:
            self.active_name = profile.name

    def update(self, name: str, **changes: str | None) -> Profile:
        """Change the credentials of profile ``name``: ``update("local", token=None)``."""
        current = self.get(name)
        values = {key: changes.pop(key, getattr(current, key)) for key in _CREDENTIALS}
        if changes:
            raise ValueError(f"cannot change {sorted(changes)} of a profile")
        profile = Profile(name, current.url, **values)
        self._profiles[name] = profile
        return profile

    def use(self, name: str) -> None:
        self.get(name)
        self.active_name = name

    def delete(self, name: str) -> None:
        self.get(name)
        del self._profiles[name]
        if self.active_name == name:
            self.active_name = None

    def save(self) -> None:
        """Replace the file atomically; it is created with mode 0600, its folder 0700."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temp = tempfile.mkstemp(prefix=".configs-", dir=self.path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(self.dumps())
                os.replace(temp, self.path)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError as exc:
            raise ProfileError(f"cannot save profiles to {self.path}: {exc}") from exc

    def dumps(self) -> str:
        """The file's TOML text."""
        tables = []
        for profile in self:
            lines = [f"[{profile.name}]"]
            for key in _FIELDS:
                value = getattr(profile, key)
                if value is not None:
                    lines.append(f"{key} = {_toml_string(value)}")
            if profile.name == self.active_name:
                lines.append("active = true")
            tables.append("\n".join(lines) + "\n")
        return "\n".join(tables)


def resolve(
    profiles: Profiles,
    *,
    url: str | None,
    token: str | None,
    org: str | None,
    profile: str | None,
) -> Target:
    """Each value from the option (or env), else from the profile, else the default."""
    chosen = profiles.get(profile) if profile else profiles.active
    if chosen is None:
        return Target(url or DEFAULT_URL, token, org or DEFAULT_ORG)
    return Target(
        url=url or chosen.url,
        token=token or chosen.token,
        org=org or chosen.org or DEFAULT_ORG,
        profile=chosen,
        signed_in=token is None and chosen.token is not None and chosen.refresh_token is not None,
    )


def _parse(path: Path, name: str, table: object) -> Profile:
    if not isinstance(table, dict) or not _NAME.fullmatch(name):
        raise ProfileError(f"{path}: [{name}] is not a profile")
    values = {key: table.get(key) for key in _FIELDS}
    wrong = [
        key for key, value in values.items() if value is not None and not isinstance(value, str)
    ]
    if wrong:
        raise ProfileError(f"{path}: [{name}] {wrong[0]} must be a string")
    return Profile(name, **{k: v for k, v in values.items() if v is not None})


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
