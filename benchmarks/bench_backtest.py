"""Backtest cost at high frequency: one KPI walked forward as ``evaluate`` and a new KPI's
history are (``stream_scores``, every retrain included), on one core.

    python benchmarks/bench_backtest.py --freq 1min --days 180

Ends with one line: ``backtest: <freq> x <days> d, <points> points, <retrains> retrains,
<seconds> s, <ms> ms/point, peak RSS <MiB> MiB``.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd

from kpi_pipeline.evaluation.backtest import stream_scores


def series(freq: str, days: int, seed: int) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Counts with a daily and a weekly cycle, Poisson noise and a few spikes."""
    ts = pd.date_range("2025-01-06", periods=int(pd.Timedelta(days=days) / pd.Timedelta(freq)),
                       freq=freq, tz="UTC")
    hours = (ts - ts[0]) / pd.Timedelta(hours=1)
    rate = 300 * (1 + 0.5 * np.sin(2 * np.pi * hours / 24)) * (1 + 0.2 * np.sin(2 * np.pi * hours / 168))
    rng = np.random.default_rng(seed)
    values = rng.poisson(rate).astype(float)
    spikes = rng.choice(len(values), size=days // 10 + 1, replace=False)
    values[spikes] *= 4
    return ts, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freq", default="1min")
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ts, values = series(args.freq, args.days, args.seed)
    print(f"walking forward {len(values):,} points at {args.freq} ...", flush=True)
    started = time.perf_counter()
    result = stream_scores(ts, values)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"backtest: {args.freq} x {args.days} d, {len(values)} points, {result.retrains} retrains, "
        f"{seconds:.1f} s, {1000 * seconds / len(values):.3f} ms/point, peak RSS {peak:.0f} MiB"
    )


if __name__ == "__main__":
    main()
