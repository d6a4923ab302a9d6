"""Motes behind the broker: credentials, topic ACLs, stored topics, status and commands.

Topics, inside each org's own topic space (docs/mqtt.md)::

    devices/{device}/telemetry[/{format}]     stored (same codecs as HTTP), then acked
    devices/{device}/attributes               deviceinfo-style record update, then acked
    devices/{device}/commands/{id}            downlink: the platform publishes commands
    devices/{device}/commands/{id}/response   the device answers; the command completes
    devices/{device}/...                      anything else: plain pub/sub
    channels/{channel}/messages[/{subtopic}]  stored in the channel's bucket, then routed
    $SYS/broker/...                           statistics (operator only)

A device (user name = device id, password = its key) may touch only its own
``devices/{id}/...`` topics and the channels it is connected to; API tokens and user JWTs
act by their permissions in their org.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from motes.mqtt import packets as pk
from motes.mqtt.ingest import STORED, Ingest, Outcome, split_run
from motes.mqtt.models import Identity, Message, Refused, RunResult, Session
from motes.mqtt.topics import matches
from motes.registry.models import (
    Bucket,
    Forbidden,
    NotFound,
    Principal,
    RegistryError,
    Unauthorized,
)
from motes.registry.service import Registry

log = logging.getLogger("motes.mqtt")

FORMATS = {
    "lp": "text/plain",
    "json": "application/json",
    "msgpack": "application/msgpack",
    "senml": "application/senml+json",
    "senml+json": "application/senml+json",
    "senml+cbor": "application/senml+cbor",
    "cbor": "application/senml+cbor",
}
CHANNEL_CACHE_SECONDS = 5.0
BUCKET_CACHE_SECONDS = 5.0
Done = Callable[[int, str | None], None]
MESSAGES_MEASUREMENT = "messages"


class Router(Protocol):
    """Where platform messages (commands) go out, and who runs the hooks' tasks."""

    def publish(self, mount: str, message: Message) -> int: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


@dataclass
class Client:
    """What the platform keeps of a connected client (``Identity.context``)."""

    principal: Principal
    bucket: Bucket | None  # a device's own bucket
    channels: dict[str, tuple[bool, float]] = field(default_factory=dict)  # channel -> ok, until


class TelemetryStream:
    """Runs of one telemetry topic's publishes: line protocol goes in as one ingest item
    per run (the payloads joined by newlines, each decoded as a body of its own), anything
    else one publish at a time."""

    __slots__ = ("bucket", "content_type", "device", "hooks", "identity", "topic")

    def __init__(
        self,
        hooks: MotesHooks,
        identity: Identity,
        device: str,
        bucket: Bucket,
        topic: str,
        content_type: str | None,
    ) -> None:
        self.hooks = hooks
        self.identity = identity
        self.device = device
        self.bucket = bucket
        self.topic = topic
        self.content_type = content_type  # None: told by each payload, as on_publish does

    def submit(self, payloads: list[bytes], done: Callable[[RunResult], None]) -> None:
        hooks = self.hooks
        kind = self.content_type
        if kind == "text/plain" or (kind is None and not any(map(_jsonish, payloads))):
            joined = payloads[0] if len(payloads) == 1 else b"\n".join(payloads)
            hooks.ingest.submit(
                self.bucket,
                self.device,
                joined,
                "text/plain",
                lambda outcome: hooks._run_stored(self, payloads, outcome, done),
                parts=payloads if len(payloads) > 1 else None,
            )
            return
        collect = _Collect(done, len(payloads))
        suffix = [] if kind is None else [self.topic.rsplit("/", 1)[1]]
        for n, payload in enumerate(payloads):
            publish = pk.Publish(self.topic, payload, 1, False, False, 0, {})
            hooks._telemetry(self.identity, self.device, suffix, publish, collect.slot(n))


def _jsonish(payload: bytes) -> bool:
    return payload.startswith((b"{", b"["))


class _Collect:
    """One ``done(code, reason)`` per publish of a run; the run's ``done`` once all came."""

    __slots__ = ("codes", "done", "failed", "left")

    def __init__(self, done: Callable[[RunResult], None], count: int) -> None:
        self.done = done
        self.codes: list[tuple[int, str | None]] = [(0, None)] * count
        self.left = count
        self.failed = False

    def slot(self, n: int) -> Done:
        def settle(code: int, reason: str | None) -> None:
            self.codes[n] = (code, reason)
            self.failed = self.failed or code != 0
            self.left -= 1
            if not self.left:
                self.done(self.codes if self.failed else None)

        return settle


@dataclass
class Rejection:
    at_ns: int
    org_id: str
    device: str | None
    topic: str
    error: str


class MotesHooks:
    def __init__(self, registry: Registry, ingest: Ingest, default_bucket: str) -> None:
        self.registry = registry
        self.ingest = ingest
        self.default_bucket = default_bucket
        self.broker: Router | None = None  # the embedded broker, or the external one
        self.on_rejection: Callable[[Rejection], None] | None = None
        # status and command bookkeeping in order, off the event loop
        self._ordered = ThreadPoolExecutor(1, thread_name_prefix="motes-mqtt-status")
        self._status: list[tuple[str, str, bool, str, int]] = []
        self._buckets: dict[tuple[str, str], tuple[Bucket, float]] = {}

    def close(self) -> None:
        self._ordered.shutdown(wait=True)

    # -- CONNECT --------------------------------------------------------------------------

    async def authenticate(self, connect: pk.Connect, remote: str) -> Identity:
        if not connect.password:
            raise Refused(
                pk.BAD_USER_NAME_OR_PASSWORD,
                "a device key (user name = device id) or an API token is required as password",
            )
        secret = connect.password.decode(errors="replace")
        scheme = "bearer" if secret.startswith("eyJ") else "token"
        try:
            principal = await asyncio.to_thread(self.registry.authenticate, scheme, secret)
        except (Unauthorized, Forbidden) as exc:
            raise Refused(pk.BAD_USER_NAME_OR_PASSWORD, str(exc)) from None
        if principal.kind == "device" and connect.username not in (None, "", principal.id):
            raise Refused(pk.BAD_USER_NAME_OR_PASSWORD, "the user name must be the device id")
        bucket = None
        if principal.kind == "device":
            key = (principal.org_id, principal.bucket_id or self.default_bucket)
            hit = self._buckets.get(key)
            if hit is not None and hit[1] > time.monotonic():
                bucket = hit[0]  # a connect storm: no thread hop per device for its bucket
            else:
                bucket = await asyncio.to_thread(self._bucket, *key)
                self._buckets[key] = (bucket, time.monotonic() + BUCKET_CACHE_SECONDS)
        label = f"{principal.kind} {principal.label or principal.id}"
        device = principal.id if principal.kind == "device" else None
        return Identity(principal.org_id, label, device, Client(principal, bucket), principal.actor)

    def _bucket(self, org_id: str, name: str | None) -> Bucket:
        return self.registry.find_bucket(org_id, name or self.default_bucket)

    # -- ACLs -----------------------------------------------------------------------------

    def may_publish(self, identity: Identity, topic: str) -> bool | Awaitable[bool]:
        client: Client = identity.context
        parts = topic.split("/")
        if len(parts) >= 3 and parts[0] == "devices":
            # only answers go up; commands come from the platform
            if parts[2] == "commands" and (len(parts) != 5 or parts[4] != "response"):
                return False
            if identity.device is not None:
                return parts[1] == identity.device
            return client.principal.allows("write", "devices", parts[1])
        if len(parts) >= 3 and parts[0] == "channels" and parts[2] == "messages":
            return self._channel_allowed(identity, parts[1], "write")
        return False

    def may_subscribe(self, identity: Identity, topic_filter: str) -> bool | Awaitable[bool]:
        client: Client = identity.context
        principal = client.principal
        parts = topic_filter.split("/")
        first = parts[0]
        if first == "$SYS":
            return principal.operator
        second = parts[1] if len(parts) > 1 else "#"
        concrete = second not in ("+", "#")
        if identity.device is not None:
            if first == "devices":
                return second == identity.device
            if first == "channels" and concrete:
                return self._channel_allowed(identity, second, "read")
            return False
        reach = {
            "devices": ("devices",),
            "channels": ("channels",),
            "+": ("devices", "channels"),
            "#": ("devices", "channels"),
        }.get(first)
        if reach is None:
            return False
        ident = second if concrete else None
        for kind in reach:
            if not principal.allows("read", kind, ident):
                return False
            if kind == "devices" and not principal.allows("read", "buckets"):
                return False  # device topics carry telemetry: the org's data
        return True

    def _channel_allowed(
        self, identity: Identity, channel: str, action: str
    ) -> bool | Awaitable[bool]:
        client: Client = identity.context
        if identity.device is None:
            return client.principal.allows(action, "channels", channel)  # type: ignore[arg-type]
        hit = client.channels.get(channel)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        return self._check_channel(identity, channel)

    async def _check_channel(self, identity: Identity, channel: str) -> bool:
        client: Client = identity.context
        try:
            await asyncio.to_thread(
                self.registry.devices.check_connected,
                identity.mount,
                channel,
                identity.device or "",
            )
            ok = True
        except (Forbidden, NotFound):
            ok = False
        client.channels[channel] = (ok, time.monotonic() + CHANNEL_CACHE_SECONDS)
        return ok

    # -- stored topics --------------------------------------------------------------------

    def on_publish(self, identity: Identity, publish: pk.Publish, done: Done) -> bool:
        """Take a publish that is stored before it is acknowledged: True, and ``done(code,
        reason)`` is called once it is durable (code 0) or refused. False: plain pub/sub."""
        parts = publish.topic.split("/")
        if parts[0] == "devices":
            kind = parts[2]
            if kind == "telemetry" and len(parts) <= 4:
                self._telemetry(identity, parts[1], parts[3:], publish, done)
            elif kind == "attributes" and len(parts) == 3:
                self._run(self._attributes(identity, parts[1], publish), done)
            elif kind == "commands":
                self._run(self._response(identity, parts[1], parts[3], publish), done)
            else:
                return False
            return True
        if parts[0] == "channels":
            self._run(self._channel_message(identity, parts[1], parts[3:], publish), done)
            return True
        return False

    def stream(self, identity: Identity, topic: str) -> TelemetryStream | None:
        """A device's (or a token's) telemetry topic whose bucket is known at CONNECT:
        runs of its publishes are stored together (see :class:`TelemetryStream`)."""
        parts = topic.split("/")
        if len(parts) not in (3, 4) or parts[0] != "devices" or parts[2] != "telemetry":
            return None
        client: Client = identity.context
        if client.bucket is None or self.may_publish(identity, topic) is not True:
            return None
        content_type = FORMATS.get(parts[3]) if len(parts) == 4 else None
        if len(parts) == 4 and content_type is None:
            return None  # an unknown format: on_publish refuses each publish
        return TelemetryStream(self, identity, parts[1], client.bucket, topic, content_type)

    def _run(self, coro: Coroutine[Any, Any, tuple[int, str | None]], done: Done) -> None:
        assert self.broker is not None
        self.broker.spawn(coro).add_done_callback(lambda task: _finish(task, done))

    def _content_type(self, publish: pk.Publish, suffix: list[str]) -> str | None:
        if suffix:
            return FORMATS.get(suffix[0])
        given = publish.properties.get(pk.CONTENT_TYPE) if publish.properties else None
        if given:
            return str(given)
        head = publish.payload[:1]
        if head in (b"{", b"["):
            sample = publish.payload[:256]
            if head == b"[" and (b'"n"' in sample or b'"bn"' in sample):
                return "application/senml+json"
            return "application/json"
        return "text/plain"

    def _telemetry(
        self, identity: Identity, device: str, suffix: list[str], publish: pk.Publish, done: Done
    ) -> None:
        content_type = self._content_type(publish, suffix)
        if content_type is None:
            text = f"unknown format {suffix[0]!r}: use one of {', '.join(FORMATS)}"
            self.reject(identity, device, publish.topic, text)
            done(pk.TOPIC_NAME_INVALID, text)
            return
        client: Client = identity.context
        bucket = client.bucket
        if bucket is None:  # a token writes for a device: into the org's default bucket
            self._run(self._telemetry_for(identity, device, content_type, publish), done)
            return
        topic = publish.topic
        self.ingest.submit(
            bucket,
            device,
            publish.payload,
            content_type,
            lambda outcome: self._telemetry_done(identity, device, bucket, topic, outcome, done),
        )

    def _run_stored(
        self,
        stream: TelemetryStream,
        payloads: list[bytes],
        outcome: Outcome,
        done: Callable[[RunResult], None],
    ) -> None:
        """A run stored as one item: settled as a whole when all went in, else per publish
        (each with the errors of its own lines, as if it had been stored alone)."""
        identity, device, bucket, topic = (
            stream.identity,
            stream.device,
            stream.bucket,
            stream.topic,
        )
        if outcome is STORED:
            each = len(payloads)
            self._telemetry_done(
                identity, device, bucket, topic, STORED,
                lambda code, reason: done(None if code == 0 else [(code, reason)] * each),
            )  # fmt: skip
            return
        collect = _Collect(done, len(payloads))
        for n, part in enumerate(split_run(payloads, outcome)):
            self._telemetry_done(identity, device, bucket, topic, part, collect.slot(n))

    async def _telemetry_for(
        self, identity: Identity, device: str, content_type: str, publish: pk.Publish
    ) -> tuple[int, str | None]:
        client: Client = identity.context
        bucket = await asyncio.to_thread(self._bucket, identity.mount, None)
        if not client.principal.allows("write", "buckets", bucket.id):
            text = f'may not write bucket "{bucket.name}"'
            self.reject(identity, device, publish.topic, text)
            return pk.NOT_AUTHORIZED, text
        outcome = await self.ingest.store(bucket, device, publish.payload, content_type)
        return await self._settle(identity, device, bucket, publish.topic, outcome)

    def _telemetry_done(
        self,
        identity: Identity,
        device: str,
        bucket: Bucket,
        topic: str,
        outcome: Outcome,
        done: Done,
    ) -> None:
        devices = self.registry.devices
        if outcome is STORED and devices.known(identity.mount, device):
            devices.touch(identity.mount, device, bucket.id)  # the common case: no thread hop
            done(0, None)
            return
        self._run(self._settle(identity, device, bucket, topic, outcome), done)

    async def _settle(
        self, identity: Identity, device: str, bucket: Bucket, topic: str, outcome: Outcome
    ) -> tuple[int, str | None]:
        """The answer for a stored telemetry publish; the device record follows the data."""
        if outcome.failure is not None:
            return pk.UNSPECIFIED_ERROR, outcome.failure
        devices = self.registry.devices
        if outcome.errors:
            self._report(identity, device, topic, outcome)
        if outcome.written or not outcome.errors:
            if outcome.attributes is not None:
                await asyncio.to_thread(
                    devices.record_attributes, identity.mount, device, outcome.attributes, bucket.id
                )
            else:
                await asyncio.to_thread(devices.touch, identity.mount, device, bucket.id)
        if outcome.rejected:
            return pk.PAYLOAD_FORMAT_INVALID, _summary(outcome)
        return 0, None

    def _report(self, identity: Identity, device: str, topic: str, outcome: Outcome) -> None:
        self.reject(identity, device, topic, _summary(outcome))

    async def _attributes(
        self, identity: Identity, device: str, publish: pk.Publish
    ) -> tuple[int, str | None]:
        try:
            attributes = orjson.loads(publish.payload)
            if not isinstance(attributes, dict):
                raise ValueError("must be a JSON object")
        except ValueError as exc:
            text = f"attributes payload is not a JSON object: {exc}"
            self.reject(identity, device, publish.topic, text)
            return pk.PAYLOAD_FORMAT_INVALID, text
        client: Client = identity.context
        bucket = client.bucket
        if bucket is None:
            bucket = await asyncio.to_thread(self._bucket, identity.mount, None)
        await asyncio.to_thread(
            self.registry.devices.record_attributes, identity.mount, device, attributes, bucket.id
        )
        return 0, None

    async def _response(
        self, identity: Identity, device: str, command_id: str, publish: pk.Publish
    ) -> tuple[int, str | None]:
        try:
            body = orjson.loads(publish.payload)
            status = body.get("status") if isinstance(body, dict) else None
            if status not in ("succeeded", "failed"):
                raise ValueError('needs "status": "succeeded" or "failed"')
        except ValueError as exc:
            text = f"command response: {exc}"
            self.reject(identity, device, publish.topic, text)
            return pk.PAYLOAD_FORMAT_INVALID, text
        commands = getattr(self.registry, "commands", None)
        if commands is None:
            return pk.IMPLEMENTATION_SPECIFIC_ERROR, "commands are not available"
        try:
            await asyncio.to_thread(
                commands.complete, identity.mount, device, command_id, status == "succeeded",
                body.get("result"), body.get("error"),
            )  # fmt: skip
        except NotFound as exc:
            self.reject(identity, device, publish.topic, str(exc))
            return pk.TOPIC_NAME_INVALID, str(exc)
        except RegistryError as exc:
            self.reject(identity, device, publish.topic, str(exc))
            return pk.IMPLEMENTATION_SPECIFIC_ERROR, str(exc)
        return 0, None

    async def _channel_message(
        self, identity: Identity, channel_id: str, subtopic: list[str], publish: pk.Publish
    ) -> tuple[int, str | None]:
        client: Client = identity.context
        try:
            channel = await asyncio.to_thread(
                self.registry.devices.channel, identity.mount, channel_id
            )
            bucket = await asyncio.to_thread(self._bucket, identity.mount, channel.bucket_id)
        except NotFound as exc:
            self.reject(identity, identity.device, publish.topic, str(exc))
            return pk.TOPIC_NAME_INVALID, str(exc)
        extra = {"channel": channel_id, "publisher": client.principal.actor}
        if subtopic:
            extra["subtopic"] = ".".join(subtopic)
        content_type = self._content_type(publish, []) or "application/senml+json"
        outcome = await self.ingest.store(
            bucket, identity.device, publish.payload, content_type, extra, MESSAGES_MEASUREMENT
        )
        if outcome.failure is not None:
            return pk.UNSPECIFIED_ERROR, outcome.failure
        if outcome.errors:
            self.reject(identity, identity.device, publish.topic, _summary(outcome))
        return (pk.PAYLOAD_FORMAT_INVALID, _summary(outcome)) if outcome.rejected else (0, None)

    # -- refusals, kept where the owner sees them -----------------------------------------

    def reject(self, identity: Identity, device: str | None, topic: str, error: str) -> None:
        item = Rejection(time.time_ns(), identity.mount, device or identity.device, topic, error)
        if self.on_rejection is not None:
            self.on_rejection(item)

    def on_denied(self, identity: Identity, topic: str, reason: str) -> None:
        self.reject(identity, identity.device, topic, reason)

    # -- connections, status and commands -------------------------------------------------

    def on_connected(self, session: Session) -> None:
        device = session.identity.device
        if device is None:
            return
        self._set_connected(session.identity.mount, device, True, "connect")
        if any(_covers_commands(s.filter, device) for s in session.subscriptions.values()):
            self._push_pending(session)

    def on_subscribed(self, session: Session, filters: list[str]) -> None:
        device = session.identity.device
        if device is not None and any(_covers_commands(f, device) for f in filters):
            self._push_pending(session)

    def on_disconnected(self, session: Session, reason: str, will: bool) -> None:
        device = session.identity.device
        if device is not None:
            why = "last-will" if will else reason
            self._set_connected(session.identity.mount, device, False, why)

    def _set_connected(self, org_id: str, device: str, connected: bool, reason: str) -> None:
        """Queue a status event (on the event loop); what queued during one turn is written
        in one transaction, in order, by the status thread."""
        self._status.append((org_id, device, connected, reason, time.time_ns()))
        if len(self._status) == 1:
            asyncio.get_running_loop().call_soon(self._write_status)

    def _write_status(self) -> None:
        events, self._status = self._status, []  # swapped on the loop: nothing races it
        future = self._in_order(self.registry.devices.set_connected_many, events)

        def retry(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is not None:
                self._status[:0] = events  # written again with the next batch
                asyncio.get_running_loop().call_later(1.0, self._write_status)

        future.add_done_callback(retry)

    def _in_order(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._ordered, fn, *args)
        future.add_done_callback(_log_failure)
        return future

    def _push_pending(self, session: Session) -> None:
        commands = getattr(self.registry, "commands", None)
        if commands is None:
            return
        future = self._in_order(commands.pending, session.identity.mount, session.identity.device)
        future.add_done_callback(
            lambda f: [self.push_command(c) for c in f.result()] if not f.exception() else None
        )

    def push_command(self, command: Any) -> bool:
        """Publish a command to its device's topic if the device listens; marks it sent."""
        broker = self.broker
        if broker is None:
            return False
        topic = f"devices/{command.device_id}/commands/{command.id}"
        payload = orjson.dumps(
            {
                "id": command.id,
                "name": command.name,
                "params": command.params,
                "expiresAt": _rfc3339(command.expires_ns),
            }
        )
        left = max(1, (command.expires_ns - time.time_ns()) // 1_000_000_000)
        props = {
            pk.MESSAGE_EXPIRY: left,
            pk.CONTENT_TYPE: "application/json",
            pk.RESPONSE_TOPIC: topic + "/response",
            pk.CORRELATION_DATA: command.id.encode(),
        }
        commands = self.registry.commands
        org_id = command.org_id

        def delivered() -> None:
            self._in_order(commands.mark_delivered, org_id, command.id)

        message = Message(topic, payload, 1, False, props, time.monotonic() + left, None, delivered)
        sent = broker.publish(org_id, message)
        if sent:
            self._in_order(commands.mark_sent, org_id, command.id)
        return sent > 0

    def command_created(self, command: Any, loop: asyncio.AbstractEventLoop) -> None:
        """``registry.commands.listen`` callback (any thread)."""
        loop.call_soon_threadsafe(self.push_command, command)


def _finish(task: asyncio.Task[tuple[int, str | None]], done: Done) -> None:
    if task.cancelled() or task.exception() is not None:
        if not task.cancelled():
            log.error("storing an MQTT publish failed: %r", task.exception())
        done(pk.IMPLEMENTATION_SPECIFIC_ERROR, "the message could not be stored")
    else:
        done(*task.result())


def _covers_commands(topic_filter: str, device: str) -> bool:
    return matches(topic_filter, f"devices/{device}/commands/x")


def _summary(outcome: Outcome) -> str:
    if outcome.failure:
        return outcome.failure
    first = outcome.errors[0]
    where = f"line {first.line}: " if first.line else ""
    more = f" (and {len(outcome.errors) - 1} more)" if len(outcome.errors) > 1 else ""
    kept = f"; {outcome.written} point(s) stored" if outcome.written else "; nothing stored"
    return f"{where}{first.message}{more}{kept}"


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("MQTT status/command bookkeeping failed: %s", future.exception())
