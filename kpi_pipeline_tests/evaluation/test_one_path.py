"""``kpi-pipeline run`` stores exactly what ``kpi-pipeline evaluate`` measures: one product path."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline_tests.defs.synthetic import START, hourly_kpis, to_wide_csv

DAYS = 30
# Two incidents in the history: the first model scores the early one, and the walk-forward
# must then leave it out of the training of every later version (the product did not).
SPIKES = (START + pd.Timedelta(hours=200), START + pd.Timedelta(hours=500))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_path")
    observations = hourly_kpis(days=DAYS)
    is_spike = observations["ts"].isin(SPIKES) & (observations["kpi"] == "orders")
    observations.loc[is_spike, "value"] *= 5.0
    (folder / "kpis.csv").write_text(to_wide_csv(observations))
    pd.DataFrame(
        {
            "kpi": "orders",
            "start": [t.isoformat() for t in SPIKES],
            "end": [t.isoformat() for t in SPIKES],
            "kind": "spike",
        }
    ).to_csv(folder / "labels.csv", index=False)
    return folder


def test_run_stores_the_scores_and_flags_that_evaluate_reports(dataset, sqlite_url):
    runner = CliRunner()
    for command in (["init"], ["ingest", str(dataset / "kpis.csv")], ["run"]):
        result = runner.invoke(app, ["--database-url", sqlite_url, *command])
        assert result.exit_code == 0, result.output
    out = dataset / "evaluation"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(dataset / "kpis.csv"),
            "--labels",
            str(dataset / "labels.csv"),
            "--out",
            str(out),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output

    engine = pipeline.open_store(sqlite_url)
    try:
        stored = store.load_scores(engine)
    finally:
        engine.dispose()
    for kpi in ("orders", "sessions"):
        evaluated = pd.read_csv(out / f"{kpi}.csv")
        ours = stored[stored["kpi"] == kpi].reset_index(drop=True)
        # evaluate reports every point; the store holds the points a model scored.
        scored = evaluated.tail(len(ours)).reset_index(drop=True)
        assert len(ours) > 0.8 * len(evaluated)
        assert (evaluated["anomaly_score"].head(len(evaluated) - len(ours)) == 0).all()
        np.testing.assert_allclose(ours["score"], scored["anomaly_score"], rtol=0, atol=1e-9)
        assert (ours["is_anomaly"].astype(bool) == scored["is_anomaly"].astype(bool)).all()
    orders = stored[stored["kpi"] == "orders"].set_index("ts")
    assert orders.loc[list(SPIKES), "is_anomaly"].all()
