"""What one Dagster run costs on its own, to choose between a partition per KPI and KPI shards.

Materializes ``kpi_models`` for a shard that holds no KPI, so what is measured is Dagster's own
cost of a run (planning, event log writes, the asset check, resource set-up), once in this
process against a persistent instance (as the run worker of a launched run does after it has
imported the code) and once as a new process (``dagster asset materialize``, as the default run
launcher starts each run: imports included). At 10,000 KPIs a partition per KPI costs 10,000 of
these per nightly retrain; shards cost one per shard.

    .venv/bin/python benchmarks/bench_partition_runs.py [--runs 10] [--processes 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from kpi_pipeline.config import PROJECT_ROOT
from kpi_pipeline.defs.assets import ASSETS, TRAINING_SHARDS, kpi_models
from kpi_pipeline.defs.resources import KpiStore
from kpi_pipeline.sharding import shard_of


def _empty_shard() -> str:
    """A shard without the benchmark database's only KPI."""
    used = shard_of("bench_kpi", TRAINING_SHARDS.get_num_partitions())
    return next(key for key in TRAINING_SHARDS.get_partition_keys() if key != used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="in-process runs to time")
    parser.add_argument("--processes", type=int, default=3, help="new-process runs to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
        os.environ["DAGSTER_HOME"] = str(home)
        url = f"sqlite:///{tmp}/kpi.db"
        os.environ["KPI_DATABASE_URL"] = url
        shard = _empty_shard()
        resources = {"store": KpiStore(database_url=url)}
        with dg.DagsterInstance.get() as instance:
            dg.materialize(ASSETS, selection=[kpi_models], resources=resources,
                           partition_key=shard, instance=instance)  # warm-up
            started = time.perf_counter()
            for _ in range(args.runs):
                dg.materialize(ASSETS, selection=[kpi_models], resources=resources,
                               partition_key=shard, instance=instance)
            in_process = (time.perf_counter() - started) / args.runs
        command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                   "kpi_pipeline.defs", "--select", "kpi_models", "--partition", shard]
        started = time.perf_counter()
        for _ in range(args.processes):
            subprocess.run(command, check=True, capture_output=True, env=os.environ)
        new_process = (time.perf_counter() - started) / args.processes
    print(f"one run, in process: {in_process:.2f} s; as a new process: {new_process:.2f} s")
    for kpis in (1_000, 10_000):
        print(f"{kpis:>6} KPIs, a partition per KPI: {kpis * in_process / 60:.0f} to "
              f"{kpis * new_process / 60:.0f} min of run overhead per retrain on one core; "
              f"{TRAINING_SHARDS.get_num_partitions()} shards: "
              f"{TRAINING_SHARDS.get_num_partitions() * new_process:.0f} s")


if __name__ == "__main__":
    main()
