"""The layers around the routes: each request's ID, access-log line and last-resort 500
(``RequestContext``, outermost), and the operations served without FastAPI's routing
(``DirectRoutes``, innermost)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kpi_pipeline.api.context import REQUEST_ID
from kpi_pipeline.api.errors import error_response

logger = logging.getLogger("kpi_pipeline.api")
access_log = logging.getLogger("kpi_pipeline.api.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestContext:
    """Gives each request an ID (the caller's ``X-Request-ID`` if it is a plain token, else a
    new one), echoes it in the response header, logs one line per request, refuses bodies
    larger than ``max_body_bytes`` (413) before reading them, and turns an unhandled error
    into a logged 500 with the ``ErrorResponse`` body.

    Pure ASGI rather than ``BaseHTTPMiddleware``: it runs on every request, so it stays cheap.
    Access lines carry the path without the query string and never a header.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        offered = headers.get(REQUEST_ID_HEADER, "")
        request_id = offered if _SAFE_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            if _content_length(headers) > self.max_body_bytes:
                response = error_response(
                    413, f"request body larger than {self.max_body_bytes} bytes"
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("[%s] unhandled error", request_id)
            if status is not None:
                raise  # the response has started: nothing else can be sent
            response = error_response(
                500, "internal error; quote the request ID when reporting it", "internal_error"
            )
            await response(scope, receive, send_with_id)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            access_log.info(
                "[%s] %s %s %s %.1f ms",
                request_id, scope["method"], scope["path"], status, elapsed_ms,
            )
            REQUEST_ID.reset(token)


Check = Callable[[Request], Awaitable[None]]
"""Refuses a request by raising (``auth.require_key``)."""
Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoutes:
    """Serves a few operations, each ``(method, path)``, straight to their endpoints, ahead of
    FastAPI's routing and dependency solving: on ``POST /v1/score``, which business
    applications call in a loop, those cost more per request than scoring a point does.

    Each operation is its FastAPI route's endpoint (which takes only the request and returns a
    response) after the checks the route's router applies (its request-only dependencies), so
    the answers are the route's own; an error either raises is answered by the app's exception
    handlers, as FastAPI's exception middleware would answer it, and any other error goes on
    to ``RequestContext``'s 500. FastAPI keeps documenting the route and answers every other
    request (another method, a trailing slash) as before. Added innermost, so ``RequestContext``
    and CORS apply. (FastAPI's ``dependency_overrides`` do not reach these operations.)
    """

    def __init__(self, app: ASGIApp,
                 operations: Mapping[tuple[str, str], tuple[Sequence[Check], Endpoint]]) -> None:
        self.app = app
        self.operations = dict(operations)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            operation = self.operations.get((scope["method"], _route_path(scope)))
            if operation is not None:
                await self._serve(*operation, scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(checks: Sequence[Check], endpoint: Endpoint, scope: Scope,
                     receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            for check in checks:
                await check(request)
            response = await endpoint(request)
        except Exception as error:
            handler = _exception_handler(scope["app"].exception_handlers, error)
            if handler is None:
                raise
            if asyncio.iscoroutinefunction(handler):
                response = await handler(request, error)
            else:
                response = await run_in_threadpool(handler, request, error)
        await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path routes are matched against: without the ``root_path`` a proxy mounts the app
    under, as Starlette's router matches it."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


def _exception_handler(handlers: Mapping, error: Exception):
    """The handler Starlette's exception middleware would pick for ``error``: by status for an
    ``HTTPException``, else by the nearest class in its MRO; None if there is none. (A handler
    for 500 or ``Exception`` is the server-error middleware's, not that one's.)"""
    if isinstance(error, HTTPException) and error.status_code != 500:
        handler = handlers.get(error.status_code)
        if handler is not None:
            return handler
    for cls in type(error).__mro__:
        if cls is Exception:
            break
        if cls in handlers:
            return handlers[cls]
    return None


def _content_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0
