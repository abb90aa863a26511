"""Seeded KPI datasets with labelled, injected anomalies, one profile per evaluation fold.

Profiles (``python -m kpi_pipeline.datagen --profile NAME``):

- ``hourly``: the sample in ``dataset/``, a year of hourly shop KPIs (``hourly.py``).
- ``daily``: four years of daily shop KPIs with incidents throughout (``daily.py``).
- ``minute`` and ``five-minute``: a web service's operational KPIs with outages
  (``service.py``).
- ``multivariate``: 120 days of hourly KPIs in correlated groups with group incidents
  (``multivariate.py``; also writes ``group_labels.csv`` and ``groups.yaml``).

Each writes ``kpi_data.csv`` (wide: ``date`` and one column per KPI) and ``kpi_labels.csv``
(``kpi,start,end,kind``), the files ``kpi-pipeline evaluate --data ... --labels ...`` reads. The
hourly sample's API is re-exported here, where it has always been imported from.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from kpi_pipeline.datagen import daily, hourly, multivariate, service
from kpi_pipeline.datagen.common import DATA_FILE, DEFAULT_SEED, LABELS_FILE, write_csvs
from kpi_pipeline.datagen.hourly import ANOMALY_KINDS, DECIMALS, KPIS, generate, write_dataset

__all__ = [
    "ANOMALY_KINDS",
    "DATA_FILE",
    "DECIMALS",
    "DEFAULT_SEED",
    "KPIS",
    "LABELS_FILE",
    "PROFILES",
    "Profile",
    "generate",
    "main",
    "write_dataset",
    "write_profile",
]


@dataclass(frozen=True)
class Profile:
    generate: Callable[[int], tuple[pd.DataFrame, pd.DataFrame]]
    """Seed to ``(data, labels)``."""
    decimals: Mapping[str, int]
    out_dir: Path
    """Default output directory: where the files are committed, relative to the repository root."""


PROFILES = {
    "hourly": Profile(hourly.generate, hourly.DECIMALS, Path("dataset")),
    "daily": Profile(daily.generate, daily.DECIMALS, Path("dataset/daily")),
    "minute": Profile(partial(service.generate, config=service.MINUTE), service.DECIMALS, Path("dataset/minute")),
    "five-minute": Profile(
        partial(service.generate, config=service.FIVE_MINUTE),
        service.DECIMALS,
        Path("dataset/five_minute"),
    ),
    "multivariate": Profile(
        lambda seed: multivariate.generate(seed)[:2], multivariate.DECIMALS, Path("dataset/multivariate")
    ),
}


def write_profile(name: str, out_dir: Path | None = None, seed: int = DEFAULT_SEED) -> tuple[Path, Path]:
    """Write profile ``name``'s data and labels into ``out_dir`` (default: its own directory)."""
    profile = PROFILES[name]
    out_dir = out_dir or profile.out_dir
    if name == "multivariate":
        data, labels, group_labels = multivariate.generate(seed)
        multivariate.write_group_files(out_dir, group_labels)
        return write_csvs(out_dir, data, labels, profile.decimals)
    return write_csvs(out_dir, *profile.generate(seed), profile.decimals)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a seeded labelled KPI dataset.")
    parser.add_argument("--profile", choices=list(PROFILES), default="hourly", help="which dataset (default hourly)")
    parser.add_argument("--out", type=Path, help="output directory (default: the profile's directory in dataset/)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    for path in write_profile(args.profile, args.out, args.seed):
        print(path)
