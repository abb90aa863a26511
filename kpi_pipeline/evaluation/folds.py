"""The fold report: detection quality per group of series (a NAB category, a labelled dataset).

A rule that helps one kind of series and hurts another only shows up when each kind is scored on
its own, so ``evaluate`` reports every fold side by side with the same figures: NAB's normalised
score of the product's own alerts under the three profiles, and event precision / recall / F1 of
its per-point flags.

NAB normalises a raw score between never firing (0) and catching every window at once (100),
which is undefined for a fold without windows (NAB's ``artificialNoAnomaly``). There a fold scores
``100 + 100 * raw / files``: 100 for silence, and each false detection costs what it costs NAB
(0.11 of a window per row at the standard profile) per file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kpi_pipeline.detection.metrics import (
    combine,
    combine_points,
    delay_point_metrics,
    event_metrics,
)
from kpi_pipeline.evaluation.nab import PROFILES, normalised_score, probation_length, score_detections

PROFILE_COLUMNS = {"standard": "standard", "reward_low_FP_rate": "low_FP", "reward_low_FN_rate": "low_FN"}


@dataclass(frozen=True)
class FoldSeries:
    """One scored series of a fold: its windows and the product's decisions."""

    windows: list[tuple[int, int]]
    alert: np.ndarray
    """The first point of each event (what a person on call receives)."""
    is_anomaly: np.ndarray


@dataclass(frozen=True)
class FoldScore:
    fold: str
    series: int
    windows: int
    standard: float
    low_FP: float
    low_FN: float
    precision: float
    recall: float
    f1: float
    tp_events: int
    fn_events: int
    fp_events: int
    delay_f1: float = 0.0
    """Point F1 with the delay adjustment (a window counts when caught within its first
    ``DELAY_POINTS`` points), the minute-level KPI benchmarks' metric."""


DELAY_POINTS = 7


def score_fold(name: str, series: list[FoldSeries]) -> FoldScore:
    """NAB's three profiles on the alerts and event metrics on the flags of one fold."""
    windows = sum(len(s.windows) for s in series)
    nab = {}
    for profile_name, profile in PROFILES.items():
        raw = sum(score_detections(s.alert, s.windows, profile).raw for s in series)
        nab[PROFILE_COLUMNS[profile_name]] = (
            normalised_score(raw, windows, profile) if windows else 100.0 + 100.0 * raw / max(len(series), 1)
        )
    events = combine([event_metrics(s.is_anomaly, s.windows, probation_length(len(s.is_anomaly))) for s in series])
    delay = combine_points(
        [
            delay_point_metrics(s.is_anomaly, s.windows, DELAY_POINTS, probation_length(len(s.is_anomaly)))
            for s in series
        ]
    )
    return FoldScore(
        fold=name,
        series=len(series),
        windows=windows,
        **nab,
        precision=events.precision,
        recall=events.recall,
        f1=events.f1,
        tp_events=events.tp_events,
        fn_events=events.fn_events,
        fp_events=events.fp_events,
        delay_f1=delay.f1,
    )


def write_fold_report(out_dir: Path, folds: list[FoldScore], baseline: Path | None = None) -> str:
    """Write ``folds.json`` and ``folds.md`` (with each figure's change against a baseline
    ``folds.json``, if given); returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "folds.json").write_text(json.dumps([asdict(f) for f in folds], indent=2))
    before = {}
    if baseline is not None:
        before = {row["fold"]: row for row in json.loads(Path(baseline).read_text())}
    columns = ["standard", "low_FP", "low_FN", "precision", "recall", "f1", "delay_f1"]
    lines = [
        "| fold | series | windows | NAB standard | NAB low FP | NAB low FN | precision | recall "
        f"| F1 | point F1, delay {DELAY_POINTS} | events TP / FN / FP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fold in folds:
        cells = [_cell(fold, before.get(fold.fold), column) for column in columns]
        lines.append(
            f"| {fold.fold} | {fold.series} | {fold.windows} | {' | '.join(cells)} | "
            f"{fold.tp_events} / {fold.fn_events} / {fold.fp_events} |"
        )
    if folds:
        means = {c: float(np.mean([getattr(f, c) for f in folds])) for c in columns}
        worst = min(folds, key=lambda f: f.standard)
        lines += [
            "",
            f"Mean over {len(folds)} folds: NAB standard {means['standard']:.1f}, low FP "
            f"{means['low_FP']:.1f}, low FN {means['low_FN']:.1f}, event F1 {means['f1']:.3f}; "
            f"lowest standard: {worst.fold} {worst.standard:.1f}.",
        ]
    text = "\n".join(lines) + "\n"
    (out_dir / "folds.md").write_text(text)
    return text


def _cell(fold: FoldScore, before: dict | None, column: str) -> str:
    value = getattr(fold, column)
    digits = 1 if column in PROFILE_COLUMNS.values() else 3
    text = f"{value:.{digits}f}"
    if before is not None and column in before:
        text += f" ({value - before[column]:+.{digits}f})"
    return text
