"""Migration 0008: registries of pickled models are converted, once, to models stored as data."""

from __future__ import annotations

import copyreg
import io
import logging
import pickle

import pandas as pd
import pytest
import sklearn
from alembic import command
from prophet.serialize import model_to_json

from kpi_pipeline import store
from kpi_pipeline.detection.artifacts import MAGIC
from kpi_pipeline.detection.calibration import ExceedanceTail
from kpi_pipeline.detection.ensemble import DetectorConfig, EnsembleDetector
from kpi_pipeline.detection.iforest import IsolationForestDetector
from kpi_pipeline.detection.prophet_model import ProphetDetector
from kpi_pipeline.pipeline import load_detector
from kpi_pipeline.store.database import alembic_config, write_transaction
from kpi_pipeline_tests.detection.synthetic import daily_sine

TRAIN = 28 * 24  # enough history for the sustained component
CONFIG = DetectorConfig(scale_window=96)


class LegacyPickler(pickle.Pickler):
    """Pickles detectors as kpi-pipeline did before models were data (their ``__getstate__``),
    leaving out the attributes named in ``missing`` (class -> names) as older versions did."""

    def __init__(self, file, missing: dict[type, tuple[str, ...]] | None = None) -> None:
        super().__init__(file)
        self.missing = missing or {}

    def reducer_override(self, obj):
        if isinstance(obj, ProphetDetector):
            state = {**obj.get_params(), "model_": model_to_json(obj.model_)}
        elif isinstance(obj, IsolationForestDetector):
            state = {k: v for k, v in vars(obj).items() if k != "flat_"}
        elif isinstance(obj, ExceedanceTail):
            state = {k: v for k, v in vars(obj).items() if k != "_scalar"}
        elif isinstance(obj, EnsembleDetector):
            state = {k: v for k, v in vars(obj).items() if k not in ("prophet_", "iforest_")}
        else:
            return NotImplemented
        if isinstance(obj, sklearn.base.BaseEstimator):
            state["_sklearn_version"] = sklearn.__version__
        for name in self.missing.get(type(obj), ()):
            del state[name]
        return copyreg.__newobj__, (type(obj),), state


def legacy_artifacts(detector: EnsembleDetector, missing=None) -> dict[str, bytes]:
    def dumps(obj) -> bytes:
        buffer = io.BytesIO()
        LegacyPickler(buffer, missing).dump(obj)
        return buffer.getvalue()

    return {"prophet": dumps(detector.prophet_), "iforest": dumps(detector.iforest_), "ensemble": dumps(detector)}


@pytest.fixture(scope="module")
def series():
    return daily_sine(TRAIN + 5 * 24, seed=5)


@pytest.fixture(scope="module")
def fitted(series) -> list[EnsembleDetector]:
    ts, y = series
    return [EnsembleDetector(CONFIG).fit(ts[:end], y[:end]) for end in (TRAIN - 24, TRAIN)]


@pytest.fixture
def engine_at_0007(store_url):
    engine = store.make_engine(store_url)
    config = alembic_config()
    with write_transaction(engine) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
    yield engine
    engine.dispose()


def register(engine, kpi: str, detector: EnsembleDetector, artifacts: dict[str, bytes]) -> str:
    version = detector.train_end_.strftime("%Y%m%dT%H%M%SZ")
    store.save_models(
        engine,
        [
            dict(
                kpi=kpi,
                kind=kind,
                version=version,
                trained_at=detector.train_end_,
                train_start=detector.train_start_,
                train_end=detector.train_end_,
                n_points=detector.n_train_points_,
                params={},
                metrics={},
                artifact=artifact,
            )
            for kind, artifact in artifacts.items()
        ],
    )
    return version


def scores(detector: EnsembleDetector, series) -> pd.DataFrame:
    ts, y = series
    context = detector.context_points
    return detector.score(ts[TRAIN - context :], y[TRAIN - context :], n_context=context)


def test_pickled_models_are_converted_once_and_score_as_before(engine_at_0007, fitted, series):
    versions = [register(engine_at_0007, "sales", d, legacy_artifacts(d)) for d in fitted]
    modern = register(engine_at_0007, "orders", fitted[1], fitted[1].to_artifacts())

    assert store.migrate(engine_at_0007) == ["0008", "0009", "0010", "0011"]

    for version, detector in zip(versions, fitted):
        artifacts = store.model_artifacts(engine_at_0007, "sales", version)
        assert sorted(artifacts) == ["ensemble", "iforest", "prophet"]
        assert all(blob[: len(MAGIC)] == MAGIC for blob in artifacts.values())
        converted = load_detector(engine_at_0007, "sales", version)
        pd.testing.assert_frame_equal(scores(converted, series), scores(detector, series), check_exact=True)
    assert store.model_artifacts(engine_at_0007, "orders", modern) == fitted[1].to_artifacts()


def test_a_version_that_cannot_be_converted_is_deleted_with_a_warning(engine_at_0007, fitted, caplog):
    legacy = legacy_artifacts(fitted[1])
    kept = register(engine_at_0007, "sales", fitted[1], legacy)
    incomplete = register(engine_at_0007, "orders", fitted[1], {"ensemble": legacy["ensemble"]})
    broken = register(engine_at_0007, "visits", fitted[1], {**legacy, "iforest": b"\x80junk"})

    with caplog.at_level(logging.WARNING):
        store.migrate(engine_at_0007)

    assert store.model_artifacts(engine_at_0007, "orders", incomplete) == {}
    assert store.model_artifacts(engine_at_0007, "visits", broken) == {}
    assert len(store.model_artifacts(engine_at_0007, "sales", kept)) == 3
    assert "'orders'" in caplog.text and "'visits'" in caplog.text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_older_pickles_get_the_defaults_they_were_loaded_with(engine_at_0007, fitted):
    detector = fitted[1]
    missing = {
        EnsembleDetector: ("threshold_", "step_scale_"),
        ExceedanceTail: ("min_recurrences", "recurrence_margin", "episode_gap", "episode_peaks_", "trim_at"),
        IsolationForestDetector: ("min_recurrences", "recurrence_margin", "episode_gap", "trim_at"),
    }
    version = register(engine_at_0007, "sales", detector, legacy_artifacts(detector, missing))

    store.migrate(engine_at_0007)

    converted = load_detector(engine_at_0007, "sales", version)
    assert converted.threshold_ == CONFIG.threshold
    assert converted.step_scale_ == converted.residual_scale_
    for tail in (converted.deviation_tail_, converted.iforest_.calibration_):
        assert (tail.min_recurrences, tail.episode_peaks_, tail.trim_at) == (0, None, None)
    assert converted.iforest_.get_params()["min_recurrences"] == 0
