"""Device and channel commands: ``motes devices`` and ``motes channels``.

    motes devices create greenhouse-1 --name "Greenhouse 1" --tag lab --bucket telemetry
    motes devices list --search green --tag lab
    motes devices rotate-key greenhouse-1       # the new key is printed once
    motes devices import devices.csv            # header: id,name,tags,metadata,bucket
    motes devices create pump-3 --expected-interval 5m   # offline after 5 min without data
    motes devices commands send pump-3 reboot --params '{"delay": 5}' --timeout 1h
    motes devices commands list pump-3 --state queued
    motes channels create alerts
    motes channels connect alerts greenhouse-1
    motes channels publish alerts --subtopic lab/1 --data '[{"n": "t", "v": 21.5}]'

Device keys are printed once, when made: the server keeps only a hash and a prefix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from motes.cli.client import MotesClient, api_path
from motes.cli.duration import parse_duration
from motes.cli.options import (
    changes,
    echo_json,
    echo_secret,
    given,
    json_option,
    listed,
    parse_json_object,
    show,
    with_client,
)
from motes.cli.output import format_records

DEVICE_COLUMNS = [
    ("ID", "id"),
    ("Name", "name"),
    ("Tags", "tags"),
    ("Bucket", "bucket"),
    ("Key", "keyPrefix"),
    ("Disabled", "disabled"),
    ("Status", "status"),
    ("Last seen", "lastSeen"),
]
DEVICE_DETAILS = [
    ("ID", "id"),
    ("Name", "name"),
    ("Tags", "tags"),
    ("Metadata", "metadata"),
    ("Bucket", "bucket"),
    ("Permissions", "permissions"),
    ("Disabled", "disabled"),
    ("Key prefix", "keyPrefix"),
    ("Key created", "keyCreatedAt"),
    ("Attributes", "attributes"),
    ("Attributes updated", "attributesUpdatedAt"),
    ("Last seen", "lastSeen"),
    ("Status", "status"),
    ("Status since", "statusChangedAt"),
    ("Expected interval (s)", "expectedIntervalSeconds"),
    ("Connected (MQTT)", "connected"),
    ("Last connect", "lastConnect"),
    ("Last disconnect", "lastDisconnect"),
    ("Created", "createdAt"),
]
IMPORTED_COLUMNS = [("ID", "id"), ("Name", "name"), ("Bucket", "bucket"), ("Key", "key")]
COMMAND_COLUMNS = [
    ("ID", "id"),
    ("Name", "name"),
    ("State", "state"),
    ("Created", "createdAt"),
    ("Expires", "expiresAt"),
    ("Attempts", "attempts"),
    ("Completed", "completedAt"),
    ("Error", "error"),
]
CHANNEL_COLUMNS = [("ID", "id"), ("Name", "name"), ("Bucket", "bucket"), ("Created", "createdAt")]
KEY_NOTE = "Store the keys now: they will not be shown again."

_metadata_option = click.option(
    "--metadata", callback=parse_json_object, metavar="JSON", help='A JSON object: {"site": "n"}.'
)
_tag_option = click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
_permission_option = click.option(
    "--permission",
    "permissions",
    multiple=True,
    metavar="PERM",
    help="A read: permission for the device's key, e.g. read:channels (repeatable).",
)


def _seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Click callback: ``300``, ``5m`` or ``1h30m`` as whole seconds."""
    if value is None:
        return None
    text = value.strip()
    try:
        return int(text) if text.isdigit() else parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


_create_interval_option = click.option(
    "--expected-interval",
    "interval",
    callback=_seconds,
    metavar="DURATION",
    help="How often it sends data (300, 5m): offline (stale if connected) after.",
)
_update_interval_option = click.option(
    "--expected-interval",
    "interval",
    callback=_seconds,
    metavar="DURATION",
    help="How often it sends data (300, 5m); 0 removes the interval.",
)


def _given(values: tuple[str, ...]) -> list[str] | None:
    """A repeatable option as a list, or None when it was not given at all."""
    return list(values) if values else None


# -- devices ----------------------------------------------------------------------------------


@click.group()
def devices() -> None:
    """Provision devices and manage their keys."""


@devices.command("list")
@click.option("--search", help="Part of the id or name (case-insensitive).")
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag (repeatable).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="A metadata value (repeatable).")
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many [default: 100].")
@click.option("--offset", type=click.IntRange(min=0), help="Skip this many.")
@json_option
@with_client
def list_devices(
    client: MotesClient,
    search: str | None,
    tags: tuple[str, ...],
    meta: tuple[str, ...],
    limit: int | None,
    offset: int | None,
    as_json: bool,
) -> None:
    """List the devices of the org."""
    params: list[tuple[str, str | int]] = [("tag", tag) for tag in tags]
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--meta")
        params.append((f"meta.{key}", value))
    given = {"search": search, "limit": limit, "offset": offset}
    params += [(name, value) for name, value in given.items() if value is not None]
    answer = client.call("GET", api_path("devices"), params=params)
    found = listed(answer, "devices")
    show(found, DEVICE_COLUMNS, as_json, answer)
    total = answer.get("total")
    if not as_json and isinstance(total, int) and total > len(found):
        click.echo(f"{len(found)} of {total} devices shown: see --limit and --offset.", err=True)


@devices.command("create")
@click.argument("device_id")
@click.option("--name", help="Display name.")
@_tag_option
@_metadata_option
@click.option("--bucket", help="Bucket its telemetry goes to.")
@_permission_option
@_create_interval_option
@json_option
@with_client
def create_device(
    client: MotesClient,
    device_id: str,
    name: str | None,
    tags: tuple[str, ...],
    metadata: dict[str, Any] | None,
    bucket: str | None,
    permissions: tuple[str, ...],
    interval: int | None,
    as_json: bool,
) -> None:
    """Provision DEVICE_ID and print its key, once."""
    body: dict[str, Any] = {
        "id": device_id,
        "name": name,
        "tags": _given(tags),
        "metadata": metadata,
        "bucket": bucket,
        "permissions": _given(permissions),
        "expectedIntervalSeconds": interval,
    }
    body = given(**body)
    answer = client.call("POST", api_path("devices"), json=body)
    show([answer], DEVICE_COLUMNS, as_json, answer)
    if not as_json:
        echo_secret("Device key", answer.get("key"))


@devices.command("show")
@click.argument("device_id")
@json_option
@with_client
def show_device(client: MotesClient, device_id: str, as_json: bool) -> None:
    """Show DEVICE_ID: its record, latest attributes and their history."""
    answer = client.call("GET", api_path("devices", device_id))
    if as_json:
        echo_json(answer)
        return
    click.echo(format_records([answer], DEVICE_DETAILS, vertical=True))
    history = [h for h in answer.get("history") or [] if isinstance(h, dict)]
    if history:
        keys = list(dict.fromkeys(key for entry in history for key in entry))
        click.echo("\nHistory:\n" + format_records(history, [(key, key) for key in keys]))


@devices.command("update")
@click.argument("device_id")
@click.option("--name", help="New display name.")
@click.option("--tag", "tags", multiple=True, help="Replace the tags (repeatable).")
@_metadata_option
@click.option("--bucket", help="New bucket for its telemetry.")
@_permission_option
@click.option("--disable/--enable", "disabled", default=None, help="Refuse or accept its key.")
@_update_interval_option
@json_option
@with_client
def update_device(
    client: MotesClient,
    device_id: str,
    name: str | None,
    tags: tuple[str, ...],
    metadata: dict[str, Any] | None,
    bucket: str | None,
    permissions: tuple[str, ...],
    disabled: bool | None,
    interval: int | None,
    as_json: bool,
) -> None:
    """Change DEVICE_ID; options left out stay as they are."""
    body = changes(
        name=name,
        tags=_given(tags),
        metadata=metadata,
        bucket=bucket,
        permissions=_given(permissions),
        disabled=disabled,
        expectedIntervalSeconds=interval,
    )
    answer = client.call("PATCH", api_path("devices", device_id), json=body)
    show([answer], DEVICE_COLUMNS, as_json, answer)


@devices.command("delete")
@click.argument("device_id")
@with_client
def delete_device(client: MotesClient, device_id: str) -> None:
    """Delete DEVICE_ID (its telemetry stays in its bucket)."""
    client.call("DELETE", api_path("devices", device_id))
    click.echo(f"Device {device_id} deleted.")


@devices.command("rotate-key")
@click.argument("device_id")
@json_option
@with_client
def rotate_key(client: MotesClient, device_id: str, as_json: bool) -> None:
    """Give DEVICE_ID a new key, printed once; the old one stops working at once."""
    answer = client.call("POST", api_path("devices", device_id, "key"))
    if as_json:
        echo_json(answer)
    else:
        echo_secret(f"New key of {device_id}", answer.get("key"))


@devices.command("revoke-key")
@click.argument("device_id")
@with_client
def revoke_key(client: MotesClient, device_id: str) -> None:
    """Revoke the key of DEVICE_ID: no key works for it until rotate-key."""
    client.call("DELETE", api_path("devices", device_id, "key"))
    click.echo(f"Device {device_id} has no key now.")


@devices.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@with_client
def import_devices(client: MotesClient, file: Path, as_json: bool) -> None:
    """Provision every device of a CSV file, or none if any line is bad.

    Header: id,name,tags,metadata,bucket,expected_interval_seconds (all but id optional);
    tags separated by ";", metadata a JSON object. Prints each device with its key, once.
    """
    headers = {"Content-Type": "text/csv"}
    answer = client.call(
        "POST", api_path("devices", "bulk"), content=file.read_bytes(), headers=headers
    )
    show(listed(answer, "devices"), IMPORTED_COLUMNS, as_json, answer)
    if not as_json:
        click.echo(f"\n{KEY_NOTE}")


# -- commands ---------------------------------------------------------------------------------


@devices.group("commands")
def commands() -> None:
    """Send commands to a device and follow them (queued until the device takes them)."""


def _json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", ctx, param) from exc


@commands.command("send")
@click.argument("device_id")
@click.argument("name")
@click.option("--params", callback=_json_value, metavar="JSON", help='Any JSON: {"delay": 5}.')
@click.option(
    "--timeout",
    callback=_seconds,
    metavar="DURATION",
    help="Expire it if not answered by then (3600, 1h) [default: 24h, at most 30d].",
)
@json_option
@with_client
def send_command(
    client: MotesClient,
    device_id: str,
    name: str,
    params: Any,
    timeout: int | None,
    as_json: bool,
) -> None:
    """Send command NAME to DEVICE_ID."""
    body = given(name=name, params=params, timeoutSeconds=timeout)
    answer = client.call("POST", api_path("devices", device_id, "commands"), json=body)
    show([answer], COMMAND_COLUMNS, as_json, answer)


@commands.command("list")
@click.argument("device_id")
@click.option(
    "--state",
    type=click.Choice(
        ["queued", "sent", "delivered", "succeeded", "failed", "expired", "canceled"]
    ),
    help="Only commands in this state.",
)
@click.option("--limit", type=click.IntRange(1, 1000), help="At most this many [default: 100].")
@click.option("--after", metavar="ID", help="Only commands older than this one (paging).")
@json_option
@with_client
def list_commands(
    client: MotesClient,
    device_id: str,
    state: str | None,
    limit: int | None,
    after: str | None,
    as_json: bool,
) -> None:
    """List the commands of DEVICE_ID, newest first."""
    params = list(given(state=state, limit=limit, after=after).items())
    answer = client.call("GET", api_path("devices", device_id, "commands"), params=params)
    show(listed(answer, "commands"), COMMAND_COLUMNS, as_json, answer)


@commands.command("cancel")
@click.argument("device_id")
@click.argument("command_id")
@json_option
@with_client
def cancel_command(client: MotesClient, device_id: str, command_id: str, as_json: bool) -> None:
    """Cancel COMMAND_ID of DEVICE_ID, unless the device answered it already."""
    path = api_path("devices", device_id, "commands", command_id)
    answer = client.call("DELETE", path)
    if as_json:
        echo_json(answer)
    else:
        click.echo(f"Command {command_id} of {device_id} canceled.")


# -- channels ---------------------------------------------------------------------------------


@click.group()
def channels() -> None:
    """Manage channels, the devices connected to them, and publish to them."""


@channels.command("list")
@json_option
@with_client
def list_channels(client: MotesClient, as_json: bool) -> None:
    """List the channels of the org."""
    answer = client.call("GET", api_path("channels"))
    show(listed(answer, "channels"), CHANNEL_COLUMNS, as_json, answer)


@channels.command("create")
@click.argument("channel_id")
@click.option("--name", help="Display name.")
@click.option("--bucket", help="Bucket its messages are stored in.")
@_metadata_option
@json_option
@with_client
def create_channel(
    client: MotesClient,
    channel_id: str,
    name: str | None,
    bucket: str | None,
    metadata: dict[str, Any] | None,
    as_json: bool,
) -> None:
    """Create channel CHANNEL_ID."""
    body = given(id=channel_id, name=name, bucket=bucket, metadata=metadata)
    answer = client.call("POST", api_path("channels"), json=body)
    show([answer], CHANNEL_COLUMNS, as_json, answer)


@channels.command("delete")
@click.argument("channel_id")
@with_client
def delete_channel(client: MotesClient, channel_id: str) -> None:
    """Delete CHANNEL_ID (messages already stored stay in its bucket)."""
    client.call("DELETE", api_path("channels", channel_id))
    click.echo(f"Channel {channel_id} deleted.")


@channels.command("connect")
@click.argument("channel_id")
@click.argument("device_id")
@with_client
def connect(client: MotesClient, channel_id: str, device_id: str) -> None:
    """Let DEVICE_ID publish to CHANNEL_ID."""
    client.call("PUT", api_path("channels", channel_id, "devices", device_id))
    click.echo(f"Device {device_id} connected to channel {channel_id}.")


@channels.command("disconnect")
@click.argument("channel_id")
@click.argument("device_id")
@with_client
def disconnect(client: MotesClient, channel_id: str, device_id: str) -> None:
    """Stop DEVICE_ID from publishing to CHANNEL_ID."""
    client.call("DELETE", api_path("channels", channel_id, "devices", device_id))
    click.echo(f"Device {device_id} disconnected from channel {channel_id}.")


@channels.command("devices")
@click.argument("channel_id")
@json_option
@with_client
def channel_devices(client: MotesClient, channel_id: str, as_json: bool) -> None:
    """List the devices connected to CHANNEL_ID."""
    answer = client.call("GET", api_path("channels", channel_id, "devices"))
    ids = answer.get("devices") if isinstance(answer.get("devices"), list) else []
    show([{"id": device} for device in ids or []], [("Device", "id")], as_json, answer)


@channels.command("publish")
@click.argument("channel_id")
@click.option("--subtopic", help="Subtopic, e.g. lab/1 (stored as tag subtopic).")
@click.option(
    "-f",
    "--file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="File holding the message; - reads standard input.",
)
@click.option("--data", help="The message itself.")
@click.option(
    "--content-type",
    default="application/senml+json",
    show_default=True,
    help="Format of the message: any telemetry format, e.g. text/plain for line protocol.",
)
@with_client
def publish(
    client: MotesClient,
    channel_id: str,
    subtopic: str | None,
    file: Path | None,
    data: str | None,
    content_type: str,
) -> None:
    """Publish a message to CHANNEL_ID; it is stored durably in the channel's bucket."""
    if (file is None) == (data is None):
        raise click.UsageError("give the message with exactly one of -f FILE and --data")
    if data is not None:
        body = data.encode()
    elif str(file) == "-":
        body = click.get_binary_stream("stdin").read()
    else:
        body = Path(str(file)).read_bytes()
    parts = [part for part in (subtopic or "").split("/") if part]
    path = api_path("channels", channel_id, "messages", *parts)
    client.call("POST", path, content=body, headers={"Content-Type": content_type})
    click.echo(f"Published {len(body)} bytes to channel {channel_id}.")
