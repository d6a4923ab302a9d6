"""The served OpenAPI 3.1 document, built from the endpoints themselves.

Each endpoint says what it takes and what it answers with :func:`operation`;
:func:`openapi_document` walks the app's routes and assembles ``GET /api/v1/openapi.json``
from them, so the document follows the routing table::

    class NewBucket(ApiModel):
        name: str
        retention_seconds: int = 0        # "retentionSeconds" on the wire

    class BucketOut(ApiModel):
        id: str
        name: str

    @operation("Create a bucket", ["buckets"], body=NewBucket, responses={201: BucketOut},
               errors=(400, 401, 403, 409))
    async def create_bucket(request: Request) -> Response:
        new = await parse_body(request, NewBucket)      # a 400 naming every bad field
        ...
        return JSONResponse(BucketOut(...).model_dump(mode="json", by_alias=True), 201)

The decorator only attaches metadata (``endpoint.__openapi__``), it never changes what the
endpoint does. Bodies are documented in pydantic's validation mode and responses in its
serialization mode, which is what ``model_dump(mode="json")`` writes. Content given as
``{media_type: schema}`` may use a model class in place of a JSON schema.
"""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.applications import Starlette
from starlette.convertors import Convertor, FloatConvertor, IntegerConvertor, UUIDConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from motes import __version__
from motes.http import BadRequest, json_body, read_body

JsonSchema = dict[str, Any]
Refs = Mapping[tuple[type[BaseModel], JsonSchemaMode], JsonSchema]
Content = type[BaseModel] | Mapping[str, JsonSchema | type[BaseModel]]
M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=Callable[..., Any])

MAX_BODY = 1024 * 1024
REF = "#/components/schemas/{model}"
LOCATIONS = ("query", "path", "header", "cookie")
#: InfluxDB 1.x credentials (``?u=&p=``): read by authentication, not by the endpoint's model
CREDENTIAL_PARAMS = frozenset({"u", "p"})
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "HEAD")
NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

SECURITY_SCHEMES: dict[str, JsonSchema] = {
    "Token": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Authorization: Token <API token>`; InfluxDB 1.x clients may send the "
        "token as `?p=<token>` instead",
    },
    "Bearer": {"type": "http", "scheme": "bearer", "description": "an API or access token"},
    "Thing": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "`Authorization: Thing <device key>`",
    },
    "Basic": {"type": "http", "scheme": "basic", "description": "the token as the password"},
}
SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]

ERROR_SCHEMA: JsonSchema = {
    "type": "object",
    "description": "Every error of the API has this shape (InfluxDB v2's).",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "examples": ["invalid"]},
        "message": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "one entry per problem (rejected point, bad field), at most 100",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "line": {"type": ["integer", "null"], "description": "1-based line/record"},
                    "field": {"type": "string", "description": 'dotted path, e.g. "owner.email"'},
                },
            },
        },
        "errors_truncated": {"type": "integer", "description": "entries left out of `errors`"},
    },
}
ERROR_WHEN = {
    400: "Invalid request: bad parameters or data; `errors` lists each problem",
    401: "Missing or unknown credentials",
    403: "The credentials lack the permission",
    404: "Not found",
    409: "Conflict with an existing object",
    413: "Body over the size limit (the message gives it), before or after gunzip",
    415: "Unsupported Content-Type or Content-Encoding",
    429: "Too many attempts: retry after `Retry-After`",
    503: "Unavailable (write queue full, storage failed), nothing kept: see `Retry-After`",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}
#: answers about the request body, which a request without one never gets
BODY_ERRORS = frozenset({413, 415})


class ApiModel(BaseModel):
    """Base of request and response models: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


@dataclass(frozen=True)
class Param:
    """One documented parameter: ``Param("limit", {"type": "integer", "minimum": 1})``."""

    name: str
    schema: JsonSchema
    required: bool = False
    description: str = ""
    location: str = "query"  # or "path", "header", "cookie"

    def __post_init__(self) -> None:
        if self.location not in LOCATIONS:
            raise ValueError(f'Param "{self.name}": location must be one of {LOCATIONS}')


@dataclass(frozen=True)
class Operation:
    """What :func:`operation` attaches to an endpoint as ``__openapi__``."""

    summary: str
    tags: tuple[str, ...]
    body: Content | None
    query: type[BaseModel] | tuple[Param, ...] | None
    responses: Mapping[int, Content | None]
    errors: tuple[int, ...]
    auth: bool
    description: str | None


def operation(
    summary: str,
    tags: list[str],
    body: Content | None = None,
    query: type[BaseModel] | list[Param] | None = None,
    responses: Mapping[int, Content | None] | None = None,
    errors: tuple[int, ...] = (400, 401, 403, 404),
    auth: bool = True,
    description: str | None = None,
) -> Callable[[E], E]:
    """Document an endpoint. ``responses`` defaults to ``{200: None}``; None means no body.

    ``errors`` are documented with the shared ``Error`` schema (413 and 415 only for methods
    with a body); ``auth`` adds the credential schemes (Token, Bearer, Thing, Basic). The
    body is not documented for GET, HEAD, DELETE and OPTIONS.
    """
    op = Operation(
        summary=summary,
        tags=tuple(tags),
        body=body,
        query=query if query is None or isinstance(query, type) else tuple(query),
        responses=dict(responses if responses is not None else {200: None}),
        errors=tuple(errors),
        auth=auth,
        description=description,
    )

    def attach(endpoint: E) -> E:
        endpoint.__openapi__ = op  # type: ignore[attr-defined]
        return endpoint

    return attach


# -- validating requests ----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"field": self.field, "message": self.message}


class InvalidInput(BadRequest):
    """A body or query string that does not fit its model: 400, one entry per problem."""

    def __init__(self, message: str, errors: Sequence[FieldError]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)

    @classmethod
    def of(cls, exc: ValidationError, where: str) -> InvalidInput:
        unknown = "unknown field" if where == "body" else "unknown parameter"
        rewrite = {"extra_forbidden": unknown, "missing": "required", "model_type": "not an object"}
        errors = [
            FieldError(".".join(str(p) for p in e["loc"]), rewrite.get(e["type"], e["msg"]))
            for e in exc.errors(include_url=False)
        ]
        first = errors[0]
        message = f"invalid {where}: " + (f"{first.field}: " if first.field else "") + first.message
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        return cls(message, errors)


async def parse_body(request: Request, model: type[M], limit: int = MAX_BODY) -> M:
    """The JSON body as ``model``: 413 past ``limit`` bytes, 400 naming every bad field."""
    data = json_body(await read_body(request, limit))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.of(exc, "body") from exc


def parse_query(request: Request, model: type[M]) -> M:
    """The query string as ``model``; repeated keys fill list fields (``?tag=a&tag=b``)."""
    params = request.query_params
    repeatable = _repeatable(model)
    data = {
        key: params.getlist(key) if key in repeatable else params[key]
        for key in params
        if key not in CREDENTIAL_PARAMS
    }
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput.of(exc, "query") from exc


@functools.cache
def _repeatable(model: type[BaseModel]) -> frozenset[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        if _is_collection(field.annotation):
            keys.update({name, field.alias or name})
    return frozenset(keys)


def _is_collection(annotation: object) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_collection(arg) for arg in get_args(annotation))
    return origin in (list, tuple, set, frozenset)


# -- the document -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    path: str
    method: str
    endpoint: Callable[..., Any]
    op: Operation
    path_params: dict[str, Convertor[Any]]


def openapi_document(app: Starlette) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every decorated route of ``app``."""
    found = list(_walk(app.routes))
    refs, schemas = _model_schemas(found)
    paths: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for f in found:
        shared = sum(g.endpoint is f.endpoint for g in found) > 1
        op_id = _unique(f.endpoint.__name__ + (f"_{f.method.lower()}" if shared else ""), taken)
        paths.setdefault(f.path, {})[f.method.lower()] = _operation(f, op_id, refs, schemas)
    if "Error" in schemas:
        raise ValueError('a model named "Error" would hide the shared Error schema: rename it')
    schemas["Error"] = ERROR_SCHEMA
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Motes",
            "version": __version__,
            "description": "Open-source IoT data platform: devices to dashboards.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
        "tags": [{"name": t} for t in sorted({t for f in found for t in f.op.tags})],
    }
    return copy.deepcopy(doc)  # callers may change it; the schemas given stay as they are


def _walk(
    routes: Sequence[BaseRoute],
    prefix: str = "",
    convertors: Mapping[str, Convertor[Any]] | None = None,
    seen: set[tuple[str, str]] | None = None,
) -> Iterator[_Found]:
    """Decorated (path, method) pairs in routing order; the first route of a pair wins."""
    seen = set() if seen is None else seen
    for route in routes:
        if isinstance(route, Mount):  # its formats end in "/{path}", the rest of the path
            inherited = {**(convertors or {}), **route.param_convertors}
            del inherited["path"]
            mount_path = route.path_format.removesuffix("/{path}")
            yield from _walk(route.routes, prefix + mount_path, inherited, seen)
            continue
        op = getattr(getattr(route, "endpoint", None), "__openapi__", None)
        if not isinstance(route, Route) or not isinstance(op, Operation) or not route.methods:
            continue
        path = prefix + route.path_format
        # HEAD is GET without the body (RFC 9110), answered for every GET route
        methods = set(route.methods) - ({"HEAD"} if "GET" in route.methods else set())
        for method in sorted(methods, key=lambda m: METHODS.index(m) if m in METHODS else 99):
            if (path, method) not in seen:
                seen.add((path, method))
                params = {**(convertors or {}), **route.param_convertors}
                yield _Found(path, method, route.endpoint, op, params)


def _models(content: Content | None) -> Iterator[type[BaseModel]]:
    if isinstance(content, type):
        yield content
    elif content is not None:
        yield from (s for s in content.values() if isinstance(s, type))


def _model_schemas(found: list[_Found]) -> tuple[Refs, dict[str, JsonSchema]]:
    """One pydantic pass over every model, so shared and same-named models get distinct names."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for f in found:
        for model in _models(f.op.body):
            wanted[(model, "validation")] = None
        if isinstance(f.op.query, type):
            wanted[(f.op.query, "validation")] = None
        for content in f.op.responses.values():
            for model in _models(content):
                wanted[(model, "serialization")] = None
    if not wanted:
        return {}, {}
    refs, defs = models_json_schema(list(wanted), by_alias=True, ref_template=REF)
    return {key: refs[key] for key in wanted}, dict(defs.get("$defs", {}))


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _operation(
    f: _Found,
    op_id: str,
    refs: Refs,
    schemas: Mapping[str, JsonSchema],
) -> dict[str, Any]:
    op = f.op
    out: dict[str, Any] = {"operationId": op_id, "summary": op.summary, "tags": list(op.tags)}
    if op.description:
        out["description"] = op.description
    parameters = _parameters(f, refs, schemas)
    if parameters:
        out["parameters"] = parameters
    if op.body is not None and f.method not in NO_BODY:
        out["requestBody"] = {"required": True, "content": _content(op.body, refs, "validation")}
    out["responses"] = _responses(op, refs, has_body="requestBody" in out)
    if op.auth:
        out["security"] = SECURITY
    return out


def _content(
    content: Content,
    refs: Refs,
    mode: JsonSchemaMode,
) -> dict[str, Any]:
    if isinstance(content, type):
        return {"application/json": {"schema": refs[(content, mode)]}}
    return {
        media: {"schema": refs[(schema, mode)] if isinstance(schema, type) else schema}
        for media, schema in content.items()
    }


def _responses(op: Operation, refs: Refs, has_body: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, content in sorted(op.responses.items()):
        out[str(status)] = {"description": HTTPStatus(status).phrase}
        if content is not None:
            out[str(status)]["content"] = _content(content, refs, "serialization")
    errors = set(op.errors) - set(op.responses) - (set() if has_body else BODY_ERRORS)
    for status in sorted(errors):
        error: dict[str, Any] = {
            "description": ERROR_WHEN.get(status, HTTPStatus(status).phrase),
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
        }
        if status in ERROR_HEADERS:
            error["headers"] = ERROR_HEADERS[status]
        out[str(status)] = error
    return out


def _parameters(
    f: _Found,
    refs: Refs,
    schemas: Mapping[str, JsonSchema],
) -> list[dict[str, Any]]:
    given = f.op.query
    if isinstance(given, type):
        name = refs[(given, "validation")]["$ref"].rsplit("/", 1)[-1]
        model = schemas[name]
        required = set(model.get("required", []))
        given = tuple(
            Param(key, schema, key in required, schema.get("description", ""))
            for key, schema in model.get("properties", {}).items()
        )
    params = {
        name: Param(name, _path_schema(conv), True, location="path")
        for name, conv in f.path_params.items()
    }
    for p in given or ():
        if p.location == "path" and p.name not in f.path_params:
            raise ValueError(f'{f.method} {f.path}: path parameter "{p.name}" is not in the path')
        params[p.name if p.location == "path" else f"{p.location}:{p.name}"] = p
    return [
        {
            "name": p.name,
            "in": p.location,
            "required": p.required or p.location == "path",
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in params.values()
    ]


def _path_schema(convertor: Convertor[Any]) -> JsonSchema:
    if isinstance(convertor, IntegerConvertor):
        return {"type": "integer", "minimum": 0}
    if isinstance(convertor, FloatConvertor):
        return {"type": "number", "minimum": 0}
    if isinstance(convertor, UUIDConvertor):
        return {"type": "string", "format": "uuid"}
    return {"type": "string", "pattern": f"^{convertor.regex}$"}


# -- the route --------------------------------------------------------------------------------


@operation(
    "This OpenAPI document",
    ["meta"],
    responses={200: {"application/json": {"type": "object"}}},
    errors=(),
    auth=False,
)
async def openapi_json(request: Request) -> Response:
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_json", None)
    if body is None:  # built on first use: every route is mounted by then
        body = state.openapi_json = orjson.dumps(openapi_document(request.app))
    return Response(body, media_type="application/json")


routes = [Route("/api/v1/openapi.json", openapi_json, methods=["GET"])]
