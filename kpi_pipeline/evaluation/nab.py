"""Numenta Anomaly Benchmark (NAB v1.1) scoring, following the published rules.

Rows are addressed by position (some NAB files repeat timestamps at DST changes). Windows are
inclusive ``(first_row, last_row)`` pairs, sorted and non-overlapping. Where the rules leave a
case open we follow NAB's reference implementation: the first ``probation_length`` rows of a
file are neither rewarded nor penalised, and a window lying wholly inside them is not scored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kpi_pipeline.detection.metrics import windows_from_labels


@dataclass(frozen=True)
class Profile:
    """Application profile: the weights of a true positive, a false positive and a miss."""

    a_tp: float
    a_fp: float
    a_fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile(a_tp=1.0, a_fp=0.11, a_fn=1.0),
    "reward_low_FP_rate": Profile(a_tp=1.0, a_fp=0.22, a_fn=1.0),
    "reward_low_FN_rate": Profile(a_tp=1.0, a_fp=0.11, a_fn=2.0),
}


@dataclass
class NabFile:
    relpath: str
    """Path under the corpus data directory, e.g. ``realTweets/Twitter_volume_AAPL.csv``."""
    category: str
    frame: pd.DataFrame
    """Columns ``timestamp`` (naive datetime64, as in the file) and ``value`` (float)."""
    windows: list[tuple[int, int]]


@dataclass(frozen=True)
class FileScore:
    raw: float
    tp: int
    fn: int
    fp: int
    """Flagged rows outside every window, after probation; each row counts on its own."""


@dataclass(frozen=True)
class CorpusScore:
    normalised: float
    """100 for a perfect detector, 0 for one that never fires."""
    raw: float
    tp: int
    fn: int
    fp: int


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that a detector may spend learning."""
    return min(15 * n_rows // 100, 750)


def scaled_sigmoid(y: float | np.ndarray) -> float | np.ndarray:
    """NAB's σ(y) = 2/(1+e^{5y}) − 1: +0.987 at y=−1, 0 at y=0, and exactly −1 beyond y=3."""
    y = np.asarray(y, dtype=float)
    # e^{5y} may overflow for large y, but those values are replaced by -1 anyway.
    with np.errstate(over="ignore"):
        value = np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0)
    return float(value) if value.ndim == 0 else value


def load_corpus(data_dir: str | Path, windows_file: str | Path) -> list[NabFile]:
    """Every ``<category>/<file>.csv`` under ``data_dir`` with its windows, sorted by relpath.

    Files absent from ``windows_file`` have no windows.
    """
    data_dir = Path(data_dir)
    labelled = json.loads(Path(windows_file).read_text())
    corpus = []
    for path in data_dir.glob("*/*.csv"):
        relpath = path.relative_to(data_dir).as_posix()
        frame = pd.read_csv(path, usecols=["timestamp", "value"], dtype={"value": float})
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        labels = pd.DataFrame(labelled.get(relpath, []), columns=["start", "end"])
        windows = windows_from_labels(frame["timestamp"], labels)
        corpus.append(NabFile(relpath, path.parent.name, frame, windows))
    return sorted(corpus, key=lambda nab_file: nab_file.relpath)


def _check_windows(windows: list[tuple[int, int]], n_rows: int) -> None:
    previous_last = -1
    for first, last in windows:
        if not previous_last < first <= last < n_rows:
            raise ValueError(f"windows must be sorted, non-overlapping and within {n_rows} rows: {windows}")
        previous_last = last


def _detection_values(n_rows: int, windows: list[tuple[int, int]], profile: Profile) -> np.ndarray:
    """What a detection at each row is worth, were it the one that counts."""
    rows = np.arange(n_rows)
    values = np.full(n_rows, -profile.a_fp)
    next_firsts = [first for first, _ in windows[1:]] + [n_rows]
    for (first, last), next_first in zip(windows, next_firsts):
        width = last - first + 1
        in_window = rows[first : last + 1]
        values[first : last + 1] = profile.a_tp * scaled_sigmoid(-(last - in_window + 1) / width) / scaled_sigmoid(-1.0)
        # False positives soon after a window are forgiven in proportion to its width; NAB
        # divides by width - 1, which a one-row window would make zero.
        after = rows[last + 1 : next_first]
        values[last + 1 : next_first] = profile.a_fp * scaled_sigmoid((after - last) / max(width - 1, 1))
    return values


def _outside_windows(n_rows: int, windows: list[tuple[int, int]], probation: int) -> np.ndarray:
    """Rows past probation that lie in no window: each detection there is a false positive."""
    outside = np.ones(n_rows, dtype=bool)
    outside[:probation] = False
    for first, last in windows:
        outside[first : last + 1] = False
    return outside


def _scored_windows(windows: list[tuple[int, int]], probation: int) -> list[tuple[int, int]]:
    """The part of each window past probation; windows wholly inside it are not scored."""
    return [(max(first, probation), last) for first, last in windows if last >= probation]


def score_detections(detections: np.ndarray, windows: list[tuple[int, int]], profile: Profile) -> FileScore:
    """Raw NAB score of one file's boolean per-row detections."""
    flagged = np.asarray(detections, dtype=bool)
    n_rows = len(flagged)
    _check_windows(windows, n_rows)
    probation = probation_length(n_rows)
    values = _detection_values(n_rows, windows, profile)
    false_positive = flagged & _outside_windows(n_rows, windows, probation)
    raw = float(values[false_positive].sum())
    tp = fn = 0
    for first, last in _scored_windows(windows, probation):
        hits = np.flatnonzero(flagged[first : last + 1])
        if hits.size:
            raw += float(values[first + hits[0]])
            tp += 1
        else:
            raw -= profile.a_fn
            fn += 1
    return FileScore(raw=raw, tp=tp, fn=fn, fp=int(false_positive.sum()))


def normalised_score(raw_total: float, n_windows: int, profile: Profile) -> float:
    """Rescale a raw score so that never firing gives 0 and catching every window at once 100."""
    if n_windows == 0:
        raise ValueError("a NAB score needs at least one window to normalise against")
    null = -profile.a_fn * n_windows
    perfect = profile.a_tp * n_windows
    return 100.0 * (raw_total - null) / (perfect - null)


def _rows_of(per_file: dict[str, np.ndarray], nab_file: NabFile) -> np.ndarray:
    if nab_file.relpath not in per_file:
        raise KeyError(f"no rows given for {nab_file.relpath}")
    rows = np.asarray(per_file[nab_file.relpath])
    if len(rows) != len(nab_file.frame):
        raise ValueError(f"{nab_file.relpath}: {len(rows)} rows given, the file has {len(nab_file.frame)}")
    return rows


def score_corpus(results: dict[str, np.ndarray], corpus: list[NabFile], profile: Profile) -> CorpusScore:
    """NAB score over every file of ``corpus``, from boolean detections keyed by relpath."""
    file_scores = [score_detections(_rows_of(results, nab_file), nab_file.windows, profile) for nab_file in corpus]
    raw = sum(file_score.raw for file_score in file_scores)
    tp = sum(file_score.tp for file_score in file_scores)
    fn = sum(file_score.fn for file_score in file_scores)
    fp = sum(file_score.fp for file_score in file_scores)
    return CorpusScore(normalised_score(raw, tp + fn, profile), raw, tp, fn, fp)


def _threshold_gains(
    scores: np.ndarray, windows: list[tuple[int, int]], profile: Profile
) -> tuple[np.ndarray, np.ndarray]:
    """Score values paired with how much the file's raw score changes once the threshold drops
    to each; summing the gains of all values at or above a threshold gives raw − null there."""
    n_rows = len(scores)
    _check_windows(windows, n_rows)
    probation = probation_length(n_rows)
    values = _detection_values(n_rows, windows, profile)
    # NaN (e.g. a detector still warming up) is never at or above any threshold.
    scores = np.where(np.isnan(scores), -np.inf, scores.astype(float))
    outside = _outside_windows(n_rows, windows, probation)
    thresholds = [scores[outside]]
    gains = [values[outside]]
    for first, last in _scored_windows(windows, probation):
        window_scores = scores[first : last + 1]
        # The earliest detection at threshold t is the first row scoring >= t, so only rows that
        # beat every earlier row of the window (its running records) can become the one counted.
        best_earlier = np.maximum.accumulate(np.concatenate(([-np.inf], window_scores[:-1])))
        is_record = window_scores > best_earlier
        record_values = values[first : last + 1][is_record]
        # Records rise in score, so lowering the threshold reaches them last to first; each
        # replaces the later record's credit, and the highest one replaces the miss penalty.
        replaced = np.concatenate((record_values[1:], [-profile.a_fn]))
        thresholds.append(window_scores[is_record])
        gains.append(record_values - replaced)
    thresholds = np.concatenate(thresholds)
    gains = np.concatenate(gains)
    reachable = thresholds > -np.inf
    return thresholds[reachable], gains[reachable]


def best_threshold(scores: dict[str, np.ndarray], corpus: list[NabFile], profile: Profile) -> tuple[float, CorpusScore]:
    """The single threshold (detection = score >= threshold) with the best corpus score.

    Exact over every distinct score value, in one sweep: the corpus score as a function of the
    threshold is a running sum of per-value gains. Ties go to the higher threshold (fewer
    detections). ``math.inf`` means flagging nothing beats every threshold.
    """
    if not corpus:
        raise ValueError("cannot tune a threshold on an empty corpus")
    per_file = [_threshold_gains(_rows_of(scores, f), f.windows, profile) for f in corpus]
    thresholds = np.concatenate([file_thresholds for file_thresholds, _ in per_file])
    gains = np.concatenate([file_gains for _, file_gains in per_file])
    order = np.argsort(-thresholds, kind="stable")
    thresholds = thresholds[order]
    gain_above = np.cumsum(gains[order])
    # A threshold flags every row scoring at or above it, so only complete tie groups count.
    ends_group = np.ones(len(thresholds), dtype=bool)
    ends_group[:-1] = thresholds[1:] != thresholds[:-1]
    candidates = np.concatenate(([math.inf], thresholds[ends_group]))
    candidate_gains = np.concatenate(([0.0], gain_above[ends_group]))
    threshold = float(candidates[int(np.argmax(candidate_gains))])
    detections = {f.relpath: _rows_of(scores, f) >= threshold for f in corpus}
    return threshold, score_corpus(detections, corpus, profile)
