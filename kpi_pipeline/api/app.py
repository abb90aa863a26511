"""The FastAPI application: ``create_app`` wires settings, database, auth and routes together.

``kpi-pipeline api`` serves it with uvicorn; tests build it with their own settings and engine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from kpi_pipeline import store
from kpi_pipeline.api import errors, routes
from kpi_pipeline.api.auth import ApiKeys, document_keys, require_key
from kpi_pipeline.api.middleware import REQUEST_ID_HEADER, RequestContext
from kpi_pipeline.api.series_cache import CONFIGURED_OFF, ScoreWriteWatcher
from kpi_pipeline.api.state import ApiState
from kpi_pipeline.config import Settings, get_settings
from kpi_pipeline.errors import first_line
from kpi_pipeline.api.realtime import ScoringCache
from kpi_pipeline.store import notifications, serving

logger = logging.getLogger("kpi_pipeline.api")

BODY_BYTES_PER_POINT = 400
"""Generous size of one JSON point; with the batch limit, bounds the accepted body size."""

BODY_BYTES_BASE = 1 << 20
"""Room for the rest of a body (KPI names, a source) beside its points."""

DESCRIPTION = """\
Latest scores, anomalies, ingestion and real-time scoring for kpi-pipeline.

Scores: higher = more anomalous, in [0, 1]; `score >= 0.5` is an anomaly. Timestamps are
ISO 8601; naive ones are UTC. Send an API key as `X-API-Key: <key>` or
`Authorization: Bearer <key>`: every POST needs one, and so does every GET under `/v1` when
keys are configured (unless `KPI_API_PUBLIC_READS=true`). Errors are JSON:
`{"error", "message", "request_id", "details"}`.
"""


def create_app(settings: Settings | None = None, engine: sa.Engine | None = None) -> FastAPI:
    """The API for ``settings`` (default: the environment) on ``engine`` (default: the
    configured database)."""
    settings = settings or get_settings()
    state = ApiState(
        settings=settings,
        engine=engine or store.make_engine(settings.resolved_database_url()),
        keys=ApiKeys(settings.api_keys),
        scorers=ScoringCache(settings.api_model_cache_size),
    )
    # FastAPIOffline is FastAPI with /docs and /redoc served from the Swagger UI and ReDoc files
    # that its package ships (under /static-offline-docs), not from a CDN: a self-hosted API's
    # documentation must work without the internet.
    app = FastAPIOffline(
        title="kpi-pipeline API",
        version="1",
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.api = state
    errors.install(app)
    keyed = [Depends(require_key)]
    reads_keyed = bool(state.keys) and not settings.api_public_reads
    app.include_router(routes.health)
    app.include_router(routes.reads, dependencies=keyed if reads_keyed else [])
    # FastAPI reads a body before it solves dependencies such as the key check, so that read is
    # bounded: a write's body is counted as it streams in, chunked or not, and refused (413)
    # once it passes the limit, before it is parsed. RequestContext answers a declared
    # Content-Length over the limit before routing.
    max_body_bytes = BODY_BYTES_BASE + BODY_BYTES_PER_POINT * settings.api_max_batch_points
    app.include_router(routes.writes, dependencies=keyed, max_body_size=max_body_bytes)
    keyed_routers = [routes.reads, routes.writes] if reads_keyed else [routes.writes]
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI's document (cached until a route is added), completed where it cannot see
        # what the routes do; editing it again is harmless.
        schema = generate()
        document_keys(schema, keyed_routers)
        return schema

    app.openapi = openapi

    origins = [origin.strip() for origin in settings.api_cors_origins.split(",") if origin.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER],
        )
    # Added last, so outermost: every response, CORS and errors included, gets a request ID.
    app.add_middleware(RequestContext, max_body_bytes=max_body_bytes)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ApiState = app.state.api
    # Like every CLI command, bring the schema up to date; an unreachable database is not
    # fatal: /health answers 503 and requests 503 until it is back.
    try:
        await run_in_threadpool(store.migrate, state.engine)
    except sa.exc.SQLAlchemyError as error:
        logger.warning("database not ready at startup: %s", first_line(error))
    if not state.keys:
        logger.warning("no API keys configured (KPI_API_KEYS): every POST will be refused")
    watchers = []
    listens = notifications.can_listen(state.engine)
    if state.series.enabled and not listens:
        logger.info(
            "%s %s+%s sends no score notifications (series are read from the database)",
            CONFIGURED_OFF,
            state.engine.dialect.name,
            state.engine.dialect.driver,
        )
    elif state.series.enabled:
        watchers.append(
            ScoreWriteWatcher(
                state.series,
                partial(notifications.ScoreWriteListener, state.engine),
                warm=partial(store.last_scored_ts, state.engine),  # every scored KPI, by name
                read=partial(serving.score_series, state.engine),
            )
        )
    if listens:
        # Real-time scoring checks its cached models and observations without the database
        # while this listener hears their writes (see realtime.ScoringCache).
        watchers.append(
            ScoreWriteWatcher(
                state.scorers,
                partial(
                    notifications.ScoreWriteListener,
                    state.engine,
                    notifications.INPUTS_CHANNEL,
                    notifications.INPUTS_LISTENER_NAME,
                ),
                name="real-time scoring cache",
                source="each scoring checks the database for new observations and models",
            )
        )
    for watcher in watchers:
        watcher.start()
    try:
        yield
    finally:
        for watcher in watchers:
            await run_in_threadpool(watcher.stop)
        state.engine.dispose()
