"""Regressions from review: hostile or odd input and concurrency never break the server."""

from __future__ import annotations

import asyncio
import gzip
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from motes.app import create_app
from motes.registry.models import Invalid
from motes.registry.service import Registry
from motes.settings import Settings
from motes.telemetry.store.protocol import WriteRequest
from tests.conftest import AUTH, TOKEN
from tests.test_store_conformance import T0, frame


def write(client: TestClient, body: bytes, bucket: str = "telemetry", **headers: str):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v2/write?bucket={bucket}", content=body, headers=headers)


def test_extreme_timestamps_are_refused_and_restart_still_works(settings: Settings) -> None:
    with TestClient(create_app(settings), headers=AUTH) as client:
        r = write(client, b"env,device=a temp=1 -9223372036854775000\nenv,device=a temp=2 5\n")
        assert r.status_code == 400 and r.json()["errors"][0]["line"] == 1
        assert "out of range" in r.json()["errors"][0]["message"]
        big = client.get(
            "/api/v1/query",
            params={
                "bucket": "telemetry",
                "measurement": "env",
                "start": "-9223372036854",
                "every": "1000d",
            },
        )
        assert big.status_code == 200
    with TestClient(create_app(settings), headers=AUTH) as client:  # the store reopens
        assert client.get("/health").status_code == 200


def test_reserved_and_tricky_names(client: TestClient) -> None:
    r = write(
        client, b"a1,device=d time=1.5 1\na1,time=x,device=d f=1 2\na1,device=d gid=2,f=3 3\n"
    )
    assert r.status_code == 400 and [e["line"] for e in r.json()["errors"]] == [1, 2]
    q = client.get(
        "/api/v1/query",
        params={"bucket": "telemetry", "measurement": "a1", "start": "0", "epoch": "ns"},
    )
    assert q.status_code == 200
    assert q.json()["tables"][0]["columns"] == ["time", "f", "gid"]
    assert q.json()["tables"][0]["values"] == [[3, 3.0, 2.0]]
    write(client, b"a2,device=d timestamp=99i 5000000\n")
    rows = client.get("/api/v1/devices/d/telemetry", params={"measurement": "a2"}).json()
    assert rows == [{"timestamp": 5}]  # the real time, not the field named timestamp
    assert (
        client.get("/api/v1/query", params={"bucket": "telemetry", "measurement": "zz"}).status_code
        == 404
    )


def test_concatenated_gzip_members_are_all_read(client: TestClient) -> None:
    body = gzip.compress(b"g,device=a f=1 1\n") + gzip.compress(b"g,device=b f=2 1\n")
    assert write(client, body, **{"Content-Encoding": "gzip"}).status_code == 204
    tables = client.get(
        "/api/v1/query", params={"bucket": "telemetry", "measurement": "g", "start": "0"}
    )
    assert len(tables.json()["tables"]) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "²"},
        {"start": "²"},
        {"every": "15000w", "fn": "mean"},
        {"every": "100000000000w"},
        {"fn": "last", "every": "1h", "fill": "0", "field": "s"},
    ],
)
def test_odd_query_parameters_are_400_not_500(client: TestClient, params: dict[str, str]) -> None:
    write(client, b'odd,device=d s="text" 1\n')
    r = client.get(
        "/api/v1/query",
        params={"bucket": "telemetry", "measurement": "odd", "start": "0", **params},
    )
    assert r.status_code == 400, r.text
    r = client.get("/api/v1/devices/d/telemetry", params={"from": "²"})
    assert r.status_code == 400
    assert client.post("/api/v1/buckets", json={"name": "x", "retention": "²"}).status_code == 400


def test_rejected_point_does_not_fix_field_types(client: TestClient) -> None:
    assert write(client, b"env,device=a temp=1 1\n").status_code == 204
    assert write(client, b'env,device=a temp="oops",humidity=40i 2\n').status_code == 400
    assert write(client, b"env,device=a humidity=40.5 3\n").status_code == 204
    assert write(client, b'bad,device=a f=1 1\nbad,device=a f="x" 2\n').status_code == 400
    measurements = client.get("/api/v1/buckets/telemetry/measurements").json()["measurements"]
    assert measurements == ["bad", "env"]  # "bad" holds the good first line


def test_write_queued_for_a_deleted_bucket_is_refused(client: TestClient) -> None:
    bucket = client.post("/api/v1/buckets", json={"name": "gone"}).json()
    service = client.app.state.telemetry  # type: ignore[attr-defined]
    service.store.drop_bucket(bucket["id"])
    (outcome,) = service.store.write([WriteRequest(bucket["id"], [frame("d", [T0], temp=[1.0])])])
    assert outcome.written == 0 and "deleted" in outcome.errors[0].message
    assert service.store.measurements(bucket["id"]) == []


def test_writer_survives_a_cancelled_request(client: TestClient) -> None:
    writer = client.app.state.telemetry.writer  # type: ignore[attr-defined]
    release, busy = threading.Event(), threading.Event()
    writer.execute(lambda: busy.set() or release.wait(10))
    assert busy.wait(10)
    doomed = writer.submit(WriteRequest("nope", []), 1)

    async def cancel() -> None:
        wrapped = asyncio.wrap_future(doomed)
        wrapped.cancel()  # as when a client disconnects or a server times out

    asyncio.run(cancel())
    release.set()
    assert write(client, b"c,device=a f=1 1\n").status_code == 204  # the writer is alive


def test_reads_during_ingest_never_fail(client: TestClient) -> None:
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for path, params in (
                ("/api/v1/query", {"bucket": "telemetry", "measurement": "race", "start": "0"}),
                ("/api/v1/latest", {"bucket": "telemetry"}),
            ):
                r = client.get(path, params=params)
                if r.status_code not in (200, 404):
                    errors.append(r.text)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(60):  # new series and new fields all the time
            body = f"race,device=d{i} f{i % 7}={i} {i}\n".encode()
            assert write(client, body).status_code == 204
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    latest = client.get(
        "/api/v1/latest", params={"bucket": "telemetry", "measurement": "race"}
    ).json()
    for entry in latest["series"]:
        i = int(entry["tags"]["device"][1:])
        assert entry["fields"] == {
            f"f{i % 7}": {"time": entry["fields"][f"f{i % 7}"]["time"], "value": float(i)}
        }


def test_device_records_need_device_permission_and_hide_unreadable_data(
    client: TestClient,
) -> None:
    hdr = {"Content-Type": "application/json"}
    body = b'{"deviceinfo": {"secret": "s3"}, "tsdata": [{"timestamp": 1, "t": 1.0}]}'
    assert (
        client.post("/api/v1/devices/sec/telemetry", content=body, headers=hdr).status_code == 204
    )
    other = client.post("/api/v1/buckets", json={"name": "b2"}).json()

    def token(*permissions: str) -> dict[str, str]:
        made = client.post("/api/v1/tokens", json={"permissions": list(permissions)})
        return {"Authorization": f"Token {made.json()['token']}"}

    b2 = token(f"read:buckets/{other['id']}", f"write:buckets/{other['id']}")
    assert client.get("/api/v1/devices/sec", headers=b2).status_code == 403
    # may read device records but not the bucket the device writes to: no values shown
    records = token("read:devices", f"read:buckets/{other['id']}")
    seen = client.get("/api/v1/devices/sec", headers=records)
    assert seen.status_code == 200
    assert seen.json()["attributes"] == {"secret": "s3"} and seen.json()["latest"] == {}
    assert client.get("/api/v1/devices/sec").json()["latest"]["t"]["value"] == 1.0


def test_bootstrap_is_all_or_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    registry = Registry.open(url)
    with pytest.raises(Invalid):
        registry.bootstrap("main", "my bucket", TOKEN)
    assert registry.bootstrap("main", "telemetry", TOKEN) == TOKEN  # nothing half-created
    assert registry.authenticate("token", TOKEN).all_access
    registry.close()


def test_environment_outranks_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "motes.toml"
    config.write_text("http_port = 8086\ninit_org = 'acme'\n")
    monkeypatch.setenv("MOTES_HTTP_PORT", "9000")
    settings = Settings.from_toml(config)
    assert (settings.http_port, settings.init_org) == (9000, "acme")
    assert Settings.from_toml(config, http_port=7000).http_port == 7000


def test_many_tiny_gzip_members_cost_linear_time(client: TestClient) -> None:
    import time

    member = gzip.compress(b"")
    body = member * (3_000_000 // len(member)) + gzip.compress(b"tiny,device=a f=1 1\n")
    started = time.perf_counter()
    r = write(client, body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 204
    assert time.perf_counter() - started < 10  # quadratic re-slicing took minutes here


def test_earliest_time_with_the_widest_window(client: TestClient) -> None:
    from motes.telemetry.models import MIN_TIME_NS

    assert write(client, f"old,device=a f=1 {MIN_TIME_NS}\n".encode()).status_code == 204
    start = str(MIN_TIME_NS // 1_000_000 - 1)
    for extra in ({}, {"fill": "null", "stop": str(MIN_TIME_NS // 1_000_000 + 10**9)}):
        r = client.get(
            "/api/v1/query",
            params={
                "bucket": "telemetry",
                "measurement": "old",
                "start": start,
                "every": "1000d",
                "fn": "count",
                **extra,
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["tables"][0]["values"][0][1] == 1


def test_huge_numbers_are_400(client: TestClient) -> None:
    params = {"bucket": "telemetry", "measurement": "x", "limit": "9" * 40}
    assert client.get("/api/v1/query", params=params).status_code == 400
    r = client.post("/api/v1/buckets", json={"name": "y", "retention": "99999999999999999999d"})
    assert r.status_code == 400


def test_retention_forgets_latest_values_without_a_rebuild(client: TestClient) -> None:
    store = client.app.state.telemetry.store  # type: ignore[attr-defined]
    write(client, b"ret,device=a f=1 1000\nret,device=b f=2 5000000000000\n")
    bucket = client.app.state.registry.find_bucket(  # type: ignore[attr-defined]
        client.app.state.registry.org_by_name("main").id,
        "telemetry",  # type: ignore[attr-defined]
    )
    assert store.enforce_retention(bucket.id, 2000) == 1
    r = client.get("/api/v1/latest", params={"bucket": "telemetry", "measurement": "ret"})
    assert [s["tags"]["device"] for s in r.json()["series"]] == ["b"]


def test_short_init_token_is_ignored_once_set_up(settings: Settings) -> None:
    with TestClient(create_app(settings), headers=AUTH):
        pass
    later = settings.model_copy(update={"init_token": "short"})
    with TestClient(create_app(later), headers=AUTH) as client:  # starts: setup is done
        assert client.get("/api/v1/buckets").status_code == 200


def test_a_failing_store_answers_503_and_acks_nothing(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from motes.telemetry.models import StoreUnavailable

    store = client.app.state.telemetry.store  # type: ignore[attr-defined]

    def broken(requests: object) -> object:
        raise StoreUnavailable("telemetry store failed: disk full")

    monkeypatch.setattr(store, "write", broken)
    r = write(client, b"disk,device=a f=1 1\n")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "disk full" in r.json()["message"]
    monkeypatch.undo()
    assert write(client, b"disk,device=a f=2 2\n").status_code == 204
    rows = client.get("/api/v1/devices/a/telemetry", params={"measurement": "disk"}).json()
    assert rows == [{"f": 2.0, "timestamp": 0}]  # only the acknowledged point
