import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.detection.metrics import (
    EventMetrics,
    PointMetrics,
    combine,
    combine_points,
    delay_point_metrics,
    event_metrics,
    windows_from_labels,
)

WINDOWS = [(5, 7), (12, 14)]


def flags_at(*rows: int, n_rows: int = 20) -> np.ndarray:
    flags = np.zeros(n_rows, dtype=bool)
    flags[list(rows)] = True
    return flags


def test_caught_and_missed_windows():
    metrics = event_metrics(flags_at(6), WINDOWS)
    assert metrics == EventMetrics(
        tp_events=1, fn_events=1, fp_events=0, precision=1.0, recall=0.5, f1=pytest.approx(2 / 3)
    )


def test_several_flags_in_one_window_are_one_caught_event():
    metrics = event_metrics(flags_at(5, 6, 7, 13), WINDOWS)
    assert (metrics.tp_events, metrics.fn_events, metrics.fp_events) == (2, 0, 0)


def test_a_run_of_flags_outside_windows_is_one_false_event():
    metrics = event_metrics(flags_at(1, 2, 3), WINDOWS)
    assert (metrics.tp_events, metrics.fn_events, metrics.fp_events) == (0, 2, 1)
    assert (metrics.precision, metrics.recall, metrics.f1) == (0.0, 0.0, 0.0)


def test_separate_runs_are_separate_false_events():
    # Rows 8-9 lead straight out of a window but still lie outside it.
    metrics = event_metrics(flags_at(1, 2, 7, 8, 9, 17), WINDOWS)
    assert (metrics.tp_events, metrics.fp_events) == (1, 3)
    assert metrics.precision == pytest.approx(0.25)


def test_rows_before_ignore_before_count_for_nothing():
    metrics = event_metrics(flags_at(0, 1, 6, 10), WINDOWS, ignore_before=8)
    # The window at 5-7 lies wholly before row 8: neither caught nor missed.
    assert (metrics.tp_events, metrics.fn_events, metrics.fp_events) == (0, 1, 1)
    # A false run crossing the boundary still counts once.
    assert event_metrics(flags_at(7, 8, 9), [], ignore_before=8).fp_events == 1


def test_empty_denominators():
    silent_on_quiet = event_metrics(flags_at(), [])
    assert (silent_on_quiet.precision, silent_on_quiet.recall, silent_on_quiet.f1) == (1, 1, 1)
    silent_on_incidents = event_metrics(flags_at(), WINDOWS)
    assert (silent_on_incidents.precision, silent_on_incidents.recall) == (0.0, 0.0)
    assert silent_on_incidents.f1 == 0.0
    alarms_on_quiet = event_metrics(flags_at(3), [])
    assert (alarms_on_quiet.precision, alarms_on_quiet.recall, alarms_on_quiet.f1) == (0, 1, 0)


def test_combine_pools_counts_rather_than_averaging_ratios():
    perfect = event_metrics(flags_at(6), [(5, 7)])
    noisy = event_metrics(flags_at(1, 3, 17), WINDOWS)
    pooled = combine([perfect, noisy])
    assert (pooled.tp_events, pooled.fn_events, pooled.fp_events) == (1, 2, 3)
    assert pooled.precision == pytest.approx(1 / 4)
    assert pooled.recall == pytest.approx(1 / 3)
    assert pooled.f1 == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))


# A ten-row window: long enough for the first k = 7 rows to be a strict part of it.
LONG_WINDOW = [(5, 14)]


@pytest.mark.parametrize(("offset", "caught"), [(0, True), (6, True), (7, False), (9, False)])
def test_delay_metric_counts_a_window_only_if_caught_within_its_first_k_rows(offset, caught):
    metrics = delay_point_metrics(flags_at(5 + offset), LONG_WINDOW, k=7)

    # A late flag inside the window is no false positive either: the window is simply missed.
    expected = (10, 0, 0) if caught else (0, 10, 0)
    assert (metrics.tp_points, metrics.fn_points, metrics.fp_points) == expected


def test_delay_metric_counts_every_row_of_a_caught_window_and_each_false_row():
    # Window 5-7 is caught on its second row (all 3 rows count); window 12-14 is missed; rows 2,
    # 3 and 19 are three false positives although 2-3 is one run.
    metrics = delay_point_metrics(flags_at(2, 3, 6, 19), WINDOWS, k=7)

    assert metrics == PointMetrics(tp_points=3, fn_points=3, fp_points=3, precision=0.5, recall=0.5, f1=0.5)


def test_delay_metric_with_k_one_needs_the_first_row():
    assert delay_point_metrics(flags_at(5), LONG_WINDOW, k=1).tp_points == 10
    assert delay_point_metrics(flags_at(6), LONG_WINDOW, k=1).fn_points == 10


def test_delay_metric_cuts_windows_at_ignore_before():
    # Rows 8-14 remain of the window; its first 3 rows are now 8, 9 and 10. The flag at 6 is
    # dropped, so it neither catches the window nor counts as a false positive.
    caught = delay_point_metrics(flags_at(6, 10), LONG_WINDOW, k=3, ignore_before=8)
    missed = delay_point_metrics(flags_at(6, 11), LONG_WINDOW, k=3, ignore_before=8)
    wholly_before = delay_point_metrics(flags_at(3), [(2, 4)], k=3, ignore_before=8)

    assert (caught.tp_points, caught.fn_points, caught.fp_points) == (7, 0, 0)
    assert (missed.tp_points, missed.fn_points, missed.fp_points) == (0, 7, 0)
    assert (wholly_before.tp_points, wholly_before.fn_points, wholly_before.fp_points) == (0, 0, 0)


def test_delay_metric_empty_denominators_match_the_event_metric():
    silent_on_quiet = delay_point_metrics(flags_at(), [])
    silent_on_incidents = delay_point_metrics(flags_at(), WINDOWS)

    assert (silent_on_quiet.precision, silent_on_quiet.recall, silent_on_quiet.f1) == (1, 1, 1)
    assert (silent_on_incidents.precision, silent_on_incidents.recall) == (0.0, 0.0)


def test_delay_metric_rejects_a_k_below_one():
    with pytest.raises(ValueError, match="k must be at least 1"):
        delay_point_metrics(flags_at(5), LONG_WINDOW, k=0)


def test_combine_points_pools_counts_rather_than_averaging_ratios():
    caught = delay_point_metrics(flags_at(5), LONG_WINDOW)  # tp 10
    noisy = delay_point_metrics(flags_at(1, 2), WINDOWS)  # fn 6, fp 2
    pooled = combine_points([caught, noisy])

    assert (pooled.tp_points, pooled.fn_points, pooled.fp_points) == (10, 6, 2)
    assert pooled.precision == pytest.approx(10 / 12)
    assert pooled.recall == pytest.approx(10 / 16)


def labels(*spans: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(spans, columns=["start", "end"])


def test_windows_from_labels_maps_inclusive_edges_to_rows():
    timestamps = pd.Series(pd.date_range("2024-01-01", periods=10, freq="h"))
    unsorted_labels = labels(("2024-01-01 05:00", "2024-01-01 06:00"), ("2024-01-01 00:30", "2024-01-01 03:30"))
    windows = windows_from_labels(timestamps, unsorted_labels)
    assert windows == [(1, 3), (5, 6)]


def test_windows_from_labels_counts_rows_by_position_over_duplicates():
    timestamps = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 01:00", "2024-01-01 02:00"])
    assert windows_from_labels(timestamps, labels(("2024-01-01 01:00", "2024-01-01 01:00"))) == [(1, 2)]


def test_label_in_a_data_gap_maps_to_the_first_row_after_it():
    timestamps = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 05:00", "2024-01-01 06:00"])
    gap = labels(("2024-01-01 02:00", "2024-01-01 03:00"))
    assert windows_from_labels(timestamps, gap) == [(2, 2)]
    past_the_end = labels(("2024-01-02 00:00", "2024-01-02 01:00"))
    assert windows_from_labels(timestamps, past_the_end) == []
