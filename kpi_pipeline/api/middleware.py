"""The layers around the routes: each request's ID, access-log line and last-resort 500
(``RequestContext``, outermost), and the operations served without FastAPI's routing
(``DirectRoutes``, innermost)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.exceptions import ExceptionMiddleware
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
    the answers are the route's own: errors go through Starlette's ``ExceptionMiddleware`` with
    the app's exception handlers, as they do on the route, and any other error on to
    ``RequestContext``'s 500. FastAPI keeps documenting the route and answers every other
    request (another method, a trailing slash) as before. Added innermost, so ``RequestContext``
    and CORS apply. What FastAPI's routing would add does not happen for these operations:
    ``dependency_overrides`` do not reach them, and FastAPI's OpenTelemetry spans (when a
    tracer provider is configured) do not name their route.
    """

    def __init__(self, app: ASGIApp,
                 operations: Mapping[tuple[str, str], tuple[Sequence[Check], Endpoint]]) -> None:
        self.app = app
        self.operations = dict(operations)
        self._served: dict[tuple[str, str], ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Built on the first call (the lifespan's, when there is one) with the handlers the
        # app has then, as Starlette builds its own stack.
        served = self._served or self._serve(scope["app"])
        if scope["type"] == "http":
            operation = (scope["method"], get_route_path(scope))  # as the router reads it
            if operation in served:
                await served[operation](scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _serve(self, app: Starlette) -> dict[tuple[str, str], ASGIApp]:
        # Those for 500 and Exception are the server-error middleware's.
        handlers = {key: handler for key, handler in app.exception_handlers.items()
                    if key not in (500, Exception)}
        self._served = {
            operation: ExceptionMiddleware(partial(_run, checks, endpoint), handlers,
                                           debug=app.debug)
            for operation, (checks, endpoint) in self.operations.items()
        }
        return self._served


async def _run(checks: Sequence[Check], endpoint: Endpoint, scope: Scope, receive: Receive,
               send: Send) -> None:
    request = Request(scope, receive, send)
    for check in checks:
        await check(request)
    response = await endpoint(request)
    await response(scope, receive, send)


def _content_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0
