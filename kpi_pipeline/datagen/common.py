"""What every dataset profile shares: anomaly windows, their injection, labels and CSV output.

A profile builds the normal values of its KPIs, places ``Anomaly`` windows on its row grid, lets
``inject`` overwrite each window in place and turns the windows into a labels frame. Every
profile writes the same two files, so ``kpi-pipeline evaluate --data ... --labels ...`` reads
any of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_SEED = 42
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DATA_FILE = "kpi_data.csv"
LABELS_FILE = "kpi_labels.csv"
LABEL_COLUMNS = ["kpi", "start", "end", "kind"]


@dataclass(frozen=True)
class Magnitudes:
    """How strong injected anomalies are, as fractions of the normal value.

    The defaults are the hourly sample's; other profiles override what differs.
    """

    spike_lift: tuple[float, float] = (0.6, 1.5)
    """A spike adds this fraction of the normal value."""

    dip_drop: tuple[float, float] = (0.5, 0.8)
    """A dip removes this fraction of the normal value."""

    level_shift_size: tuple[float, float] = (0.25, 0.40)
    """A level shift moves the value up or down by this fraction for its whole window."""

    variance_burst_noise_factor: float = 5.0
    """A variance burst multiplies the KPI's noise (its log-deviation from expected) by this."""

    drift_size: tuple[float, float] = (0.3, 0.8)
    """A drift moves the value steadily up or down, reaching this fraction on its last row."""


@dataclass(frozen=True)
class Anomaly:
    kpi: str
    kind: str
    start: int
    """Row position of the first anomalous row."""
    stop: int
    """Row position just after the last anomalous row."""


def inject(
    anomaly: Anomaly,
    values: np.ndarray,
    expected: np.ndarray,
    rng: np.random.Generator,
    magnitudes: Magnitudes,
) -> None:
    """Overwrite ``values`` (one KPI's observed series) inside the anomaly's window.

    Kinds: ``spike``, ``dip``, ``level_shift``, ``variance_burst``, ``flatline``, ``drift`` and
    ``missing_gap`` (the values become NaN).
    """
    window = slice(anomaly.start, anomaly.stop)
    match anomaly.kind:
        case "spike":
            values[window] *= 1 + rng.uniform(*magnitudes.spike_lift)
        case "dip":
            values[window] *= 1 - rng.uniform(*magnitudes.dip_drop)
        case "level_shift":
            values[window] *= 1 + rng.choice((-1, 1)) * rng.uniform(*magnitudes.level_shift_size)
        case "variance_burst":
            # Scaling the log-deviation keeps the burst centred on the expected value.
            deviation = values[window] / expected[window]
            values[window] = expected[window] * deviation**magnitudes.variance_burst_noise_factor
        case "flatline":
            values[window] = values[anomaly.start]
        case "drift":
            size = rng.choice((-1, 1)) * rng.uniform(*magnitudes.drift_size)
            rows = anomaly.stop - anomaly.start
            values[window] *= 1 + size * np.arange(1, rows + 1) / rows
        case "missing_gap":
            values[window] = np.nan
        case _:
            raise ValueError(f"unknown anomaly kind {anomaly.kind!r}")


def spread(rng: np.random.Generator, first: int, stop: int, lengths: Sequence[int], min_gap: int) -> np.ndarray:
    """Random start rows for windows of ``lengths`` rows, in that order, inside ``[first, stop)``.

    Consecutive windows are at least ``min_gap`` rows apart. The free rows are dealt out at
    random between them, so windows fall anywhere rather than on a regular beat.
    """
    lengths = np.asarray(lengths, dtype=int)
    if lengths.size == 0:
        return lengths
    free = stop - first - int(lengths.sum()) - min_gap * (lengths.size - 1)
    if free < 0:
        raise ValueError(
            f"{lengths.size} windows of {lengths.sum()} rows with {min_gap}-row gaps do not fit in rows {first}..{stop}"
        )
    offsets = np.sort(rng.integers(0, free + 1, lengths.size))
    before = np.concatenate(([0], np.cumsum(lengths[:-1] + min_gap)))
    return first + offsets + before


def labels_frame(anomalies: Sequence[Anomaly], index: pd.DatetimeIndex) -> pd.DataFrame:
    """One label row per anomaly: ``kpi, start, end, kind`` with inclusive time bounds."""
    labels = pd.DataFrame(
        {
            "kpi": [anomaly.kpi for anomaly in anomalies],
            "start": index[[anomaly.start for anomaly in anomalies]],
            "end": index[[anomaly.stop - 1 for anomaly in anomalies]],
            "kind": [anomaly.kind for anomaly in anomalies],
        },
        columns=LABEL_COLUMNS,
    )
    return labels.sort_values(["start", "kpi"], ignore_index=True)


def write_csvs(
    out_dir: Path, data: pd.DataFrame, labels: pd.DataFrame, decimals: Mapping[str, int]
) -> tuple[Path, Path]:
    """Write ``data`` and ``labels`` as ``kpi_data.csv`` and ``kpi_labels.csv``; return their paths.

    Columns with 0 ``decimals`` are written as whole numbers, an empty cell where missing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path, labels_path = out_dir / DATA_FILE, out_dir / LABELS_FILE
    counts = {kpi: "Int64" for kpi, places in decimals.items() if places == 0}
    data.astype(counts).to_csv(data_path, index=False, date_format=TIMESTAMP_FORMAT)
    labels.to_csv(labels_path, index=False, date_format=TIMESTAMP_FORMAT)
    return data_path, labels_path
