"""Decode throughput of the ingest codecs, single-threaded, in points (field values) per second.

Run: ``python bench/codec_speed.py [--repeat 20]``. Bodies are built in memory; each figure is
the best of ``--repeat`` runs (the machine's other load only ever slows a run down).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the package, not bench/motes.py, is motes
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import orjson

from motes.telemetry.codecs import jsonpoints, lineprotocol, senml
from motes.telemetry.models import Decoded


def env_body(lines: int = 5000, devices: int = 1000) -> bytes:
    """The typical workload: 1,000 devices, 5 float fields a line, nanosecond times."""
    rnd = random.Random(1)
    out = []
    for i in range(lines):
        d = rnd.randrange(devices)
        out.append(
            f"env,device=dev{d:04d},site=s{d % 10} temperature={rnd.uniform(10, 30):.2f},"
            f"humidity={rnd.uniform(30, 60):.1f},pressure={rnd.uniform(990, 1030):.1f},"
            f"co2={rnd.uniform(400, 500):.1f},light={rnd.uniform(0, 1000):.1f} "
            f"{1700000000000000000 + i * 10**9}"
        )
    return "\n".join(out).encode()


def plant_buddy_body(lines: int = 5000) -> bytes:
    """Plant Buddy's shape: one integer field a line."""
    rnd = random.Random(2)
    return "\n".join(
        f"light,user=rick,device_id={i % 20:02d} reading={rnd.randrange(100)}i "
        f"{1621978469468115968 + i}"
        for i in range(lines)
    ).encode()


def seed_000_rows(rows: int = 1000) -> list[dict[str, object]]:
    rnd = random.Random(3)
    return [
        {
            "day": 18,
            "dayofweek": 2,
            "hour": 17,
            "month": 2,
            "humidity": round(rnd.uniform(60, 80), 1),
            "illuminance": round(rnd.uniform(70, 99), 1),
            "motion": rnd.random() < 0.2,
            "temperature": round(rnd.uniform(70, 90), 1),
            "timestamp": 1582046738255 + i * 10_000,
        }
        for i in range(rows)
    ]


def best(decode: Callable[[], Decoded], repeat: int) -> tuple[float, int]:
    points = decode().point_count  # warm-up (and the series cache, as in a running server)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        decode()
        times.append(time.perf_counter() - start)
    return min(times), points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    repeat = parser.parse_args().repeat
    env, plant = env_body(), plant_buddy_body()
    rows = seed_000_rows()
    batch = {"deviceinfo": {"fw_ver": "1"}, "tsdata": rows}
    points = [
        {"measurement": "env", "tags": {"device": f"d{i % 50}"}, "time": r.pop("timestamp"),
         "fields": r}
        for i, r in enumerate(seed_000_rows())
    ]  # fmt: skip
    pack = [{"bn": "urn:dev:x:", "bt": 1.7e9}] + [
        {"n": f"s{i % 8}", "v": i * 0.5, "t": i} for i in range(5000)
    ]
    json_batch, msgpack_batch = orjson.dumps(batch), msgpack.packb(batch)
    json_points, senml_pack = orjson.dumps(points), orjson.dumps(pack)
    cases: dict[str, Callable[[], Decoded]] = {
        "line protocol, 5 floats/line (fast path)": lambda: lineprotocol.decode(env),
        "line protocol, 5 floats/line (reference)": lambda: lineprotocol.decode_reference(env),
        "line protocol, Plant Buddy (fast path)": lambda: lineprotocol.decode(plant),
        "line protocol, Plant Buddy (reference)": lambda: lineprotocol.decode_reference(plant),
        "seed-000 JSON batch, 1000 rows": lambda: jsonpoints.decode_json(json_batch, device="d"),
        "seed-000 MessagePack batch, 1000 rows": lambda: jsonpoints.decode_msgpack(
            msgpack_batch, device="sample"
        ),
        "JSON array of points, 1000 points": lambda: jsonpoints.decode_json(json_points),
        "SenML JSON, 5000 records": lambda: senml.decode_senml_json(senml_pack),
    }
    for name, decode in cases.items():
        seconds, count = best(decode, repeat)
        print(f"{name:45s} {count / seconds / 1e6:6.2f} M points/s  ({seconds * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
