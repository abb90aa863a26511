"""One settings object for the whole product, read once from the environment.

Every tunable that a user may want to change lives here with its default; everything else
receives a ``Settings`` instance (or the value it needs) instead of reading the environment.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# The embedded default database lives beside the checkout so a new user needs no server.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SQLITE_PATH = PROJECT_ROOT / ".kpi" / "kpi.db"


EXECUTORS = ("multiprocess", "in_process", "celery")
"""The values of ``KPI_EXECUTOR``."""


class Settings(BaseSettings):
    """Environment-driven configuration (prefix ``KPI_``)."""

    model_config = SettingsConfigDict(env_prefix="KPI_", extra="ignore")

    database_url: str | None = None
    """SQLAlchemy URL. Unset: an embedded SQLite file at ``.kpi/kpi.db``."""

    holiday_country: str = "US"
    """Country code for the ``holidays`` package (holiday features and Prophet holidays)."""

    # -- ingestion (``kpi-pipeline ingest``, ``POST /v1/observations``) ----------------------------
    # A timestamp outside these bounds is a typo or a placeholder (0001-01-01, 9999-12-31); a
    # KPI carrying one would make cleaning span centuries. Such rows are rejected with a reason.
    ingest_earliest_year: PositiveInt = 1900
    """Timestamps before 1 January of this year (UTC) are rejected."""

    ingest_latest_year: PositiveInt = 2199
    """Timestamps after 31 December of this year (UTC) are rejected."""

    ingest_max_ahead: dt.timedelta = dt.timedelta(days=7)
    """Timestamps further than this ahead of the moment of ingestion are rejected; forecasts and
    plans are not observations. An ISO 8601 duration (``P7D``, ``PT12H``) or ``HH:MM:SS``."""

    groups_file: str = ""
    """Path of the YAML file declaring KPI groups judged jointly (docs/multivariate.md); empty:
    no groups, every KPI judged alone."""

    # -- retention --------------------------------------------------------------------------
    model_rescore_days: NonNegativeFloat = 7.0
    """Re-scoring horizon of the model registry, in days before each KPI's newest scored point:
    training keeps the versions that can score a point within it (and the newest), and
    deletes the rest, so a KPI retrained daily keeps about this many + 1 (docs/models.md)."""

    observation_retention_days: PositiveFloat | None = None
    """``retention_job`` deletes observations older than this many days; unset: kept forever.
    Never deleted: the points a KPI's registered models were trained on (so at least the
    training windows within ``model_rescore_days``) and those of its newest anomaly event."""

    score_retention_days: PositiveFloat | None = None
    """``retention_job`` deletes scores older than this many days, with the same exceptions;
    unset: kept forever."""

    retention_cron: str = "45 3 * * *"
    """When ``daily_retention_schedule`` runs ``retention_job``; it starts stopped unless a
    retention above is set."""

    # -- automation: schedules and sensors (``dagster dev`` runs them) ---------------------------
    scoring_cron: str = "5 * * * *"
    """When ``hourly_scoring_schedule`` scores new points (cron, in ``schedule_timezone``)."""

    training_cron: str = "30 2 * * *"
    """When ``daily_training_schedule`` retrains the models of every KPI."""

    schedule_timezone: str = "UTC"

    new_data_sensor_interval: PositiveInt = 30
    """Seconds between two polls of ``kpi_observations`` by ``new_kpi_data_sensor``."""

    alert_sensor_interval: PositiveInt = 30
    """Seconds between two runs of ``anomaly_check_sensor`` (which also retries pending alerts)."""

    automation_off: str = ""
    """Schedules and sensors that start stopped: comma-separated names, or ``all``."""

    # -- execution: training shards and Dagster's executor -------------------------------------
    training_shards: PositiveInt = 8
    """KPI shards of the ``kpi_models`` asset's partitions (``shard-00`` ..): a KPI belongs to
    shard ``crc32(name) mod training_shards``, so it stays in its shard whatever other KPIs
    come and go. Each shard trains in its own run, in parallel with the others. About one shard
    per 100-1,000 KPIs; changing it re-assigns KPIs (their models are kept)."""

    executor: str = "multiprocess"
    """Dagster executor of every job: ``multiprocess`` (steps in parallel processes),
    ``in_process``, or ``celery`` (steps on ``dagster-celery`` workers; ``celery_broker``)."""

    celery_broker: str = "pyamqp://guest:guest@127.0.0.1:5672//"
    """Celery broker URL of the ``celery`` executor (RabbitMQ; Redis works too)."""

    celery_backend: str = "rpc://"
    """Celery result backend of the ``celery`` executor."""

    celery_queue: str = "dagster"
    """Celery queue the ``celery`` executor sends steps to; workers listen with ``-q``. Give
    each deployment sharing a broker its own."""

    # -- alert channels: a channel without its settings is off ------------------------------------
    smtp_host: str = ""
    smtp_port: PositiveInt = 587
    smtp_user: str = ""
    """Login user; empty: no login."""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = True
    alert_email_from: str = ""
    alert_email_to: str = ""
    """Default email recipients, comma-separated."""

    slack_token: SecretStr = SecretStr("")
    """Bot token (``xoxb-...``) with the ``chat:write`` scope."""
    slack_channel: str = ""
    """Default Slack channel (name or id)."""
    slack_base_url: str = "https://slack.com/api/"

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_from: str = ""
    """Sending number (E.164) or messaging service id."""
    alert_sms_to: str = ""
    """Default SMS recipients (E.164), comma-separated."""
    twilio_base_url: str = "https://api.twilio.com"

    # -- alert policy --------------------------------------------------------------------------
    alert_routes: str = ""
    """Path of the routing YAML file; empty: high and critical anomalies to every channel."""

    alert_cooldown_minutes: int = 360
    """No repeat alert for a KPI (per recipient) within this window unless severity rises."""

    alert_digest_threshold: PositiveInt = 5
    """A check evaluation with more anomalies than this for a recipient sends one digest."""

    alert_max_age_hours: float = 72.0
    """Anomalies older than this when they are first seen are recorded but not sent."""

    alert_on_history: bool = False
    """Also alert anomalies from the first scoring of a KPI's history and from backfills."""

    outage_after_intervals: int = Field(default=4, ge=4)
    """A KPI whose newest point is this many of its intervals old has stopped reporting: an
    ongoing outage (``kpi-pipeline outages``, ``GET /v1/outages``), alerted as soon as the anomaly
    check sees it. At least 4: a stretch of missing data longer than cleaning fills (3 slots),
    so it is the outage its scores record when data returns, and one alert covers both. Raise it
    for KPIs that arrive in late batches."""

    alert_timezone: str = "UTC"
    """Time zone in which alerts show times (UTC is always shown too)."""

    alert_dagster_url: str = "http://127.0.0.1:3000"
    """Base URL of the Dagster UI, for links in alerts."""

    alert_api_url: str = "http://127.0.0.1:8000"
    """Base URL of the API sidecar, for links in alerts."""

    # -- API sidecar (``kpi-pipeline api``) ---------------------------------------------------
    api_keys: SecretStr = SecretStr("")
    """Accepted API keys, comma-separated. Every POST needs one (``X-API-Key`` header or
    ``Authorization: Bearer``); with none configured, POSTs are refused and GETs are open."""

    api_public_reads: bool = False
    """Serve GETs without a key even when keys are configured (POSTs always need one)."""

    api_host: str = "127.0.0.1"
    api_port: PositiveInt = 8000
    api_workers: PositiveInt = 1
    """Uvicorn worker processes; one per CPU core serves the most requests."""

    api_cors_origins: str = ""
    """Browser origins allowed to call the API, comma-separated (``*`` for any); empty: no CORS."""

    api_max_batch_points: PositiveInt = 10_000
    """Most points one POST (observations or scoring) may carry."""

    api_max_range_days: PositiveInt = 366
    """Widest ``start``..``end`` window a query may ask for."""

    api_model_cache_size: PositiveInt = 64
    """Fitted detectors each API worker keeps in memory, keyed by (KPI, model version), each
    with its KPI's cleaned newest observations."""

    api_latest_max_age: NonNegativeFloat = 1.0
    """Seconds: ``GET /v1/scores/latest`` answers from each worker's in-memory snapshot of every
    KPI's latest score, never older than this (counted from when its read started); 0: read
    the database on every request."""

    api_series_cache_points: NonNegativeInt = 720
    """Newest scored points of each KPI that each API worker keeps in memory for
    ``GET /v1/kpis/{kpi}/scores`` (720: 30 days hourly); requests those points answer are
    served from memory, others read the database. Kept current by Postgres notifications of
    every score write; off on SQLite. 0: read the database on every request."""

    api_series_cache_mb: NonNegativeFloat = 256.0
    """Most memory (MiB) each API worker spends on that cache; the least recently read KPIs
    are dropped first. A KPI's 720 points take about 0.2 MiB."""

    # -- dashboard (``kpi-pipeline dashboard``) -----------------------------------------------
    dashboard_cache_seconds: PositiveInt = 30
    """How long the dashboard reuses a query result before reading the database again."""

    backtest_dir: Path = PROJECT_ROOT / "out"
    """Where the dashboard looks for ``kpi-pipeline evaluate --out`` results: every directory
    below it holding a ``summary.json`` is a backtest run, and ``<run>/<kpi>.csv`` its scores."""

    @model_validator(mode="after")
    def _ingest_years_in_order(self) -> Settings:
        if self.ingest_earliest_year > self.ingest_latest_year:
            raise ValueError(
                f"KPI_INGEST_EARLIEST_YEAR ({self.ingest_earliest_year}) is after "
                f"KPI_INGEST_LATEST_YEAR ({self.ingest_latest_year})"
            )
        return self

    @model_validator(mode="after")
    def _known_executor(self) -> Settings:
        if self.executor not in EXECUTORS:
            raise ValueError(f"KPI_EXECUTOR is {self.executor!r}; known: {', '.join(EXECUTORS)}")
        return self

    def model_rescore_horizon(self) -> dt.timedelta:
        """``model_rescore_days`` as a duration."""
        return dt.timedelta(days=self.model_rescore_days)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        DEFAULT_SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{DEFAULT_SQLITE_PATH}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
