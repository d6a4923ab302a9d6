"""Motes' publish -> visible latency: a thread polling the latest-value query of one device.

Used by the latency scenario of ``bench/mqtt_scenarios.py``; the payload timestamps are the
wall-clock times the messages were due, so an answer's arrival time minus a value's timestamp
is an upper bound of how long the value took to become visible.
"""

from __future__ import annotations

import threading
import time

import httpx
import orjson

from bench.mqtt_brokers import Motes


class LatestProbe(threading.Thread):
    """Polls one device's latest value in Motes; times each value it had not seen yet.

    A value first seen in an answer became visible after the previous poll was sent (that
    poll did not show it) and before this answer arrived: ``samples_s`` holds the upper
    bound (arrival - the value's timestamp), ``lower_s`` the lower one (previous send -
    timestamp, at least 0). Values overwritten between two polls are not sampled.
    """

    def __init__(self, broker: Motes, interval_s: float) -> None:
        super().__init__(name="latest-probe", daemon=True)
        self.url, self.params, self.headers = broker.latest_params()
        self.interval = interval_s
        self.seen: dict[str, int] = {}
        self.samples_s: list[float] = []
        self.lower_s: list[float] = []
        self.round_trips_s: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.client = httpx.Client(headers=self.headers, timeout=10.0)
        self.since_ns = self.last_sent = time.time_ns()
        self._poll(record=False)  # what is there already is not new

    def _poll(self, record: bool) -> None:
        sent = time.time_ns()
        resp = self.client.get(self.url, params=self.params)
        arrived = time.time_ns()
        if resp.status_code != 200:
            self.errors.append(f"latest: {resp.status_code} {resp.text[:200]}")
            return
        self.round_trips_s.append((arrived - sent) / 1e9)
        for series in orjson.loads(resp.content)["series"]:
            field = series["fields"].get("v")
            device = series["tags"].get("device")
            if field is None or device is None:
                continue
            ts = int(field["time"])
            if record and ts > self.seen.get(device, 0) and ts >= self.since_ns:
                self.samples_s.append((arrived - ts) / 1e9)
                self.lower_s.append(max(0, self.last_sent - ts) / 1e9)
            self.seen[device] = max(ts, self.seen.get(device, 0))
        self.last_sent = sent

    def run(self) -> None:
        self.since_ns = time.time_ns()
        while not self.stop.is_set():
            try:
                self._poll(record=True)
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
            self.stop.wait(self.interval)
        self.client.close()
