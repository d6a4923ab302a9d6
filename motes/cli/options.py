"""What every client command shares: connection options, the client, errors, output.

    @devices.command("show")
    @click.argument("device_id")
    @json_option
    @with_client
    def show_device(client: MotesClient, device_id: str, as_json: bool) -> None: ...

``with_client`` gives the command ``--url``, ``--token``, ``--org`` and ``--profile``,
resolves them (option, then ``MOTES_*`` variable, then profile, then default; see
:mod:`motes.cli.profiles`) and turns every :class:`MotesError` into ``Error: <message>``
with exit code 1. Tests may hand in a client factory as click's ``obj``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from motes.cli.client import ApiError, MotesClient, MotesError, Session
from motes.cli.output import Columns, format_records
from motes.cli.profiles import Profiles, Target, resolve
from motes.cli.write import WriteStopped

ClientFactory = Callable[..., MotesClient]

URL_OPTION = click.option(
    "--url",
    envvar="MOTES_URL",
    show_envvar=True,
    help="URL of the Motes server [default: the profile's, else http://127.0.0.1:8086].",
)
PROFILE_OPTION = click.option(
    "--profile",
    envvar="MOTES_PROFILE",
    show_envvar=True,
    help="Profile to take URL, token and org from [default: the active one].",
)
CLIENT_OPTIONS = (
    click.option(
        "--org",
        envvar="MOTES_ORG",
        show_envvar=True,
        help="Organisation [default: the profile's, else main].",
    ),
    click.option("--token", envvar="MOTES_TOKEN", show_envvar=True, help="API token."),
    URL_OPTION,
    PROFILE_OPTION,
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def client_factory(ctx: click.Context | None = None) -> ClientFactory:
    obj = (ctx or click.get_current_context()).find_root().obj
    return obj if callable(obj) else MotesClient


def target(url: str | None, token: str | None, org: str | None, profile: str | None) -> Target:
    """Where a command goes, after precedence (the profiles file is read here)."""
    return resolve(Profiles.load(), url=url, token=token, org=org, profile=profile)


def open_client(where: Target) -> MotesClient:
    """A client for ``where``; a signed-in profile's session is refreshed and saved back."""
    kwargs: dict[str, Any] = {"token": where.token, "org": where.org}
    if where.signed_in and where.profile and where.profile.refresh_token:
        name = where.profile.name

        def save(access: str, refresh: str) -> None:
            profiles = Profiles.load()  # fresh: another command may have changed the file
            profiles.update(name, token=access, refresh_token=refresh)
            profiles.save()

        kwargs["session"] = Session(where.profile.refresh_token, save)
    return client_factory()(where.url, **kwargs)


def with_client(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the client options and call it with a MotesClient first.

    Put it right above ``def`` so that the command's own options are listed first.
    """

    @functools.wraps(func)
    def command(
        url: str | None, token: str | None, org: str | None, profile: str | None, **kwargs: Any
    ) -> None:
        where = None
        try:
            where = target(url, token, org, profile)
            with open_client(where) as client:
                func(client, **kwargs)
        except MotesError as exc:
            raise click.ClickException(explain(exc, where)) from exc

    for option in CLIENT_OPTIONS:
        command = option(command)
    return command


def explain(exc: MotesError, where: Target | None) -> str:
    """The error message, with a hint for statuses the user can do something about."""
    cause = exc.__cause__ if isinstance(exc, WriteStopped) else exc
    status = cause.status if isinstance(cause, ApiError) else None
    hints = {
        401: _credentials_hint(where),
        403: "the credentials are not allowed to do this",
        413: "the request is too large: lower --batch-size",
    }
    first, _, rest = str(exc).partition("\n")
    return "\n".join(part for part in (first, hints.get(status or 0, ""), rest) if part)


def _credentials_hint(where: Target | None) -> str:
    if where is None or not where.token:
        return "pass --token or set MOTES_TOKEN"
    if where.signed_in:
        return "sign in again with `motes login`"
    if where.profile and where.token == where.profile.token:
        return f"check the token of profile {where.profile.name!r} (or pass --token)"
    return "check --token (or MOTES_TOKEN)"


def show(records: list[dict[str, Any]], columns: Columns, as_json: bool, raw: object) -> None:
    """A table of ``records``, or ``raw`` (the server's answer) as JSON."""
    if as_json:
        echo_json(raw)
    else:
        click.echo(format_records(records, columns))


def listed(answer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects under ``key`` of a list answer (``{"users": [...]}``)."""
    items = answer.get(key)
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def given(**values: Any) -> dict[str, Any]:
    """A request body of the options that were given (None means not given)."""
    return {key: value for key, value in values.items() if value is not None}


def changes(**values: object) -> dict[str, object]:
    """The PATCH body: only what was given; refuses an empty one."""
    changes = given(**values)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    return changes


def echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def echo_secret(label: str, value: object) -> None:
    """A key or token the server shows once: print it with the warning that goes with it."""
    click.echo(f"\n{label}: {value}")
    click.echo("Store it now: it will not be shown again.")


def parse_json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: a ``--metadata '{"k": 1}'`` value as a JSON object."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", ctx, param) from exc
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", ctx, param)
    return data


def reports_errors(func: Callable[..., None]) -> Callable[..., None]:
    """For commands without ``with_client``: a MotesError becomes ``Error: <message>``."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except MotesError as exc:
            raise click.ClickException(str(exc)) from exc

    return command
