"""API keys: who may call the API.

Keys come from configuration (``KPI_API_KEYS``, comma-separated) and are sent as an
``X-API-Key`` header or as ``Authorization: Bearer <key>``. Every POST needs one; GETs need one
when keys are configured, unless ``KPI_API_PUBLIC_READS`` is set. Keys never reach a log line
or an error message.
"""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from kpi_pipeline.api.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="One of the keys in KPI_API_KEYS."
)
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <one of KPI_API_KEYS>")


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


async def require_key(
    request: Request,
    api_key: str | None = Security(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """Refuse the request (401) unless it carries an accepted key."""
    keys: ApiKeys = request.app.state.api.keys
    if not keys:
        raise ApiError(
            401,
            "this server has no API keys configured (KPI_API_KEYS), so it accepts no writes",
            headers=_CHALLENGE,
        )
    presented = api_key or (bearer.credentials if bearer is not None else None)
    if not presented:
        raise ApiError(
            401,
            "missing API key: send it as the X-API-Key header or as Authorization: Bearer <key>",
            headers=_CHALLENGE,
        )
    if not keys.accepts(presented):
        raise ApiError(401, "invalid API key", headers=_CHALLENGE)
