"""Commands for devices over HTTP: users queue and follow them, devices poll and answer.

POST   /api/v1/devices/{device}/commands {"name", "params"?, "timeoutSeconds"?}     -> 201
GET    /api/v1/devices/{device}/commands?state=&limit=&after=
GET    /api/v1/devices/{device}/commands/{command}
DELETE /api/v1/devices/{device}/commands/{command}                                -> canceled
GET    /api/v1/devices/{device}/commands/pending?wait=<0..60>         the device's key only
POST   /api/v1/devices/{device}/commands/{command}/response {"status", "result"?, "error"?}

A long poll waits on an event that ``Commands.listen`` sets when a command for its device
is created in this process; it never polls the database while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import operation, parse_body, parse_query
from motes.http import actor_of, authenticate
from motes.registry.api_orgs import dump, need
from motes.registry.commands import Command, Commands
from motes.registry.models import Action, Forbidden, NotFound, Org, Principal
from motes.registry.schemas import (
    CommandAnswer,
    CommandCreate,
    CommandList,
    CommandOut,
    CommandQuery,
    OrgQuery,
    PendingCommands,
    PendingQuery,
)
from motes.telemetry.api import resolve_org

Key = tuple[str, str]  # (org id, device id)


class Waiters:
    """Long polls waiting for their device's next command; ``notify`` wakes them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, commands: Commands) -> None:
        self.loop = loop
        self.commands = commands
        self._waiting: dict[Key, set[asyncio.Event]] = {}

    def notify(self, command: Command) -> None:
        """Called by Commands on the creating thread, after the create committed."""
        key = (command.org_id, command.device_id)
        # a poll registers before it reads the database, so one that is not registered yet
        # will read this command: skipping it here loses nothing
        if key in self._waiting:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits on it
                self.loop.call_soon_threadsafe(self._wake, key)

    def _wake(self, key: Key) -> None:
        for event in self._waiting.get(key, ()):
            event.set()

    @contextlib.contextmanager
    def waiting(self, key: Key) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiting.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiting.get(key, set())
            events.discard(event)
            if not events:
                self._waiting.pop(key, None)


def waiters(request: Request) -> Waiters:
    """This app's waiters, made (and subscribed to the registry's commands) on first use."""
    state = request.app.state
    commands: Commands = state.registry.commands
    loop = asyncio.get_running_loop()
    found: Waiters | None = getattr(state, "command_waiters", None)
    if found is None or found.loop is not loop or found.commands is not commands:
        found = state.command_waiters = Waiters(loop, commands)
        commands.listen(found.notify)
    return found


def command_out(command: Command) -> CommandOut:
    return CommandOut.model_validate(command.to_json())


def _context(request: Request, action: Action) -> tuple[Principal, Org, str]:
    """Users and tokens need ``action`` on devices; a device may read its own commands."""
    principal = authenticate(request)
    org = resolve_org(request, principal)
    device_id: str = request.path_params["device"]
    if not (action == "read" and principal.kind == "device" and principal.id == device_id):
        need(principal, action, "devices", device_id)
    return principal, org, device_id


def _device_itself(request: Request) -> tuple[Org, str]:
    principal = authenticate(request)
    org = resolve_org(request, principal)
    device_id: str = request.path_params["device"]
    if principal.kind != "device" or principal.id != device_id:
        raise Forbidden(f'only device "{device_id}" itself, with its key, polls and answers here')
    return org, device_id


async def _command_of(request: Request, org: Org, device_id: str) -> Command:
    commands = request.app.state.registry.commands
    command: Command = await run_in_threadpool(commands.get, org.id, request.path_params["command"])
    if command.device_id != device_id:
        raise NotFound(f'command "{command.id}" not found')
    return command


@operation(
    "Send a command to a device: queued until the device takes it, or it expires",
    ["commands"],
    body=CommandCreate,
    query=OrgQuery,
    responses={201: CommandOut},
    errors=(400, 401, 403, 404, 413),
    description="Devices connected over MQTT get it at once on `devices/{device}/commands/"
    "{id}`; others poll `GET .../commands/pending`.",
)
async def create_command(request: Request) -> Response:
    principal, org, device_id = _context(request, "write")
    data = await parse_body(request, CommandCreate)
    commands = request.app.state.registry.commands
    command = await run_in_threadpool(
        commands.create,
        org.id,
        device_id,
        data.name,
        data.params,
        data.timeout_seconds,
        actor_of(request, principal),
    )
    return dump(command_out(command), 201)


@operation(
    "A device's commands, newest first",
    ["commands"],
    query=CommandQuery,
    responses={200: CommandList},
)
async def list_commands(request: Request) -> Response:
    _, org, device_id = _context(request, "read")
    registry = request.app.state.registry
    await run_in_threadpool(registry.devices.get, org.id, device_id)  # 404 before any 400
    query = parse_query(request, CommandQuery)
    commands = registry.commands
    found = await run_in_threadpool(
        commands.list, org.id, device_id, query.state, query.limit, query.after
    )
    return dump(CommandList(commands=[command_out(c) for c in found]))


@operation("A command and its answer", ["commands"], query=OrgQuery, responses={200: CommandOut})
async def get_command(request: Request) -> Response:
    _, org, device_id = _context(request, "read")
    return dump(command_out(await _command_of(request, org, device_id)))


@operation(
    "Cancel a command the device has not answered yet",
    ["commands"],
    query=OrgQuery,
    responses={200: CommandOut},
    errors=(400, 401, 403, 404, 409),
)
async def cancel_command(request: Request) -> Response:
    principal, org, device_id = _context(request, "write")
    command = await _command_of(request, org, device_id)
    commands = request.app.state.registry.commands
    canceled = await run_in_threadpool(
        commands.cancel, org.id, command.id, actor_of(request, principal)
    )
    return dump(command_out(canceled))


@operation(
    "The device's pending commands, waiting up to `wait` seconds for one (its key only)",
    ["commands"],
    query=PendingQuery,
    responses={200: PendingCommands},
    description="Answers at once when commands are pending, else when one is created or "
    "`wait` seconds passed (`[]`). The commands answered count as delivered: a client "
    "should wait less than its own HTTP timeout.",
)
async def pending_commands(request: Request) -> Response:
    org, device_id = _device_itself(request)
    query = parse_query(request, PendingQuery)
    commands: Commands = request.app.state.registry.commands
    if request.method == "HEAD":  # no body goes out, so nothing may count as delivered
        found = await run_in_threadpool(commands.pending, org.id, device_id)
        return dump(PendingCommands([command_out(c) for c in found]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + query.wait
    with waiters(request).waiting((org.id, device_id)) as woken:
        while True:
            woken.clear()  # before reading: a create committed after the read sets it again
            found = await run_in_threadpool(commands.deliver, org.id, device_id)
            left = deadline - loop.time()
            if found or left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), left)
            if await request.is_disconnected():
                break  # nobody would read what we hand out: leave it pending
    return dump(PendingCommands([command_out(c) for c in found]))


@operation(
    "The device answers a command (its key only)",
    ["commands"],
    body=CommandAnswer,
    query=OrgQuery,
    responses={200: CommandOut},
    errors=(400, 401, 403, 404, 409, 413),
    description="409 when the command is final already (answered, expired or canceled).",
)
async def answer_command(request: Request) -> Response:
    org, device_id = _device_itself(request)
    data = await parse_body(request, CommandAnswer)
    commands = request.app.state.registry.commands
    command = await run_in_threadpool(
        commands.complete,
        org.id,
        device_id,
        request.path_params["command"],
        data.status == "succeeded",
        data.result,
        data.error,
    )
    return dump(command_out(command))


COMMANDS = "/api/v1/devices/{device}/commands"
routes = [
    Route(COMMANDS, create_command, methods=["POST"]),
    Route(COMMANDS, list_commands, methods=["GET"]),
    Route(COMMANDS + "/pending", pending_commands, methods=["GET"]),  # before {command}
    Route(COMMANDS + "/{command}", get_command, methods=["GET"]),
    Route(COMMANDS + "/{command}", cancel_command, methods=["DELETE"]),
    Route(COMMANDS + "/{command}/response", answer_command, methods=["POST"]),
]
