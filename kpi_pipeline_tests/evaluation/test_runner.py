"""evaluate over a NAB-layout corpus (kpi_pipeline/evaluation/runner.py), end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from kpi_pipeline.evaluation.runner import evaluate_nab

N_ROWS = 700
SPIKE_AT = 600


def write_corpus(root):
    """Two 5-minute series with a daily-ish wave; one has a huge spike inside its window."""
    rng = np.random.default_rng(3)
    ts = pd.date_range("2014-01-01", periods=N_ROWS, freq="5min")
    windows = {}
    for name, spike in (("withSpike/spiky.csv", True), ("noAnomaly/calm.csv", False)):
        value = 50 + 10 * np.sin(np.arange(N_ROWS) * 2 * np.pi / 288) + rng.normal(0, 1, N_ROWS)
        if spike:
            value[SPIKE_AT] += 60
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": value}).to_csv(path, index=False)
        fmt = "%Y-%m-%d %H:%M:%S.000000"
        windows[name] = [[ts[SPIKE_AT - 10].strftime(fmt), ts[SPIKE_AT + 10].strftime(fmt)]] if spike else []
    (root / "windows.json").write_text(json.dumps(windows))
    return root / "data", root / "windows.json"


def test_evaluate_nab_writes_one_row_per_input_and_scores_all_profiles(tmp_path):
    data, windows = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    lines = []

    summary = evaluate_nab(data, windows, out, workers=1, progress=lines.append)

    spiky = pd.read_csv(out / "withSpike" / "spiky.csv")
    source = pd.read_csv(data / "withSpike" / "spiky.csv")
    assert list(spiky.columns) == ["timestamp", "value", "anomaly_score", "is_anomaly", "alert"]
    assert len(spiky) == N_ROWS and (spiky["value"].round(6) == source["value"].round(6)).all()
    assert spiky["anomaly_score"].between(0, 1).all()
    # The score is the stored one: at least 0.5 exactly where the point is anomalous.
    assert ((spiky["anomaly_score"] >= 0.5) == (spiky["is_anomaly"] == 1)).all()
    # The spike is caught at its row and alerted once; an alert is the first row of an event.
    assert spiky.loc[SPIKE_AT, "is_anomaly"] == 1 and spiky["alert"].iloc[SPIKE_AT - 10 : SPIKE_AT + 11].sum() == 1
    assert (spiky["alert"] <= spiky["is_anomaly"]).all()

    assert set(summary["nab"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    assert summary["nab"]["standard"]["own_alerts"]["tp"] == 1
    assert summary["events"]["tp_events"] == 1 and summary["series"] == 2
    assert (out / "summary.md").read_text().startswith("# Evaluation")
    assert any(line.startswith("[2/2]") for line in lines)
