"""The multivariate fold's generator (kpi_pipeline/datagen/multivariate.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline import groups
from kpi_pipeline.datagen import main
from kpi_pipeline.datagen.common import LABELS_FILE
from kpi_pipeline.datagen.multivariate import GROUP_LABELS_FILE, GROUPS, GROUPS_FILE, INDEPENDENT, generate
from kpi_pipeline.config import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "dataset" / "multivariate"


@pytest.fixture(scope="module")
def fold():
    return generate(42)


def test_the_committed_group_files_are_what_the_cli_writes(tmp_path):
    main(["--profile", "multivariate", "--out", str(tmp_path), "--seed", "42"])
    for name in (GROUP_LABELS_FILE, GROUPS_FILE, LABELS_FILE):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes()
    declared = groups.load_groups(COMMITTED / GROUPS_FILE)
    assert {g.name: g.members for g in declared} == GROUPS


def test_each_group_incident_moves_several_members_not_all_one_way(fold):
    data, labels, group_labels = fold
    for incident in group_labels.itertuples(index=False):
        members = incident.members.split()
        assert 2 <= len(members) <= len(GROUPS[incident.group])
        assert set(members) <= set(GROUPS[incident.group])
        window = (data["date"] >= incident.start) & (data["date"] <= incident.end)
        before = (data["date"] >= incident.start - pd.Timedelta(days=7)) & (
            data["date"] < incident.start - pd.Timedelta(days=1)
        )
        # The same hours a week earlier are the reference: its direction per member.
        earlier = data.loc[window, "date"] - pd.Timedelta(days=7)
        directions = []
        for kpi in members:
            now = np.log(data.loc[window, kpi].to_numpy())
            then = np.log(data.set_index("date").loc[earlier, kpi].to_numpy())
            directions.append(np.sign(np.median(now - then)))
        assert len(set(directions)) == 2, incident
        assert before.any()
        # Every member it moved is labelled on its own, kind "group".
        mine = labels[(labels["kind"] == "group") & (labels["start"] == incident.start)]
        assert sorted(mine["kpi"]) == sorted(members)


def test_members_residuals_correlate_within_a_group_and_not_across(fold):
    data, _, _ = fold
    logs = np.log(data.set_index("date"))
    # Residuals from a seasonal baseline: the median of the same hour of the week.
    hour_of_week = logs.index.dayofweek * 24 + logs.index.hour
    corr = (logs - logs.groupby(hour_of_week).transform("median")).corr(method="spearman")
    within = [corr.loc[a, b] for members in GROUPS.values() for a in members for b in members if a < b]
    across = [corr.loc[a, b] for a in INDEPENDENT for b in logs.columns if a != b]
    assert min(within) > 0.3
    assert max(abs(c) for c in across) < 0.15
