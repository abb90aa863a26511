import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.calibration import score_from_surprise, surprise_from_score
from kpi_pipeline.detection.events import (
    opening_scores,
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
    ids, alert = assign_events(
        "k", TS[split:], flags(pattern[split:]), gap, open_event_from(first, gap)
    )
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
        "kpi", "event_id", "start", "end", "points", "peak_score", "severity", "flagged_by",
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


def scores_of(surprise) -> np.ndarray:
    return score_from_surprise(np.asarray(surprise, dtype=float), 3.5)


def opening(surprise, margin: float = 1.0) -> np.ndarray:
    return opening_scores(scores_of(surprise), merge_gap=2, threshold=3.5, margin=margin)


def test_opening_scores_keep_points_a_decade_above_the_openings_in_the_merge_window_before():
    surprise = [0.5, 2.0, 1.0, 4.0, 4.5, 6.0, 2.0, 1.0, 0.2, 0.2, 0.2, 1.5, 1.1]
    # 0.5 opens (nothing before); 2.0 is 1.5 above it; 1.0 does not beat 2.0; 4.0 is 2 above
    # the opening 2.0; 4.5 beats the three before it but is less than a decade above the
    # opening 4.0 among them; 6.0 is 2 above it; the points after it do not beat the three
    # before them until 1.5 (no opening among its three 0.2s); 1.1 does not beat 1.5.
    opens = [True, True, False, True, False, True, False, False, False, False, False, True, False]
    np.testing.assert_array_equal(opening(surprise), np.where(opens, scores_of(surprise), 0.0))


@pytest.mark.parametrize("step, every", [(0.4, {3}), (1.5, {1}), (0.1, {4})])
def test_evidence_that_climbs_row_by_row_registers_once_per_decade_or_per_window(step, every):
    # A stuck value gathers evidence row by row, `step` decades more each row, up to ~8: a climb
    # registers once per decade, or once per merge window + 1 rows when it is slower than that.
    climb = 1.0 + step * np.arange(int(7.0 / step))
    surprise = np.array([0.3, 0.2, 0.4, *climb, 0.2, 0.1])
    passes = np.flatnonzero(opening(surprise)[3:] > 0)
    assert passes[0] == 1  # the window before the climb's first row holds the opening 0.3
    assert set(np.diff(passes)) == every
    # At any threshold up to a decade below its peak, the climb passes within a decade (or one
    # step, if steeper) of first reaching it.
    for level in climb[climb <= climb.max() - 1.0]:
        reached = np.flatnonzero(climb >= level)[0]
        assert climb[passes[passes >= reached][0]] <= level + max(1.0, step)


def test_a_flare_up_after_a_quiet_window_opens_again():
    surprise = [5.0, 5.2, 0.3, 0.2, 0.3, 4.6, 0.1]
    assert np.flatnonzero(opening(surprise)).tolist() == [0, 5]


@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.5, 0.6, 0.8, 0.95])
def test_at_any_threshold_every_event_passes_unless_an_opening_just_below_it_covers_it(threshold):
    rng = np.random.default_rng(3)
    # Quiet stretches with bursts of high scores, so events open and run at every threshold.
    score = np.where(rng.uniform(size=600) < 0.1, rng.uniform(0.5, 1.0, 600), rng.uniform(0, 0.5, 600))
    opened = opening_scores(score, merge_gap=2, threshold=3.5, margin=1.0)
    surprise = surprise_from_score(score, 3.5)
    window_max = pd.Series(surprise).shift(1).rolling(3, min_periods=1).max().fillna(-np.inf)
    flagged = score >= threshold
    ts = pd.date_range("2025-01-01", periods=len(score), freq="h")
    ids, alert = assign_events("k", ts, flagged, merge_gap=2)
    passes = opened >= threshold
    assert (passes <= flagged).all()
    # Events from a quiet window (more than a decade below their first point) always pass there.
    from_quiet = alert & (surprise >= window_max.to_numpy() + 1.0)
    assert from_quiet.any() and passes[from_quiet].all()
    # Any other event that no point of passes starts less than a decade above an opening in the
    # merge window before it (the one price of counting a climb once per decade).
    events = pd.Series(np.arange(len(score)))[flagged].groupby(ids[flagged]).agg(["min", "max"])
    dropped = 0
    for first, last in events.itertuples(index=False):
        if passes[first : last + 1].any():
            continue
        dropped += 1
        before = np.arange(max(0, first - 3), first)
        openings = surprise[before][opened[before] > 0]
        assert len(openings) and surprise[first] < openings.max() + 1.0
    assert dropped < len(events) / 4
