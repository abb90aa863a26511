"""The request being served: its ID, for log lines and error bodies."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("kpi_api_request_id", default=None)
"""Set by ``middleware.RequestContext`` for the duration of each request; worker threads
that serve the request (``run_in_threadpool``) inherit it."""


def current_request_id() -> str | None:
    return REQUEST_ID.get()
