"""``kpi-pipeline evaluate``: run the production detector over a labelled corpus and score it.

Two inputs are understood: a NAB-layout corpus (``data/<category>/<file>.csv`` + ``windows.json``)
and the sample dataset (a wide KPI CSV + a labels CSV). Series are processed in parallel, one
process per core; per-series CSVs and a summary (JSON and Markdown) are written to ``out``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kpi_pipeline.detection.ensemble import DetectorConfig
from kpi_pipeline.detection.preprocess import clean_observations
from kpi_pipeline.evaluation.backtest import simulated_analyst, stream_scores
from kpi_pipeline.evaluation.folds import FoldScore, FoldSeries, score_fold, write_fold_report
from kpi_pipeline.detection.metrics import EventMetrics, combine, event_metrics, windows_from_labels
from kpi_pipeline.errors import describe_error
from kpi_pipeline.evaluation.nab import PROFILES, NabFile, best_threshold, load_corpus, probation_length, score_corpus
from kpi_pipeline.ingestion import read_observations_csv

Progress = Callable[[str], None]


@dataclass
class SeriesTask:
    name: str
    """Relative output path without extension, e.g. ``realTweets/Twitter_volume_AAPL``."""
    ts: pd.DatetimeIndex
    values: np.ndarray
    gap: np.ndarray
    windows: list[tuple[int, int]]


@dataclass
class SeriesResult:
    name: str
    score: np.ndarray
    """Each point's anomaly score, as the pipeline stores it in ``anomaly_scores``."""
    is_anomaly: np.ndarray
    alert: np.ndarray
    seconds: float
    retrains: int
    false_positive_labels: int = 0
    """With simulated feedback: the events marked false positive."""
    error: str = ""
    """Why the series could not be backtested; it then counts as never alerting."""


def _run_series(
    task: SeriesTask, config: DetectorConfig, out_dir: Path, simulate_feedback: bool = False
) -> SeriesResult:
    started = time.perf_counter()
    # The schedule the pipeline gives a new KPI's history (on NAB's files, whose first model
    # learns on NAB's probation: 15% of the file, at most 750 points).
    review = simulated_analyst(task.windows) if simulate_feedback else None
    result = stream_scores(task.ts, task.values, config=config, gap=task.gap, kpi=task.name, review=review)
    scores = result.scores
    path = out_dir / f"{task.name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": task.ts.strftime("%Y-%m-%d %H:%M:%S"),
            "value": task.values,
            "anomaly_score": scores["score"].to_numpy(),  # unrounded: the stored score
            "is_anomaly": scores["is_anomaly"].astype(int).to_numpy(),
            "alert": scores["alert"].astype(int).to_numpy(),
        }
    ).to_csv(path, index=False)
    return SeriesResult(
        name=task.name,
        score=scores["score"].to_numpy(dtype=float),
        is_anomaly=scores["is_anomaly"].to_numpy(dtype=bool),
        alert=scores["alert"].to_numpy(dtype=bool),
        seconds=time.perf_counter() - started,
        retrains=result.retrains,
        false_positive_labels=sum(label == "false_positive" for _, label in result.labels),
    )


def _run_all(
    tasks: list[SeriesTask],
    config: DetectorConfig,
    out_dir: Path,
    workers: int,
    progress: Progress,
    simulate_feedback: bool = False,
) -> dict[str, SeriesResult]:
    results: dict[str, SeriesResult] = {}
    # Longest series first keeps both cores busy until the end.
    ordered = sorted(tasks, key=lambda t: -len(t.values))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_run_series, t, config, out_dir, simulate_feedback): t for t in ordered}
        for done, future in enumerate(as_completed(futures), start=1):
            task = futures[future]
            try:
                result = future.result()
            except Exception as error:  # noqa: BLE001 - one series must not stop the others
                result = _failed(task, describe_error(error))
                progress(f"[{done}/{len(tasks)}] {task.name}: FAILED ({result.error}); counted as never alerting")
            else:
                progress(
                    f"[{done}/{len(tasks)}] {task.name}: {len(task.values):,} points, "
                    f"{result.retrains} retrains, {int(result.alert.sum())} alerts, "
                    f"{result.seconds:.1f}s"
                )
            results[task.name] = result
    return results


def _failed(task: SeriesTask, error: str) -> SeriesResult:
    none = np.zeros(len(task.values), dtype=bool)
    return SeriesResult(task.name, np.zeros(len(task.values)), none, none, 0.0, 0, error=error)


def _event_summary(results: dict[str, SeriesResult], tasks: list[SeriesTask]) -> EventMetrics:
    return combine(
        [event_metrics(results[t.name].is_anomaly, t.windows, probation_length(len(t.values))) for t in tasks]
    )


def _finish(
    out_dir: Path,
    corpus: Path,
    tasks: list[SeriesTask],
    results: dict[str, SeriesResult],
    started: float,
    workers: int,
    config: DetectorConfig,
    **figures: dict,
) -> dict:
    """Assemble the summary shared by both corpora, write it, and return it."""
    summary = {
        "corpus": str(corpus),
        **figures,
        "events": asdict(_event_summary(results, tasks)),
        "series": len(tasks),
        "failed": {name: r.error for name, r in results.items() if r.error},
        "points": int(sum(len(t.values) for t in tasks)),
        "wall_seconds": time.perf_counter() - started,
        "workers": workers,
        "config": config.to_dict(),
        "false_positive_labels": sum(r.false_positive_labels for r in results.values()),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = write_fold_report(out_dir, [FoldScore(**row) for row in summary["folds"]])
    _write_summary(out_dir, summary, folds)
    return summary


def _write_summary(out_dir: Path, summary: dict, folds: str) -> None:
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"# Evaluation: {summary['corpus']}", ""]
    if "nab" in summary:
        lines += [
            "| profile | own alerts | best threshold on the score | threshold |",
            "|---|---|---|---|",
        ]
        for name, row in summary["nab"].items():
            lines.append(
                f"| {name} | {row['own_alerts']['normalised']:.1f} | "
                f"{row['best_threshold']['normalised']:.1f} | {row['threshold']:.4f} |"
            )
        lines.append("")
    events = summary["events"]
    lines.append(
        f"Events: precision {events['precision']:.3f}, recall {events['recall']:.3f}, "
        f"F1 {events['f1']:.3f} (TP {events['tp_events']}, FN {events['fn_events']}, "
        f"FP {events['fp_events']})"
    )
    for name, error in summary["failed"].items():
        lines.append(f"FAILED: {name}: {error} (counted as never alerting)")
    lines.append(
        f"Series: {summary['series']}, points: {summary['points']:,}, "
        f"wall time: {summary['wall_seconds']:.1f}s on {summary['workers']} workers"
    )
    lines += ["", "Per fold (the product's own alerts):", "", folds.rstrip("\n")]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")


def nab_tasks(corpus: list[NabFile]) -> list[SeriesTask]:
    return [
        SeriesTask(
            name=f.relpath.removesuffix(".csv"),
            ts=pd.DatetimeIndex(f.frame["timestamp"]),
            values=f.frame["value"].to_numpy(dtype=float),
            gap=np.zeros(len(f.frame), dtype=bool),
            windows=f.windows,
        )
        for f in corpus
    ]


def evaluate_nab(
    data_dir: Path,
    windows_file: Path,
    out_dir: Path,
    config: DetectorConfig | None = None,
    workers: int | None = None,
    progress: Progress = print,
    simulate_feedback: bool = False,
) -> dict:
    """Backtest every corpus file and score it with NAB's three profiles and event metrics
    (``simulate_feedback``: with an analyst's feedback replayed, ``backtest.simulated_analyst``)."""
    config = config or DetectorConfig()
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    corpus = load_corpus(data_dir, windows_file)
    tasks = nab_tasks(corpus)
    progress(f"evaluating {len(tasks)} series on {workers} workers")
    results = _run_all(tasks, config, out_dir, workers, progress, simulate_feedback)
    by_path = {f.relpath: results[f.relpath.removesuffix(".csv")] for f in corpus}
    nab = {}
    for name, profile in PROFILES.items():
        own = score_corpus({k: r.alert for k, r in by_path.items()}, corpus, profile)
        # The sweep is over the stored score itself: the headline is the product's own alerts.
        threshold, tuned = best_threshold({k: r.score for k, r in by_path.items()}, corpus, profile)
        nab[name] = {
            "own_alerts": asdict(own),
            "best_threshold": asdict(tuned),
            "threshold": threshold,
        }
    categories = sorted({task.name.split("/")[0] for task in tasks})
    folds = [
        asdict(
            score_fold(
                category,
                [_fold_series(task, results[task.name]) for task in tasks if task.name.split("/")[0] == category],
            )
        )
        for category in categories
    ]
    return _finish(out_dir, data_dir, tasks, results, started, workers, config, nab=nab, folds=folds)


def dataset_tasks(data_csv: Path, labels_csv: Path) -> list[SeriesTask]:
    """One task per KPI of a wide or long KPI file, on its cleaned regular grid with gaps."""
    observations = read_observations_csv(data_csv).observations
    cleaned, _ = clean_observations(observations)
    labels = pd.read_csv(labels_csv)
    labels["start"] = pd.to_datetime(labels["start"], utc=True)
    labels["end"] = pd.to_datetime(labels["end"], utc=True)
    tasks = []
    for kpi, rows in cleaned.groupby("kpi", sort=True):
        ts = pd.DatetimeIndex(rows["ts"])
        tasks.append(
            SeriesTask(
                name=str(kpi),
                ts=ts,
                values=rows["value"].to_numpy(dtype=float),
                gap=rows["gap"].to_numpy(dtype=bool),
                windows=windows_from_labels(ts, labels[labels["kpi"] == kpi]),
            )
        )
    return tasks


def evaluate_dataset(
    data_csv: Path,
    labels_csv: Path,
    out_dir: Path,
    config: DetectorConfig | None = None,
    workers: int | None = None,
    progress: Progress = print,
    fold: str | None = None,
    simulate_feedback: bool = False,
) -> dict:
    """Backtest every KPI of a labelled KPI file and report event precision / recall / F1
    (``simulate_feedback``: as ``evaluate_nab``'s)."""
    config = config or DetectorConfig()
    workers = workers or os.cpu_count() or 1
    started = time.perf_counter()
    tasks = dataset_tasks(data_csv, labels_csv)
    progress(f"evaluating {len(tasks)} KPIs on {workers} workers")
    results = _run_all(tasks, config, out_dir, workers, progress, simulate_feedback)
    per_kpi = {
        t.name: asdict(event_metrics(results[t.name].is_anomaly, t.windows, probation_length(len(t.values))))
        for t in tasks
    }
    fold_score = score_fold(fold or _dataset_name(data_csv), [_fold_series(t, results[t.name]) for t in tasks])
    return _finish(
        out_dir, data_csv, tasks, results, started, workers, config, per_kpi=per_kpi, folds=[asdict(fold_score)]
    )


def _fold_series(task: SeriesTask, result: SeriesResult) -> FoldSeries:
    return FoldSeries(task.windows, result.alert, result.is_anomaly)


def _dataset_name(data_csv: Path) -> str:
    """A dataset's fold name: its file's name, or its folder's for the generator's file name."""
    return data_csv.parent.name if data_csv.name == "kpi_data.csv" else data_csv.stem


LABELS_FILE = "kpi_labels.csv"


def evaluate_folds(
    sources: list[tuple[str | None, Path]],
    out_dir: Path,
    config: DetectorConfig | None = None,
    workers: int | None = None,
    baseline: Path | None = None,
    progress: Progress = print,
    simulate_feedback: bool = False,
) -> list[FoldScore]:
    """Evaluate several corpora, each into its own folder of ``out_dir``, and write the fold
    report over all of them (``folds.md``): every NAB category is a fold, every labelled KPI
    file (its labels in ``kpi_labels.csv`` beside it) one more. ``sources`` pairs an optional
    fold name with a path."""
    folds = []
    for name, path in sources:
        if path.is_dir():
            target = out_dir / (name or path.name)
            summary = evaluate_nab(
                path, windows_of(path), target, config, workers, progress, simulate_feedback=simulate_feedback
            )
        else:
            name = name or _dataset_name(path)
            summary = evaluate_dataset(
                path,
                path.parent / LABELS_FILE,
                out_dir / name,
                config,
                workers,
                progress,
                fold=name,
                simulate_feedback=simulate_feedback,
            )
        folds += [FoldScore(**row) for row in summary["folds"]]
    write_fold_report(out_dir, folds, baseline)
    return folds


def windows_of(data_dir: Path) -> Path:
    """A NAB corpus' ``windows.json``: inside its data directory or beside it."""
    for candidate in (data_dir / "windows.json", data_dir.parent / "windows.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no windows.json inside or beside {data_dir}")
