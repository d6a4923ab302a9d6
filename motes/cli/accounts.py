"""Tenancy commands: ``motes orgs``, ``users``, ``tokens`` and ``secrets``.

    motes orgs create acme --owner-email ana@example.com
    motes users create bo@example.com --role member --password-prompt
    motes tokens create --description grafana --read-bucket 0a1b2c3d4e5f6789 --expires-in 30d
    motes secrets set slack_webhook          # prompts the value, hidden

Each list command prints a table, or the server's objects with --json. Tokens, setup and
reset tokens are printed once, when created: the server never shows them again.
"""

from __future__ import annotations

from typing import Any

import click

from motes.cli.client import MotesClient, api_path
from motes.cli.duration import duration_option
from motes.cli.options import (
    changes,
    echo_json,
    echo_secret,
    given,
    json_option,
    listed,
    show,
    with_client,
)
from motes.cli.output import format_records

ORG_COLUMNS = [("ID", "id"), ("Name", "name"), ("Role", "role"), ("Created", "createdAt")]
USER_COLUMNS = [
    ("ID", "id"),
    ("Email", "email"),
    ("Name", "name"),
    ("Role", "role"),
    ("Disabled", "disabled"),
    ("Created", "createdAt"),
    ("Last login", "lastLoginAt"),
]
TOKEN_COLUMNS = [
    ("ID", "id"),
    ("Description", "description"),
    ("Permissions", "permissions"),
    ("Status", "status"),
    ("Created", "createdAt"),
    ("Expires", "expiresAt"),
    ("Last used", "lastUsedAt"),
]
SECRET_COLUMNS = [("Key", "key"), ("Created", "createdAt"), ("Updated", "updatedAt")]
ROLES = ("viewer", "member", "admin", "owner")


# -- orgs -------------------------------------------------------------------------------------


@click.group()
def orgs() -> None:
    """List and create orgs (tenants)."""


@orgs.command("list")
@json_option
@with_client
def list_orgs(client: MotesClient, as_json: bool) -> None:
    """List the orgs the credentials belong to."""
    answer = client.call("GET", api_path("orgs"), in_org=False)
    show(listed(answer, "orgs"), ORG_COLUMNS, as_json, answer)


@orgs.command("create")
@click.argument("name")
@click.option("--owner-email", help="Operator only: create the org's owner with this email.")
@click.option("--owner-name", help="Name of the owner.")
@click.option("--owner-password", help="Password of the owner (else a setup token is printed).")
@json_option
@with_client
def create_org(
    client: MotesClient,
    name: str,
    owner_email: str | None,
    owner_name: str | None,
    owner_password: str | None,
    as_json: bool,
) -> None:
    """Create org NAME: you become its owner, or (operator) --owner-email does."""
    body: dict[str, Any] = {"name": name}
    if owner_email:
        body["owner"] = given(email=owner_email, name=owner_name, password=owner_password)
    elif owner_name or owner_password:
        raise click.UsageError("--owner-name and --owner-password need --owner-email")
    answer = client.call("POST", api_path("orgs"), json=body, in_org=False)
    show([answer.get("org") or {}], ORG_COLUMNS, as_json, answer)
    if not as_json and answer.get("owner"):
        click.echo("\nOwner:\n" + format_records([answer["owner"]], USER_COLUMNS))
    if not as_json and answer.get("setupToken"):
        label = "Setup token of the owner (sets the password, valid 72 h)"
        echo_secret(label, answer["setupToken"])


# -- users ------------------------------------------------------------------------------------


@click.group()
def users() -> None:
    """Manage the members of the org."""


@users.command("list")
@json_option
@with_client
def list_users(client: MotesClient, as_json: bool) -> None:
    """List the members of the org."""
    answer = client.call("GET", api_path("users"))
    show(listed(answer, "users"), USER_COLUMNS, as_json, answer)


@users.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), required=True, help="Role in the org.")
@click.option("--name", help="Display name.")
@click.option("--password", help="Initial password (else a setup token is printed).")
@click.option("--password-prompt", is_flag=True, help="Ask for the initial password, hidden.")
@json_option
@with_client
def create_user(
    client: MotesClient,
    email: str,
    role: str,
    name: str | None,
    password: str | None,
    password_prompt: bool,
    as_json: bool,
) -> None:
    """Add EMAIL to the org (creating the account if it has none)."""
    if password_prompt:
        if password is not None:
            raise click.UsageError("give --password or --password-prompt, not both")
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    body = given(email=email, role=role, name=name, password=password)
    answer = client.call("POST", api_path("users"), json=body)
    show([answer], USER_COLUMNS, as_json, answer)
    if not as_json and answer.get("setupToken"):
        label = "Setup token (the user sets a password with it, valid 72 h)"
        echo_secret(label, answer["setupToken"])


@users.command("update")
@click.argument("user_id")
@click.option("--role", type=click.Choice(ROLES), help="New role in the org.")
@click.option("--name", help="New display name.")
@click.option("--disable/--enable", "disabled", default=None, help="Lock or unlock the account.")
@json_option
@with_client
def update_user(
    client: MotesClient,
    user_id: str,
    role: str | None,
    name: str | None,
    disabled: bool | None,
    as_json: bool,
) -> None:
    """Change the role, name or state of member USER_ID."""
    body = changes(role=role, name=name, disabled=disabled)
    answer = client.call("PATCH", api_path("users", user_id), json=body)
    show([answer], USER_COLUMNS, as_json, answer)


@users.command("delete")
@click.argument("user_id")
@with_client
def delete_user(client: MotesClient, user_id: str) -> None:
    """Remove USER_ID from the org (the account goes too if it has no other org)."""
    client.call("DELETE", api_path("users", user_id))
    click.echo(f"User {user_id} removed from org {client.org}.")


@users.command("reset-password")
@click.argument("user_id")
@json_option
@with_client
def reset_password(client: MotesClient, user_id: str, as_json: bool) -> None:
    """Make a one-time reset token for USER_ID; it ends the user's sessions."""
    answer = client.call("POST", api_path("users", user_id, "password-reset"))
    if as_json:
        echo_json(answer)
        return
    echo_secret(f"Reset token (valid until {answer.get('expiresAt')})", answer.get("resetToken"))


# -- tokens -----------------------------------------------------------------------------------


@click.group()
def tokens() -> None:
    """Manage the API tokens of the org."""


@tokens.command("list")
@json_option
@with_client
def list_tokens(client: MotesClient, as_json: bool) -> None:
    """List the API tokens (never their values)."""
    answer = client.call("GET", api_path("tokens"))
    show(listed(answer, "tokens"), TOKEN_COLUMNS, as_json, answer)


@tokens.command("create")
@click.option("--description", help="What the token is for.")
@click.option("--read-bucket", multiple=True, metavar="ID", help="Read a bucket (repeatable).")
@click.option("--write-bucket", multiple=True, metavar="ID", help="Write a bucket (repeatable).")
@click.option(
    "--permission",
    multiple=True,
    metavar="PERM",
    help="Any permission, e.g. read:devices or write:channels/<id> (repeatable).",
)
@click.option(
    "--expires-in", callback=duration_option, help="Lifetime: 30d, 12h... [default: none]."
)
@json_option
@with_client
def create_token(
    client: MotesClient,
    description: str | None,
    read_bucket: tuple[str, ...],
    write_bucket: tuple[str, ...],
    permission: tuple[str, ...],
    expires_in: str | None,
    as_json: bool,
) -> None:
    """Create an API token; without permission options it has all access."""
    permissions = [f"read:buckets/{b}" for b in read_bucket]
    permissions += [f"write:buckets/{b}" for b in write_bucket] + list(permission)
    body = given(description=description, expiresIn=expires_in)
    if permissions:
        body["permissions"] = permissions
    answer = client.call("POST", api_path("tokens"), json=body)
    show([answer], TOKEN_COLUMNS, as_json, answer)
    if not as_json:
        echo_secret("Token", answer.get("token"))


@tokens.command("update")
@click.argument("token_id")
@click.option("--description", help="New description.")
@click.option(
    "--activate/--deactivate", "active", default=None, help="Let the token work, or stop it."
)
@json_option
@with_client
def update_token(
    client: MotesClient, token_id: str, description: str | None, active: bool | None, as_json: bool
) -> None:
    """Change the description or status of TOKEN_ID."""
    status = None if active is None else ("active" if active else "inactive")
    body = changes(description=description, status=status)
    answer = client.call("PATCH", api_path("tokens", token_id), json=body)
    show([answer], TOKEN_COLUMNS, as_json, answer)


@tokens.command("delete")
@click.argument("token_id")
@with_client
def delete_token(client: MotesClient, token_id: str) -> None:
    """Delete TOKEN_ID: it stops working at once."""
    client.call("DELETE", api_path("tokens", token_id))
    click.echo(f"Token {token_id} deleted.")


# -- secrets ----------------------------------------------------------------------------------


@click.group()
def secrets() -> None:
    """Manage the org's secrets (values are stored encrypted and never shown)."""


@secrets.command("list")
@json_option
@with_client
def list_secrets(client: MotesClient, as_json: bool) -> None:
    """List the keys of the org's secrets."""
    answer = client.call("GET", api_path("secrets"))
    show(listed(answer, "secrets"), SECRET_COLUMNS, as_json, answer)


@secrets.command("set")
@click.argument("key")
@click.option("--value", help="The value; asked for, hidden, when left out.")
@with_client
def set_secret(client: MotesClient, key: str, value: str | None) -> None:
    """Set secret KEY (created or replaced)."""
    if value is None:
        value = click.prompt("Value", hide_input=True)
    client.call("PUT", api_path("secrets", key), json={"value": value})
    click.echo(f"Secret {key} set.")


@secrets.command("delete")
@click.argument("key")
@with_client
def delete_secret(client: MotesClient, key: str) -> None:
    """Delete secret KEY."""
    client.call("DELETE", api_path("secrets", key))
    click.echo(f"Secret {key} deleted.")
