"""Keep Mosquitto's dynamic-security plugin in step with Motes' devices and channels.

    sync = DynamicSecurity("mqtt://admin:secret@broker:1883", service_user="motes",
                           service_password=operator_token)
    registry.devices.listen(sync.device_event)   # any thread
    await sync.start()

Each device becomes a dynsec client (user name = device id, password = its key, set when the
key is made or rotated: the only moments Motes has it) with a role ``motes-device-<id>``
allowing its own ``devices/<id>/...`` topics (commands only to receive, answers to send) and the
``channels/<ch>/messages/...`` of the channels it is connected to. Disabling, revoking the key
or deleting the device disables or deletes the client. The Motes worker gets a client of its
own (``service_user``) that may consume every device topic and send commands. Commands go to
``$CONTROL/dynamic-security/v1`` as the plugin's admin; answers come back on ``.../response``
and failures are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from motes.mqtt import packets as pk
from motes.registry.devices import DeviceEvent

log = logging.getLogger("motes.mqtt.dynsec")

CONTROL = "$CONTROL/dynamic-security/v1"
SERVICE_ROLE = "motes-service"


def device_role(device_id: str) -> str:
    return f"motes-device-{device_id}"


def _acl(kind: str, topic: str, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "allow": allow, "priority": priority}


def device_acls(device_id: str) -> list[dict[str, Any]]:
    own = f"devices/{device_id}"
    return [
        _acl("publishClientSend", f"{own}/#"),
        _acl("publishClientSend", f"{own}/commands/#", allow=False, priority=1),
        _acl("publishClientSend", f"{own}/commands/+/response", priority=2),
        _acl("publishClientReceive", f"{own}/#"),
        _acl("subscribePattern", f"{own}/#"),
        _acl("unsubscribePattern", f"{own}/#"),
    ]


def channel_acls(channel: str) -> list[dict[str, Any]]:
    topic = f"channels/{channel}/messages/#"
    return [
        _acl("publishClientSend", topic),
        _acl("publishClientReceive", topic),
        _acl("subscribePattern", topic),
    ]


def commands_for(event: DeviceEvent) -> list[dict[str, Any]]:
    """The dynsec commands that mirror one device event."""
    device, role = event.device_id, device_role(event.device_id)
    if event.kind == "created":
        return [
            {"command": "createRole", "rolename": role, "acls": device_acls(device)},
            {
                "command": "createClient",
                "username": device,
                "password": event.key,
                "roles": [{"rolename": role}],
            },
        ]
    if event.kind == "key":
        return [
            {"command": "setClientPassword", "username": device, "password": event.key},
            {"command": "enableClient", "username": device},
        ]
    if event.kind in ("key-revoked", "disabled"):
        return [{"command": "disableClient", "username": device}]
    if event.kind == "enabled":
        return [{"command": "enableClient", "username": device}]
    if event.kind == "deleted":
        return [
            {"command": "deleteClient", "username": device},
            {"command": "deleteRole", "rolename": role},
        ]
    if event.kind == "connected" and event.channel:
        return [
            {"command": "addRoleACL", "rolename": role, **a} for a in channel_acls(event.channel)
        ]
    if event.kind == "disconnected" and event.channel:
        return [
            {
                "command": "removeRoleACL",
                "rolename": role,
                "acltype": a["acltype"],
                "topic": a["topic"],
            }
            for a in channel_acls(event.channel)
        ]
    return []


def service_commands(username: str, password: str | None) -> list[dict[str, Any]]:
    """The worker's own client: consume every device and channel topic, send commands."""
    acls = [
        _acl("subscribePattern", "#"),
        _acl("subscribePattern", "$share/#"),
        _acl("publishClientReceive", "#"),
        _acl("publishClientSend", "devices/+/commands/+"),
    ]
    made: list[dict[str, Any]] = [
        {"command": "createRole", "rolename": SERVICE_ROLE, "acls": acls},
        {"command": "createClient", "username": username, "roles": [{"rolename": SERVICE_ROLE}]},
    ]
    if password:
        made[1]["password"] = password
        made.append({"command": "setClientPassword", "username": username, "password": password})
    return made


class DynamicSecurity:
    def __init__(self, url: str, service_user: str, service_password: str | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.username = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        self.service = service_commands(service_user, service_password)
        self.applied = 0
        self.failures: list[str] = []
        self._queue: asyncio.Queue[list[dict[str, Any]]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._queue.put_nowait(self.service)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def device_event(self, event: DeviceEvent) -> None:
        """``Devices.listen`` callback (any thread)."""
        commands = commands_for(event)
        if commands and self._loop is not None and self._queue is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, commands)

    async def idle(self) -> None:
        """Wait until every command queued so far has been answered (tests, shutdown)."""
        assert self._queue is not None
        while not self._queue.empty() or getattr(self, "_busy", False):
            await asyncio.sleep(0.02)

    async def _run(self) -> None:
        assert self._queue is not None
        pending: list[dict[str, Any]] | None = None
        while True:
            try:
                reader, writer = await self._connect()
            except (OSError, ConnectionError) as exc:
                log.warning("dynamic security at %s:%d: %s", self.host, self.port, exc)
                await asyncio.sleep(2)
                continue
            try:
                while True:
                    if pending is None:
                        pending = await self._queue.get()
                    self._busy = True
                    await self._apply(reader, writer, pending)
                    pending = None
                    self._busy = False
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                log.warning("dynamic security connection lost: %s; retrying", exc)
                self._busy = False
                writer.close()
                await asyncio.sleep(1)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(pk.encode_connect("motes-dynsec", self.username, self.password, 60, True))
        first, body = await _read_packet(reader)
        if first >> 4 != pk.CONNACK or pk.decode_connack(body)[1]:
            writer.close()
            raise ConnectionError("the broker refused the dynamic-security admin")
        writer.write(pk.encode_subscribe(1, [(CONTROL + "/response", 1)]))
        while (await _read_packet(reader))[0] >> 4 != pk.SUBACK:
            pass
        return reader, writer

    async def _apply(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        commands: list[dict[str, Any]],
    ) -> None:
        payload = orjson.dumps({"commands": commands})
        writer.write(pk.encode_publish(CONTROL, payload, 1, False, False, 2, 4))
        while True:
            first, body = await asyncio.wait_for(_read_packet(reader), 10)
            if first >> 4 != pk.PUBLISH:
                continue
            p = pk.decode_publish(first & 0x0F, body, 4)
            if p.qos:
                writer.write(pk.encode_ack(pk.PUBACK, p.packet_id, 4))
            if p.topic != CONTROL + "/response":
                continue
            answers = orjson.loads(p.payload).get("responses", [])
            for answer in answers:
                error = answer.get("error")
                # re-creating what exists is expected (restarts, the service client)
                if error and "already exists" not in error:
                    text = f"{answer.get('command')}: {error}"
                    self.failures.append(text)
                    log.warning("dynamic security refused %s", text)
            self.applied += len(commands)
            return


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    first, length, shift = head[0], head[1] & 0x7F, 7
    byte = head[1]
    while byte & 0x80:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
    return first, await reader.readexactly(length)
