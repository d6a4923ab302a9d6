"""Load generator: N client threads post pre-built request bodies from a shared queue.

Each thread owns one keep-alive ``httpx.Client``; threads take the next request off a shared
queue (so requests are sent in order, at most N in flight) and a request counts only when
the server answers with the expected status (204). 503/429 answers are retried after their
``Retry-After`` (capped at 1 s); any other answer is an error and is not counted.

Sending a pre-built body costs the client little CPU (the bytes are handed to the socket),
so one process with 4 threads saturates a server on the same 2-core machine; the load
generator's own CPU use is measured (``LoadResult.client_cpu_s``) and reported.

Used by ``bench/ingest_query.py``.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import httpx

from bench.common import RssSampler, own_cpu_seconds, tree_cpu_seconds

RETRY_STATUSES = frozenset({429, 503})
MAX_ERRORS = 20


@dataclass(frozen=True)
class Request:
    """One request to send: its path (with query string), body and the points it carries."""

    path: str
    body: bytes
    points: int
    lines: int


@dataclass
class LoadResult:
    """What one load run achieved."""

    points: int = 0
    lines: int = 0
    requests_ok: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    server_max_rss: int | None = None
    latencies_s: list[float] = field(default_factory=list)

    @property
    def points_per_s(self) -> float:
        return self.points / self.wall_s if self.wall_s else 0.0

    @property
    def lines_per_s(self) -> float:
        return self.lines / self.wall_s if self.wall_s else 0.0

    @property
    def client_cpu_pct(self) -> float:
        """Load generator CPU as a percentage of one core."""
        return 100.0 * self.client_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def server_cpu_pct(self) -> float | None:
        if self.server_cpu_s is None or not self.wall_s:
            return None
        return 100.0 * self.server_cpu_s / self.wall_s


class _Shared:
    """State the client threads share: the work queue and the tallies (under a lock)."""

    def __init__(self, requests: list[Request], clients: int) -> None:
        self.work: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        for req in requests:
            self.work.put(req)
        for _ in range(clients):
            self.work.put(None)
        self.lock = threading.Lock()
        self.result = LoadResult()
        self.start = threading.Barrier(clients + 1)

    def record_ok(self, req: Request, latency: float) -> None:
        with self.lock:
            self.result.points += req.points
            self.result.lines += req.lines
            self.result.requests_ok += 1
            self.result.latencies_s.append(latency)

    def record_error(self, message: str) -> bool:
        """Record an error; True when there have been too many to go on."""
        with self.lock:
            self.result.errors.append(message)
            return len(self.result.errors) >= MAX_ERRORS


def _retry_delay(resp: httpx.Response) -> float:
    try:
        return min(1.0, max(0.01, float(resp.headers.get("Retry-After", "0.05"))))
    except ValueError:
        return 0.05


def _send(client: httpx.Client, req: Request, shared: _Shared, expect: int) -> bool:
    """Post one request until it is accepted or fails; False when the run should stop."""
    while True:
        started = time.perf_counter()
        try:
            resp = client.post(req.path, content=req.body)
        except httpx.HTTPError as exc:
            return not shared.record_error(f"{req.path}: {exc!r}")
        if resp.status_code == expect:
            shared.record_ok(req, time.perf_counter() - started)
            return True
        if resp.status_code in RETRY_STATUSES:
            with shared.lock:
                shared.result.retries += 1
            time.sleep(_retry_delay(resp))
            continue
        return not shared.record_error(f"{req.path}: {resp.status_code} {resp.text[:300]}")


def _client_loop(
    base_url: str, headers: dict[str, str], shared: _Shared, expect: int, timeout: float
) -> None:
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
        shared.start.wait()
        while (req := shared.work.get()) is not None:
            if not _send(client, req, shared, expect):
                _drain(shared.work)
                return


def _drain(work: queue.SimpleQueue[Request | None]) -> None:
    """Empty the queue of real work so every thread stops soon (sentinels are re-queued)."""
    sentinels = 0
    while True:
        try:
            item = work.get_nowait()
        except queue.Empty:
            break
        sentinels += item is None
    for _ in range(sentinels):
        work.put(None)


def run_load(
    base_url: str,
    requests: list[Request],
    *,
    headers: dict[str, str],
    clients: int = 4,
    server_pid: int | None = None,
    expect: int = 204,
    timeout: float = 120.0,
) -> LoadResult:
    """Send ``requests`` with ``clients`` threads; time from first send to last answer."""
    shared = _Shared(requests, clients)
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(base_url, headers, shared, expect, timeout),
            name=f"client-{i}",
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    server_cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
    with RssSampler(server_pid) as sampler:
        cpu0 = own_cpu_seconds()
        shared.start.wait()
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - t0
        cpu1 = own_cpu_seconds()
    result = shared.result
    result.wall_s = wall
    result.client_cpu_s = cpu1 - cpu0
    if server_pid and server_cpu0 is not None:
        result.server_cpu_s = tree_cpu_seconds(server_pid) - server_cpu0
        result.server_max_rss = sampler.max_rss
    return result
