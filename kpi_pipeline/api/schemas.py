"""Request and response bodies of the API: the JSON contract, validated by pydantic.

Requests refuse unknown fields. Timestamps are ISO 8601; naive ones are UTC and every
timestamp in a response is UTC. Score direction: higher ``score`` = more anomalous, in [0, 1];
``score >= 0.5`` is an anomaly.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    computed_field,
)
from typing_extensions import TypedDict

from kpi_pipeline.store import FEEDBACK_LABELS, SEVERITIES

UTC = dt.timezone.utc
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=UTC)

Severity = Literal[SEVERITIES]
FeedbackLabel = Literal[FEEDBACK_LABELS]
EventKind = Literal["anomaly", "outage"]
"""An anomaly, or an outage: the first missing slot of a stretch of missing data."""


_ISO_DATE = re.compile(r"\s*\d{4}-\d{2}-\d{2}")


def _iso_8601(value: object) -> object:
    # Pydantic would also read numbers (and numeric text, as every query value is text) as
    # Unix times: "until=0.5" is far more likely a mistake than a time in January 1970.
    if isinstance(value, dt.datetime) or (isinstance(value, str) and _ISO_DATE.match(value)):
        return value
    raise ValueError("expected an ISO 8601 time such as 2025-01-01T00:00:00Z")


def checked_timestamp(value: dt.datetime) -> dt.datetime:
    """``value`` as aware UTC (naive = UTC), refused outside the supported years."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"timestamp must be between {EARLIEST.year} and {LATEST.year}")
    return value


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def epoch_micros(ts: dt.datetime) -> int:
    """An aware ``datetime`` as microseconds since the epoch (exact)."""
    return (ts - _EPOCH) // _MICROSECOND


Timestamp = Annotated[dt.datetime, BeforeValidator(_iso_8601), AfterValidator(checked_timestamp)]
"""An ISO 8601 time as aware UTC; naive input is UTC."""


def plain_text(value: str) -> str:
    """``value`` if the database can store it: Unicode text (no lone surrogates), no NUL."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[StrictStr, AfterValidator(plain_text)]
KpiName = Annotated[Text, Field(min_length=1, max_length=200)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is, e.g. body.points.0.value.")
    message: str
    type: str


class ErrorResponse(BaseModel):
    """Every error response (4xx, 5xx) has this shape."""

    error: str = Field(description="Machine-readable code, e.g. unauthorized, validation_error.")
    message: str = Field(description="What went wrong, for a human.")
    request_id: str | None = Field(None, description="Also in the X-Request-ID header and logs.")
    details: list[ErrorDetail] | None = None


# -- health ---------------------------------------------------------------------------------


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    database: Literal["ok"] = "ok"
    scored_kpis: int = Field(description="KPIs with at least one score.")
    latest_score_ts: dt.datetime | None = Field(description="Newest scored point.")
    latest_scored_at: dt.datetime | None = Field(description="When the newest scores were written.")
    latest_score_age_seconds: float | None = Field(description="Seconds since latest_scored_at.")


class HealthUnavailable(BaseModel):
    status: Literal["unavailable"] = "unavailable"
    database: Literal["unreachable"] = "unreachable"
    message: str


# -- scores ---------------------------------------------------------------------------------


class ScoredPoint(BaseModel):
    """A scored point: the value, what was expected, the band and how anomalous it is."""

    timestamp: dt.datetime = Field(validation_alias="ts")
    value: float | None = Field(description="Null for a missing-data gap scored as an anomaly.")
    expected: float | None
    lower: float | None
    upper: float | None
    score: float | None = Field(description="0..1, higher = more anomalous; >= 0.5 is an anomaly.")
    is_anomaly: bool
    severity: Severity | None
    flagged_by: str | None = Field(description="Components that flagged it, comma-separated.")
    model_version: str | None


class LatestScore(ScoredPoint):
    kpi: str
    scored_at: dt.datetime


def row_schema(model: type[BaseModel], **fields: Any) -> type:
    """A serialisation-only twin of ``model``, derived from it: a TypedDict of its fields keyed
    as the ``store.serving`` rows they are read from (``validation_alias``, else the name) and
    written under their names, with ``fields`` replacing annotations (nested rows). Hot
    endpoints serialise rows with it, as ``model`` would, without building the model."""
    annotations = {}
    for name, field in model.model_fields.items():
        key = field.validation_alias if isinstance(field.validation_alias, str) else name
        annotation = fields.get(name, field.annotation)
        annotations[key] = Annotated[annotation, Field(serialization_alias=name)]
    return TypedDict(f"{model.__name__}Row", annotations)


class RowSerializer:
    """JSON of rows shaped by ``row_schema``: UTC times with Z, NaN and infinity as null."""

    def __init__(self, schema: type) -> None:
        self._adapter = TypeAdapter(schema)

    def __call__(self, content: object) -> bytes:
        return self._adapter.dump_json(content, by_alias=True)


class LatestScores(BaseModel):
    scores: list[LatestScore]
    missing: list[str] = Field(description="Requested KPIs that have no score.")


class ScoreSeries(BaseModel):
    kpi: str
    points: list[ScoredPoint] = Field(description="Oldest first.")
    truncated: bool = Field(description="Older points of the window were left out (limit).")


LATEST_SCORE_JSON = RowSerializer(row_schema(LatestScore))
"""One ``serving.latest_scores`` row as a ``LatestScore`` object."""
MISSING_JSON = RowSerializer(list[str])
TEXT_JSON = RowSerializer(str)
SCORED_POINT_JSON = RowSerializer(row_schema(ScoredPoint))
"""One ``serving.score_series`` row as a ``ScoredPoint`` object, as in ``SCORE_SERIES_JSON``."""
SCORE_SERIES_JSON = RowSerializer(row_schema(ScoreSeries, points=list[row_schema(ScoredPoint)]))
"""``{"kpi", "points": serving.score_series rows, "truncated"}`` as a ``ScoreSeries``."""


class Anomaly(ScoredPoint):
    kpi: str
    prophet_score: float | None
    iforest_score: float | None
    event_id: str | None
    scored_at: dt.datetime
    feedback: FeedbackLabel | None
    feedback_note: str | None
    feedback_at: dt.datetime | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def kind(self) -> EventKind:
        """``outage`` for the first missing slot of a stretch of missing data (flagged ``gap``:
        the KPI stopped reporting; its value is null), else ``anomaly``."""
        return "outage" if self.flagged_by == "gap" else "anomaly"


class AnomalyPage(BaseModel):
    anomalies: list[Anomaly] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")


class Outage(BaseModel):
    """A stretch of missing data longer than cleaning fills: the KPI stopped reporting."""

    kpi: str
    start: dt.datetime = Field(description="First missing slot.")
    end: dt.datetime | None = Field(description="Last missing slot; null while the outage goes on.")
    missing_points: int = Field(description="Missing slots (so far, while it goes on).")
    ongoing: bool = Field(description="No point has arrived since ``start``.")


class OutageList(BaseModel):
    outages: list[Outage] = Field(description="Newest first.")
    truncated: bool = Field(description="Older outages were left out (limit).")


# -- KPIs -----------------------------------------------------------------------------------


class Observation(BaseModel):
    timestamp: dt.datetime
    value: float


class ScoreSummary(BaseModel):
    timestamp: dt.datetime
    value: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    score: float | None
    is_anomaly: bool
    severity: Severity | None


class ModelSummary(BaseModel):
    version: str
    trained_at: dt.datetime
    train_end: dt.datetime | None = Field(description="End of the training window.")


class KpiSummary(BaseModel):
    kpi: str
    latest_observation: Observation | None
    latest_score: ScoreSummary | None
    is_anomalous: bool = Field(description="Whether the latest scored point is an anomaly.")
    model: ModelSummary | None = Field(description="The newest trained model.")


class KpiList(BaseModel):
    kpis: list[KpiSummary]


# -- ingestion ------------------------------------------------------------------------------


class ObservationIn(Request):
    """One raw point. Content is checked like a CSV row (see the ingest command): a bad
    timestamp or value rejects the row, not the batch."""

    kpi: Text = Field(max_length=1000)
    timestamp: Text = Field(max_length=100, examples=["2025-01-01T00:00:00Z"])
    value: StrictFloat | StrictInt | Annotated[Text, Field(max_length=100)] | None


class ObservationBatch(Request):
    observations: list[ObservationIn] = Field(min_length=1)
    source: Text = Field("api", min_length=1, max_length=200)


class RejectedRow(BaseModel):
    row: int = Field(description="1-based position in the request.")
    reason: str
    raw: dict[str, str]


class IngestCounts(BaseModel):
    inserted: int
    updated: int = Field(description="Points whose stored value changed.")
    unchanged: int


class IngestResponse(IngestCounts):
    accepted: int = Field(description="Rows accepted (exact duplicates count once per row).")
    rejected: int
    accepted_rows: list[int] = Field(description="1-based positions of the accepted rows.")
    rejections: list[RejectedRow]


# -- real-time scoring ----------------------------------------------------------------------


class PointIn(Request):
    timestamp: Timestamp
    value: float = Field(strict=True, allow_inf_nan=False, description="A finite JSON number.")


class ScoreRequest(Request):
    kpi: KpiName
    points: list[PointIn] = Field(min_length=1)
    persist: bool = Field(False, description="Also store the points as observations.")


class RealtimePoint(BaseModel):
    timestamp: dt.datetime = Field(validation_alias="ts")
    value: float
    expected: float | None
    lower: float | None
    upper: float | None
    score: float | None
    is_anomaly: bool
    severity: Severity | None
    flagged_by: str | None


class ScoreResponse(BaseModel):
    kpi: str
    model_version: str
    points: list[RealtimePoint]
    persisted: IngestCounts | None = Field(None, description="Set when persist was true.")


SCORE_RESPONSE_JSON = RowSerializer(row_schema(ScoreResponse, points=list[row_schema(RealtimePoint)]))
"""``{"kpi", "model_version", "points": realtime.RealtimeScores.records(), "persisted"}`` as a
``ScoreResponse``."""


class KpiThreshold(BaseModel):
    """A KPI's anomaly threshold, in surprise units (-log10 of the tail probability; a point is
    an anomaly, score 0.5, at the threshold), as its next points are judged."""

    kpi: str
    base: float = Field(description="The newest model's threshold.")
    raised_by: float = Field(
        description="What analysts' false positives add (at the newest scored point), between 0 and `cap`."
    )
    threshold: float = Field(description="`base + raised_by`: what new points are judged against.")
    cap: float = Field(description="The most false positives can add.")
    false_positives: int = Field(description="False-positive events counted since the last reset.")
    as_of: dt.datetime | None = Field(description="The newest scored point.")
    reset_at: dt.datetime | None = Field(description="When the raise was last reset (`kpi-pipeline thresholds reset`).")


# -- feedback -------------------------------------------------------------------------------


class FeedbackIn(Request):
    label: FeedbackLabel
    note: Text | None = Field(None, max_length=2000)


class FeedbackOut(BaseModel):
    kpi: str
    timestamp: dt.datetime
    label: FeedbackLabel
    note: str | None
