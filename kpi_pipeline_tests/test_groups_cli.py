"""``kpi-pipeline groups``: its commands through typer's CliRunner on SQLite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import groups, pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline.config import get_settings
from kpi_pipeline.store import groups as group_store

TS = pd.date_range("2025-01-01", periods=400, freq="h", tz="UTC")


@pytest.fixture
def url(sqlite_url, monkeypatch, tmp_path):
    """A database with scores of orders, revenue (residuals correlated) and tickets."""
    rng = np.random.default_rng(0)
    common = rng.standard_normal(len(TS))
    engine = pipeline.open_store(sqlite_url)
    for kpi, shared in [("orders", 0.8), ("revenue", 0.8), ("tickets", 0.0)]:
        r = 0.05 * (np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.standard_normal(len(TS)))
        frame = pd.DataFrame({"kpi": kpi, "ts": TS, "value": 100 * np.exp(r)})
        store.upsert_observations(engine, frame, "test")
        store.upsert_scores(engine, frame.assign(expected=100.0, score=0.1, is_anomaly=False))
    engine.dispose()
    monkeypatch.delenv("KPI_GROUPS_FILE", raising=False)
    get_settings.cache_clear()
    yield sqlite_url
    get_settings.cache_clear()


def invoke(url: str, *args: str):
    return CliRunner().invoke(app, ["--database-url", url, "groups", *args])


def with_groups_file(monkeypatch, tmp_path, text: str) -> None:
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    monkeypatch.setenv("KPI_GROUPS_FILE", str(path))
    get_settings.cache_clear()


def test_suggest_prints_a_groups_file_of_the_correlated_kpis(url):
    result = invoke(url, "suggest", "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert groups.parse_groups(result.output) == [groups.KpiGroup("orders", ("orders", "revenue"))]


def test_list_without_a_groups_file_says_how_to_declare_one(url):
    result = invoke(url, "list")
    assert result.exit_code == 1
    assert "KPI_GROUPS_FILE" in result.output


def test_list_names_members_that_are_not_kpis(url, monkeypatch, tmp_path):
    with_groups_file(monkeypatch, tmp_path, "groups:\n  shop:\n    members: [orders, refunds]\n")
    result = invoke(url, "list")
    assert result.exit_code == 1
    assert "unknown KPIs: 'refunds' (group 'shop')" in result.output


def test_update_judges_a_declared_group_and_events_lists_what_it_found(url, monkeypatch, tmp_path):
    with_groups_file(monkeypatch, tmp_path, "groups:\n  shop:\n    members: [orders, revenue]\n")
    updated = invoke(url, "update")
    listed = invoke(url, "list")
    found = invoke(url, "events")
    assert updated.exit_code == 0, updated.output
    assert "group shop: judged" in updated.output
    assert "shop" in listed.output and "orders, revenue" in listed.output
    engine = store.make_engine(url)
    count = len(group_store.load_group_events(engine, "shop"))
    engine.dispose()
    assert f"{count} group events" in found.output
