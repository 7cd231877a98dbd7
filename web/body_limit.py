"""Request bodies: capped while they stream in, and only after the caller is known.

FastAPI reads and parses a declared body before a route's dependencies run, so
a size or key check written as a dependency comes too late, and a chunked body
has no Content-Length to check. Routes that take a body therefore declare none:
their dependencies authenticate (and rate-limit) first, then the handler calls
``read_json``, which counts bytes as they arrive, stops at HTTP_MAX_BODY_BYTES
(413), and only then parses and validates.

``BodyLimit`` caps every request body in front of every route the same way
(defence in depth for a route added later). It also closes the connection of
any answer sent before the request body was read in full (a 401, 413 or 429):
otherwise the server keeps reading, and discarding, whatever the client still
sends, and the client uploads all of it before it sees the answer (a 401 to a
200 MB chunked body: 209 MB sent without the close, under 3 MB with it).
FastAPI's own ``max_body_size`` (Starlette's RequestBodyLimitMiddleware) caps
the same way but neither closes the connection nor names the limit in its 413.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import get_settings

CLOSE_CONNECTION = {"Connection": "close"}
BODY_NOT_UTF8 = "the request body is not UTF-8 text"
JSON_SUBTYPE = "json"

Model = TypeVar("Model", bound=BaseModel)


class BodyTooLarge(HTTPException):
    """413 naming the limit; the connection is closed so that the client stops sending."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (HTTP_MAX_BODY_BYTES); send smaller batches",
                         CLOSE_CONNECTION)  # fmt: skip


def declared_length(headers: Headers) -> int | None:
    """The Content-Length header as a number, None when absent or not a number."""
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _has_body(headers: Headers) -> bool:
    return (declared_length(headers) or 0) > 0 or "transfer-encoding" in headers


class BodyLimit:
    """Pure ASGI middleware: no request body over HTTP_MAX_BODY_BYTES reaches any route.

    A Content-Length over the limit is refused before a byte is read; a body
    without one (chunked) is counted as it streams and refused when it crosses
    the limit. An answer started before the body was read in full carries
    ``Connection: close``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = get_settings().http_max_body_bytes
        headers = Headers(scope=scope)
        declared = declared_length(headers)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, BodyTooLarge(limit))
            return
        received = 0
        body_done = not _has_body(headers)
        started = False

        async def counted_receive() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done and not any(name.lower() == b"connection" for name, _ in message.get("headers", [])):
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        except BodyTooLarge as exc:  # raised outside a route (a route's own is answered by FastAPI)
            if started:
                raise
            await _refuse(scope, receive, send, exc)


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: HTTPException) -> None:
    response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
    await response(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, read chunk by chunk; BodyTooLarge as soon as it passes ``limit`` bytes."""
    declared = declared_length(request.headers)
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


async def read_json(request: Request, model: type[Model]) -> Model:
    """The body, bounded by HTTP_MAX_BODY_BYTES, parsed as JSON and validated as ``model``.

    Errors as FastAPI gives them for a declared body (the published contract):
    422 for a body that is missing, not JSON or not the model (``loc`` starts
    with ``body``), 400 for one that is not UTF-8 text.
    """
    raw = await read_body(request, get_settings().http_max_body_bytes)
    # Parsing a few MB takes tens of ms: in the thread pool, not on the event loop.
    return await run_in_threadpool(parse_json, raw, request.headers.get("content-type"), model)


def parse_json(raw: bytes, content_type: str | None, model: type[Model]) -> Model:
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    if not _is_json(content_type):
        raise RequestValidationError([{"type": "value_error", "loc": ("header", "content-type"),
                                       "msg": "the body must be JSON (Content-Type: application/json)",
                                       "input": content_type}])  # fmt: skip
    try:
        document: Any = json.loads(raw)
    except UnicodeDecodeError:
        raise HTTPException(400, BODY_NOT_UTF8) from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None  # fmt: skip
    except ValueError as exc:  # what the parser refuses beyond syntax: an integer of more than 4,300 digits
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": str(exc), "input": {}}]
        ) from None
    except RecursionError:  # arrays or objects nested thousands deep: refused, not a 500
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "JSON nested too deeply",
                                       "input": {}}]) from None  # fmt: skip
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**error, "loc": ("body", *error["loc"]), "input": _echoed(error["input"])}
                for error in exc.errors(include_url=False)
            ]
        ) from None


def _echoed(value: Any) -> Any:
    """A refused value as the 422 shows it: scalars as they were; a list or object is not echoed
    (it may be the whole body, or nested deeper than the JSON encoder of the answer can go)."""
    if isinstance(value, str):  # a lone surrogate (JSON's \ud800) cannot be encoded in the answer: escaped
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if isinstance(value, int | float | bool | None) else None


def _is_json(content_type: str | None) -> bool:
    """application/json or application/*+json, parameters (charset) aside."""
    if not content_type:
        return False
    main, _, sub = content_type.split(";", 1)[0].strip().lower().partition("/")
    return main == "application" and (sub == JSON_SUBTYPE or sub.endswith("+" + JSON_SUBTYPE))
