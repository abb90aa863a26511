"""The layer around the routes: each request's ID, access-log line, early 413 and
last-resort 500 (``RequestContext``, outermost)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kpi_pipeline.api.context import REQUEST_ID
from kpi_pipeline.api.errors import error_response

logger = logging.getLogger("kpi_pipeline.api")
access_log = logging.getLogger("kpi_pipeline.api.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestContext:
    """Gives each request an ID (the caller's ``X-Request-ID`` if it is a plain token, else a
    new one), echoes it in the response header, logs one line per request, refuses a body
    whose Content-Length exceeds ``max_body_bytes`` (413) before reading it, and turns an
    unhandled error into a logged 500 with the ``ErrorResponse`` body. (A body without a
    Content-Length, or longer than it said, is counted as it arrives by FastAPI's own limit on
    the routes that read one: see ``app.create_app``.)

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
                response = error_response(413, f"request body larger than {self.max_body_bytes} bytes")
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("[%s] unhandled error", request_id)
            if status is not None:
                raise  # the response has started: nothing else can be sent
            response = error_response(500, "internal error; quote the request ID when reporting it", "internal_error")
            await response(scope, receive, send_with_id)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            access_log.info(
                "[%s] %s %s %s %.1f ms",
                request_id,
                scope["method"],
                scope["path"],
                status,
                elapsed_ms,
            )
            REQUEST_ID.reset(token)


def _content_length(headers: Headers) -> int:
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0
