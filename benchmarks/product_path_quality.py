"""Detection quality measured where a user reads it: ``kpi-pipeline init``, ``ingest`` and
``run`` on a fresh embedded database, then the ``anomalies`` table against a labels file.

    python benchmarks/product_path_quality.py dataset/kpi_data.csv dataset/kpi_labels.csv
    python benchmarks/product_path_quality.py dataset/daily/kpi_data.csv \\
        dataset/daily/kpi_labels.csv --by-day

Events: a labelled window is caught when one of its points is stored as anomalous; a false
event is a run of anomalous points outside every window (``detection.metrics``), the first
15% of each series (its first model's training) left out as ``evaluate`` does. ``--by-day``
also counts days: a labelled day (any KPI) is caught when any KPI is anomalous on it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from kpi_pipeline import pipeline, store
from kpi_pipeline.cli import app
from kpi_pipeline.detection.metrics import combine, event_metrics, windows_from_labels
from kpi_pipeline.evaluation.nab import probation_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--by-day", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/kpi.db"
        started = time.perf_counter()
        for command in (["init"], ["ingest", str(args.data)], ["run"]):
            result = CliRunner().invoke(app, ["--database-url", url, *command])
            if result.exit_code:
                raise SystemExit(f"kpi-pipeline {command[0]} failed:\n{result.output}")
        seconds = time.perf_counter() - started
        engine = pipeline.open_store(url)
        cleaned, _ = pipeline.load_cleaned(engine)
        anomalies = store.load_anomalies(engine)
        engine.dispose()
    labels = pd.read_csv(args.labels)
    labels["start"] = pd.to_datetime(labels["start"], utc=True)
    labels["end"] = pd.to_datetime(labels["end"], utc=True)
    per_kpi = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        ts = pd.DatetimeIndex(rows["ts"])
        flags = ts.isin(anomalies.loc[anomalies["kpi"] == kpi, "ts"])
        windows = windows_from_labels(ts, labels[labels["kpi"] == kpi])
        per_kpi.append(event_metrics(flags, windows, probation_length(len(ts))))
    events = combine(per_kpi)
    print(f"kpi-pipeline init + ingest + run: {seconds:.0f} s")
    print(
        f"events from the anomalies table: caught {events.tp_events} of "
        f"{events.tp_events + events.fn_events}, recall {events.recall:.3f}, precision "
        f"{events.precision:.3f} ({events.fp_events} false events)"
    )
    if args.by_day:
        print(_by_day(cleaned, anomalies, labels))


def _by_day(cleaned: pd.DataFrame, anomalies: pd.DataFrame, labels: pd.DataFrame) -> str:
    days = pd.DatetimeIndex(cleaned["ts"]).normalize().unique().sort_values()
    first_judged = days[probation_length(len(days))]
    labelled = set()
    for row in labels.itertuples():
        labelled.update(pd.date_range(row.start.normalize(), row.end.normalize(), freq="D"))
    flagged = set(pd.DatetimeIndex(anomalies["ts"]).normalize())
    labelled = {d for d in labelled if d >= first_judged}
    flagged = {d for d in flagged if d >= first_judged}
    caught = len(labelled & flagged)
    recall = caught / len(labelled) if labelled else 1.0
    precision = caught / len(flagged) if flagged else float(not labelled)
    return (
        f"days: {caught} of {len(labelled)} anomalous days flagged, day recall {recall:.3f}, "
        f"day precision {precision:.3f} ({len(flagged) - caught} normal days flagged)"
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
