"""The scores of the sample dataset through the product path, to compare code versions.

    python benchmarks/sample_scores.py dump scores.csv      # init, ingest, run into a temp DB
    python benchmarks/sample_scores.py compare a.csv b.csv  # equal to 1e-9, or say where not

``dump`` runs ``kpi-pipeline init``, ``ingest`` and ``run`` on a fresh SQLite file with the
sample (``dataset/kpi_data.csv``) minus its last ``--later`` hours, then ingests those hours in
``--steps`` parts with a ``run`` after each, so both the first scoring of a KPI and the
incremental scoring of new points (the scoring window, open events, later model versions) are
exercised. The stored scores go to a CSV file without ``scored_at``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "dataset" / "kpi_data.csv"
TOLERANCE = 1e-9


def _cli(url: str, *args: str) -> None:
    command = [str(Path(sys.executable).with_name("kpi-pipeline")), "--database-url", url, *args]
    environment = {key: value for key, value in os.environ.items() if key != "DAGSTER_HOME"}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)


def dump(out: Path, later: int, steps: int) -> None:
    from kpi_pipeline import store

    wide = pd.read_csv(SAMPLE)
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/kpi.db"
        _cli(url, "init")
        cuts = np.linspace(len(wide) - later, len(wide), steps + 1).round().astype(int)
        for number, end in enumerate(cuts):
            part = Path(directory) / f"part{number}.csv"
            wide.iloc[:end].to_csv(part, index=False)
            _cli(url, "ingest", str(part))
            _cli(url, "run")
            print(f"ran with {end} of {len(wide)} hours", flush=True)
        engine = store.make_engine(url)
        scores = store.load_scores(engine).drop(columns="scored_at")
        engine.dispose()
    scores.to_csv(out, index=False, float_format="%.17g")
    print(f"{len(scores)} scores of {scores['kpi'].nunique()} KPIs -> {out}")


def compare(first: Path, second: Path) -> int:
    a, b = pd.read_csv(first), pd.read_csv(second)
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        print(f"different shapes: {a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)}")
        return 1
    differences = []
    for name in a.columns:
        if pd.api.types.is_float_dtype(a[name]) and pd.api.types.is_float_dtype(b[name]):
            both_nan = a[name].isna() & b[name].isna()
            close = np.isclose(a[name], b[name], rtol=TOLERANCE, atol=TOLERANCE) | both_nan
        else:
            close = (a[name].astype(object).fillna("<null>").astype(str)
                     == b[name].astype(object).fillna("<null>").astype(str)).to_numpy()
        if not close.all():
            differences.append(f"{name}: {int((~close).sum())} rows differ")
    if differences:
        print("scores differ: " + "; ".join(differences))
        return 1
    print(f"equal to {TOLERANCE:g}: {len(a)} scores, {int(a['is_anomaly'].sum())} anomalous")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dumping = commands.add_parser("dump")
    dumping.add_argument("out", type=Path)
    dumping.add_argument("--later", type=int, default=72, help="hours ingested after the first run")
    dumping.add_argument("--steps", type=int, default=3, help="runs over those hours")
    comparing = commands.add_parser("compare")
    comparing.add_argument("first", type=Path)
    comparing.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.out, args.later, args.steps)
    else:
        sys.exit(compare(args.first, args.second))


if __name__ == "__main__":
    main()
