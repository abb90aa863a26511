"""KPI shards: a stable assignment of KPIs to a fixed number of training partitions.

A KPI's shard is ``crc32(name) mod shards``: the same in every process and on every machine
(Python's ``hash`` of a string is not), and independent of which other KPIs exist, so adding a
KPI never moves another one.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

SHARD_PREFIX = "shard-"


def shard_keys(shards: int) -> list[str]:
    """The partition keys of ``shards`` shards: ``shard-00``, ``shard-01``, …"""
    if shards < 1:
        raise ValueError(f"need at least one shard, not {shards}")
    width = max(2, len(str(shards - 1)))
    return [f"{SHARD_PREFIX}{index:0{width}d}" for index in range(shards)]


def shard_of(kpi: str, shards: int) -> str:
    """The partition key of the shard that ``kpi`` belongs to."""
    return shard_keys(shards)[zlib.crc32(kpi.encode("utf-8")) % shards]


def kpis_in_shards(kpis: Iterable[str], shard_keys_: Iterable[str], shards: int) -> list[str]:
    """The KPIs of ``kpis`` that belong to any of the shards ``shard_keys_``, sorted."""
    wanted = set(shard_keys_)
    unknown = wanted - set(shard_keys(shards))
    if unknown:
        raise ValueError(
            f"unknown shard(s) {', '.join(sorted(unknown))}: there are {shards} shards "
            f"({shard_keys(shards)[0]} .. {shard_keys(shards)[-1]}; KPI_TRAINING_SHARDS)"
        )
    return sorted(kpi for kpi in kpis if shard_of(kpi, shards) in wanted)


def shards_of(kpis: Iterable[str], shards: int) -> list[str]:
    """The shards holding any of ``kpis``, sorted."""
    return sorted({shard_of(kpi, shards) for kpi in kpis})
