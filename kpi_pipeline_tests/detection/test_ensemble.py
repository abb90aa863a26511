import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from kpi_pipeline.detection.ensemble import (
    SCORE_COLUMNS,
    DetectorConfig,
    EnsembleDetector,
    InsufficientHistory,
    severity_of,
)
from kpi_pipeline.detection.artifacts import DOCUMENT_HEAD, UnreadableArtifact, read_document, unpack
from kpi_pipeline.detection.events import SEVERITY_ORDER, assign_events
from kpi_pipeline_tests.detection.test_artifacts import as_version_2
from kpi_pipeline_tests.detection.synthetic import LEVEL, NOISE_SIGMA, daily_sine

N_POINTS = 21 * 24
N_TRAIN = 14 * 24
SPIKE = N_TRAIN + 64  # a point in the scored part, positions count from the series' start
# The default residual-scale window (1000 points) is longer than these three weeks; a short one
# lets every scored point see its full context, which the batch-equivalence test relies on.
CONFIG = DetectorConfig(scale_window=96)


@pytest.fixture(scope="module")
def series() -> tuple[pd.DatetimeIndex, np.ndarray]:
    return daily_sine(N_POINTS, seed=0)


@pytest.fixture(scope="module")
def detector(series) -> EnsembleDetector:
    ts, y = series
    return EnsembleDetector(CONFIG, random_state=0).fit(ts[:N_TRAIN], y[:N_TRAIN])


def score_after_training(detector: EnsembleDetector, ts, y, gap=None) -> pd.DataFrame:
    """Scores of the points after the training window, with the context the detector needs."""
    context = min(N_TRAIN, detector.context_points)
    window = slice(N_TRAIN - context, None)
    return detector.score(ts[window], y[window], n_context=context, gap=None if gap is None else gap[window])


def row(scores: pd.DataFrame, position: int) -> pd.Series:
    return scores.iloc[position - N_TRAIN]


@pytest.fixture(scope="module")
def clean_scores(detector, series) -> pd.DataFrame:
    return score_after_training(detector, *series)


@pytest.fixture(scope="module")
def spike_scores(detector, series) -> pd.DataFrame:
    ts, y = series
    spiked = y.copy()
    spiked[SPIKE] += 8 * NOISE_SIGMA
    return score_after_training(detector, ts, spiked)


# -- conventions -------------------------------------------------------------------------------


def test_sklearn_conventions(detector):
    config = DetectorConfig(threshold=4.0)
    fresh = EnsembleDetector(config=config, random_state=7)
    assert fresh.get_params() == {"config": config, "random_state": 7}
    assert clone(fresh).get_params() == fresh.get_params()
    assert not hasattr(clone(detector), "prophet_")
    learned = set(vars(detector)) - set(vars(EnsembleDetector()))
    assert {"prophet_", "iforest_", "deviation_tail_"} <= learned
    assert all(name.endswith("_") for name in learned)


def test_fit_records_the_training_window(detector, series):
    ts, _ = series
    assert detector.n_train_points_ == N_TRAIN
    assert (detector.train_start_, detector.train_end_) == (ts[0], ts[N_TRAIN - 1])


def test_config_is_plain_data():
    as_dict = DetectorConfig().to_dict()
    assert as_dict["threshold"] == DetectorConfig.threshold and as_dict["prophet"]["holidays_country"] == "US"


def test_scores_follow_the_output_contract(detector, series, clean_scores):
    ts, y = series
    assert list(clean_scores.columns) == SCORE_COLUMNS
    assert len(clean_scores) == N_POINTS - N_TRAIN
    assert list(clean_scores["ts"]) == list(ts[N_TRAIN:])
    np.testing.assert_array_equal(clean_scores["value"], y[N_TRAIN:])
    for column in ("score", "prophet_score", "iforest_score"):
        assert clean_scores[column].between(0.0, 1.0).all(), column
    assert (clean_scores["lower"] < clean_scores["expected"]).all()
    assert (clean_scores["expected"] < clean_scores["upper"]).all()


# -- behaviour on synthetic data -----------------------------------------------------------------


def test_clean_data_is_mostly_not_flagged(clean_scores):
    assert clean_scores["is_anomaly"].mean() <= 0.01
    inside = clean_scores["value"].between(clean_scores["lower"], clean_scores["upper"])
    assert inside.mean() >= 0.95


def test_an_eight_sigma_spike_is_flagged_and_explained(spike_scores):
    spike = row(spike_scores, SPIKE)
    assert spike["is_anomaly"]
    assert spike["severity"] in SEVERITY_ORDER
    assert set(spike["flagged_by"].split(",")) & {"prophet", "iforest"}
    assert not spike["lower"] <= spike["value"] <= spike["upper"]
    others = spike_scores.drop(index=SPIKE - N_TRAIN)
    assert others["is_anomaly"].mean() <= 0.01


def test_score_grows_with_anomalousness_and_half_is_the_threshold(spike_scores):
    spike_score = row(spike_scores, SPIKE)["score"]
    assert spike_score >= 0.5
    assert spike_score > spike_scores["score"].median()
    np.testing.assert_array_equal(spike_scores["is_anomaly"], spike_scores["score"] >= 0.5)
    assert spike_scores["severity"].isna().eq(~spike_scores["is_anomaly"]).all()


def test_a_lasting_level_shift_alerts_once_at_its_start(detector, series):
    ts, y = series
    shift_at = N_TRAIN + 84
    shifted = y.copy()
    shifted[shift_at:] += 0.3 * LEVEL
    scores = score_after_training(detector, ts, shifted)
    flagged = scores["is_anomaly"].to_numpy()

    _, alert = assign_events("k", scores["ts"], flagged, DetectorConfig().event_merge_gap)
    assert list(scores["ts"][alert]) == [ts[shift_at]]
    settled = shift_at + DetectorConfig().level_window - N_TRAIN
    assert not flagged[settled:].any()


def test_a_stuck_value_is_flagged(detector, series):
    ts, y = series
    stuck_from = N_TRAIN + 100
    stuck = y.copy()
    stuck[stuck_from : stuck_from + 12] = y[stuck_from]
    scores = score_after_training(detector, ts, stuck)
    during = scores.iloc[stuck_from - N_TRAIN : stuck_from + 12 - N_TRAIN]
    assert during["is_anomaly"].any()
    assert during["flagged_by"].dropna().str.contains("flatline").any()


def test_an_outage_is_one_anomaly_at_its_first_missing_slot_flagged_by_gap(detector, series):
    ts, y = series
    gap = np.zeros(N_POINTS, dtype=bool)
    gap[N_TRAIN + 30 : N_TRAIN + 40] = True
    gap[N_TRAIN + 60 : N_TRAIN + 90] = True
    with_gap = np.where(gap, np.nan, y)
    scores = score_after_training(detector, ts, with_gap, gap=gap)
    in_gap = scores[gap[N_TRAIN:]]
    assert len(in_gap) == 40
    flagged = in_gap[in_gap["is_anomaly"]]
    assert list(flagged.index) == [30, 60]  # one per outage, where it starts
    assert (flagged["flagged_by"] == "gap").all() and (flagged["severity"] == "high").all()
    assert (in_gap.drop(flagged.index)["score"] == 0).all()
    assert scores.loc[~gap[N_TRAIN:], "is_anomaly"].mean() <= 0.01


def test_a_gap_leaves_the_expected_value_and_the_points_after_it_undisturbed(detector, series):
    # The synthetic KPI is positive, so it is modelled in log space; a gap must stay a gap there.
    assert detector.log_space_
    ts, y = series
    gap = np.zeros(N_POINTS, dtype=bool)
    gap[N_TRAIN + 30 : N_TRAIN + 54] = True
    scores = score_after_training(detector, ts, np.where(gap, np.nan, y), gap=gap)
    clean = score_after_training(detector, ts, y)
    np.testing.assert_allclose(scores["expected"], clean["expected"], rtol=0.05)
    after = slice(54 - 30 + 30, None)
    assert not scores["is_anomaly"].iloc[after].any()


def test_a_missing_value_outside_a_marked_gap_is_not_an_anomaly(detector, series):
    ts, y = series
    holed = y.copy()
    holed[N_TRAIN + 20] = np.nan
    scores = score_after_training(detector, ts, holed)
    assert not row(scores, N_TRAIN + 20)["is_anomaly"]


def test_scoring_a_batch_later_matches_scoring_it_with_the_rest(detector, series, clean_scores):
    """Only the context points, not the batch boundaries, feed a point's score."""
    ts, y = series
    start = N_TRAIN + 100
    context = detector.context_points
    assert context <= N_TRAIN
    batch = detector.score(ts[start - context :], y[start - context :], n_context=context)
    same_points = clean_scores.iloc[start - N_TRAIN :].reset_index(drop=True)
    pd.testing.assert_frame_equal(batch, same_points)


def test_artifacts_round_trip_gives_identical_scores(detector, series, spike_scores):
    ts, y = series
    artifacts = detector.to_artifacts()
    assert set(artifacts) >= {"prophet", "iforest", "ensemble"}
    assert all(isinstance(blob, bytes) for blob in artifacts.values())
    restored = EnsembleDetector.from_artifacts(artifacts)
    spiked = y.copy()
    spiked[SPIKE] += 8 * NOISE_SIGMA
    pd.testing.assert_frame_equal(score_after_training(restored, ts, spiked), spike_scores)
    assert hasattr(detector, "prophet_")  # serialising leaves the live detector intact


def test_a_detector_stored_in_format_version_2_scores_as_it_did(detector, series, spike_scores):
    ts, y = series
    older = {kind: as_version_2(data, kind) for kind, data in detector.to_artifacts().items()}
    assert all(data[:4] == b"PK\x03\x04" for data in older.values())
    spiked = y.copy()
    spiked[SPIKE] += 8 * NOISE_SIGMA
    restored = EnsembleDetector.from_artifacts(older)
    pd.testing.assert_frame_equal(score_after_training(restored, ts, spiked), spike_scores)


def test_the_scoring_window_reads_from_the_ensemble_artifact_s_first_bytes(detector):
    artifact = detector.to_artifacts()["ensemble"]
    # The magic, the document's length and the document: what a read of DOCUMENT_HEAD bytes gets.
    head = artifact[: 12 + int.from_bytes(artifact[8:12], "little")]
    assert len(head) < min(len(artifact), DOCUMENT_HEAD)
    assert read_document(head, "ensemble") == read_document(artifact, "ensemble")
    assert EnsembleDetector.scoring_window_of_artifact(head) == (detector.freq_, detector.context_points)
    with pytest.raises(UnreadableArtifact, match="damaged"):  # the arrays are not in the head
        unpack(head, "ensemble")


def test_a_stricter_threshold_flags_less(detector, series, spike_scores):
    ts, y = series
    strict = EnsembleDetector(DetectorConfig(scale_window=96, threshold=1e6)).fit(ts[:N_TRAIN], y[:N_TRAIN])
    spiked = y.copy()
    spiked[SPIKE] += 8 * NOISE_SIGMA
    assert row(spike_scores, SPIKE)["is_anomaly"]
    assert not score_after_training(strict, ts, spiked)["is_anomaly"].any()


# -- training edge cases ----------------------------------------------------------------------


def test_constant_series_fits_and_scores_the_same_constant_quietly():
    ts, _ = daily_sine(N_POINTS)
    constant = np.full(N_POINTS, 5.0)
    detector = EnsembleDetector().fit(ts[:N_TRAIN], constant[:N_TRAIN])
    scores = score_after_training(detector, ts, constant)
    assert not scores["is_anomaly"].any()
    assert scores["expected"].to_numpy() == pytest.approx(5.0)
    jumped = constant.copy()
    jumped[-1] = 6.0
    assert score_after_training(detector, ts, jumped)["is_anomaly"].tolist()[-1]


@pytest.mark.parametrize("n_points", [0, 1, 10, 47])
def test_too_short_history_raises_insufficient_history(n_points):
    ts, y = daily_sine(n_points)
    with pytest.raises(InsufficientHistory, match="insufficient history"):
        EnsembleDetector().fit(ts, y)


def test_missing_and_excluded_points_do_not_count_as_history():
    ts, y = daily_sine(60)
    y[:10] = np.nan
    exclude = np.zeros(60, dtype=bool)
    exclude[10:15] = True
    with pytest.raises(InsufficientHistory, match="insufficient history"):
        EnsembleDetector().fit(ts, y, exclude=exclude)
    assert issubclass(InsufficientHistory, ValueError)


def test_a_spike_in_training_widens_the_band_unless_excluded_or_trimmed(series):
    ts, y = series
    spoiled = y[:N_TRAIN].copy()
    spoiled[200] += 100 * NOISE_SIGMA
    exclude = np.zeros(N_TRAIN, dtype=bool)
    exclude[200] = True

    def half_width(detector: EnsembleDetector) -> float:
        scores = score_after_training(detector, ts, y)
        return float(((scores["upper"] - scores["lower"]) / 2).median())

    plain = DetectorConfig(robust_calibration=False)
    with_spike = half_width(EnsembleDetector(plain).fit(ts[:N_TRAIN], spoiled))
    excluded = half_width(EnsembleDetector(plain).fit(ts[:N_TRAIN], spoiled, exclude=exclude))
    # The robust calibration leaves it out by itself: it is what the detector would flag.
    trimmed = half_width(EnsembleDetector().fit(ts[:N_TRAIN], spoiled))
    assert excluded < with_spike and trimmed < with_spike


# The sustained component needs a model fitted on at least 600 points (by default): four weeks.
LONG_TRAIN = 28 * 24
SUSTAINED = DetectorConfig(scale_window=96)


@pytest.fixture(scope="module")
def long_series() -> tuple[pd.DatetimeIndex, np.ndarray]:
    return daily_sine(LONG_TRAIN + 7 * 24, seed=1)


@pytest.fixture(scope="module")
def sustained_detector(long_series) -> EnsembleDetector:
    ts, y = long_series
    return EnsembleDetector(SUSTAINED, random_state=0).fit(ts[:LONG_TRAIN], y[:LONG_TRAIN])


def score_after_long_training(detector: EnsembleDetector, ts, y) -> pd.DataFrame:
    context = detector.context_points
    return detector.score(ts[LONG_TRAIN - context :], y[LONG_TRAIN - context :], n_context=context)


def _dip(y: np.ndarray, start: int, length: int, depth: float) -> np.ndarray:
    """Lower ``length`` points from ``start`` by ``depth`` noise sigmas each (a subtle, lasting dip)."""
    dipped = y.copy()
    dipped[start : start + length] -= depth * NOISE_SIGMA
    return dipped


DIP_START, DIP_LENGTH = 60, 10
"""Positions after the training window."""


def test_a_subtle_lasting_dip_is_caught_by_the_sustained_component(sustained_detector, long_series):
    ts, y = long_series
    dipped = _dip(y, LONG_TRAIN + DIP_START, DIP_LENGTH, depth=2.5)  # each point alone is normal noise
    without = EnsembleDetector(DetectorConfig(scale_window=96, sustained_window=0), random_state=0)
    without.fit(ts[:LONG_TRAIN], y[:LONG_TRAIN])
    during = slice(DIP_START, DIP_START + DIP_LENGTH)

    quiet = score_after_long_training(without, ts, dipped).iloc[during]
    caught = score_after_long_training(sustained_detector, ts, dipped).iloc[during]
    assert not quiet["is_anomaly"].any()
    assert caught["is_anomaly"].any()
    assert caught["flagged_by"].dropna().str.contains("sustained").all()


def test_the_sustained_component_needs_enough_training_history(detector, sustained_detector):
    assert hasattr(sustained_detector, "sustained_tail_")
    assert not hasattr(detector, "sustained_tail_")  # three weeks: fewer than 600 points


def test_the_sustained_evidence_ends_with_the_incident(sustained_detector, long_series):
    ts, y = long_series
    scores = score_after_long_training(sustained_detector, ts, _dip(y, LONG_TRAIN + DIP_START, DIP_LENGTH, depth=2.5))
    assert scores["is_anomaly"].iloc[DIP_START : DIP_START + DIP_LENGTH].any()
    end = DIP_START + DIP_LENGTH
    # A normal point may still sit on the dip's side by chance; past the event merge gap the
    # evidence is gone, although the median of the last 12 points is still in the dip.
    assert not scores["is_anomaly"].iloc[end + SUSTAINED.event_merge_gap : end + 24].any()


def test_sustained_clean_data_stays_quiet(sustained_detector, long_series):
    scores = score_after_long_training(sustained_detector, *long_series)
    assert scores["is_anomaly"].mean() <= 0.01


def test_with_the_sustained_component_a_level_shift_is_still_one_event(sustained_detector, long_series):
    ts, y = long_series
    shift_at = 84
    shifted = y.copy()
    shifted[LONG_TRAIN + shift_at :] += 0.3 * LEVEL
    scores = score_after_long_training(sustained_detector, ts, shifted)
    flagged = scores["is_anomaly"].to_numpy()

    _, alert = assign_events("k", scores["ts"], flagged, SUSTAINED.event_merge_gap)
    assert list(scores["ts"][alert]) == [ts[LONG_TRAIN + shift_at]]
    # Absorbed once the baseline before the sustained window has moved to the new level.
    settled = shift_at + SUSTAINED.sustained_window + SUSTAINED.sustained_level_window // 2 + 3
    assert not flagged[settled:].any()


def test_a_model_registered_without_the_sustained_component_still_scores(sustained_detector, long_series):
    ts, y = long_series
    dipped = _dip(y, LONG_TRAIN + DIP_START, DIP_LENGTH, depth=2.5)
    artifacts = sustained_detector.to_artifacts()
    current = EnsembleDetector.from_artifacts(artifacts)
    old = EnsembleDetector.from_artifacts(artifacts)
    del old.sustained_scale_, old.sustained_tail_  # as trained before the component existed
    assert score_after_long_training(current, ts, dipped)["flagged_by"].eq("sustained").any()
    scores = score_after_long_training(old, ts, dipped)
    assert not scores["flagged_by"].dropna().str.contains("sustained").any()


def test_scoring_in_batches_matches_with_the_sustained_component(sustained_detector, long_series):
    """The context covers the sustained windows: a batch scores as it would with everything."""
    ts, y = long_series
    dipped = _dip(y, LONG_TRAIN + DIP_START, DIP_LENGTH, depth=2.5)
    whole = score_after_long_training(sustained_detector, ts, dipped)
    start = LONG_TRAIN + DIP_START + 4  # inside the dip: the windows reach back into it
    context = sustained_detector.context_points
    batch = sustained_detector.score(ts[start - context :], dipped[start - context :], n_context=context)
    pd.testing.assert_frame_equal(batch, whole.iloc[start - LONG_TRAIN :].reset_index(drop=True))


def test_one_missing_value_does_not_switch_the_sustained_evidence_off(sustained_detector, long_series):
    ts, y = long_series
    dipped = _dip(y, LONG_TRAIN + DIP_START, 30, depth=2.5)
    holed = dipped.copy()
    holed[LONG_TRAIN + DIP_START + 15] = np.nan
    during = slice(DIP_START + 16, DIP_START + 28)
    flags = score_after_long_training(sustained_detector, ts, dipped)["is_anomaly"].iloc[during]
    holed_flags = score_after_long_training(sustained_detector, ts, holed)["is_anomaly"].iloc[during]
    assert flags.sum() > 0
    assert holed_flags.sum() >= flags.sum() - 1


def test_a_sustained_anomaly_is_explained_against_the_undisturbed_expectation(sustained_detector, long_series):
    ts, y = long_series
    depth = 2.5
    dipped = _dip(y, LONG_TRAIN + DIP_START, DIP_LENGTH, depth=depth)
    scores = score_after_long_training(sustained_detector, ts, dipped)
    clean = score_after_long_training(sustained_detector, ts, y)
    during = slice(DIP_START, DIP_START + DIP_LENGTH)
    by_sustained = scores.iloc[during]["flagged_by"].eq("sustained").to_numpy()
    assert by_sustained.any()
    flagged = scores.iloc[during][by_sustained]
    # The expectation is where the KPI would have been, not the level that followed the dip:
    # the reported shortfall is most of the dip (each point alone may sit inside the band).
    shortfall = (flagged["expected"] - flagged["value"]).to_numpy()
    assert (shortfall > 0.6 * depth * NOISE_SIGMA).all()
    np.testing.assert_allclose(
        flagged["expected"], clean.iloc[during][by_sustained]["expected"], atol=0.6 * NOISE_SIGMA
    )


def test_once_an_incident_ends_expected_is_not_left_at_the_incidents_level(detector, series):
    # Six points far above normal: the recent level (median of the last 8 residuals) follows
    # them, and for a few points after the incident it still sits at the incident's level.
    ts, y = series
    start, length = N_TRAIN + 40, 6
    raised = y.copy()
    raised[start : start + length] *= 4.0
    scores = score_after_training(detector, ts, raised)
    clean = score_after_training(detector, ts, y)
    after = slice(start + length - N_TRAIN, start + length + 8 - N_TRAIN)
    # Back to normal values, explained against the model (not 4x above them), inside the band.
    np.testing.assert_allclose(scores["expected"].iloc[after], clean["expected"].iloc[after], rtol=0.1)
    back = scores.iloc[after]
    assert ((back["lower"] <= back["value"]) & (back["value"] <= back["upper"])).mean() >= 0.75
    assert not back["is_anomaly"].any()


# -- severity: how unlikely and how large ------------------------------------------------------


@pytest.mark.parametrize(
    "score, factor, spreads, expected",
    [
        (0.598, 574.0, 5000.0, "critical"),  # a 574x spike the calibration only calls low
        (0.52, 18.0, 60.0, "critical"),  # +1,700% revenue
        (0.72, 1 / 0.89, 1.5, "medium"),  # a short -11% stuck value: strong evidence, small
        (0.85, 1 / 0.89, 1.5, "high"),  # the same value stuck for long: overwhelming evidence
        (0.52, 1.1, 4.0, "low"),  # barely over the threshold and small
        (0.55, 3.0, 2.0, "low"),  # three times the expected value, but within normal spread
        (0.55, 1.6, 8.0, "high"),
    ],
)
def test_severity_weighs_how_far_a_point_is_off_with_how_unlikely_it_is(score, factor, spreads, expected):
    assert severity_of(score, abs(np.log(factor)), spreads, DetectorConfig()) == expected


def test_severity_of_a_kpi_not_in_log_space_reads_its_size_in_normal_spreads():
    config = DetectorConfig()
    assert severity_of(0.55, np.nan, 13.0, config) == "critical"
    assert severity_of(0.55, np.nan, 2.0, config) == "low"
    # No value at all (a missing-data gap): the evidence alone.
    assert severity_of(0.6, np.nan, np.nan, config) == "medium"


def test_a_gross_spike_is_critical_and_its_score_keeps_rising_with_its_size(detector, series):
    ts, y = series
    scored = {}
    for factor in (3.0, 30.0, 574.0):
        spiked = y.copy()
        spiked[SPIKE] *= factor
        scored[factor] = row(score_after_training(detector, ts, spiked), SPIKE)
    assert all(row["severity"] == "critical" for row in scored.values())
    assert scored[3.0]["score"] < scored[30.0]["score"] < scored[574.0]["score"]


@pytest.mark.parametrize("freq, shift", [("h", 0.0), ("min", np.log10(60)), ("D", 0.0)])
def test_a_frequency_threshold_rises_so_false_alarms_come_no_faster_per_day(freq, shift):
    ts = pd.date_range("2025-01-01", periods=200, freq=freq, tz="UTC")
    y = 100 + np.random.default_rng(0).normal(0, 1, 200)
    config = DetectorConfig(min_train_points=48, frequency_threshold=True)
    assert EnsembleDetector(config).fit(ts, y).threshold_ == pytest.approx(3.5 + shift)
    assert EnsembleDetector(DetectorConfig(min_train_points=48)).fit(ts, y).threshold_ == 3.5


# -- the registry's artifacts ------------------------------------------------------------------

REGISTRY_BUDGET = 300 * 1024
"""Bytes one version of a realistic KPI may take in the registry, all kinds together."""


@pytest.fixture(scope="module")
def realistic():
    """An hourly KPI of the sample dataset, fitted on 4,032 points (the default window), with
    every component, and the points after it."""
    from kpi_pipeline.datagen.hourly import generate

    data, _ = generate(periods=4032 + 240)
    ts, y = pd.DatetimeIndex(data["date"]), data["sales"].to_numpy(dtype=float)
    detector = EnsembleDetector(DetectorConfig()).fit(ts[:4032], y[:4032])
    assert hasattr(detector, "sustained_tail_") and detector.log_space_
    return detector, ts, y


def test_a_stored_detector_is_small_and_scores_bit_for_bit(realistic, monkeypatch):
    import pickle

    detector, ts, y = realistic
    artifacts = detector.to_artifacts()
    assert sum(map(len, artifacts.values())) <= REGISTRY_BUDGET
    for name in ("loads", "load", "Unpickler"):  # loading never unpickles anything
        monkeypatch.setattr(pickle, name, None)

    restored = EnsembleDetector.from_artifacts(artifacts)

    assert set(vars(restored)) == set(vars(detector))
    spiked = y.copy()
    spiked[4032 + 50] *= 3
    context = detector.context_points
    window = slice(4032 - context, None)
    pd.testing.assert_frame_equal(
        restored.score(ts[window], spiked[window], n_context=context),
        detector.score(ts[window], spiked[window], n_context=context),
        check_exact=True,
    )
    # Real-time scoring's point-by-point path.
    before = slice(4032 - context, 4032 + 48)
    after = slice(4032 + 48, 4032 + 60)
    expected = detector.score_after(detector.prepare(ts[before], spiked[before]), ts[after], spiked[after])
    got = restored.score_after(restored.prepare(ts[before], spiked[before]), ts[after], spiked[after])
    for name, column in expected.items():
        np.testing.assert_array_equal(got[name], column, err_msg=name)


def test_the_ensemble_artifact_alone_gives_the_grid_and_the_context(realistic):
    detector, _, _ = realistic
    shell = EnsembleDetector.shell_from_artifact(detector.to_artifacts()["ensemble"])
    assert shell.freq_ == pd.Timedelta(hours=1) == detector.freq_
    assert shell.freq_.unit == detector.freq_.unit and shell.train_end_.unit == detector.train_end_.unit
    assert shell.context_points == detector.context_points
    assert shell.config == detector.config
    assert (shell.train_start_, shell.train_end_) == (detector.train_start_, detector.train_end_)
    assert not hasattr(shell, "prophet_") and not hasattr(shell, "iforest_")
    # What choosing a scoring window reads, without decoding the arrays.
    window = EnsembleDetector.scoring_window_of_artifact(detector.to_artifacts()["ensemble"])
    assert window == (detector.freq_, detector.context_points)


def test_a_detector_without_config_or_sustained_component_round_trips(detector, series):
    ts, y = series
    bare = EnsembleDetector(random_state=1).fit(ts[:N_TRAIN], y[:N_TRAIN])
    assert bare.config is None and not hasattr(bare, "sustained_tail_")
    restored = EnsembleDetector.from_artifacts(bare.to_artifacts())
    assert restored.config is None and not hasattr(restored, "sustained_tail_")
    pd.testing.assert_frame_equal(
        restored.score(ts, y, n_context=N_TRAIN), bare.score(ts, y, n_context=N_TRAIN), check_exact=True
    )


@pytest.mark.parametrize(("freq", "fitted_points"), [("1min", 2 * 1440 // 5), ("h", 2 * 24)])
def test_prophet_fits_a_minute_kpi_on_medians_of_its_step(freq, fitted_points):
    """``prophet_step_minutes=5`` (the default): a 1-minute KPI's Prophet fits on 5-minute medians (a fifth of
    the points), an hourly KPI on every point; residuals are still taken at every point."""
    ts = pd.date_range("2025-03-03", periods=2 * 1440 if freq == "1min" else 48, freq=freq, tz="UTC")
    days = np.asarray((ts - ts[0]) / pd.Timedelta(days=1))
    normal = 100 + 10 * np.sin(2 * np.pi * days)
    y = normal + np.random.default_rng(0).normal(0, 1, len(ts))
    config = DetectorConfig(prophet_step_minutes=5, min_train_points=24)
    fitted = EnsembleDetector(config, random_state=0).fit(ts, y)
    every_point = EnsembleDetector(DetectorConfig(prophet_step_minutes=0, min_train_points=24), random_state=0).fit(
        ts, y
    )
    assert len(fitted.prophet_.model_.history) == fitted_points
    assert len(every_point.prophet_.model_.history) == len(ts)

    # The daily cycle is learnt from the medians about as well as from every point (a positive
    # KPI is modelled in log space).
    def error(detector: EnsembleDetector) -> float:
        return float(np.median(np.abs(np.exp(detector.prophet_.predict(ts)) - normal)))

    assert error(fitted) <= error(every_point) + 0.1
