"""Errors as JSON: one shape (``ErrorResponse``) for every 4xx and 5xx the API sends."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from kpi_pipeline.api.context import current_request_id
from kpi_pipeline.api.schemas import ErrorDetail, ErrorResponse
from kpi_pipeline.errors import first_line

logger = logging.getLogger("kpi_pipeline.api")

SHOWN_PROBLEMS = 5
"""Validation problems spelled out in ``message``; ``details`` lists all of them."""

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    503: "database_unavailable",
}


class ApiError(Exception):
    """An expected failure with its status, code and message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.headers = headers


class InvalidInput(ApiError):
    """A request that is well-formed JSON but asks for something impossible (422)."""

    def __init__(self, message: str, loc: Sequence[str | int]):
        super().__init__(422, f"{'.'.join(map(str, loc))}: {message}")
        self.details = [ErrorDetail(loc=list(loc), message=message, type="value_error")]


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=code or _CODES.get(status, "error"),
        message=message,
        request_id=current_request_id(),
        details=details,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _readable(problems: list[dict[str, Any]]) -> tuple[str, list[ErrorDetail]]:
    """Pydantic's problems as one line plus details, without echoing the input back."""
    details = [
        ErrorDetail(loc=list(problem["loc"]), message=problem["msg"], type=problem["type"]) for problem in problems
    ]
    shown = [f"{'.'.join(map(str, d.loc))}: {d.message}" for d in details[:SHOWN_PROBLEMS]]
    if len(details) > SHOWN_PROBLEMS:
        shown.append(f"... and {len(details) - SHOWN_PROBLEMS} more")
    return "; ".join(shown) or "invalid request", details


async def _on_validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    message, details = _readable(list(error.errors()))
    return error_response(422, message, details=details)


async def _on_api_error(_request: Request, error: ApiError) -> JSONResponse:
    details = getattr(error, "details", None)
    return error_response(error.status, error.message, error.code, details, error.headers)


async def _on_http_error(request: Request, error: HTTPException) -> JSONResponse:
    message = str(error.detail)
    limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
    if error.status_code == 413 and limit is not None:  # FastAPI's body limit
        message = f"request body larger than {limit} bytes"
    return error_response(error.status_code, message, headers=error.headers)


async def _on_database_error(_request: Request, error: Exception) -> JSONResponse:
    # The driver's message names hosts and ports: it goes to the log, not to the client.
    logger.warning("[%s] database unavailable: %s", current_request_id(), first_line(error))
    return error_response(503, "the database is unavailable; try again later")


def install(app: FastAPI) -> None:
    """Route every expected failure to ``ErrorResponse``; ``middleware.RequestContext`` turns the
    unexpected ones into a logged 500."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    # Connection failures and an exhausted pool are outages, not bugs.
    for error in (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError):
        app.add_exception_handler(error, _on_database_error)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        404: "Unknown KPI or point.",
        422: "Invalid input; ``message`` says what and where.",
        503: "The database is unavailable.",
    }.items()
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."}
}
