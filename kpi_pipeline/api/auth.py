"""API keys: who may call the API.

Keys come from configuration (``KPI_API_KEYS``, comma-separated) and are sent as an
``X-API-Key`` header or as ``Authorization: Bearer <key>``. Every POST needs one; GETs need one
when keys are configured, unless ``KPI_API_PUBLIC_READS`` is set. Keys never reach a log line
or an error message.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr

from kpi_pipeline.api.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}

# The two ways to send a key, as OpenAPI documents them (see ``document_keys``).
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of the keys in KPI_API_KEYS.")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <one of KPI_API_KEYS>")
_SCHEMES = (_api_key_header, _bearer)


class ApiKeys:
    """The accepted keys. ``repr`` shows how many there are, never what they are."""

    def __init__(self, keys: SecretStr) -> None:
        names = (key.strip() for key in keys.get_secret_value().split(","))
        self._keys = tuple(key.encode() for key in names if key)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} configured)"

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys, in time that does not depend on how much
        of which key it matches: every key is compared, in constant time, without stopping."""
        candidate = presented.encode()
        matches = [hmac.compare_digest(candidate, key) for key in self._keys]
        return any(matches)


async def require_key(request: Request) -> None:
    """Refuse the request (401) unless it carries an accepted key, as an ``X-API-Key`` header
    or as ``Authorization: Bearer <key>``.

    One dependency that reads both headers itself, rather than one per header
    (``Security(APIKeyHeader)``, ``Security(HTTPBearer)``): FastAPI solves every dependency of
    every request, and those two cost more than the check itself. ``document_keys`` puts the
    two schemes in the OpenAPI document, as FastAPI would have.
    """
    keys: ApiKeys = request.app.state.api.keys
    if not keys:
        raise ApiError(
            401,
            "this server has no API keys configured (KPI_API_KEYS), so it accepts no writes",
            headers=_CHALLENGE,
        )
    headers = request.headers
    presented = headers.get("x-api-key")
    if not presented:  # as HTTPBearer(auto_error=False) reads the header
        scheme, credentials = get_authorization_scheme_param(headers.get("authorization"))
        presented = credentials if scheme.lower() == "bearer" else None
    if not presented:
        raise ApiError(
            401,
            "missing API key: send it as the X-API-Key header or as Authorization: Bearer <key>",
            headers=_CHALLENGE,
        )
    if not keys.accepts(presented):
        raise ApiError(401, "invalid API key", headers=_CHALLENGE)


def document_keys(schema: dict[str, Any], keyed: list[APIRouter]) -> None:
    """Complete an OpenAPI document (in place): list the key schemes and require one of them on
    every operation of the ``keyed`` routers (those included with ``require_key``). FastAPI
    documents only the schemes of ``Security`` dependencies (see ``require_key``)."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    for scheme in _SCHEMES:
        schemes[scheme.scheme_name] = jsonable_encoder(scheme.model, by_alias=True, exclude_none=True)
    for router in keyed:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                for method in route.methods:
                    operation = schema["paths"][route.path_format][method.lower()]
                    operation["security"] = [{scheme.scheme_name: []} for scheme in _SCHEMES]
