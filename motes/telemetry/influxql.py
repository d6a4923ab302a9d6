"""The slice of InfluxDB 1.x ``/query`` that write clients need before they write.

Telegraf's InfluxDB v1 output and other 1.x clients send ``CREATE DATABASE "name"`` at start
and some list databases with ``SHOW DATABASES``. Both map onto buckets; any other statement is
a clear 400 (InfluxQL reads are a later feature).

    POST /query?q=CREATE DATABASE "telegraf"   -> {"results": [{"statement_id": 0}]}
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import parse_qs

from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from motes.apispec import ApiModel, Param, operation
from motes.http import BadRequest, JSONResponse, actor_of, authenticate, read_body
from motes.registry.models import Conflict, Forbidden
from motes.telemetry.api import resolve_org

_CREATE = re.compile(
    r'^\s*CREATE\s+DATABASE\s+(?:"((?:[^"\\]|\\.)+)"|([A-Za-z0-9_.\-]+))\s*;?\s*$', re.I
)
_SHOW = re.compile(r"^\s*SHOW\s+DATABASES\s*;?\s*$", re.I)
STATEMENT = {
    "type": "string",
    "description": "CREATE DATABASE <name> or SHOW DATABASES",
    "examples": ['CREATE DATABASE "telegraf"', "SHOW DATABASES"],
}


class InfluxSeries(ApiModel):
    name: str
    columns: list[str]
    values: list[list[str]]


class StatementResult(ApiModel):
    statement_id: int = Field(alias="statement_id")  # InfluxDB's spelling
    series: list[InfluxSeries] = Field(default_factory=list)


class InfluxQLResult(ApiModel):
    results: list[StatementResult]


@operation(
    "InfluxDB 1.x CREATE DATABASE and SHOW DATABASES",
    ["influxdb"],
    body={
        "application/x-www-form-urlencoded": {
            "type": "object",
            "properties": {"q": STATEMENT},
            "required": ["q"],
        }
    },
    query=[Param("q", STATEMENT, description="or form-encoded in a POST body")],
    responses={200: InfluxQLResult},
    errors=(400, 401, 403, 413, 415),
    description="CREATE DATABASE creates the bucket (an existing one is fine; needs an "
    "write:buckets); SHOW DATABASES lists the buckets the token reads. Other statements "
    "are a 400.",
)
async def query_v1(request: Request) -> Response:
    token = authenticate(request)
    org = resolve_org(request, token)
    q = request.query_params.get("q")
    if q is None and request.method == "POST":  # clients also send q form-encoded
        body = await read_body(request, 1024 * 1024)
        q = next(iter(parse_qs(body.decode("utf-8", "replace")).get("q", [])), None)
    if not q:
        raise BadRequest('missing required parameter "q"')
    registry = request.app.state.registry
    if _SHOW.match(q):
        names = [[b.name] for b in registry.buckets(org.id)
                 if token.allows("read", "buckets", b.id)]  # fmt: skip
        series = [{"name": "databases", "columns": ["name"], "values": names}]
        return JSONResponse({"results": [{"statement_id": 0, "series": series}]})
    created = _CREATE.match(q)
    if created:
        if not token.allows("write", "buckets"):
            raise Forbidden("creating a database (bucket) needs write:buckets")
        name = (created.group(1) or created.group(2)).replace('\\"', '"')
        # InfluxDB answers CREATE DATABASE for an existing one with success too
        with contextlib.suppress(Conflict):
            await run_in_threadpool(
                registry.create_bucket, org.id, name, 0, actor_of(request, token)
            )
        return JSONResponse({"results": [{"statement_id": 0}]})
    raise BadRequest(
        "only CREATE DATABASE and SHOW DATABASES are supported on /query; "
        "read data with /api/v1/query"
    )


routes = [Route("/query", query_v1, methods=["GET", "POST"])]
