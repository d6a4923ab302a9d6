"""Refused MQTT messages, from the event loop to the registry in batches.

    buffer = RejectionBuffer(registry.rejections.record)
    hooks.on_rejection = buffer.add      # on the event loop: no database there
    task = asyncio.create_task(buffer.run())
    ...
    task.cancel(); await buffer.flush()  # on stop: what is left

The buffer holds at most ``limit`` refusals; past that the oldest go (a flood of bad
publishes must not grow memory), counted in a warning at the next flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from motes.mqtt.platform import Rejection
from motes.registry.rejections import Items

log = logging.getLogger("motes.mqtt")

FLUSH_SECONDS = 2.0
MAX_PENDING = 10_000
TRANSPORT = "mqtt"


class RejectionBuffer:
    def __init__(self, record: Callable[[Items], None], limit: int = MAX_PENDING) -> None:
        self.record = record
        self.limit = limit
        self.pending: deque[Rejection] = deque()
        self.dropped = 0

    def add(self, item: Rejection) -> None:
        self.pending.append(item)
        self._trim()

    def _trim(self) -> None:
        while len(self.pending) > self.limit:
            self.pending.popleft()
            self.dropped += 1

    async def flush(self) -> None:
        """Write what is pending (in a worker thread); on failure keep it for the next try."""
        if self.dropped:
            log.warning("%d refused MQTT messages were not recorded (buffer full)", self.dropped)
            self.dropped = 0
        if not self.pending:
            return
        batch = list(self.pending)
        self.pending.clear()
        items = [(x.org_id, x.device, x.at_ns, TRANSPORT, x.topic, x.error) for x in batch]
        try:
            await run_in_threadpool(self.record, items)
        except Exception:  # a busy database must not lose them; retried next time
            log.exception("recording refused MQTT messages failed")
            self.pending.extendleft(reversed(batch))
            self._trim()

    async def run(self, seconds: float = FLUSH_SECONDS) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.flush()
