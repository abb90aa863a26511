"""Does per-KPI tuning help on the labelled folds? Tuned against default parameters, per KPI.

Each KPI is tuned on the first half of its series only (forecast error, no labels: what a
user without labels gets; with ``--labels``, event F1 on the first half's labels); then the
series is walked forward with the defaults and with the tuned parameters exactly as
``evaluate`` does, and incidents are counted on the second half only, so the tuning never saw a
point it is judged on. Usage (docs/tuning.md):

    nice -n 10 .venv/bin/python benchmarks/tuning_folds.py dataset/kpi_data.csv dataset/daily/kpi_data.csv \
        --budget-seconds 60 --trials 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from kpi_pipeline.detection.parameters import apply_parameters
from kpi_pipeline.detection.tuning import TuningSettings, tune
from kpi_pipeline.evaluation.backtest import stream_scores
from kpi_pipeline.detection.metrics import combine, event_metrics
from kpi_pipeline.evaluation.nab import load_corpus
from kpi_pipeline.evaluation.runner import LABELS_FILE, SeriesTask, dataset_tasks, nab_tasks, windows_of
from kpi_pipeline.tune import run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--category", action="append", help="NAB categories to run (default: all)")
    parser.add_argument(
        "--labels",
        action="store_true",
        help="tune on event F1 with the labels of the first half (what a KPI with analysts' feedback gets)",
    )
    args = parser.parse_args()
    settings = TuningSettings(budget_seconds=args.budget_seconds, max_trials=args.trials)
    config = run_config()
    print(
        f"| fold | KPI | tuned parameters | {'F1' if args.labels else 'MAE'} default -> tuned (1st half) "
        "| trials (pruned) | tuning s | F1 default | F1 tuned |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fold, tasks in _folds(args.datasets, args.category):
        default_events, tuned_events = [], []
        for task in tasks:
            half = len(task.values) // 2
            started = time.perf_counter()
            incidents = None
            if args.labels:
                incidents = np.zeros(half, dtype=bool)
                for first, last in task.windows:
                    incidents[first : min(last + 1, half)] = True
            result = tune(
                task.ts[:half], task.values[:half], config, gap=task.gap[:half], incidents=incidents, settings=settings
            )
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


def _folds(paths: list[Path], categories: list[str] | None) -> list[tuple[str, list[SeriesTask]]]:
    """Per fold its series: a NAB corpus directory gives one fold per category, a KPI file
    (its labels in ``kpi_labels.csv`` beside it) one fold."""
    folds = []
    for path in paths:
        if path.is_dir():
            tasks = nab_tasks(load_corpus(path, windows_of(path)))
            for category in sorted({task.name.split("/")[0] for task in tasks}):
                if categories is None or category in categories:
                    folds.append((category, [task for task in tasks if task.name.startswith(f"{category}/")]))
        else:
            fold = path.parent.name if path.name == "kpi_data.csv" and path.parent.name != "dataset" else "sample"
            folds.append((fold, dataset_tasks(path, path.parent / LABELS_FILE)))
    return folds


if __name__ == "__main__":
    main()
