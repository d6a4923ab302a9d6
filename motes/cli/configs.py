"""Who the CLI talks to and as whom: ``motes config``, ``login``, ``logout``, ``whoami``.

    motes config create local --url http://127.0.0.1:8086 --token "$TOKEN" --org main
    motes config use local
    motes config list [--json]          # also plain `motes config`; never shows tokens
    motes config delete local
    motes login --email ana@example.com # prompts the password; the session goes in the profile
    motes whoami
    motes logout

``login`` keeps the access token and the refresh token in the profile; client commands
refresh the access token when it expires and save the rotated pair back.
"""

from __future__ import annotations

from typing import Any

import click

from motes.cli.client import DEFAULT_URL, MotesClient, MotesError, api_path
from motes.cli.options import (
    PROFILE_OPTION,
    URL_OPTION,
    client_factory,
    echo_json,
    json_option,
    reports_errors,
    with_client,
)
from motes.cli.output import format_records
from motes.cli.profiles import DEFAULT_ORG, Profile, Profiles, check_name

PROFILE_COLUMNS = [("Active", "active"), ("Name", "name"), ("URL", "url"), ("Org", "org")]
ME_COLUMNS = [
    ("Kind", "kind"),
    ("ID", "id"),
    ("Email", "email"),
    ("Name", "name"),
    ("Org", "org.name"),
    ("Role", "role"),
    ("Permissions", "permissions"),
]
ORG_COLUMNS = [("ID", "id"), ("Name", "name"), ("Role", "role")]


# -- config -----------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.pass_context
def config(ctx: click.Context) -> None:
    """Manage connection profiles (URL, token, org); without a command, list them.

    Profiles are kept in $MOTES_CONFIG_PATH or ~/.config/motes/configs.toml (mode 0600).
    Client commands take each of URL, token and org from their option, else its MOTES_*
    variable, else the profile (--profile or MOTES_PROFILE, else the active one).
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_profiles, as_json=False)


@config.command("create")
@click.argument("name")
@click.option("-u", "--url", default=DEFAULT_URL, show_default=True, help="URL of the server.")
@click.option("-t", "--token", help="API token (or sign in later with `motes login`).")
@click.option("-o", "--org", help=f"Organisation [default: {DEFAULT_ORG}].")
@click.option("-a", "--active", is_flag=True, help="Make it the active profile.")
@json_option
@reports_errors
def create_profile(
    name: str, url: str, token: str | None, org: str | None, active: bool, as_json: bool
) -> None:
    """Create profile NAME; the first profile becomes the active one."""
    profiles = Profiles.load()
    profiles.add(Profile(check_name(name), url, token=token, org=org))
    if active:
        profiles.use(name)
    profiles.save()
    _print_profiles(profiles, [profiles.get(name)], as_json)


@config.command("use")
@click.argument("name")
@reports_errors
def use_profile(name: str) -> None:
    """Make profile NAME the active one."""
    profiles = Profiles.load()
    profiles.use(name)
    profiles.save()
    click.echo(f"Profile {name} is active.")


@config.command("list")
@json_option
@reports_errors
def list_profiles(as_json: bool) -> None:
    """List the profiles; * marks the active one."""
    profiles = Profiles.load()
    _print_profiles(profiles, list(profiles), as_json)


@config.command("delete")
@click.argument("name")
@reports_errors
def delete_profile(name: str) -> None:
    """Delete profile NAME (the server is not told: see `motes logout`)."""
    profiles = Profiles.load()
    was_active = profiles.active_name == name
    profiles.delete(name)
    profiles.save()
    click.echo(f"Profile {name} deleted.")
    if was_active:
        click.echo("No profile is active now: choose one with `motes config use NAME`.")


def _print_profiles(profiles: Profiles, shown: list[Profile], as_json: bool) -> None:
    """Name, URL, org and whether active: never the token."""
    rows: list[dict[str, Any]] = [
        {"name": p.name, "url": p.url, "org": p.org, "active": p.name == profiles.active_name}
        for p in shown
    ]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        row["active"] = "*" if row["active"] else ""
    click.echo(format_records(rows, PROFILE_COLUMNS))


# -- login / logout / whoami ------------------------------------------------------------------


@click.command()
@click.option("--email", required=True, help="Email of the account.")
@click.option("--password", prompt=True, hide_input=True, help="Asked for when left out.")
@click.option("--org", envvar="MOTES_ORG", help="Org to act in [default: the account's first].")
@URL_OPTION
@PROFILE_OPTION
@reports_errors
def login(email: str, password: str, org: str | None, url: str | None, profile: str | None) -> None:
    """Sign in; keep the session in the profile (created if there is none).

    The profile is --profile (or MOTES_PROFILE), else the active one, else a new one
    named "default"; one holding an API token is left alone. The session's token is
    refreshed as it expires, until `motes logout`.
    """
    profiles = Profiles.load()
    name = profile or profiles.active_name or "default"
    existing = profiles.get(name) if name in profiles else None
    if existing and existing.token and not existing.refresh_token:
        raise click.UsageError(
            f"profile {name} holds an API token, which signing in would replace: "
            "sign in to another profile with --profile NAME"
        )
    if existing and url and url != existing.url:
        raise click.UsageError(
            f"profile {name} is for {existing.url}: to sign in to {url}, name another "
            "profile with --profile"
        )
    server = url or (existing.url if existing else DEFAULT_URL)
    org = org or (existing.org if existing else None)
    with client_factory()(server, org=org or DEFAULT_ORG) as client:
        access, refresh = _sign_in(client, email, password)
        me = client.call("GET", api_path("me"), in_org=org is not None)
    org = org or me.get("org", {}).get("name")
    if existing:
        profiles.update(name, token=access, refresh_token=refresh, org=org)
    else:
        profiles.add(Profile(check_name(name), server, access, org, refresh))
    profiles.save()
    role = f" as {me['role']}" if me.get("role") else ""
    click.echo(f"Signed in as {email} to org {org}{role}; the session is kept in profile {name}.")


def _sign_in(client: MotesClient, email: str, password: str) -> tuple[str, str | None]:
    answer = client.grant(grant_type="password", username=email, password=password)
    access, refresh = answer.get("access_token"), answer.get("refresh_token")
    if not isinstance(access, str) or not access:
        raise MotesError("unexpected answer from /oauth/token: no access_token")
    client.authorize(access, "Bearer")
    return access, refresh if isinstance(refresh, str) and refresh else None


@click.command()
@PROFILE_OPTION
@reports_errors
def logout(profile: str | None) -> None:
    """End the session of `motes login` and remove it from the profile."""
    profiles = Profiles.load()
    chosen = profiles.get(profile) if profile else profiles.active
    if chosen is None or chosen.refresh_token is None:
        shown = f"profile {chosen.name}" if chosen else "no active profile"
        raise click.ClickException(f"not signed in ({shown} has no `motes login` session)")
    problem: MotesError | None = None
    try:
        with client_factory()(chosen.url) as client:
            client.revoke(chosen.refresh_token)
    except MotesError as exc:
        problem = exc  # forget the session here anyway: that much the user asked for
    profiles.update(chosen.name, token=None, refresh_token=None)
    profiles.save()
    if problem is not None:
        raise click.ClickException(f"signed out here, but the server was not told: {problem}")
    click.echo(f"Signed out; profile {chosen.name} keeps its URL and org.")


@click.command()
@json_option
@with_client
def whoami(client: MotesClient, as_json: bool) -> None:
    """Show who the credentials belong to, their org, role and permissions."""
    me = client.call("GET", api_path("me"))
    if as_json:
        echo_json(me)
        return
    click.echo(format_records([me], ME_COLUMNS, vertical=True))
    if me.get("orgs"):
        click.echo("\n" + format_records(me["orgs"], ORG_COLUMNS))
