"""Ingest + query benchmark of Motes against InfluxDB 1.6.7 on the same machine.

Workload: 1,000 devices x 5 sensors, one reading a minute (see ``bench/workload.py``); a point
is one field value. Default 288 minutes = 1.44 M points; ``--full`` = 48 h = 14.4 M points.

    python bench/ingest_query.py                    # starts Motes and influxd itself
    python bench/ingest_query.py --full             # 48 h of data, one run per server
    python bench/ingest_query.py --skip-motes       # InfluxDB only
    python bench/ingest_query.py --skip-influx --motes-url http://127.0.0.1:8086 --token T

For each server and run: a fresh server in a temp dir, line-protocol batches (5,000 lines)
posted by 4 client threads, throughput = acknowledged points / wall time (median of the runs;
3 runs by default, 1 with --full). After the last run: a count check, the data-dir size right
after the load and once it settled, three queries timed 50x after 3 warm-ups; on Motes then
the seed-000 JSON load into a separate bucket. Prints a markdown table, saves the details to
``bench/results/<timestamp>.json``. ``docs/benchmarks.md`` explains the figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psutil

from bench import influx, motes
from bench.common import settle_dir_size
from bench.loadgen import LoadResult, Request, run_load
from bench.querybench import QUERY_NAMES, QueryCall, time_query
from bench.report import (
    INFLUX,
    MOTES,
    CountCheck,
    ServerResults,
    markdown_table,
    write_json,
)
from bench.workload import (
    DEVICES,
    MEASUREMENT,
    MINUTE_NS,
    WINDOW_MINUTES,
    Workload,
    build_workload,
)

LP_HEADERS = {"Content-Type": "text/plain; charset=utf-8"}
JSON_HEADERS = {"Content-Type": "application/json"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=int, default=288, help="minutes of data (default 288)")
    p.add_argument("--full", action="store_true", help="48 h of data (14.4 M points), 1 run")
    p.add_argument("--runs", type=int, help="ingest runs per server (default 3; 1 with --full)")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads (4)")
    p.add_argument("--motes-url", help="use this running Motes instead of starting one")
    p.add_argument("--token", help="operator token of --motes-url")
    p.add_argument("--skip-influx", action="store_true", help="do not benchmark InfluxDB")
    p.add_argument("--skip-motes", action="store_true", help="do not benchmark Motes")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = p.parse_args(argv)
    if args.full:
        args.minutes = WINDOW_MINUTES
    if args.runs is None:
        args.runs = 1 if args.full or args.motes_url else 3
    if args.motes_url and not args.token:
        p.error("--motes-url needs --token")
    if args.motes_url and args.runs > 1:
        p.error("a running Motes cannot be reset between runs: use --runs 1")
    return args


# -- steps shared by both servers ------------------------------------------------------------


def load(
    name: str, url: str, reqs: list[Request], headers: dict[str, str], pid: int | None, clients: int
) -> LoadResult:
    result = run_load(url, reqs, headers=headers, clients=clients, server_pid=pid)
    rss = f"{result.server_max_rss / 1e6:,.0f} MB" if result.server_max_rss else "n/a"
    log(
        f"{name}: {result.points:,} points in {result.wall_s:.2f}s = "
        f"{result.points_per_s:,.0f} points/s, {result.lines_per_s:,.0f} lines/s; "
        f"retries {result.retries}, errors {len(result.errors)}; max RSS {rss}; "
        f"client CPU {result.client_cpu_pct:.0f}% of a core, server CPU "
        f"{result.server_cpu_pct or 0:.0f}%"
    )
    for error in result.errors[:5]:
        log(f"  error: {error}")
    return result


def check_count(what: str, expected: int, count: Callable[[], int]) -> CountCheck:
    try:
        check = CountCheck(what, expected, count())
    except Exception as exc:  # the check must not lose the rest of the results
        check = CountCheck(what, expected, None, repr(exc))
    if check.ok:
        log(f"count check {what}: {check.found:,} points, as expected")
    else:
        found = check.error or f"{check.found:,}"
        warn(f"count check {what}: expected {expected:,} points, found {found}")
    return check


def warn(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! WARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


def time_queries(calls: dict[str, QueryCall], headers: dict[str, str], res: ServerResults) -> None:
    with httpx.Client(headers=headers, timeout=120.0) as client:
        for name in QUERY_NAMES:
            try:
                timing = time_query(client, name, calls[name])
            except Exception as exc:
                warn(f"{res.name} query {name} failed: {exc!r}")
                res.notes.append(f"query {name} failed: {exc!r}")
                continue
            res.queries[name] = timing
            log(
                f"{res.name} query {name}: p50 {timing.p50_ms:.2f} ms, p99 {timing.p99_ms:.2f} "
                f"ms, answer {timing.answer_bytes:,} bytes"
            )


def settle(res: ServerResults, store: Path, points: int) -> None:
    log(f"{res.name}: waiting for the data dir to stop changing ...")
    res.disk = settle_dir_size(store)
    res.points_on_disk = points
    log(
        f"{res.name}: disk {res.disk.immediate:,} bytes right after the load, "
        f"{res.disk.settled:,} after {res.disk.waited_s:.0f}s "
        f"= {res.disk.settled / points:.2f} bytes/point"
    )


# -- InfluxDB ---------------------------------------------------------------------------------


def bench_influx(workload: Workload, runs: int, clients: int) -> ServerResults:
    res = ServerResults(INFLUX)
    reqs = influx.write_requests(workload)
    for run in range(runs):
        with influx.InfluxServer.start() as server:
            server.create_database()
            lp = load(
                f"{INFLUX} run {run + 1}/{runs}", server.url, reqs, LP_HEADERS, server.pid, clients
            )
            res.lp_runs.append(lp)
            if run == runs - 1:
                res.checks.append(
                    check_count("InfluxDB line protocol", workload.lp_points, server.count_points)
                )
                settle(res, server.store_dir, workload.lp_points)
                time_queries(influx.query_calls(server, workload), {}, res)
    return res


# -- Motes ------------------------------------------------------------------------------------


def open_motes(args: argparse.Namespace) -> motes.MotesServer:
    if args.motes_url:
        return motes.MotesServer.external(args.motes_url, args.token)
    return motes.MotesServer.start()


def motes_lp_load(
    server: motes.MotesServer, workload: Workload, label: str, clients: int
) -> LoadResult:
    headers = {**server.headers, **LP_HEADERS}
    return load(label, server.url, motes.write_requests(workload), headers, server.pid, clients)


def motes_json_load(
    server: motes.MotesServer, workload: Workload, label: str, clients: int
) -> LoadResult:
    server.create_bucket(motes.JSON_BUCKET)
    headers = {**server.headers, **JSON_HEADERS}
    reqs = motes.json_write_requests(workload)
    return load(f"{label} JSON", server.url, reqs, headers, server.pid, clients)


def motes_examine_lp(server: motes.MotesServer, workload: Workload, res: ServerResults) -> None:
    """After the line-protocol load of the last run: count check, disk size, queries."""
    count = partial(
        server.count_points, motes.LP_BUCKET, MEASUREMENT, workload.window_start_ns, workload.end_ns
    )
    res.checks.append(check_count("Motes line protocol", workload.lp_points, count))
    if server.store_dir is not None:
        settle(res, server.store_dir, workload.lp_points)
    time_queries(motes.query_calls(server, workload), server.headers, res)


def motes_check_json(server: motes.MotesServer, workload: Workload, res: ServerResults) -> None:
    start = workload.end_ns - 2 * workload_span_ns(workload)
    count = partial(
        server.count_points, motes.JSON_BUCKET, motes.JSON_MEASUREMENT, start, workload.end_ns
    )
    res.checks.append(check_count("Motes seed-000 JSON", workload.json_points, count))


def workload_span_ns(workload: Workload) -> int:
    """A span surely covering the JSON data (blocks of 1,000 minutes ending at the end)."""
    return max(WINDOW_MINUTES, len(workload.json_requests) // DEVICES * 1_000 + 1_000) * MINUTE_NS


def motes_run(
    server: motes.MotesServer,
    workload: Workload,
    res: ServerResults,
    run: int,
    runs: int,
    clients: int,
) -> None:
    """One run: line-protocol load, [checks, disk, queries], then the JSON load [and check]."""
    last = run == runs - 1
    label = f"{MOTES} run {run + 1}/{runs}"
    res.lp_runs.append(motes_lp_load(server, workload, label, clients))
    if last:
        motes_examine_lp(server, workload, res)
    res.json_runs.append(motes_json_load(server, workload, label, clients))
    if last:
        motes_check_json(server, workload, res)


def bench_motes(workload: Workload, args: argparse.Namespace) -> ServerResults:
    res = ServerResults(MOTES)
    if args.motes_url:
        res.notes.append(f"external server {args.motes_url}: disk size not measured")
    for run in range(args.runs):
        with open_motes(args) as server:
            try:
                motes_run(server, workload, res, run, args.runs, args.clients)
            except Exception:
                print(server.log_tail(), file=sys.stderr)
                raise
    return res


# -- output -----------------------------------------------------------------------------------


def generator_notes(results: list[ServerResults]) -> list[str]:
    notes = []
    for res in results:
        for kind, runs in (("line-protocol", res.lp_runs), ("JSON", res.json_runs)):
            if not runs:
                continue
            client = max(r.client_cpu_pct for r in runs)
            server = [r.server_cpu_pct for r in runs if r.server_cpu_pct is not None]
            server_text = f", server at most {max(server):.0f}%" if server else ""
            notes.append(
                f"{res.name} {kind} load: load generator used at most {client:.0f}% of one "
                f"core{server_text} (2 cores in all)"
            )
    return notes


def git_commit() -> str | None:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
    )
    return out.stdout.strip() or None


def machine_info() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "influxd": influx.influxd_version(),
        "git_commit": git_commit(),
    }


def report(
    args: argparse.Namespace,
    workload: Workload,
    results: dict[str, ServerResults | None],
    started: float,
) -> None:
    m, i = results[MOTES], results[INFLUX]
    table = markdown_table(m, i)
    present = [r for r in (m, i) if r is not None]
    notes = generator_notes(present)
    failed = [c for r in present for c in r.checks if not c.ok]
    print(f"\n{workload.summary()}\n\n{table}\n")
    for note in notes:
        print(f"- {note}")
    for check in failed:
        print(
            f"- WARNING: count check {check.what} FAILED: expected {check.expected:,}, "
            f"found {check.found}"
        )
    payload: dict[str, object] = {
        "config": {k: v for k, v in vars(args).items() if k != "token"},
        "machine": machine_info(),
        "workload": workload.summary(),
        "points": workload.lp_points,
        "duration_s": round(time.monotonic() - started, 1),
        "results": {k: None if v is None else v.to_dict() for k, v in results.items()},
        "generator_notes": notes,
        "table": table,
    }
    if not args.no_json:
        print(f"\nresults saved to {write_json(payload)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log(f"generating {args.minutes} minutes of data ...")
    workload = build_workload(args.minutes)
    # the generated bodies live for the whole run: keep the client's garbage collector from
    # walking them again and again, which would add its pauses to every timed query
    gc.collect()
    gc.freeze()
    log(f"generated in {time.monotonic() - started:.1f}s: {workload.summary()}")
    results: dict[str, ServerResults | None] = {MOTES: None, INFLUX: None}
    if not args.skip_influx:
        results[INFLUX] = bench_influx(workload, args.runs, args.clients)
    if not args.skip_motes:
        results[MOTES] = bench_motes(workload, args)
    report(args, workload, results, started)
    log(f"done in {time.monotonic() - started:.0f}s")
    checks = [c for r in results.values() if r for c in r.checks]
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
