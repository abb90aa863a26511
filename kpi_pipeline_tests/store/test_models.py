"""The model registry (kpi_pipeline/store/models.py), on Postgres and SQLite."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from kpi_pipeline.store import (
    load_latest_models,
    load_model_versions,
    prune_model_versions,
    save_model,
    table_counts,
)


def save(engine, kpi: str, kind: str, version: str, trained_at: str, **overrides) -> None:
    fields = {
        "trained_at": trained_at,
        "train_start": "2024-01-01T00:00:00+02:00",
        "train_end": pd.Timestamp("2024-03-01", tz="UTC"),
        "n_points": 60,
        "params": {"n_estimators": 100},
        "metrics": {"mae": 1.5},
        "artifact": f"{kpi}/{version}".encode(),
    }
    save_model(engine, kpi=kpi, kind=kind, version=version, **(fields | overrides))


def test_the_latest_models_artifacts_can_be_read_in_part(migrated_engine):
    save(migrated_engine, "sales", "ensemble", "v1", "2024-03-02T00:00:00Z", artifact=b"0123456789")
    save(migrated_engine, "orders", "ensemble", "v1", "2024-03-02T00:00:00Z", artifact=b"012")

    heads = load_latest_models(migrated_engine, "ensemble", artifact_head=4)

    assert {kpi: record.artifact for kpi, record in heads.items()} == {"sales": b"0123", "orders": b"012"}
    assert load_latest_models(migrated_engine, "ensemble")["sales"].artifact == b"0123456789"


def test_latest_model_per_kpi_is_the_most_recently_trained(migrated_engine):
    save(migrated_engine, "sales", "iforest", "v2", "2024-03-02T00:00:00Z")
    save(migrated_engine, "sales", "iforest", "v10", "2024-03-09T00:00:00Z")  # newest, not max(version)
    save(migrated_engine, "sales", "iforest", "v3", "2024-03-05T00:00:00Z")
    save(migrated_engine, "orders", "iforest", "v1", "2024-03-01T00:00:00Z")
    save(migrated_engine, "sales", "prophet", "v99", "2024-04-01T00:00:00Z")

    latest = load_latest_models(migrated_engine, "iforest")

    assert {kpi: record.version for kpi, record in latest.items()} == {"sales": "v10", "orders": "v1"}
    record = latest["sales"]
    assert record.artifact == b"sales/v10"
    assert record.trained_at == pd.Timestamp("2024-03-09", tz="UTC")
    assert str(record.train_start.tz) == "UTC"
    assert record.train_start == pd.Timestamp("2023-12-31 22:00", tz="UTC")
    assert record.train_end == pd.Timestamp("2024-03-01", tz="UTC")
    assert (record.n_points, record.params, record.metrics) == (60, {"n_estimators": 100}, {"mae": 1.5})
    assert list(load_latest_models(migrated_engine, "iforest", kpis=["orders"])) == ["orders"]
    assert load_latest_models(migrated_engine, "ensemble") == {}


def test_walk_forward_versions_are_ordered_by_training_cutoff(migrated_engine):
    # One run trains several versions: the latest cutoff wins even if it was trained first.
    save(migrated_engine, "sales", "ensemble", "late", "2024-05-01T00:00:00Z", train_end="2024-04-01T00:00:00Z")
    save(migrated_engine, "sales", "ensemble", "early", "2024-05-01T00:00:05Z", train_end="2024-02-01T00:00:00Z")
    save(migrated_engine, "sales", "prophet", "other-kind", "2024-05-02T00:00:00Z")

    assert load_latest_models(migrated_engine, "ensemble")["sales"].version == "late"
    versions = load_model_versions(migrated_engine, "sales", "ensemble")
    assert [v.version for v in versions] == ["early", "late"]
    assert versions[0].train_end == pd.Timestamp("2024-02-01", tz="UTC")
    assert load_model_versions(migrated_engine, "orders", "ensemble") == []


def test_model_versions_without_artifacts_carry_everything_else(migrated_engine):
    save(migrated_engine, "sales", "ensemble", "v1", "2024-05-01T00:00:00Z", train_end="2024-04-01T00:00:00Z")
    save(migrated_engine, "sales", "ensemble", "v2", "2024-05-02T00:00:00Z", train_end="2024-04-02T00:00:00Z")
    full = load_model_versions(migrated_engine, "sales", "ensemble")
    light = load_model_versions(migrated_engine, "sales", "ensemble", artifacts=False)
    assert all(record.artifact for record in full)
    assert all(record.artifact is None for record in light)
    assert light == [dataclasses.replace(record, artifact=None) for record in full]


def test_saving_the_same_version_again_replaces_it(migrated_engine):
    save(migrated_engine, "sales", "iforest", "v1", "2024-03-01T00:00:00Z", metrics={"mae": 1.0})
    save(migrated_engine, "sales", "iforest", "v1", "2024-03-02T00:00:00Z", metrics={"mae": 0.5})

    assert table_counts(migrated_engine)["kpi_models"] == 1
    record = load_latest_models(migrated_engine, "iforest")["sales"]
    assert record.metrics == {"mae": 0.5}
    assert record.trained_at == pd.Timestamp("2024-03-02", tz="UTC")


def test_params_and_metrics_with_numpy_values_and_nan_are_stored_as_plain_json(migrated_engine):
    save(
        migrated_engine,
        "sales",
        "prophet",
        "v1",
        "2024-03-01T00:00:00Z",
        params={"changepoints": np.array([1, 2]), "scale": np.float64(0.05)},
        metrics={"precision": float("nan"), "window_end": pd.Timestamp("2024-03-01", tz="UTC")},
        train_start=None,
        train_end=None,
        n_points=None,
        artifact=None,
    )

    record = load_latest_models(migrated_engine, "prophet")["sales"]

    assert record.params == {"changepoints": [1, 2], "scale": 0.05}
    assert record.metrics == {"precision": None, "window_end": "2024-03-01T00:00:00+00:00"}
    assert record.train_start is record.train_end is record.n_points is record.artifact is None


def _daily_versions(engine, kpi: str, days: int) -> None:
    """A version per day, every kind, trained on the data up to that day's midnight."""
    for day in range(1, days + 1):
        end = pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(days=day)
        for kind in ("prophet", "iforest", "ensemble"):
            save(engine, kpi, kind, f"{end:%Y%m%d}", "2024-06-01T00:00:00Z", train_end=end)


def _versions(engine, kpi: str) -> dict[str, list[str]]:
    return {
        kind: [m.version for m in load_model_versions(engine, kpi, kind, artifacts=False)]
        for kind in ("prophet", "iforest", "ensemble")
    }


def test_pruning_keeps_what_can_score_from_a_time_on_every_kind_together(migrated_engine):
    _daily_versions(migrated_engine, "sales", 10)  # 20240302 .. 20240311
    _daily_versions(migrated_engine, "orders", 10)

    # A point at 2024-03-07 12:00 is scored by the version of 03-07; later ones by later ones.
    pruned = prune_model_versions(migrated_engine, "sales", "2024-03-07T12:00:00Z")

    kept = ["20240307", "20240308", "20240309", "20240310", "20240311"]
    assert pruned == ["20240302", "20240303", "20240304", "20240305", "20240306"]
    assert _versions(migrated_engine, "sales") == dict.fromkeys(["prophet", "iforest", "ensemble"], kept)
    assert len(_versions(migrated_engine, "orders")["iforest"]) == 10  # other KPIs untouched
    assert prune_model_versions(migrated_engine, "sales", "2024-03-07T12:00:00Z") == []


def test_pruning_at_a_version_boundary_keeps_the_one_before_and_never_the_newest(migrated_engine):
    _daily_versions(migrated_engine, "sales", 5)  # 20240302 .. 20240306

    # A point exactly at a training end is scored by the version before it (strictly before).
    prune_model_versions(migrated_engine, "sales", "2024-03-04T00:00:00Z")
    assert _versions(migrated_engine, "sales")["ensemble"] == ["20240303", "20240304", "20240305", "20240306"]
    # However far ahead, the newest stays: it scores every new point.
    prune_model_versions(migrated_engine, "sales", "2030-01-01T00:00:00Z")
    assert _versions(migrated_engine, "sales")["ensemble"] == ["20240306"]
    assert prune_model_versions(migrated_engine, "nobody", "2030-01-01T00:00:00Z") == []
