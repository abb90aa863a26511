import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.evaluation.nab import (
    PROFILES,
    NabFile,
    Profile,
    best_threshold,
    load_corpus,
    normalised_score,
    probation_length,
    scaled_sigmoid,
    score_corpus,
    score_detections,
)

NAB_DEV = Path("/work/shared/bench/nab-dev")
STANDARD = PROFILES["standard"]
LOW_FN = PROFILES["reward_low_FN_rate"]

# 100 rows -> probation 15; one ten-row window well after it.
N_ROWS = 100
WINDOW = (40, 49)


def flags_at(*rows: int, n_rows: int = N_ROWS) -> np.ndarray:
    flags = np.zeros(n_rows, dtype=bool)
    flags[list(rows)] = True
    return flags


def synthetic_file(relpath: str, n_rows: int, windows: list[tuple[int, int]]) -> NabFile:
    timestamps = pd.date_range("2024-01-01", periods=n_rows, freq="5min")
    frame = pd.DataFrame({"timestamp": timestamps, "value": np.zeros(n_rows)})
    return NabFile(relpath, relpath.split("/")[0], frame, windows)


@pytest.fixture(scope="module")
def corpus() -> list[NabFile]:
    return load_corpus(NAB_DEV / "data", NAB_DEV / "windows.json")


def test_profiles_are_the_published_weights():
    assert PROFILES == {
        "standard": Profile(1, 0.11, 1),
        "reward_low_FP_rate": Profile(1, 0.22, 1),
        "reward_low_FN_rate": Profile(1, 0.11, 2),
    }


@pytest.mark.parametrize(("n_rows", "expected"), [(0, 0), (100, 15), (4032, 604), (15902, 750)])
def test_probation_is_fifteen_percent_capped_at_750(n_rows, expected):
    assert probation_length(n_rows) == expected


def test_scaled_sigmoid():
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(-1.0) == pytest.approx(0.986614, abs=1e-6)
    assert scaled_sigmoid(2.9) == pytest.approx(-0.999999, abs=1e-6)
    assert scaled_sigmoid(3.5) == -1.0
    np.testing.assert_array_equal(scaled_sigmoid(np.array([0.0, 1000.0])), [0.0, -1.0])


def test_detection_at_window_start_earns_a_tp():
    score = score_detections(flags_at(40), [WINDOW], STANDARD)
    assert score.raw == pytest.approx(1.0)
    assert (score.tp, score.fn, score.fp) == (1, 0, 0)


def test_detection_at_window_end_earns_sigmoid_of_one_width():
    # w = 10, i = r: sigma(-1/10) / sigma(-1) = tanh(0.25) / tanh(2.5)
    by_hand = (2 / (1 + math.exp(-0.5)) - 1) / (2 / (1 + math.exp(-5)) - 1)
    assert by_hand == pytest.approx(0.248242, abs=1e-6)
    assert score_detections(flags_at(49), [WINDOW], STANDARD).raw == pytest.approx(by_hand)


def test_only_the_earliest_detection_in_a_window_counts():
    middle_alone = score_detections(flags_at(45), [WINDOW], STANDARD)
    with_later = score_detections(flags_at(45, 47, 49), [WINDOW], STANDARD)
    assert with_later == middle_alone
    assert middle_alone.raw < 1.0


@pytest.mark.parametrize(("profile", "cost"), [(STANDARD, 1.0), (LOW_FN, 2.0)])
def test_missed_window_costs_a_fn(profile, cost):
    score = score_detections(flags_at(), [WINDOW], profile)
    assert score.raw == -cost
    assert (score.tp, score.fn, score.fp) == (0, 1, 0)


def test_detections_in_probation_change_nothing():
    nothing = score_detections(flags_at(), [WINDOW], STANDARD)
    assert score_detections(flags_at(0, 5, 14), [WINDOW], STANDARD) == nothing
    assert score_detections(flags_at(14, 15), [WINDOW], STANDARD).fp == 1


def test_window_inside_probation_is_not_scored():
    score = score_detections(flags_at(), [(3, 8), WINDOW], STANDARD)
    assert (score.raw, score.fn) == (-1.0, 1)


@pytest.mark.parametrize("profile", PROFILES.values())
def test_false_positive_before_any_window_costs_a_fp(profile):
    score = score_detections(flags_at(20), [], profile)
    assert score.raw == -profile.a_fp
    assert score.fp == 1
    assert score_detections(flags_at(20, 40), [WINDOW], profile).raw == pytest.approx(1.0 - profile.a_fp)


def test_every_flagged_row_outside_windows_counts():
    score = score_detections(flags_at(20, 21, 22), [], STANDARD)
    assert score.raw == pytest.approx(-3 * 0.11)
    assert score.fp == 3


def test_false_positive_cost_grows_with_distance_after_a_window():
    n_rows, window = 2000, (500, 899)  # w = 400
    caught = score_detections(flags_at(500, n_rows=n_rows), [window], STANDARD).raw
    just_after = score_detections(flags_at(500, 900, n_rows=n_rows), [window], STANDARD).raw
    far_after = score_detections(flags_at(500, 1900, n_rows=n_rows), [window], STANDARD).raw
    # sigma(1/399) = -tanh(2.5/399)
    assert just_after - caught == pytest.approx(-0.11 * math.tanh(2.5 / 399))
    assert -0.001 < just_after - caught < 0
    assert far_after - caught == pytest.approx(-0.11, abs=1e-4)


def test_one_row_window_does_not_divide_by_zero():
    score = score_detections(flags_at(40, 41), [(40, 40)], STANDARD)
    assert score.raw == pytest.approx(1.0 - 0.11 * math.tanh(2.5))


def test_overlapping_windows_are_rejected():
    with pytest.raises(ValueError):
        score_detections(flags_at(), [(40, 49), (45, 60)], STANDARD)


def test_normalised_score_by_hand():
    assert normalised_score(0.0, 2, STANDARD) == 50.0
    assert normalised_score(0.0, 2, LOW_FN) == pytest.approx(100 * 4 / 6)


@pytest.mark.parametrize("profile", PROFILES.values())
def test_perfect_detector_scores_100_and_silent_one_0(corpus, profile):
    whole_windows = {}
    for nab_file in corpus:
        flags = np.zeros(len(nab_file.frame), dtype=bool)
        for first, last in nab_file.windows:
            flags[first : last + 1] = True
        whole_windows[nab_file.relpath] = flags
    silent = {f.relpath: np.zeros(len(f.frame), dtype=bool) for f in corpus}

    perfect_score = score_corpus(whole_windows, corpus, profile)
    silent_score = score_corpus(silent, corpus, profile)
    assert perfect_score.normalised == pytest.approx(100.0)
    assert (perfect_score.tp, perfect_score.fn, perfect_score.fp) == (83, 0, 0)
    assert silent_score.normalised == pytest.approx(0.0)
    assert (silent_score.tp, silent_score.fn, silent_score.fp) == (0, 83, 0)


def test_score_corpus_adds_files_up():
    files = [synthetic_file("a/one.csv", N_ROWS, [WINDOW]), synthetic_file("b/two.csv", N_ROWS, [])]
    detections = {"a/one.csv": flags_at(40), "b/two.csv": flags_at(20, 30)}
    result = score_corpus(detections, files, STANDARD)
    assert (result.tp, result.fn, result.fp) == (1, 0, 2)
    assert result.raw == pytest.approx(1.0 - 2 * 0.11)
    assert result.normalised == pytest.approx(100 * (result.raw + 1) / 2)
    with pytest.raises(KeyError):
        score_corpus({"a/one.csv": flags_at(40)}, files, STANDARD)


def random_corpus(rng: np.random.Generator) -> tuple[list[NabFile], dict[str, np.ndarray]]:
    files, scores = [], {}
    for index in range(int(rng.integers(1, 4))):
        n_rows = int(rng.integers(20, 60))
        # Windows may touch probation, but the first file always has one past it to normalise by.
        lowest_edge = probation_length(n_rows) if index == 0 else 1
        n_windows = int(rng.integers(1 if index == 0 else 0, 4))
        edges = np.sort(rng.choice(np.arange(lowest_edge, n_rows), 2 * n_windows, replace=False))
        windows = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
        relpath = f"cat/file{index}.csv"
        files.append(synthetic_file(relpath, n_rows, windows))
        # Coarse values make ties; NaN rows are never detections.
        file_scores = np.round(rng.random(n_rows), 1)
        file_scores[rng.random(n_rows) < 0.1] = np.nan
        scores[relpath] = file_scores
    return files, scores


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("profile", PROFILES.values())
def test_best_threshold_matches_brute_force(seed, profile):
    files, scores = random_corpus(np.random.default_rng(seed))
    candidates = np.unique(np.concatenate(list(scores.values())))
    candidates = [math.inf, *candidates[~np.isnan(candidates)]]
    brute_best = max(
        score_corpus({p: s >= t for p, s in scores.items()}, files, profile).normalised for t in candidates
    )

    threshold, result = best_threshold(scores, files, profile)
    assert result.normalised == pytest.approx(brute_best, abs=1e-9)
    assert result == score_corpus({p: s >= threshold for p, s in scores.items()}, files, profile)


def test_best_threshold_flags_nothing_when_every_detection_hurts():
    files = [synthetic_file("a/one.csv", N_ROWS, [WINDOW])]
    scores = np.zeros(N_ROWS)
    scores[60:90] = 0.9  # only false positives score high
    threshold, result = best_threshold({"a/one.csv": scores}, files, STANDARD)
    assert threshold == math.inf
    assert (result.normalised, result.fn, result.fp) == (0.0, 1, 0)


def test_best_threshold_never_counts_nan_scores_as_detections():
    # The window spans every row after probation (3 of 20); its first row has no score yet.
    files = [synthetic_file("a/one.csv", 20, [(3, 19)])]
    scores = np.full(20, 0.9)
    scores[3] = np.nan
    threshold, result = best_threshold({"a/one.csv": scores}, files, STANDARD)
    assert threshold == 0.9
    assert result.raw == score_detections(flags_at(4, n_rows=20), [(3, 19)], STANDARD).raw < 1.0


def test_best_threshold_on_the_real_corpus_beats_other_thresholds(corpus):
    rng = np.random.default_rng(7)
    scores = {f.relpath: rng.random(len(f.frame)) for f in corpus}
    _, result = best_threshold(scores, corpus, STANDARD)
    for threshold in (0.5, 0.99, 0.999):
        detections = {p: s >= threshold for p, s in scores.items()}
        assert result.normalised >= score_corpus(detections, corpus, STANDARD).normalised


def test_load_corpus_reads_the_dev_split(corpus):
    assert len(corpus) == 45
    assert sum(len(f.windows) for f in corpus) == 83
    assert [f.relpath for f in corpus] == sorted(f.relpath for f in corpus)
    for nab_file in corpus:
        assert nab_file.category == nab_file.relpath.split("/")[0]
        assert list(nab_file.frame.columns) == ["timestamp", "value"]
        assert pd.api.types.is_datetime64_dtype(nab_file.frame["timestamp"])
        assert nab_file.frame["timestamp"].dt.tz is None
        assert nab_file.frame["value"].dtype == float
        for first, last in nab_file.windows:
            assert 0 <= first <= last < len(nab_file.frame)


def test_load_corpus_maps_window_edges_to_rows(corpus):
    by_path = {f.relpath: f for f in corpus}
    flatmiddle = by_path["artificialWithAnomaly/art_daily_flatmiddle.csv"]
    ((first, last),) = flatmiddle.windows
    timestamps = flatmiddle.frame["timestamp"]
    assert timestamps[first] == pd.Timestamp("2014-04-10 07:15:00")
    assert timestamps[last] == pd.Timestamp("2014-04-11 16:45:00")
    # A file with DST duplicates keeps every row, so positions match the CSV's lines.
    duplicated = by_path["realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv"]
    csv_rows = sum(1 for _ in open(NAB_DEV / "data" / duplicated.relpath)) - 1
    assert len(duplicated.frame) == csv_rows
    assert duplicated.frame["timestamp"].duplicated().any()
