"""A seeded KPI database and API clients for the API tests.

``detector`` is one real ensemble (Prophet + Isolation Forest), fitted once per test module on
the first days of a synthetic hourly KPI. ``seeded`` is a fresh Postgres database per test
holding two KPIs: ``sales``, with that model registered and its later points scored by the
pipeline's own scoring step (three injected spikes among them), and ``orders``, observed but
never modelled. Seeding runs once per module into a template database; each test gets its own
copy (``CREATE DATABASE ... TEMPLATE``), which is much faster than seeding again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from kpi_pipeline import pipeline, store
from kpi_pipeline.api.app import create_app
from kpi_pipeline.config import Settings
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
from kpi_pipeline_tests.detection.synthetic import daily_sine

API_KEY = "test-key-one"
OTHER_KEY = "test-key-two"
HOURS = 24 * 14
TRAIN_HOURS = 24 * 10
SPIKE_HOURS = (TRAIN_HOURS + 20, TRAIN_HOURS + 50, TRAIN_HOURS + 80)
SPIKE_FACTOR = 3.0
VERSION = "v-test-1"


def sales_series() -> tuple[pd.DatetimeIndex, np.ndarray]:
    ts, values = daily_sine(HOURS, seed=7)
    values[list(SPIKE_HOURS)] *= SPIKE_FACTOR
    return ts, values


@pytest.fixture(scope="module")
def detector() -> EnsembleDetector:
    ts, values = sales_series()
    return EnsembleDetector(DetectorConfig()).fit(ts[:TRAIN_HOURS], values[:TRAIN_HOURS])


def register(engine: sa.Engine, kpi: str, detector: EnsembleDetector, version: str, train_end: pd.Timestamp) -> None:
    """Store ``detector`` as model ``version`` of ``kpi``, ensemble row last (as training does)."""
    for kind, artifact in detector.to_artifacts().items():
        store.save_model(
            engine,
            kpi=kpi,
            kind=kind,
            version=version,
            trained_at=pd.Timestamp.now("UTC"),
            train_start=detector.train_start_,
            train_end=train_end,
            n_points=detector.n_train_points_,
            params=detector.config.to_dict(),
            metrics=detector.metrics_,
            artifact=artifact,
        )


@dataclass(frozen=True)
class Seeded:
    url: str
    engine: sa.Engine
    ts: pd.DatetimeIndex
    """Timestamps of ``sales`` and ``orders``; points from ``TRAIN_HOURS`` on are scored."""
    values: np.ndarray
    """Values of ``sales``."""

    @property
    def spikes(self) -> list[pd.Timestamp]:
        return [self.ts[hour] for hour in SPIKE_HOURS]


@contextmanager
def scratch_database(admin: sa.Engine, template: str | None = None) -> Iterator[str]:
    """A new database (a copy of ``template`` if given), dropped afterwards; yields its URL."""
    name = f"kpi_test_{uuid.uuid4().hex[:8]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def seeded_template(pg_admin_engine: sa.Engine, detector: EnsembleDetector) -> Iterator[str]:
    """Name of a database seeded as described above; only ever copied, never used."""
    with scratch_database(pg_admin_engine) as url:
        engine = pipeline.open_store(url)
        ts, values = sales_series()
        _, orders = daily_sine(HOURS, seed=8)
        observations = pd.concat(
            [
                pd.DataFrame({"kpi": "sales", "ts": ts, "value": values}),
                pd.DataFrame({"kpi": "orders", "ts": ts, "value": orders * 3}),
            ]
        )
        store.upsert_observations(engine, observations, "test")
        register(engine, "sales", detector, VERSION, ts[TRAIN_HOURS - 1])
        cleaned, _ = pipeline.load_cleaned(engine)
        pipeline.score_new_points(engine, cleaned)
        engine.dispose()  # a template must have no open connections
        yield sa.make_url(url).database


@contextmanager
def seeded_copy(admin: sa.Engine, template: str) -> Iterator[Seeded]:
    with scratch_database(admin, template) as url:
        engine = store.make_engine(url)
        ts, values = sales_series()
        yield Seeded(url, engine, ts, values)
        engine.dispose()


@pytest.fixture
def seeded(pg_admin_engine: sa.Engine, seeded_template: str) -> Iterator[Seeded]:
    with seeded_copy(pg_admin_engine, seeded_template) as seeded:
        yield seeded


@pytest.fixture(scope="module")
def module_seeded(pg_admin_engine: sa.Engine, seeded_template: str) -> Iterator[Seeded]:
    """One seeded copy for a whole module: for tests whose writes cannot disturb each other."""
    with seeded_copy(pg_admin_engine, seeded_template) as seeded:
        yield seeded


def make_client(engine: sa.Engine, url: str = "unused", **settings) -> TestClient:
    """A client of an app on ``engine`` that sends ``API_KEY`` unless told otherwise."""
    options = {"api_keys": f"{API_KEY},{OTHER_KEY}"} | settings
    app = create_app(Settings(database_url=url, **options), engine=engine)
    return TestClient(app, headers={"X-API-Key": API_KEY})


@pytest.fixture
def client(seeded: Seeded) -> Iterator[TestClient]:
    with make_client(seeded.engine, seeded.url) as client:
        yield client
