"""Every error, from every kind of failure, has the one JSON shape."""

from __future__ import annotations

from starlette.testclient import TestClient


def test_every_error_has_code_and_message(client: TestClient) -> None:
    responses = [
        client.get("/nope"),
        client.delete("/health"),
        client.post("/api/v2/write", content=b"m f=1"),
        client.post(
            "/api/v2/write?bucket=telemetry", content=b"m f=1", headers={"Authorization": "Token x"}
        ),
        client.get(
            "/api/v1/query",
            params={"bucket": "telemetry", "measurement": "m", "start": "yesterday"},
        ),
        client.get(
            "/api/v1/query", params={"bucket": "telemetry", "measurement": "m", "every": "1x"}
        ),
        client.post("/api/v1/buckets", content=b"[]"),
    ]
    for r in responses:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text)
        body = r.json()
        assert set(body) <= {"code", "message", "errors", "errors_truncated"}, body
        assert (
            isinstance(body["code"], str) and isinstance(body["message"], str) and body["message"]
        )
