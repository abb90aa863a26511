"""Does per-KPI tuning help on the labelled folds? Tuned against default parameters, per KPI.

Each KPI is tuned (forecast error, no labels: what a user without labels gets) on the first
half of its series only; then the series is walked forward with the defaults and with the tuned
parameters exactly as ``evaluate`` does, and incidents are counted on the second half only, so
the tuning never saw a point it is judged on. Usage (docs/tuning.md):

    nice -n 10 .venv/bin/python benchmarks/tuning_folds.py dataset/kpi_data.csv dataset/daily/kpi_data.csv \
        --budget-seconds 60 --trials 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kpi_pipeline.detection.parameters import apply_parameters
from kpi_pipeline.detection.tuning import TuningSettings, tune
from kpi_pipeline.evaluation.backtest import stream_scores
from kpi_pipeline.evaluation.metrics import combine, event_metrics
from kpi_pipeline.evaluation.runner import LABELS_FILE, dataset_tasks
from kpi_pipeline.tune import run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    settings = TuningSettings(budget_seconds=args.budget_seconds, max_trials=args.trials)
    config = run_config()
    print(
        "| fold | KPI | tuned parameters | MAE default -> tuned (1st half) | trials (pruned) | tuning s "
        "| F1 default | F1 tuned |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for data in args.datasets:
        fold = data.parent.name if data.name == "kpi_data.csv" and data.parent.name != "dataset" else "sample"
        default_events, tuned_events = [], []
        for task in dataset_tasks(data, data.parent / LABELS_FILE):
            half = len(task.values) // 2
            started = time.perf_counter()
            result = tune(task.ts[:half], task.values[:half], config, gap=task.gap[:half], settings=settings)
            seconds = time.perf_counter() - started
            tuned_config = apply_parameters(config, result.params)
            row = []
            for chosen, events in ((config, default_events), (tuned_config, tuned_events)):
                scores = stream_scores(task.ts, task.values, config=chosen, gap=task.gap, kpi=task.name).scores
                metrics = event_metrics(scores["is_anomaly"].to_numpy(bool), task.windows, ignore_before=half)
                events.append(metrics)
                row.append(
                    f"{metrics.f1:.3f} ({metrics.tp_events}/{metrics.tp_events + metrics.fn_events}, "
                    f"{metrics.fp_events} FP)"
                )
            params = ", ".join(
                f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                for k, v in result.params.items()
            )
            print(
                f"| {fold} | {task.name} | {params} | {result.default_value:.4g} -> {result.value:.4g} | "
                f"{result.trials} ({result.pruned_trials}) | {seconds:.0f} | {row[0]} | {row[1]} |",
                flush=True,
            )
        d, t = combine(default_events), combine(tuned_events)
        print(
            f"| {fold} | **all** | | | | | **{d.f1:.3f}** (P {d.precision:.2f} R {d.recall:.2f}) "
            f"| **{t.f1:.3f}** (P {t.precision:.2f} R {t.recall:.2f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
