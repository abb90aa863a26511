import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.events import (
    OpenEvent,
    assign_events,
    event_id_for,
    open_event_from,
    summarize_events,
)

TS = pd.date_range("2025-01-01", periods=12, freq="h", tz="UTC")


def flags(pattern: str) -> np.ndarray:
    return np.array([c == "x" for c in pattern])


def ids_of(event_ids) -> list[str | None]:
    # pandas may hold "no event" as None or NaN depending on the column dtype.
    return [None if pd.isna(e) else e for e in event_ids]


def starts(event_ids) -> list[str | None]:
    """Each point's event as the HH:MM of its first point."""
    return [None if e is None else e.split("@", 1)[1][11:16] for e in ids_of(event_ids)]


def test_event_id_is_the_kpi_and_its_first_timestamp():
    assert event_id_for("sales", TS[3]) == "sales@2025-01-01T03:00:00+00:00"


def test_consecutive_flags_form_one_event_that_alerts_once():
    ids, alert = assign_events("sales", TS[:6], flags(".xxx.x"))
    assert starts(ids) == [None, "01:00", "01:00", "01:00", None, "05:00"]
    assert alert.tolist() == [False, True, False, False, False, True]


@pytest.mark.parametrize(
    "merge_gap, expected",
    [
        (0, ["00:00", None, None, "03:00", None, "05:00"]),
        (1, ["00:00", None, None, "03:00", None, "03:00"]),
        (2, ["00:00", None, None, "00:00", None, "00:00"]),
    ],
)
def test_merge_gap_allows_quiet_points_inside_one_event(merge_gap, expected):
    ids, alert = assign_events("k", TS[:6], flags("x..x.x"), merge_gap=merge_gap)
    assert starts(ids) == expected
    assert alert.sum() == len({e for e in expected if e})


def test_an_open_event_from_the_previous_batch_is_continued():
    previous = OpenEvent(event_id="k@earlier", quiet_points=1)
    ids, alert = assign_events("k", TS[:3], flags(".x."), merge_gap=2, open_event=previous)
    assert ids.tolist() == [None, "k@earlier", None]
    assert not alert.any()


def test_an_open_event_is_closed_once_the_quiet_run_exceeds_the_merge_gap():
    previous = OpenEvent(event_id="k@earlier", quiet_points=1)
    ids, alert = assign_events("k", TS[:3], flags("..x"), merge_gap=2, open_event=previous)
    assert ids[2] == event_id_for("k", TS[2])
    assert alert.tolist() == [False, False, True]


def scored(pattern: str, merge_gap: int, kpi: str = "k") -> pd.DataFrame:
    is_anomaly = flags(pattern)
    ts = TS[: len(pattern)]
    ids, alert = assign_events(kpi, ts, is_anomaly, merge_gap)
    return pd.DataFrame({"ts": ts, "is_anomaly": is_anomaly, "event_id": ids, "alert": alert})


def test_open_event_from_reports_the_last_event_and_its_quiet_points():
    rows = scored("x..xx.", merge_gap=2)
    assert open_event_from(rows, merge_gap=2) == OpenEvent(event_id_for("k", TS[0]), 1)


@pytest.mark.parametrize("pattern", ["", "....", "x..."])
def test_open_event_from_is_none_when_nothing_can_be_joined(pattern):
    assert open_event_from(scored(pattern, merge_gap=2), merge_gap=2) is None


@pytest.mark.parametrize("split", range(1, 12))
def test_batches_joined_by_open_event_match_one_pass(split):
    pattern, gap = "x.xx...x..xx", 2
    whole = scored(pattern, gap)
    first = scored(pattern[:split], gap)
    ids, alert = assign_events("k", TS[split:], flags(pattern[split:]), gap, open_event_from(first, gap))
    assert ids_of([*first["event_id"], *ids]) == ids_of(whole["event_id"])
    assert [*first["alert"], *alert] == whole["alert"].tolist()


def test_summarize_events_one_row_per_event_newest_first():
    rows = pd.DataFrame(
        {
            "kpi": ["a"] * 6 + ["b"] * 2,
            "ts": [*TS[:6], *TS[:2]],
            "is_anomaly": [True, True, False, True, False, False, True, False],
            "score": [0.55, 0.9, 0.1, 0.6, 0.2, 0.1, 0.52, 0.1],
            "severity": ["low", "critical", None, "medium", None, None, "low", None],
            "flagged_by": ["prophet", "iforest,prophet", None, "flatline", None, None, "gap", None],
        }
    )
    rows["event_id"] = None
    for kpi, part in rows.groupby("kpi"):
        ids, _ = assign_events(kpi, part["ts"], part["is_anomaly"].to_numpy(), merge_gap=0)
        rows.loc[part.index, "event_id"] = ids

    summary = summarize_events(rows)
    assert list(summary.columns) == [
        "kpi",
        "event_id",
        "start",
        "end",
        "points",
        "peak_score",
        "severity",
        "flagged_by",
    ]
    assert summary["start"].is_monotonic_decreasing
    by_id = summary.set_index("event_id")
    first = by_id.loc[event_id_for("a", TS[0])]
    assert (first["start"], first["end"], first["points"]) == (TS[0], TS[1], 2)
    assert first["peak_score"] == 0.9 and first["severity"] == "critical"
    assert first["flagged_by"] == "iforest,prophet"
    assert by_id.loc[event_id_for("a", TS[3]), "severity"] == "medium"
    assert by_id.loc[event_id_for("b", TS[0]), "flagged_by"] == "gap"
    assert len(summary) == 3


def test_summarize_events_without_anomalies_is_empty():
    rows = scored("....", merge_gap=0).assign(score=0.0, severity=None, flagged_by=None, kpi="k")
    summary = summarize_events(rows)
    assert summary.empty and "event_id" in summary.columns
