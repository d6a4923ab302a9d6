"""Query APIs: windows, group by, fill, CSV, latest, fleet, discovery."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

H = 3600 * 10**9
M = 60 * 10**9
T0 = 1_699_999_200 * 10**9  # a whole hour


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    lines = []
    for d, site in (("d1", "a"), ("d2", "a"), ("d3", "b")):
        for i in range(120):
            lines.append(f"env,device={d},site={site} temp={i}.5,hum={100 - i}i {T0 + i * M}")
    r = client.post("/api/v2/write?bucket=telemetry", content="\n".join(lines).encode())
    assert r.status_code == 204, r.text
    return client


def q(client: TestClient, **params: object) -> dict:
    base = {
        "bucket": "telemetry",
        "measurement": params.pop("measurement", "env"),
        "start": str(T0 // 10**6),
        "epoch": "ns",
    }
    r = client.get("/api/v1/query", params={**base, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_one_table_per_series_with_windows(loaded: TestClient) -> None:
    out = q(loaded, tag="device:d1", every="1h", fn="mean", field="temp")
    (table,) = out["tables"]
    assert table["tags"] == {"device": "d1", "site": "a"}
    assert table["columns"] == ["time", "temp"]
    assert table["values"] == [[T0, 30.0], [T0 + H, 90.0]]


def test_group_by_tag_and_all_fns(loaded: TestClient) -> None:
    out = q(loaded, every="1h", fn="max", field="temp", group_by="site")
    by_site = {t["tags"]["site"]: t["values"] for t in out["tables"]}
    assert by_site == {"a": [[T0, 59.5], [T0 + H, 119.5]], "b": [[T0, 59.5], [T0 + H, 119.5]]}
    for fn in ("min", "sum", "count", "first", "last", "median"):
        assert q(loaded, every="1h", fn=fn, field="hum", group_by="")["tables"], fn


def test_raw_limit_and_relative_range(loaded: TestClient) -> None:
    out = q(loaded, tag="device:d2", limit=3)
    assert [row[0] for row in out["tables"][0]["values"]] == [T0, T0 + M, T0 + 2 * M]
    assert q(loaded, start="-1h")["tables"] == []  # T0 is long ago


def test_fill_previous_and_null(loaded: TestClient) -> None:
    stop = str((T0 + 4 * H) // 10**6)
    out = q(loaded, tag="device:d1", field="temp", every="1h", fn="count", stop=stop, fill="null")
    assert [v[1] for v in out["tables"][0]["values"]] == [60, 60, None, None]
    out = q(
        loaded, tag="device:d1", field="temp", every="1h", fn="last", stop=stop, fill="previous"
    )
    assert [v[1] for v in out["tables"][0]["values"]] == [59.5, 119.5, 119.5, 119.5]


def test_csv_output(loaded: TestClient) -> None:
    r = loaded.get(
        "/api/v1/query",
        headers={"Accept": "text/csv"},
        params={
            "bucket": "telemetry",
            "measurement": "env",
            "tag": "device:d3",
            "start": "0",
            "every": "1h",
            "fn": "mean",
            "field": "temp",
            "epoch": "s",
        },
    )
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines() == [
        "table,measurement,device,site,time,temp",
        f"0,env,d3,b,{T0 // 10**9},30.0",
        f"0,env,d3,b,{(T0 + H) // 10**9},90.0",
    ]


def test_latest_and_fleet(loaded: TestClient) -> None:
    r = loaded.get(
        "/api/v1/latest", params={"bucket": "telemetry", "measurement": "env", "epoch": "ns"}
    )
    series = r.json()["series"]
    assert len(series) == 3
    assert series[0]["fields"]["temp"] == {"time": T0 + 119 * M, "value": 119.5}
    r = loaded.get(
        "/api/v1/fleet",
        params={
            "bucket": "telemetry",
            "measurement": "env",
            "field": "hum",
            "tag": "site:a",
            "fn": "sum",
        },
    )
    assert r.json()["fields"]["hum"]["value"] == -38.0  # 100 - 119, twice
    assert r.json()["fields"]["hum"]["series"] == 2


def test_schema_discovery(loaded: TestClient) -> None:
    base = "/api/v1/buckets/telemetry/measurements"
    assert loaded.get(base).json() == {"measurements": ["env"]}
    assert loaded.get(base + "/env/tags").json() == {"tags": ["device", "site"]}
    assert loaded.get(base + "/env/tags/site/values").json() == {"values": ["a", "b"]}
    fields = loaded.get(base + "/env/fields").json()["fields"]
    assert [(f["name"], f["type"]) for f in fields] == [("hum", "integer"), ("temp", "float")]
    assert loaded.get(base + "/nope/fields").status_code == 404


def test_query_errors(loaded: TestClient) -> None:
    base = {"bucket": "telemetry", "measurement": "env"}
    for bad in (
        {"fn": "avg", "every": "1h"},
        {"field": "nope"},
        {"start": "0", "stop": "0"},
        {"limit": "-1"},
        {"fill": "zero", "every": "1h", "fn": "mean"},
        {"epoch": "h"},
    ):
        r = loaded.get("/api/v1/query", params={**base, "start": "0", **bad})
        assert r.status_code == 400, (bad, r.text)


def test_string_boolean_and_unsigned_fields_round_trip(client: TestClient) -> None:
    body = (
        b'kinds,device=a s="x",b=true,u=7u 60000000000\n'
        b"kinds,device=a b=false,u=9u 120000000000\n"
        b'kinds,device=a s="z" 180000000000\n'
    )
    assert client.post("/api/v2/write?bucket=telemetry", content=body).status_code == 204
    raw = q(client, measurement="kinds", start="0")["tables"][0]
    assert raw["columns"] == ["time", "b", "s", "u"]
    assert raw["values"] == [
        [60000000000, True, "x", 7],
        [120000000000, False, None, 9],
        [180000000000, None, "z", None],
    ]
    for fn, want in {
        "last": [False, "z", 9],
        "first": [True, "x", 7],
        "count": [2, 2, 2],
        "max": [True, "z", 9],
    }.items():
        agg = q(client, measurement="kinds", start="0", every="1h", fn=fn)["tables"][0]
        assert agg["values"] == [[0, *want]], fn
