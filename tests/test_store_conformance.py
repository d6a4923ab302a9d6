"""The TelemetryStore contract, written once and run against every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from motes.telemetry.models import Frame, format_tagset
from motes.telemetry.store.duckdb import DuckDBStore
from motes.telemetry.store.protocol import Aggregation, Selection, TelemetryStore, WriteRequest

MIN = 60 * 10**9
T0 = 1_699_999_200 * 10**9  # a whole hour

Opener = Callable[[], TelemetryStore]


def _duckdb(tmp_path: Path) -> Opener:
    return lambda: DuckDBStore(tmp_path / "t.duckdb", compact_rows=50)


BACKENDS = {"duckdb": _duckdb}


@pytest.fixture(params=sorted(BACKENDS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    yield BACKENDS[request.param](tmp_path)


def frame(device: str, times: list[int], **fields: list[object]) -> Frame:
    n = len(times)
    tags = pa.array([format_tagset({"device": device})] * n).dictionary_encode()
    return Frame(
        "env", tags, pa.array(times, pa.int64()), {k: pa.array(v) for k, v in fields.items()}
    )


def rows(
    store: TelemetryStore, device: str, agg: Aggregation | None = None
) -> list[dict[str, object]]:
    sel = Selection("b", "env", 0, 2**62, {"device": [device]})
    return [r for _, t in store.read(sel, agg, None) for r in t.to_pylist()]


def test_written_points_read_back_in_time_order(opener: Opener) -> None:
    store = opener()
    times = [T0 + i * MIN for i in (3, 1, 2)]
    out = store.write([WriteRequest("b", [frame("d1", times, temp=[3.0, 1.0, 2.0])])])
    assert out[0].written == 3 and not out[0].errors
    assert [r["temp"] for r in rows(store, "d1")] == [1.0, 2.0, 3.0]


def test_same_series_and_time_last_write_wins_per_field(opener: Opener) -> None:
    store = opener()
    store.write([WriteRequest("b", [frame("d1", [T0], temp=[1.0], hum=[10])])])
    store.write([WriteRequest("b", [frame("d1", [T0], temp=[2.0])])])
    # two requests in one group commit: the later one wins
    store.write(
        [
            WriteRequest("b", [frame("d1", [T0 + MIN], temp=[5.0])]),
            WriteRequest("b", [frame("d1", [T0 + MIN], temp=[6.0])]),
        ]
    )
    assert rows(store, "d1") == [
        {"time": T0, "temp": 2.0, "hum": 10},
        {"time": T0 + MIN, "temp": 6.0, "hum": None},
    ]


def test_field_type_is_fixed_by_first_write(opener: Opener) -> None:
    store = opener()
    store.write([WriteRequest("b", [frame("d1", [T0], temp=[1.0])])])
    out = store.write([WriteRequest("b", [frame("d1", [T0 + MIN, T0 + 2 * MIN], temp=[1, 2])])])
    assert out[0].written == 0
    assert len(out[0].errors) == 2
    assert "is float, got integer" in out[0].errors[0].message
    assert store.field_types("b", "env") == {"temp": "float"}


def test_conflict_in_one_request_does_not_fail_others_in_the_group(opener: Opener) -> None:
    store = opener()
    out = store.write(
        [
            WriteRequest("b", [frame("d1", [T0], temp=[1.0])]),
            WriteRequest("b", [frame("d2", [T0], temp=["warm"])]),
            WriteRequest("b", [frame("d3", [T0], temp=[3.0])]),
        ]
    )
    assert [o.written for o in out] == [1, 0, 1]
    assert rows(store, "d3") == [{"time": T0, "temp": 3.0}]


def test_data_survives_reopen_and_compaction(opener: Opener) -> None:
    store = opener()
    for i in range(5):
        times = [T0 + (i * 30 + j) * MIN for j in range(30)]
        store.write(
            [
                WriteRequest(
                    "b",
                    [frame(f"d{k}", times, temp=[float(j) for j in range(30)]) for k in range(3)],
                )
            ]
        )
        store.maintain(idle=False)
    store.maintain(idle=True)
    store.close()
    store = opener()
    assert len(rows(store, "d1")) == 150
    (latest,) = store.latest("b", "env", {"device": ["d2"]})
    times, values = latest.fields["temp"]
    assert values.tolist() == [29.0]


def test_window_aggregates(opener: Opener) -> None:
    store = opener()
    times = [T0 + i * MIN for i in range(20)]
    store.write([WriteRequest("b", [frame("d1", times, temp=[float(i) for i in range(20)])])])
    agg = Aggregation(every=10 * MIN, fn="mean", group_by=None)
    got = rows(store, "d1", agg)
    assert [r["temp"] for r in got] == [4.5, 14.5]
    for fn, want in {
        "min": 0.0,
        "max": 9.0,
        "sum": 45.0,
        "count": 10,
        "first": 0.0,
        "last": 9.0,
    }.items():
        assert rows(store, "d1", Aggregation(10 * MIN, fn, None))[0]["temp"] == want


def test_group_by_tag_merges_series(opener: Opener) -> None:
    store = opener()
    store.write([WriteRequest("b", [frame("d1", [T0], temp=[1.0]), frame("d2", [T0], temp=[3.0])])])
    sel = Selection("b", "env", 0, 2**62)
    tables = store.read(sel, Aggregation(MIN, "mean", ()), None)
    assert len(tables) == 1 and tables[0][1].to_pylist() == [{"time": T0, "temp": 2.0}]


def test_latest_values_follow_newest_time_not_arrival(opener: Opener) -> None:
    store = opener()
    store.write([WriteRequest("b", [frame("d1", [T0 + MIN], temp=[2.0])])])
    store.write([WriteRequest("b", [frame("d1", [T0], temp=[1.0])])])
    (latest,) = store.latest("b", "env", {})
    times, values = latest.fields["temp"]
    assert (times.tolist(), values.tolist()) == ([T0 + MIN], [2.0])


def test_buckets_are_separate_and_droppable(opener: Opener) -> None:
    store = opener()
    store.write(
        [
            WriteRequest("b", [frame("d1", [T0], temp=[1.0])]),
            WriteRequest("c", [frame("d1", [T0], temp=["x"])]),
        ]
    )
    assert store.field_types("c", "env") == {"temp": "string"}
    store.drop_bucket("c")
    assert store.measurements("c") == []
    assert rows(store, "d1") == [{"time": T0, "temp": 1.0}]


def test_retention_removes_old_points(opener: Opener) -> None:
    store = opener()
    store.write([WriteRequest("b", [frame("d1", [T0, T0 + 10 * MIN], temp=[1.0, 2.0])])])
    assert store.enforce_retention("b", T0 + MIN) == 1
    assert [r["temp"] for r in rows(store, "d1")] == [2.0]
