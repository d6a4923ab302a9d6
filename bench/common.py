"""Helpers shared by the benchmark's server wrappers and load generator.

Free ports, directory sizes, waiting for a server, RSS/CPU sampling of a process tree,
percentiles. Nothing here talks to a particular server; see ``bench/ingest_query.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dir_size(path: Path, *, apparent: bool = False) -> int:
    """Bytes of the regular files under ``path``.

    By default the space allocated on disk (``st_blocks * 512``, what ``du`` shows), so that
    sparse or preallocated-but-unused files count for what they really occupy; with
    ``apparent=True`` the files' lengths. Files vanishing mid-walk are skipped.
    """
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += st.st_size if apparent else st.st_blocks * 512
    return total


@dataclass(frozen=True)
class SettledSize:
    """Directory size right after a load and once it stopped changing (compactions done)."""

    immediate: int
    settled: int
    settled_apparent: int
    waited_s: float


def settle_dir_size(
    path: Path, min_wait: float = 20.0, quiet: float = 5.0, max_wait: float = 180.0
) -> SettledSize:
    """Poll ``path`` once a second until its size is unchanged for ``quiet`` seconds.

    Waits at least ``min_wait`` seconds (background compactions start only once a store has
    been idle for a while) and at most ``max_wait``.
    """
    start = time.monotonic()
    immediate = last = dir_size(path)
    stable_since = start
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        size = dir_size(path)
        if size != last:
            last, stable_since = size, now
        waited = now - start
        if (waited >= min_wait and now - stable_since >= quiet) or waited >= max_wait:
            return SettledSize(immediate, size, dir_size(path, apparent=True), waited)


def wait_http(
    url: str, expect: int, proc: subprocess.Popen[bytes] | None, timeout: float = 60.0
) -> None:
    """Poll ``GET url`` until it answers ``expect``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} while starting")
        try:
            status = httpx.get(url, timeout=2.0).status_code
            if status == expect:
                return
            last_error = f"status {status}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {expect} within {timeout:.0f}s ({last_error})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its live children."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def own_cpu_seconds() -> float:
    """User + system CPU seconds used so far by this (load-generating) process."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


class RssSampler:
    """Samples a process tree's RSS every ``interval`` seconds in a thread; keeps the max."""

    def __init__(self, pid: int | None, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.max_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        if self.pid is None:
            return
        try:
            self.max_rss = max(self.max_rss, tree_rss(self.pid))
            self.samples += 1
        except psutil.Error:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of durations, in milliseconds."""
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def find_listening_pid(port: int) -> int | None:
    """Pid of the local process listening on TCP ``port``, if it can be seen."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return None if conn.pid is None else int(conn.pid)
    return None
