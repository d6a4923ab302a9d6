"""What device-key authentication costs seed-000 JSON ingest, and how fast a revoked key stops.

    python bench/device_auth.py            # 1,000 devices, 1 warm-up + 5 rounds per mode (~4 min)
    python bench/device_auth.py --quick    # smoke run: 100 devices, 3 rounds per mode (< 60 s)

Starts a private ``motes serve`` (free port, temp data dir, ``MOTES_INIT_TOKEN``; see
``bench/motes.py``), creates the bucket ``json`` and provisions ``--devices`` devices into it
with one ``POST /api/v1/devices/bulk`` (CSV), keeping their keys. Then rounds of the seed-000
load of ``bench/ingest_query.py`` — ``POST /api/v1/devices/{id}/telemetry?bucket=json`` with
``{"deviceinfo": {...}, "tsdata": [1,000 rows x 5 sensors]}``, one request per device per round
— posted by ``--clients`` client processes, each with one keep-alive connection, taking the
next request from a shared counter. Every request of a round carries the same credentials:

    A  Authorization: Token <operator token>      (one credential, always in the server's cache)
    B  Authorization: Thing <that device's key>   (1,000 credentials)

A and B get the same devices, values and concurrency; only the timestamps move on (round *j*
covers the *j*-th block of 1,000 minutes, so every write appends after the last one, as live
devices do). The order is A B (warm-up, not counted), then A B, B A, A B, ... so that drift
over the run falls on both modes alike. Throughput = acknowledged points / wall time from the
first send to the last answer; overhead = 1 - median(B) / median(A).

Then, while one device keeps writing small batches with its (cached) key: ``DELETE
/api/v1/devices/{id}/key`` (revoke), and on another device ``POST .../key`` (rotate), 3 of
each: the time from sending the change to the writer's first 401, whether any request sent
after the change was answered was still accepted, and whether the rotated-in key works.
Finally a count check per round. Prints markdown tables and saves the details to
``bench/results/<timestamp>-device-auth.json``; exits 1 if a check failed.
``docs/benchmarks.md`` explains the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import multiprocessing as mp
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from bench import motes
from bench.common import RssSampler, own_cpu_seconds, percentile_ms, tree_cpu_seconds
from bench.ingest_query import git_commit, log, warn
from bench.loadgen import MAX_ERRORS, RETRY_STATUSES, LoadResult, Request, _retry_delay
from bench.report import RESULTS_DIR, load_to_dict
from bench.workload import (
    DEVICES,
    FIELDS_PER_LINE,
    JSON_ROWS_PER_REQUEST,
    MINUTE_NS,
    SEED,
    default_end_ns,
    device_name,
    json_requests,
)

TOKEN, KEY = "A", "B"
MODE_NAMES = {TOKEN: "operator token (A)", KEY: "device key (B)"}
TARGET_OVERHEAD = 0.05
BLOCK_NS = JSON_ROWS_PER_REQUEST * MINUTE_NS  # one round: 1,000 one-minute rows per device
JSON_HEADERS = {"Content-Type": "application/json"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=DEVICES, help=f"devices (≤{DEVICES}; {DEVICES})")
    p.add_argument("--rounds", type=int, default=5, help="counted rounds per mode (default 5)")
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--quick", action="store_true", help="smoke run: 100 devices, 3 rounds")
    p.add_argument("--revocations", type=int, default=3, help="revokes and rotates (3 each)")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = p.parse_args(argv)
    if args.quick:
        args.devices, args.rounds = 100, 3
    if not 2 <= args.devices <= DEVICES:
        p.error(f"--devices must be within 2..{DEVICES}")
    if args.rounds < 1 or args.clients < 1:
        p.error("--rounds and --clients must be at least 1")
    if not 1 <= 2 * args.revocations <= args.devices:
        p.error("--revocations needs two devices each (one revoked, one rotated)")
    return args


def round_order(rounds: int) -> list[str]:
    """A B (warm-up), then counted pairs in alternating order: A B, B A, A B, ..."""
    order = [TOKEN, KEY]
    for pair in range(rounds):
        order += [TOKEN, KEY] if pair % 2 == 0 else [KEY, TOKEN]
    return order


# -- provisioning -----------------------------------------------------------------------------


def provision(server: motes.MotesServer, devices: int) -> dict[str, str]:
    """Create the ``json`` bucket and ``devices`` devices in it (bulk CSV); their keys by id."""
    server.create_bucket(motes.JSON_BUCKET)
    csv = "id,name,bucket\n" + "".join(
        f"{device_name(d)},Sensor {d},{motes.JSON_BUCKET}\n" for d in range(devices)
    )
    resp = httpx.post(
        f"{server.url}/api/v1/devices/bulk",
        content=csv.encode(),
        headers={**server.headers, "Content-Type": "text/csv"},
        timeout=300.0,
    )
    if resp.status_code != 201:
        raise RuntimeError(f"provisioning: {resp.status_code} {resp.text[:300]}")
    return {d["id"]: d["key"] for d in orjson.loads(resp.content)["devices"]}


# -- one round: the seed-000 load from client processes ---------------------------------------


@dataclass(frozen=True)
class RoundPlan:
    """One round's requests and, per request, its Authorization header."""

    mode: str
    block: int
    requests: list[Request]
    auths: list[str]

    @property
    def points(self) -> int:
        return sum(r.points for r in self.requests)


def plan_round(
    mode: str, block: int, start_ns: int, devices: int, keys: dict[str, str], token: str
) -> RoundPlan:
    """Round ``block``: every device's 1,000 rows ending ``block + 1`` blocks after start."""
    end_ns = start_ns + (block + 1) * BLOCK_NS
    bodies = json_requests(devices * JSON_ROWS_PER_REQUEST * FIELDS_PER_LINE, end_ns, SEED + 1)
    path = "/api/v1/devices/{}/telemetry?bucket=" + motes.JSON_BUCKET
    reqs = [
        Request(path.format(b.device), b.body, b.points, b.points // FIELDS_PER_LINE)
        for b in bodies
    ]
    auths = [f"Thing {keys[b.device]}" if mode == KEY else f"Token {token}" for b in bodies]
    return RoundPlan(mode, block, reqs, auths)


@dataclass
class ClientTally:
    """What one client process did: its tally and when it started and finished."""

    result: LoadResult
    started: float
    finished: float


def _take(counter: Any, total: int) -> int | None:
    """The next request index of the shared counter, None when all are taken."""
    with counter.get_lock():
        index = int(counter.value)
        counter.value += 1
    return index if index < total else None


def _post(client: httpx.Client, req: Request, auth: str, tally: LoadResult) -> None:
    """Post until accepted (204) or refused; 503/429 wait for their Retry-After."""
    while True:
        started = time.perf_counter()
        try:
            resp = client.post(req.path, content=req.body, headers={"Authorization": auth})
        except httpx.HTTPError as exc:
            tally.errors.append(f"{req.path}: {exc!r}")
            return
        if resp.status_code == 204:
            tally.points += req.points
            tally.lines += req.lines
            tally.requests_ok += 1
            tally.latencies_s.append(time.perf_counter() - started)
            return
        if resp.status_code not in RETRY_STATUSES:
            tally.errors.append(f"{req.path}: {resp.status_code} {resp.text[:300]}")
            return
        tally.retries += 1
        time.sleep(_retry_delay(resp))


def _client_main(
    url: str, plan: RoundPlan, counter: Any, barrier: Barrier, out: mp.Queue[ClientTally]
) -> None:
    """A client process (forked: the plan is inherited, not pickled)."""
    tally = LoadResult()
    with httpx.Client(base_url=url, headers=JSON_HEADERS, timeout=120.0) as client:
        barrier.wait()
        started, cpu0 = time.perf_counter(), own_cpu_seconds()
        while (
            len(tally.errors) < MAX_ERRORS and (i := _take(counter, len(plan.requests))) is not None
        ):
            _post(client, plan.requests[i], plan.auths[i], tally)
        finished = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    tally.client_cpu_s = own_cpu_seconds() - cpu0
    out.put(ClientTally(tally, started, finished))


def run_round(url: str, plan: RoundPlan, clients: int, server_pid: int | None) -> LoadResult:
    """Post the plan from ``clients`` processes; wall time from first send to last answer."""
    ctx = mp.get_context("fork")
    counter, barrier, out = ctx.Value("q", 0), ctx.Barrier(clients + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_client_main, args=(url, plan, counter, barrier, out), daemon=True)
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    server_cpu0 = tree_cpu_seconds(server_pid) if server_pid else None
    with RssSampler(server_pid) as sampler:
        barrier.wait()
        tallies = [out.get(timeout=600.0) for _ in procs]
    for proc in procs:
        proc.join()
    result = merge(tallies)
    if server_pid and server_cpu0 is not None:
        result.server_cpu_s = tree_cpu_seconds(server_pid) - server_cpu0
        result.server_max_rss = sampler.max_rss
    return result


def merge(tallies: list[ClientTally]) -> LoadResult:
    result = LoadResult()
    for t in tallies:
        r = t.result
        result.points += r.points
        result.lines += r.lines
        result.requests_ok += r.requests_ok
        result.retries += r.retries
        result.errors += r.errors
        result.client_cpu_s += r.client_cpu_s
        result.latencies_s += r.latencies_s
    result.wall_s = max(t.finished for t in tallies) - min(t.started for t in tallies)
    return result


# -- all rounds -------------------------------------------------------------------------------


@dataclass
class Round:
    mode: str
    block: int
    warmup: bool
    result: LoadResult
    expected_points: int
    found_points: int | None = None


@dataclass
class Ingest:
    rounds: list[Round] = field(default_factory=list)

    def counted(self, mode: str) -> list[Round]:
        return [r for r in self.rounds if r.mode == mode and not r.warmup]

    def rates(self, mode: str) -> list[float]:
        return [r.result.points_per_s for r in self.counted(mode)]

    def median(self, mode: str) -> float:
        return statistics.median(self.rates(mode))

    @property
    def overhead(self) -> float:
        return 1.0 - self.median(KEY) / self.median(TOKEN)

    def pair_overheads(self) -> list[float]:
        """1 - B/A of each counted pair (the two rounds run back to back)."""
        counted = [r for r in self.rounds if not r.warmup]
        pairs = [counted[i : i + 2] for i in range(0, len(counted) - 1, 2)]
        out = []
        for pair in pairs:
            rate = {r.mode: r.result.points_per_s for r in pair}
            out.append(1.0 - rate[KEY] / rate[TOKEN])
        return out


def run_rounds(
    server: motes.MotesServer, args: argparse.Namespace, keys: dict[str, str], start_ns: int
) -> Ingest:
    ingest = Ingest()
    order = round_order(args.rounds)
    for block, mode in enumerate(order):
        plan = plan_round(mode, block, start_ns, args.devices, keys, server.token)
        gc.collect()  # the last round's bodies, not during the next one
        result = run_round(server.url, plan, args.clients, server.pid)
        warmup = block < 2
        ingest.rounds.append(Round(mode, block, warmup, result, plan.points))
        label = f"round {block + 1}/{len(order)} {MODE_NAMES[mode]}{' (warm-up)' if warmup else ''}"
        log_round(label, result)
    return ingest


def log_round(label: str, r: LoadResult) -> None:
    log(
        f"{label}: {r.points:,} points in {r.wall_s:.2f}s = {r.points_per_s:,.0f} points/s; "
        f"p50 {percentile_ms(r.latencies_s, 50) if r.latencies_s else 0:.1f} ms; "
        f"retries {r.retries}, errors {len(r.errors)}; client CPU {r.client_cpu_pct:.0f}% "
        f"of a core, server CPU {r.server_cpu_pct or 0:.0f}%"
    )
    for error in r.errors[:5]:
        log(f"  error: {error}")


def check_counts(server: motes.MotesServer, ingest: Ingest, start_ns: int) -> None:
    """Points stored in each round's block of time must be the points that round sent."""
    for r in ingest.rounds:
        lo, hi = start_ns + r.block * BLOCK_NS, start_ns + (r.block + 1) * BLOCK_NS
        try:
            r.found_points = server.count_points(motes.JSON_BUCKET, motes.JSON_MEASUREMENT, lo, hi)
        except Exception as exc:  # the check must not lose the rest of the results
            warn(f"count of round {r.block + 1} failed: {exc!r}")
    bad = [r for r in ingest.rounds if r.found_points != r.expected_points]
    for r in bad:
        warn(f"round {r.block + 1}: expected {r.expected_points:,} points, found {r.found_points}")
    if not bad:
        log(f"count check: every round's {ingest.rounds[0].expected_points:,} points are stored")


# -- revocation -------------------------------------------------------------------------------


@dataclass
class Sent:
    sent: float
    answered: float
    status: int


class Writer(threading.Thread):
    """One device posting 10-row seed-000 batches back to back until it is refused (401)."""

    ROWS = 10

    def __init__(self, url: str, device: str, key: str, start_ms: int) -> None:
        super().__init__(name=f"writer-{device}", daemon=True)
        self.url, self.device, self.key = url, device, key
        self.next_ms = start_ms
        self.log: list[Sent] = []
        self.accepted = threading.Event()
        self.stop = threading.Event()

    def body(self) -> bytes:
        rows = []
        for _ in range(self.ROWS):
            rows.append({"timestamp": self.next_ms, "temperature": 21.5, "humidity": 40.0})
            self.next_ms += 1_000
        return orjson.dumps({"deviceinfo": {"deviceid": self.device}, "tsdata": rows})

    def run(self) -> None:
        path = f"/api/v1/devices/{self.device}/telemetry?bucket={motes.JSON_BUCKET}"
        headers = {**JSON_HEADERS, "Authorization": f"Thing {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30.0) as client:
            while not self.stop.is_set():
                sent = time.perf_counter()
                status = client.post(path, content=self.body()).status_code
                self.log.append(Sent(sent, time.perf_counter(), status))
                if status == 204 and len(self.log) >= 20:
                    self.accepted.set()
                if status == 401:
                    return


@dataclass
class Revocation:
    """One key change while the device writes with the old key: how soon it was refused."""

    action: str
    device: str
    command_ms: float  # the change's request, sent to answered
    first_401_ms: float | None  # from sending the change to the writer's first 401 answer
    accepted_after: int  # old-key writes sent after the change was answered yet accepted
    new_key_status: int | None = None  # rotate: the status of a write with the new key

    @property
    def ok(self) -> bool:
        fresh_key_ok = self.new_key_status in (None, 204)
        return self.first_401_ms is not None and self.accepted_after == 0 and fresh_key_ok


def time_revocation(
    server: motes.MotesServer, action: str, device: str, key: str, start_ms: int
) -> Revocation:
    """``revoke`` (DELETE) or ``rotate`` (POST) the key of ``device`` while it writes."""
    writer = Writer(server.url, device, key, start_ms)
    writer.start()
    if not writer.accepted.wait(30.0):
        raise RuntimeError(f"{device} could not write with its key: {writer.log[-1:]}")
    time.sleep(0.5)  # writing with a verified, cached key
    method = "DELETE" if action == "revoke" else "POST"
    # a client made beforehand and warmed up: making one costs tens of ms (its SSL context)
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30.0) as admin:
        admin.get("/health")
        t0 = time.perf_counter()
        resp = admin.request(method, f"/api/v1/devices/{device}/key")
        t1 = time.perf_counter()
    writer.join(10.0)
    writer.stop.set()
    writer.join()
    if resp.status_code not in (201, 204):
        raise RuntimeError(f"{action} {device}: {resp.status_code} {resp.text[:300]}")
    refused = next((s for s in writer.log if s.status == 401), None)
    rev = Revocation(
        action=action,
        device=device,
        command_ms=1000 * (t1 - t0),
        first_401_ms=None if refused is None else 1000 * (refused.answered - t0),
        accepted_after=sum(1 for s in writer.log if s.sent >= t1 and s.status == 204),
    )
    if action == "rotate":
        rev.new_key_status = new_key_status(server, device, resp.json()["key"], writer.next_ms)
    return rev


def new_key_status(server: motes.MotesServer, device: str, key: str, at_ms: int) -> int:
    """Status of one write with the key a rotation returned."""
    body = orjson.dumps({"tsdata": [{"timestamp": at_ms, "temperature": 21.5}]})
    return httpx.post(
        f"{server.url}/api/v1/devices/{device}/telemetry?bucket={motes.JSON_BUCKET}",
        content=body,
        headers={**JSON_HEADERS, "Authorization": f"Thing {key}"},
        timeout=30.0,
    ).status_code


def run_revocations(
    server: motes.MotesServer, keys: dict[str, str], after_ns: int, trials: int
) -> list[Revocation]:
    """``trials`` revocations, then ``trials`` rotations, each on a device of its own."""
    out = []
    start_ms = after_ns // 1_000_000
    actions = ["revoke"] * trials + ["rotate"] * trials
    for d, action in enumerate(actions):
        rev = time_revocation(server, action, device_name(d), keys[device_name(d)], start_ms)
        log(
            f"{action} {rev.device}: answered in {rev.command_ms:.1f} ms; first 401 "
            f"{fmt_ms(rev.first_401_ms)} after sending it; old-key writes accepted after the "
            f"answer: {rev.accepted_after}; new key: {rev.new_key_status or 'n/a'}"
        )
        out.append(rev)
    return out


# -- output -----------------------------------------------------------------------------------


def fmt_ms(ms: float | None) -> str:
    return "never" if ms is None else f"{ms:.1f} ms"


def fmt_rates(rates: list[float]) -> str:
    return ", ".join(f"{v / 1e3:,.0f} k" for v in rates)


def _median_of(rounds: list[Round], value: Callable[[LoadResult], float]) -> float:
    return statistics.median(value(r.result) for r in rounds)


def _latency(q: int) -> Callable[[LoadResult], float]:
    return lambda r: percentile_ms(r.latencies_s, q)


def _side(ingest: Ingest, mode: str) -> dict[str, str]:
    """The table's figures for one mode."""
    rounds = ingest.counted(mode)
    p50, p99 = _median_of(rounds, _latency(50)), _median_of(rounds, _latency(99))
    return {
        "rates": fmt_rates(ingest.rates(mode)),
        "latency": f"{p50:.1f} / {p99:.1f}",
        "server": f"{_median_of(rounds, lambda r: r.server_cpu_pct or 0.0):.0f} %",
        "client": f"{max(r.result.client_cpu_pct for r in rounds):.0f} %",
    }


def ingest_table(ingest: Ingest) -> str:
    a, b = ingest.median(TOKEN), ingest.median(KEY)
    ok = "✅" if ingest.overhead <= TARGET_OVERHEAD else "❌"
    pairs = ingest.pair_overheads()
    pair_text = ", ".join(f"{v:+.1%}" for v in pairs)
    ta, tb = _side(ingest, TOKEN), _side(ingest, KEY)
    n = len(ingest.counted(TOKEN))
    return "\n".join(
        [
            f"| metric | {MODE_NAMES[TOKEN]} | {MODE_NAMES[KEY]} | B / A | target |",
            "|---|---:|---:|---:|---|",
            f"| seed-000 JSON ingest, points/s, median of {n} rounds | {a:,.0f} | {b:,.0f} | "
            f"{b / a:.3f}× | overhead ≤ {TARGET_OVERHEAD:.0%} {ok} |",
            f"| each round, points/s | {ta['rates']} | {tb['rates']} | | |",
            f"| overhead 1 - B/A (of the medians) | | | **{ingest.overhead:+.1%}** | |",
            f"| overhead of each back-to-back pair | | | {pair_text} "
            f"(median {statistics.median(pairs):+.1%}) | |",
            f"| request p50 / p99 ms (median of rounds) | {ta['latency']} | {tb['latency']} | | |",
            f"| server CPU of 200 % (median of rounds) | {ta['server']} | {tb['server']} | | |",
            f"| client processes' CPU of one core (max) | {ta['client']} | {tb['client']} | | |",
        ]
    )


def revocation_table(revs: list[Revocation]) -> str:
    lines = [
        "| key change while the device writes | change answered in | first 401, after sending "
        "the change | old-key writes accepted after the answer | new key's first write |",
        "|---|---:|---:|---:|---:|",
    ]
    what = {"revoke": "revoke: `DELETE .../key`", "rotate": "rotate: `POST .../key`"}
    for r in revs:
        new = "n/a" if r.new_key_status is None else str(r.new_key_status)
        lines.append(
            f"| {what[r.action]} ({r.device}) | {r.command_ms:.1f} ms | {fmt_ms(r.first_401_ms)} "
            f"| {r.accepted_after} | {new} |"
        )
    return "\n".join(lines)


def round_to_dict(r: Round) -> dict[str, object]:
    return {
        "mode": r.mode,
        "block": r.block,
        "warmup": r.warmup,
        "expected_points": r.expected_points,
        "found_points": r.found_points,
        **load_to_dict(r.result),
        "request_latency_p99_ms": round(percentile_ms(r.result.latencies_s, 99), 2)
        if r.result.latencies_s
        else None,
    }


def report(
    args: argparse.Namespace,
    ingest: Ingest,
    revs: list[Revocation],
    started: float,
) -> bool:
    rounds_ok = all(
        r.found_points == r.expected_points and not r.result.errors for r in ingest.rounds
    )
    revs_ok = all(r.ok for r in revs)
    tables = f"{ingest_table(ingest)}\n\n{revocation_table(revs)}"
    print(
        f"\n{args.devices} devices, one request of {JSON_ROWS_PER_REQUEST:,} rows x "
        f"{FIELDS_PER_LINE} sensors per device per round, {args.clients} client processes; "
        f"{args.rounds} counted rounds per mode after one warm-up each\n\n{tables}\n"
    )
    if not rounds_ok:
        print("- WARNING: a round had errors or its count check failed (see above)")
    if not revs_ok:
        print("- WARNING: a changed key was still accepted, or the new key was refused")
    payload: dict[str, object] = {
        "benchmark": "device_auth",
        "config": vars(args),
        "git_commit": git_commit(),
        "duration_s": round(time.monotonic() - started, 1),
        "overhead": ingest.overhead,
        "median_points_per_s": {m: ingest.median(m) for m in (TOKEN, KEY)},
        "pair_overheads": ingest.pair_overheads(),
        "rounds": [round_to_dict(r) for r in ingest.rounds],
        "revocations": [{**vars(r), "ok": r.ok} for r in revs],
        "tables": tables,
    }
    if not args.no_json:
        print(f"results saved to {save_json(payload)}")
    return rounds_ok and revs_ok


def save_json(payload: dict[str, object]) -> Path:
    """``bench/results/<UTC timestamp>-device-auth.json`` (next to ``ingest_query``'s files)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}-device-auth.json"
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    blocks = len(round_order(args.rounds)) + 1  # the last block is for the revocation writers
    start_ns = default_end_ns() - blocks * BLOCK_NS
    with motes.MotesServer.start() as server:
        try:
            keys = provision(server, args.devices)
            log(f"provisioned {len(keys):,} devices in {time.monotonic() - started:.1f}s")
            ingest = run_rounds(server, args, keys, start_ns)
            revs = run_revocations(
                server, keys, start_ns + (blocks - 1) * BLOCK_NS, args.revocations
            )
            check_counts(server, ingest, start_ns)
        except Exception:
            print(server.log_tail(), file=sys.stderr)
            raise
    ok = report(args, ingest, revs, started)
    log(f"done in {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
