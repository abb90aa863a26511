"""The endpoints. Each one checks its input, calls ``store`` / ``pipeline``, and shapes the
answer; the database and the detector run in worker threads so the event loop only parses and
serialises, and scores points of a KPI the scoring cache trusts (well under a millisecond)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
from functools import partial
from typing import Annotated, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from kpi_pipeline.api import realtime
from kpi_pipeline import pipeline, status, store
from kpi_pipeline.api.context import current_request_id
from kpi_pipeline.api.errors import AUTH_RESPONSES, ERROR_RESPONSES, ApiError, InvalidInput
from kpi_pipeline.errors import first_line
from kpi_pipeline.api.schemas import (
    LATEST_SCORE_JSON,
    SCORE_RESPONSE_JSON,
    SCORE_SERIES_JSON,
    AnomalyPage,
    EventKind,
    ErrorResponse,
    FeedbackIn,
    FeedbackOut,
    Health,
    HealthUnavailable,
    IngestCounts,
    IngestResponse,
    KpiList,
    KpiName,
    KpiThreshold,
    LatestScores,
    Liveness,
    ObservationBatch,
    OutageList,
    ScoreRequest,
    ScoreResponse,
    ScoreSeries,
    Severity,
    Timestamp,
    checked_timestamp,
    epoch_micros,
    plain_text,
)
from kpi_pipeline.api.series_cache import CachedSeries
from kpi_pipeline.api.snapshot import latest_scores_json
from kpi_pipeline.api.state import FRESHNESS_TTL_S, ApiState, get_state
from kpi_pipeline.ingestion import PlausibleTimes, validate_records
from kpi_pipeline.store import serving

logger = logging.getLogger("kpi_pipeline.api")

HEALTH_TIMEOUT_S = 3.0
"""A database that does not answer within this long is reported unreachable."""

MAX_KPIS_PER_QUERY = 1000
MAX_SERIES_POINTS = 10_000
DEFAULT_SERIES_POINTS = 1000
MAX_ANOMALIES_PER_PAGE = 1000
DEFAULT_ANOMALIES_PER_PAGE = 100

State = Annotated[ApiState, Depends(get_state)]
KpiFilter = Annotated[
    list[KpiName] | None,
    Query(max_length=MAX_KPIS_PER_QUERY, description="Only these KPIs; repeat for several."),
]
KpiPath = Annotated[KpiName, Path()]

health = APIRouter(tags=["health"])
reads = APIRouter(prefix="/v1", tags=["read"], responses={**AUTH_RESPONSES, **ERROR_RESPONSES})
writes = APIRouter(
    prefix="/v1",
    tags=["write"],
    responses={
        **AUTH_RESPONSES,
        **ERROR_RESPONSES,
        400: {"model": ErrorResponse, "description": "The body is not UTF-8 text."},
        413: {"model": ErrorResponse, "description": "Request body too large."},
    },
)


# -- health ---------------------------------------------------------------------------------


@health.get("/health/live", summary="Liveness: the process answers (no database access)")
async def live() -> Liveness:
    return Liveness()


@health.get(
    "/health",
    summary="Readiness: database status and how fresh the scores are",
    description="The database is reached on every call; the freshness of the scores is "
    f"re-read at most every {FRESHNESS_TTL_S:.0f} seconds.",
    responses={503: {"model": HealthUnavailable, "description": "Database unreachable."}},
)
async def readiness(api: State) -> Health:
    try:
        freshness = await asyncio.wait_for(api.db(api.freshness, api.engine), HEALTH_TIMEOUT_S)
    except TimeoutError:
        return _unavailable(f"the database did not answer within {HEALTH_TIMEOUT_S:g} s")
    except (sa.exc.SQLAlchemyError, OSError) as error:
        # The driver's message names hosts and ports: it goes to the log only.
        return _unavailable("the database is unreachable", first_line(error))
    scored_at = freshness.latest_scored_at
    age = None if scored_at is None else (dt.datetime.now(dt.timezone.utc) - scored_at)
    return Health(
        scored_kpis=freshness.kpis,
        latest_score_ts=freshness.latest_ts,
        latest_scored_at=scored_at,
        latest_score_age_seconds=None if age is None else age.total_seconds(),
    )


def _unavailable(message: str, cause: str = "") -> JSONResponse:
    logger.warning("[%s] health: %s%s", current_request_id(), message, f" ({cause})" * bool(cause))
    body = HealthUnavailable(message=message)
    return JSONResponse(body.model_dump(mode="json"), status_code=503)


# -- reads ----------------------------------------------------------------------------------


@reads.get("/kpis", summary="Every KPI with its latest value, score and model")
async def list_kpis(api: State) -> KpiList:
    rows = await api.db(serving.kpi_overview, api.engine)
    return KpiList.model_validate({"kpis": [_kpi_summary(row) for row in rows]})


def _kpi_summary(row: dict[str, Any]) -> dict[str, Any]:
    scored = row["score_ts"] is not None
    return {
        "kpi": row["kpi"],
        "latest_observation": (
            {"timestamp": row["observed_ts"], "value": row["observed_value"]}
            if row["observed_ts"] is not None
            else None
        ),
        "latest_score": (
            {
                "timestamp": row["score_ts"],
                "value": row["score_value"],
                **{name: row[name] for name in ("expected", "lower", "upper", "score", "is_anomaly", "severity")},
            }
            if scored
            else None
        ),
        "is_anomalous": bool(scored and row["is_anomaly"]),
        "model": (
            {name: row[name] for name in ("trained_at", "train_end")} | {"version": row["model_version"]}
            if row["model_version"] is not None
            else None
        ),
    }


@reads.get(
    "/scores/latest",
    summary="The latest scored point of each KPI",
    description="Served from each worker's in-memory snapshot of every KPI's latest score, "
    "never older than `KPI_API_LATEST_MAX_AGE` seconds (default 1).",
    response_model=LatestScores,
)
async def latest_scores(api: State, kpi: KpiFilter = None) -> Response:
    if api.latest.enabled:
        snapshot = await api.latest.get(partial(serving.latest_scores, api.engine))
        scores = snapshot.of(kpi)
    else:
        rows = await api.db(serving.latest_scores, api.engine, kpi)
        scores = {row["kpi"]: LATEST_SCORE_JSON(row) for row in rows}
    missing = sorted(set(kpi or ()) - scores.keys())
    return _json(latest_scores_json(scores.values(), missing))


def _json(body: bytes) -> Response:
    """An answer serialised by the endpoint (the endpoint's ``response_model`` documents it)."""
    return Response(body, media_type="application/json")


# ``{kpi:path}``: a KPI name may hold a ``/`` (sent as ``%2F`` or as it is), which the server
# decodes before routing; only the last segments are fixed.
@reads.get("/kpis/{kpi:path}/scores", summary="A KPI's scored series", response_model=ScoreSeries)
async def score_series(
    api: State,
    kpi: KpiPath,
    start: Annotated[Timestamp | None, Query(description="From this time (inclusive).")] = None,
    end: Annotated[Timestamp | None, Query(description="Up to this time (inclusive).")] = None,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_SERIES_POINTS, description="At most this many points: the newest."),
    ] = DEFAULT_SERIES_POINTS,
) -> Response:
    _check_window(start, end, "start", "end", api.settings.api_max_range_days)
    cached = await _cached_series(api, kpi)
    body = None if cached is None else cached.answer(start, end, limit)
    if body is not None:
        empty = not cached.size
    else:
        rows, truncated = await api.db(serving.score_series, api.engine, kpi, start, end, limit)
        body = SCORE_SERIES_JSON({"kpi": kpi, "points": rows, "truncated": truncated})
        empty = not rows
    if empty:
        await _require_kpi(api, kpi)  # no scores at all: an unknown KPI is a 404
    return _json(body)


@reads.get("/kpis/{kpi:path}/threshold", summary="A KPI's anomaly threshold, with what feedback raised it by")
async def kpi_threshold(api: State, kpi: KpiPath) -> KpiThreshold:
    """Analysts' false positives raise their KPI's threshold within a cap, fading with age
    (docs/adaptive-thresholds.md); `kpi-pipeline thresholds reset` undoes it."""
    found = (await api.db(pipeline.kpi_thresholds, api.engine, [kpi])).get(kpi)
    if found is None:
        await _require_kpi(api, kpi)
        raise ApiError(404, f"no model of {kpi!r} yet: it has no threshold")
    return KpiThreshold(
        kpi=kpi,
        base=found.base,
        raised_by=found.raised_by,
        threshold=found.effective,
        cap=found.cap,
        false_positives=found.false_positives,
        as_of=found.as_of,
        reset_at=found.reset_at,
    )


async def _cached_series(api: ApiState, kpi: str) -> CachedSeries | None:
    """``kpi``'s newest points from the worker's cache, loaded on a miss; None while the cache
    is off (see ``series_cache``)."""
    if not api.series.live:
        return None
    cached = api.series.get(kpi)
    if cached is None:
        cached = await api.db(api.series.load, kpi, partial(serving.score_series, api.engine))
    return cached


@reads.get("/anomalies", summary="Anomalous points, newest first, page by page")
async def anomalies(
    api: State,
    kpi: KpiFilter = None,
    since: Annotated[Timestamp | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[Timestamp | None, Query(description="Up to this time (inclusive).")] = None,
    min_severity: Annotated[Severity | None, Query(description="At least this severe.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ANOMALIES_PER_PAGE)] = DEFAULT_ANOMALIES_PER_PAGE,
    cursor: Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page.")] = None,
    kind: Annotated[
        EventKind | None, Query(description="Only anomalies, or only outages (a KPI that stopped reporting).")
    ] = None,
) -> AnomalyPage:
    _check_window(since, until, "since", "until", api.settings.api_max_range_days)
    after = _decode_cursor(cursor) if cursor is not None else None
    rows, next_key = await api.db(
        lambda: serving.anomaly_page(
            api.engine,
            kpis=kpi,
            since=since,
            until=until,
            min_severity=min_severity,
            limit=limit,
            after=after,
            kind=kind,
        )
    )
    next_cursor = _encode_cursor(next_key) if next_key is not None else None
    return AnomalyPage.model_validate({"anomalies": rows, "next_cursor": next_cursor})


@reads.get("/outages", summary="Stretches of missing data, ongoing ones included, newest first")
async def outages(
    api: State,
    kpi: KpiFilter = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ANOMALIES_PER_PAGE)] = DEFAULT_ANOMALIES_PER_PAGE,
) -> OutageList:
    """Each stretch of missing data longer than cleaning fills (a KPI that stopped reporting):
    first and last missing slot and missing points. A KPI whose newest point is
    ``KPI_OUTAGE_AFTER_INTERVALS`` (default 4) of its intervals old is an ongoing outage
    (``end`` null, counted up to now). Counted apart from anomalies; an outage's first missing
    slot is also in ``/v1/anomalies?kind=outage`` once data returns and it is scored."""
    found = await api.db(status.outages, api.engine, kpi)
    shown = found.head(limit)
    rows = shown.astype(object).where(shown.notna(), None).to_dict("records")
    return OutageList.model_validate({"outages": rows, "truncated": len(found) > limit})


def _check_window(start: dt.datetime | None, end: dt.datetime | None, first: str, last: str, max_days: int) -> None:
    if start is None or end is None:
        return
    if end < start:
        raise InvalidInput(f"{last} ({end.isoformat()}) is before {first} ({start.isoformat()})", ["query", last])
    if end - start > dt.timedelta(days=max_days):
        raise InvalidInput(
            f"the window {first}..{last} spans {(end - start).days} days, more than the "
            f"maximum of {max_days}; ask for a shorter window",
            ["query", last],
        )


def _encode_cursor(key: tuple[dt.datetime, str]) -> str:
    """The position after which the next page starts, as opaque URL-safe text."""
    ts, kpi = key
    payload = json.dumps([ts.isoformat(), kpi], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        payload = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts_text, kpi = json.loads(payload)
        if not isinstance(ts_text, str) or not isinstance(kpi, str):
            raise ValueError("cursor fields have the wrong types")
        return checked_timestamp(dt.datetime.fromisoformat(ts_text)), plain_text(kpi)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "not a cursor this API issued: pass next_cursor from the previous page",
            ["query", "cursor"],
        ) from None


async def _require_kpi(api: ApiState, kpi: str) -> None:
    if not await api.db(serving.kpi_exists, api.engine, kpi):
        raise ApiError(404, f"unknown KPI {kpi!r}")


# -- writes ---------------------------------------------------------------------------------


@writes.post("/observations", summary="Ingest a batch of observations")
async def ingest(api: State, batch: ObservationBatch) -> IngestResponse:
    """Rows are validated like the rows of a CSV file given to ``kpi-pipeline ingest``: a row
    with a bad timestamp, value or KPI name is rejected with a reason (and stored in
    ``rejected_observations``) while the good rows land; the new-data sensor picks them up."""
    _check_batch(len(batch.observations), api.settings.api_max_batch_points, "observations")
    records = [row.model_dump() for row in batch.observations]
    result, counts = await api.db(_validate_and_store, api, records, batch.source)
    rejected_rows = {rejection.line for rejection in result.rejections}
    return IngestResponse(
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        accepted=len(records) - len(rejected_rows),
        rejected=len(result.rejections),
        accepted_rows=[row for row in range(1, len(records) + 1) if row not in rejected_rows],
        rejections=[
            {"row": rejection.line, "reason": rejection.reason, "raw": rejection.raw} for rejection in result.rejections
        ],
    )


def _validate_and_store(api: ApiState, records: list[dict], source: str):
    result = validate_records(records, times=PlausibleTimes.from_settings(api.settings))
    return result, pipeline.store_ingested(api.engine, result, source)


@writes.post(
    "/score",
    response_model=ScoreResponse,
    summary="Score points in real time with the KPI's newest model",
    responses={409: {"model": ErrorResponse, "description": "No trained model for the KPI yet."}},
)
async def score(http: Request, request: ScoreRequest) -> Response:
    """Points are judged exactly as the pipeline would judge them next, after the KPI's stored
    observations; they are not stored unless ``persist`` is true."""
    # The state comes from the request rather than from the State dependency: on the endpoint
    # business applications call in a loop, one dependency fewer to solve per request.
    api: ApiState = http.app.state.api
    limit = api.settings.api_max_batch_points
    _check_batch(len(request.points), limit, "points")
    stamps, ns, values = _points_arrays(request)
    try:
        # Points after the newest observation of a KPI whose model and observations the cache
        # knows to be current are scored right here, in well under a millisecond of CPU;
        # anything else reads the database, in a worker thread.
        points = None
        result = api.scorers.score_current(request.kpi, ns, values, stamps, limit)
        if result is None:
            points = _points_frame(stamps, values)
            result = await api.scoring(realtime.score_points, api.engine, request.kpi, points, limit, api.scorers)
    except realtime.UnknownKpi as error:
        raise ApiError(404, str(error)) from None
    except realtime.NoModel as error:
        raise ApiError(409, str(error), code="no_model") from None
    except realtime.PointsTooSpread as error:
        raise InvalidInput(str(error), ["body", "points"]) from None
    persisted = None
    if request.persist:
        observations = (_points_frame(stamps, values) if points is None else points).assign(kpi=request.kpi)
        counts = await api.db(store.upsert_observations, api.engine, observations, "api")
        persisted = IngestCounts(inserted=counts.inserted, updated=counts.updated, unchanged=counts.unchanged)
    return _json(
        SCORE_RESPONSE_JSON(
            {
                "kpi": result.kpi,
                "model_version": result.model_version,
                "points": result.records(),
                "persisted": persisted,
            }
        )
    )


def _points_frame(stamps: list[dt.datetime], values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.DatetimeIndex(stamps).as_unit("us"), "value": values})


def _points_arrays(request: ScoreRequest) -> tuple[list[dt.datetime], np.ndarray, np.ndarray]:
    """The points in time order: their timestamps (aware), as nanoseconds since the epoch,
    and their values; a repeated timestamp is refused."""
    points = request.points
    micros = [epoch_micros(point.timestamp) for point in points]
    order = sorted(range(len(points)), key=micros.__getitem__)
    for before, after in zip(order, order[1:]):
        if micros[before] == micros[after]:
            raise InvalidInput(
                f"duplicate timestamp {points[after].timestamp.isoformat()}",
                ["body", "points", max(before, after), "timestamp"],
            )
    ns = np.array([micros[i] for i in order], dtype=np.int64) * 1000
    values = np.array([points[i].value for i in order], dtype=float)
    return [points[i].timestamp for i in order], ns, values


def _check_batch(size: int, limit: int, field: str) -> None:
    if size > limit:
        raise InvalidInput(f"{size} items, more than the limit of {limit} per request", ["body", field])


@writes.post(
    "/anomalies/{kpi:path}/{ts}/feedback",
    summary="Mark an anomaly as a true or false positive",
    responses={409: {"model": ErrorResponse, "description": "The point was scored but not flagged."}},
)
async def feedback(api: State, kpi: KpiPath, ts: Timestamp, body: FeedbackIn) -> FeedbackOut:
    """Later training skips points confirmed as incidents and keeps points marked as false
    alarms. Only a flagged point (an anomaly) takes feedback. ``ts`` is ISO 8601 (encode ``+``
    as ``%2B``); a ``/`` in the KPI name may be sent as it is or as ``%2F``."""
    scored = await api.db(store.load_scores, api.engine, [kpi], ts, ts)
    if scored.empty:
        raise ApiError(404, f"no scored point of {kpi!r} at {ts.isoformat()}")
    point = scored.iloc[0]
    if not point["is_anomaly"]:
        score = "" if pd.isna(point["score"]) else f" (score {point['score']:.2f})"
        raise ApiError(
            409,
            f"the point of {kpi!r} at {ts.isoformat()} is not an anomaly{score}: feedback labels flagged points only",
            code="not_an_anomaly",
        )
    await api.db(store.set_feedback, api.engine, kpi, ts, body.label, body.note)
    return FeedbackOut(kpi=kpi, timestamp=ts, label=body.label, note=body.note)
