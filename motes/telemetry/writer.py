"""Group commit: many write requests, one transaction, then every one of them is acked.

Requests queue up while the previous commit runs; the writer thread takes everything
queued, stores it in one transaction (one fsync) and resolves each request's future with
its own outcome. The queue is bounded in points: past the bound, :meth:`submit` raises
:class:`Overloaded` at once (the API answers 503 with Retry-After) instead of queueing
without limit. When no writes arrive, the same thread compacts and enforces retention, so
the store has exactly one writer.

    writer = GroupCommitWriter(store, max_queued_points=4_000_000)
    writer.start()
    outcome = writer.submit(WriteRequest("telemetry", frames), points).result()
    writer.stop()   # flushes what is queued, then returns
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from motes.telemetry.models import Overloaded
from motes.telemetry.store.protocol import TelemetryStore, WriteOutcome, WriteRequest

log = logging.getLogger(__name__)

Maintenance = Callable[[bool], None]
# DuckDB drops and takes back the GIL many times while it runs one statement; each time the
# writer waits until the thread holding it (the event loop) reaches its switch interval.
# During a commit that interval is 50 µs instead of the server's 200 µs: small MQTT commits
# got shorter under load, and a shorter interval for the whole process had cost the HTTP
# ingest 10-30 % (measured with bench/mqtt.py and bench/ingest_query.py).
COMMIT_SWITCH_INTERVAL = 0.00005


class GroupCommitWriter:
    def __init__(
        self,
        store: TelemetryStore,
        *,
        max_queued_points: int,
        maintenance: Maintenance | None = None,
        idle_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._max_points = max_queued_points
        self._maintenance = maintenance
        self._idle_seconds = idle_seconds
        self._queue: deque[tuple[WriteRequest, int, Future[WriteOutcome]]] = deque()
        self._queued_points = 0
        self._tasks: deque[tuple[Callable[[], object], Future[object]]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="motes-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: WriteRequest, points: int) -> Future[WriteOutcome]:
        """Queue a request; the future resolves once it is durable (or failed)."""
        fut: Future[WriteOutcome] = Future()
        with self._cond:
            if self._stopping:
                raise Overloaded("server is shutting down", retry_after=5)
            if self._queued_points and self._queued_points + points > self._max_points:
                raise Overloaded(
                    f"write queue full ({self._queued_points} points waiting); retry shortly"
                )
            self._queue.append((request, points, fut))
            self._queued_points += points
            self._cond.notify()
        return fut

    def execute(self, fn: Callable[[], object]) -> Future[object]:
        """Run ``fn`` on the writer thread between commits (schema changes, bucket drops)."""
        fut: Future[object] = Future()
        with self._cond:
            self._tasks.append((fn, fut))
            self._cond.notify()
        return fut

    @property
    def queued_points(self) -> int:
        return self._queued_points

    def stop(self, timeout: float = 60.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> list[tuple[WriteRequest, int, Future[WriteOutcome]]]:
        with self._cond:
            if not self._queue and not self._tasks and not self._stopping:
                self._cond.wait(self._idle_seconds)
            items = list(self._queue)
            self._queue.clear()
            # from here a request can no longer be cancelled; one cancelled before (its
            # client gave up) is dropped unwritten: it was never acknowledged
            taken = [i for i in items if i[2].set_running_or_notify_cancel()]
            dropped = sum(points for _, points, fut in items if fut.cancelled())
            self._queued_points -= dropped
            return taken

    def _run(self) -> None:
        last_write = time.monotonic()
        while True:
            try:
                stop, last_write = self._step(last_write)
            except Exception:  # the writer must outlive any bug in one step
                log.exception("writer step failed")
                stop = False
            if stop:
                break
        self._maintain(idle=True)

    def _step(self, last_write: float) -> tuple[bool, float]:
        """One turn: commit what is queued, run tasks, maintain; True when it is time to stop."""
        items = self._take()
        if items:
            started = time.perf_counter()
            self._commit(items)
            last_write = time.monotonic()
            self._maintain(idle=False)
            log.debug(
                "group commit of %d requests in %.1f ms",
                len(items),
                (time.perf_counter() - started) * 1000,
            )
        # tasks (bucket drops...) run after the writes taken with them are committed
        self._run_tasks()
        if not items and self._stopping and not self._tasks:
            return True, last_write
        if not items and time.monotonic() - last_write >= self._idle_seconds:
            self._maintain(idle=True)
        return False, last_write

    def _run_tasks(self) -> None:
        while self._tasks:
            fn, fut = self._tasks.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                _resolve(fut, fn())
            except Exception as exc:
                _fail(fut, exc)

    def _commit(self, items: list[tuple[WriteRequest, int, Future[WriteOutcome]]]) -> None:
        _commit_started()
        try:
            outcomes = self._store.write([req for req, _, _ in items])
        except Exception as exc:  # the store failed: nothing in this group is acked
            log.error("group commit of %d requests failed: %s", len(items), exc)
            for _, _, fut in items:
                _fail(fut, exc)
        else:
            for (_, _, fut), outcome in zip(items, outcomes, strict=True):
                _resolve(fut, outcome)
        finally:
            _commit_ended()
            with self._cond:
                self._queued_points -= sum(points for _, points, _ in items)

    def _maintain(self, idle: bool) -> None:
        if self._maintenance is None:
            return
        try:
            self._maintenance(idle)
        except Exception:
            log.exception("store maintenance failed")


_committing = 0  # commits running in this process (writers of several stores, in tests)
_switch_before = 0.0
_switch_lock = threading.Lock()


def _commit_started() -> None:
    global _committing, _switch_before
    with _switch_lock:
        if not _committing:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(COMMIT_SWITCH_INTERVAL)
        _committing += 1


def _commit_ended() -> None:
    global _committing
    with _switch_lock:
        _committing -= 1
        if not _committing:
            sys.setswitchinterval(_switch_before)


def _resolve(fut: Future[Any], result: Any) -> None:
    # futures are marked running when taken, so cancel() cannot race with this; the guard
    # keeps one odd future from leaving the others of its group unanswered
    with contextlib.suppress(InvalidStateError):
        fut.set_result(result)


def _fail(fut: Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        fut.set_exception(exc)
