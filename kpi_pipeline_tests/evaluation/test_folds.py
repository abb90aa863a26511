import json

import numpy as np
import pytest

from kpi_pipeline.evaluation.folds import FoldSeries, score_fold, write_fold_report

N = 1000  # probation: the first 150 rows


def series(windows, alerts) -> FoldSeries:
    alert = np.zeros(N, dtype=bool)
    alert[list(alerts)] = True
    return FoldSeries(windows=windows, alert=alert, is_anomaly=alert.copy())


def test_a_fold_that_catches_every_window_at_its_start_and_nothing_else_scores_100():
    fold = score_fold("perfect", [series([(400, 420)], [400]), series([(600, 650)], [600])])
    assert fold.standard == pytest.approx(100.0, abs=1.5)  # a window's start earns ~0.99
    assert (fold.tp_events, fold.fn_events, fold.fp_events) == (2, 0, 0)
    assert fold.delay_f1 == 1.0
    # Caught only after its first 7 points, a window counts for events but not for the delay F1.
    late = score_fold("late", [series([(400, 420)], [410])])
    assert late.recall == 1.0 and late.delay_f1 == 0.0


def test_a_silent_detector_scores_0_and_a_false_alarm_costs_more_on_the_low_fp_profile():
    silent = score_fold("silent", [series([(400, 420)], [])])
    noisy = score_fold("noisy", [series([(400, 420)], [400, 200])])
    assert silent.standard == pytest.approx(0.0) and silent.recall == 0.0
    assert noisy.low_FP < noisy.standard < 100.0
    assert noisy.fp_events == 1 and noisy.precision == 0.5


def test_a_fold_without_windows_scores_100_when_silent_and_pays_per_false_detection():
    assert score_fold("quiet", [series([], []), series([], [])]).standard == 100.0
    # One false detection (long before any window could excuse it) in one of two files.
    one_false = score_fold("one", [series([], [500]), series([], [])])
    assert one_false.standard == pytest.approx(100.0 - 100.0 * 0.11 / 2)


def test_the_report_shows_every_fold_and_the_change_against_a_baseline(tmp_path):
    before = [score_fold("a", [series([(400, 420)], [])])]
    write_fold_report(tmp_path / "before", before)
    after = [score_fold("a", [series([(400, 420)], [400])])]
    text = write_fold_report(tmp_path / "after", after, baseline=tmp_path / "before" / "folds.json")
    row = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert f"({after[0].standard:+.1f})" in row and "Mean over 1 folds" in text
    assert json.loads((tmp_path / "after" / "folds.json").read_text())[0]["fold"] == "a"
