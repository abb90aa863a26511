"""The tuning step on Postgres (kpi_pipeline/tune.py): tune, train and score with the parameters."""

import pandas as pd
import pytest

from kpi_pipeline import pipeline, store
from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline.detection.tuning import PROPHET_KEYS, TuningSettings
from kpi_pipeline.tune import tune_kpis
from kpi_pipeline_tests.defs.synthetic import hourly_kpis

TINY = TuningSettings(budget_seconds=600, max_trials=3)


@pytest.fixture
def engine(pg_url):
    engine = pipeline.open_store(pg_url)
    store.upsert_observations(engine, hourly_kpis(days=10), "test")
    yield engine
    engine.dispose()


def test_tuned_and_pinned_parameters_are_what_training_and_scoring_use(engine):
    store.pin_parameters(engine, "orders", {"iforest.n_estimators": 60})
    progress: list[str] = []

    [outcome] = tune_kpis(engine, DetectorConfig(), ["orders"], TINY, progress=progress.append)

    assert outcome.status == "tuned" and outcome.pinned == {"iforest.n_estimators": 60}
    assert set(outcome.result.params) == set(PROPHET_KEYS)
    assert any(line.startswith("[1/1] orders: trial 1: forecast_mae") for line in progress)
    chosen = {**outcome.result.params, "iforest.n_estimators": 60}
    assert store.load_parameters(engine) == {"orders": chosen}

    cleaned, _ = pipeline.load_cleaned(engine)
    trained = pipeline.train_models(engine, cleaned, DetectorConfig())
    scored = pipeline.score_latest(engine)

    assert {r.kpi: r.status for r in trained} == {"orders": "trained", "sessions": "trained"}
    assert all(r.scored > 0 for r in scored)
    versions = store.load_model_versions(engine, "orders", "ensemble")
    assert versions
    for model in versions:
        assert model.params["prophet"]["changepoint_prior_scale"] == chosen["prophet.changepoint_prior_scale"]
        assert model.params["prophet"]["seasonality_mode"] == chosen["prophet.seasonality_mode"]
        assert model.params["iforest"]["n_estimators"] == 60
        detector = pipeline.load_detector(engine, "orders", model.version)
        assert detector.iforest_.n_estimators == 60
        assert detector.config.prophet.seasonality_prior_scale == chosen["prophet.seasonality_prior_scale"]
    used = {model.version for model in versions}
    orders_scores = store.load_scores(engine, ["orders"])
    assert set(orders_scores["model_version"].dropna()) <= used and orders_scores["score"].notna().all()
    # A KPI without parameters trains with the run's configuration.
    for model in store.load_model_versions(engine, "sessions", "ensemble"):
        assert DetectorConfig.from_dict(model.params) == DetectorConfig()


def test_tuning_a_kpi_with_too_little_history_fails_alone(engine):
    store.upsert_observations(
        engine, pd.DataFrame({"kpi": "new", "ts": pd.date_range("2025-03-03", periods=20, freq="h"), "value": 1.0}), "t"
    )
    outcomes = {o.kpi: o for o in tune_kpis(engine, DetectorConfig(), ["new", "orders"], TINY)}
    assert outcomes["new"].status == "failed" and "too few" in outcomes["new"].detail
    assert outcomes["orders"].status == "tuned"
    assert set(store.load_parameters(engine)) == {"orders"}


def test_the_autoencoder_is_switched_on_for_one_kpi_by_a_pin(engine):
    """``params pin KPI autoencoder=true``: that KPI's models carry and score with the
    autoencoder component; the other KPI's do not."""
    store.pin_parameters(engine, "orders", {"autoencoder": True})
    cleaned, _ = pipeline.load_cleaned(engine)
    trained = pipeline.train_models(engine, cleaned, DetectorConfig())
    assert {r.kpi: r.status for r in trained} == {"orders": "trained", "sessions": "trained"}
    assert all(r.scored > 0 for r in pipeline.score_latest(engine))

    for kpi, on in (("orders", True), ("sessions", False)):
        versions = store.load_model_versions(engine, kpi, "ensemble")
        assert versions
        for model in versions:
            assert model.params["autoencoder"] is on
            detector = pipeline.load_detector(engine, kpi, model.version)
            assert hasattr(detector, "autoencoder_") is on
