"""Write APIs over ASGI: every format lands through one pipeline; bad input gets clear 4xx."""

from __future__ import annotations

import gzip

import cbor2
import msgpack
import orjson
from starlette.testclient import TestClient

SEED_000 = {
    "deviceinfo": {"deviceid": "sample", "fw_ver": "12345.009", "batt_lvl": 78},
    "tsdata": [
        {
            "day": 18,
            "dayofweek": 2,
            "hour": 17,
            "humidity": 75.0,
            "illuminance": 74.0,
            "month": 2,
            "motion": False,
            "temperature": 78.0,
            "timestamp": 1582046738255,
        },
        {
            "day": 18,
            "dayofweek": 2,
            "hour": 17,
            "humidity": 66.0,
            "illuminance": 96.0,
            "month": 2,
            "motion": False,
            "temperature": 82.0,
            "timestamp": 1582046748255,
        },
        {
            "day": 18,
            "dayofweek": 2,
            "hour": 17,
            "humidity": 67.0,
            "illuminance": 93.0,
            "month": 2,
            "motion": True,
            "temperature": 81.0,
            "timestamp": 1582046758255,
        },
    ],
}


def lp_rows(client: TestClient, device: str, measurement: str = "env") -> list[list[object]]:
    r = client.get(
        "/api/v1/query",
        params={
            "bucket": "telemetry",
            "measurement": measurement,
            "tag": f"device:{device}",
            "start": "0",
            "epoch": "ms",
        },
    )
    assert r.status_code == 200, r.text
    return [row for t in r.json()["tables"] for row in t["values"]]


def test_v2_line_protocol_write_is_readable_at_once(client: TestClient) -> None:
    body = (
        b"env,device=d1 temp=21.5,count=3i 1700000000000\nenv,device=d1 temp=22.5 1700000060000\n"
    )
    r = client.post("/api/v2/write?org=main&bucket=telemetry&precision=ms", content=body)
    assert r.status_code == 204, r.text
    assert lp_rows(client, "d1") == [[1700000000000, 3, 21.5], [1700000060000, None, 22.5]]


def test_gzip_body_and_v1_write(client: TestClient) -> None:
    body = gzip.compress(b"env,device=d2 temp=1 1700000000\n")
    r = client.post(
        "/write?db=telemetry&precision=s", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 204, r.text
    assert lp_rows(client, "d2") == [[1700000000000, 1.0]]


def test_partial_write_stores_good_lines_and_names_bad_ones(client: TestClient) -> None:
    body = (
        b"env,device=d3 temp=1 1700000000000000000\n"
        b"env,device=d3 temp=oops 1700000001000000000\n"
        b"env,device=d3 temp=3 1700000002000000000\n"
    )
    r = client.post("/api/v2/write?bucket=telemetry", content=body)
    assert r.status_code == 400
    err = r.json()
    assert err["code"] == "invalid"
    assert [e["line"] for e in err["errors"]] == [2]
    assert err["message"] == "partial write: 1 point(s) rejected, 2 value(s) written"
    assert [row[1] for row in lp_rows(client, "d3")] == [1.0, 3.0]


def test_type_conflict_is_rejected_with_reason(client: TestClient) -> None:
    client.post("/api/v2/write?bucket=telemetry", content=b"env,device=d4 temp=1 1\n")
    r = client.post("/api/v2/write?bucket=telemetry", content=b"env,device=d4 temp=1i 2\n")
    assert r.status_code == 400
    assert (
        "temp" in r.json()["errors"][0]["message"] and "float" in r.json()["errors"][0]["message"]
    )


def test_seed_000_device_batch_and_fetch(client: TestClient) -> None:
    r = client.post(
        "/api/v1/devices/sample/telemetry",
        content=orjson.dumps(SEED_000),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 204, r.text
    rows = client.get(
        "/api/v1/devices/sample/telemetry", params={"from": 1582046738255, "to": 1582046758255}
    ).json()
    assert [row["timestamp"] for row in rows] == [1582046738255, 1582046748255]
    assert rows[0]["temperature"] == 78.0 and rows[0]["motion"] is False and rows[0]["month"] == 2
    record = client.get("/api/v1/devices/sample").json()
    assert record["attributes"] == {"deviceid": "sample", "fw_ver": "12345.009", "batt_lvl": 78}
    assert record["latest"]["temperature"]["value"] == 81.0
    # a firmware update shows in the record and its history
    update = {"deviceinfo": {"deviceid": "sample", "fw_ver": "12345.010"}}
    assert (
        client.post(
            "/api/v1/devices/sample/telemetry",
            content=orjson.dumps(update),
            headers={"Content-Type": "application/json"},
        ).status_code
        == 204
    )
    record = client.get("/api/v1/devices/sample").json()
    assert record["attributes"]["fw_ver"] == "12345.010"
    assert len(record["history"]) == 2


def test_seed_000_deviceid_mismatch_is_400(client: TestClient) -> None:
    body = {"deviceinfo": {"deviceid": "other"}, "tsdata": [{"timestamp": 1, "t": 1.0}]}
    r = client.post(
        "/api/v1/devices/sample/telemetry",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert "other" in r.json()["message"]


def test_json_integer_lands_in_float_field(client: TestClient) -> None:
    hdr = {"Content-Type": "application/json"}
    client.post(
        "/api/v1/devices/j1/telemetry",
        content=b'{"tsdata": [{"timestamp": 1000, "t": 20.5}]}',
        headers=hdr,
    )
    r = client.post(
        "/api/v1/devices/j1/telemetry",
        content=b'{"tsdata": [{"timestamp": 2000, "t": 21}]}',
        headers=hdr,
    )
    assert r.status_code == 204, r.text


def test_senml_cbor_msgpack_and_point_arrays(client: TestClient) -> None:
    senml = [{"bn": "urn:dev:x:", "bt": 1700000000, "n": "temp", "u": "Cel", "v": 21.5}]
    points = [
        {
            "measurement": "env",
            "tags": {"device": "p1"},
            "fields": {"temp": 1.5},
            "time": 1700000000000,
        }
    ]
    cases = [
        ("/api/v1/devices/s1/telemetry", "application/senml+json", orjson.dumps(senml)),
        (
            "/api/v1/devices/s2/telemetry",
            "application/senml+cbor",
            cbor2.dumps([{-2: "urn:dev:x:", -3: 1700000000, 0: "temp", 2: 21.5}]),
        ),
        (
            "/api/v1/devices/m1/telemetry",
            "application/msgpack",
            msgpack.packb({"tsdata": [{"timestamp": 1000, "t": 1.5}]}),
        ),
        ("/api/v1/buckets/telemetry/points", "application/json", orjson.dumps(points)),
    ]
    for path, ctype, body in cases:
        r = client.post(path, content=body, headers={"Content-Type": ctype})
        assert r.status_code == 204, (ctype, r.text)
    assert lp_rows(client, "p1") == [[1700000000000, 1.5]]


def test_bad_input_classes(client: TestClient, settings: object) -> None:
    anon = {"Authorization": ""}
    assert (
        client.post("/api/v2/write?bucket=telemetry", content=b"m f=1", headers=anon).status_code
        == 401
    )
    assert (
        client.post(
            "/api/v2/write?bucket=telemetry",
            content=b"m f=1",
            headers={"Authorization": "Token nope"},
        ).status_code
        == 401
    )
    assert client.post("/api/v2/write?bucket=nope", content=b"m f=1").status_code == 404
    assert (
        client.post("/api/v2/write?bucket=telemetry&precision=h", content=b"m f=1").status_code
        == 400
    )
    assert client.post("/api/v2/write?bucket=telemetry", content=b"").status_code == 400
    r = client.post(
        "/api/v1/devices/x/telemetry",
        content=b"<xml/>",
        headers={"Content-Type": "application/xml"},
    )
    assert r.status_code == 415
    r = client.post(
        "/api/v1/devices/x/telemetry",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    r = client.post(
        "/api/v2/write?bucket=telemetry",
        content=b"\x1f\x8b garbage",
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 400


def test_body_limit_is_413_and_names_the_limit(tmp_path: object) -> None:
    from pathlib import Path

    from motes.app import create_app
    from motes.settings import Settings
    from tests.conftest import AUTH, TOKEN

    s = Settings(data_dir=Path(str(tmp_path)) / "d", init_token=TOKEN, max_body_bytes=1000)
    with TestClient(create_app(s), headers=AUTH) as c:
        r = c.post("/api/v2/write?bucket=telemetry", content=b"m f=1 1\n" * 500)
        assert r.status_code == 413 and "1000 bytes" in r.json()["message"]
        bomb = gzip.compress(b"m f=1 1\n" * 10_000)
        r = c.post(
            "/api/v2/write?bucket=telemetry", content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 413


def test_scoped_token_gets_403_outside_its_bucket(client: TestClient) -> None:
    b = client.post("/api/v1/buckets", json={"name": "plants", "retention": "30d"}).json()
    tok = client.post("/api/v1/tokens", json={"permissions": [f"write:buckets/{b['id']}"]}).json()[
        "token"
    ]
    hdr = {"Authorization": f"Token {tok}"}
    assert (
        client.post("/api/v2/write?bucket=plants", content=b"m f=1", headers=hdr).status_code == 204
    )
    assert (
        client.post("/api/v2/write?bucket=telemetry", content=b"m f=1", headers=hdr).status_code
        == 403
    )
    r = client.get("/api/v1/query", params={"bucket": "plants", "measurement": "m"}, headers=hdr)
    assert r.status_code == 403


def test_retention_rejects_points_older_than_the_bucket_keeps(client: TestClient) -> None:
    client.post("/api/v1/buckets", json={"name": "short", "retention": "1h"})
    r = client.post("/api/v2/write?bucket=short&precision=s", content=b"m f=1 1000\n")
    assert r.status_code == 400 and "retention" in r.json()["errors"][0]["message"]


def test_schema_rejects_breaking_writes(client: TestClient) -> None:
    r = client.put(
        "/api/v1/buckets/telemetry/measurements/weather/schema",
        json={"fields": {"temp": {"type": "float", "unit": "Cel"}}},
    )
    assert r.status_code == 200, r.text
    assert (
        client.post(
            "/api/v2/write?bucket=telemetry", content=b"weather,device=w temp=1 1"
        ).status_code
        == 204
    )
    r = client.post(
        "/api/v2/write?bucket=telemetry",
        content=b'weather,device=w temp="hot" 2\nweather,device=w rain=1 3',
    )
    assert r.status_code == 400 and len(r.json()["errors"]) == 2
    fields = client.get("/api/v1/buckets/telemetry/measurements/weather/fields").json()["fields"]
    assert fields == [{"name": "temp", "type": "float", "unit": "Cel"}]


def test_influxdb_v1_clients_can_create_and_list_databases(client: TestClient) -> None:
    r = client.post("/query", data={"q": 'CREATE DATABASE "telegraf"'})
    assert r.status_code == 200 and r.json() == {"results": [{"statement_id": 0}]}
    assert client.post("/query?q=CREATE DATABASE telegraf").status_code == 200  # exists: fine
    shown = client.get("/query", params={"q": "SHOW DATABASES"}).json()
    names = [row[0] for row in shown["results"][0]["series"][0]["values"]]
    assert sorted(names) == ["telegraf", "telemetry"]
    assert client.post("/write?db=telegraf", content=b"cpu,host=a usage=1 1").status_code == 204
    r = client.get("/query", params={"q": "SELECT * FROM cpu"})
    assert r.status_code == 400 and "/api/v1/query" in r.json()["message"]
