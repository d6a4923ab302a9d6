"""Query latency measurement: warm up, then time N calls of a query, report p50/p99.

A call covers the whole round trip as an application sees it: sending the HTTP request on a
keep-alive ``httpx.Client``, reading the answer and decoding its JSON with orjson (the same
client code for every server). Each call gets its iteration number so a query can vary its
parameters (a different device per iteration).

Used by ``bench/ingest_query.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson

from bench.common import percentile_ms
from bench.workload import DEVICES, device_name

ITERATIONS = 50
WARMUPS = 3
QUERY_NAMES = ("one_device", "latest", "all_devices_hourly")

# A query: given a client and the iteration number, one HTTP request's response.
QueryCall = Callable[[httpx.Client, int], httpx.Response]


@dataclass(frozen=True)
class QueryTiming:
    """Latencies of one query, plus a size hint of its answer (to spot empty answers)."""

    name: str
    samples_s: list[float]
    answer_bytes: int

    @property
    def p50_ms(self) -> float:
        return percentile_ms(self.samples_s, 50)

    @property
    def p99_ms(self) -> float:
        return percentile_ms(self.samples_s, 99)

    def to_dict(self) -> dict[str, object]:
        return {
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(1000 * sum(self.samples_s) / len(self.samples_s), 3),
            "iterations": len(self.samples_s),
            "answer_bytes": self.answer_bytes,
        }


def iteration_device(i: int) -> str:
    """A different device for each iteration (a stride coprime to 1,000 walks them all)."""
    return device_name((42 + 37 * i) % DEVICES)


def _call(client: httpx.Client, query: QueryCall, i: int) -> tuple[float, int]:
    start = time.perf_counter()
    resp = query(client, i)
    body = resp.content
    if resp.status_code != 200:
        raise RuntimeError(f"query answered {resp.status_code}: {body[:300]!r}")
    orjson.loads(body)
    return time.perf_counter() - start, len(body)


def time_query(
    client: httpx.Client,
    name: str,
    query: QueryCall,
    iterations: int = ITERATIONS,
    warmups: int = WARMUPS,
) -> QueryTiming:
    """Run ``query`` ``warmups`` times untimed, then ``iterations`` times timed."""
    size = 0
    for i in range(warmups):
        _, size = _call(client, query, iterations + i)
    samples = [_call(client, query, i)[0] for i in range(iterations)]
    return QueryTiming(name, samples, size)
