from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.datagen import (
    ANOMALY_KINDS,
    DATA_FILE,
    KPIS,
    LABELS_FILE,
    PROFILES,
    daily,
    generate,
    main,
    service,
    write_dataset,
)
from kpi_pipeline.datagen.common import Magnitudes, spread
from kpi_pipeline.detection.metrics import windows_from_labels

COMMITTED_DIR = Path(__file__).resolve().parent.parent / "dataset"
# Four weeks of January lie inside the clean history: normal structure only, no anomalies.
FOUR_WEEKS = 24 * 28
# Long enough past the clean Jan-Feb history to hold anomalies, short enough to be quick.
FOUR_MONTHS = 24 * 120


@pytest.fixture(scope="module")
def full_year() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate()


@pytest.fixture(scope="module")
def written_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("dataset")
    write_dataset(out_dir)
    return out_dir


def _read_dataset(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = pd.read_csv(directory / DATA_FILE, parse_dates=["date"])
    labels = pd.read_csv(directory / LABELS_FILE, parse_dates=["start", "end"])
    return data, labels


def _labels_of(labels: pd.DataFrame, kind: str) -> list[pd.Series]:
    return [label for _, label in labels[labels["kind"] == kind].iterrows()]


def _window(data: pd.DataFrame, label: pd.Series) -> pd.Series:
    return data.loc[data["date"].between(label["start"], label["end"]), label["kpi"]]


def _labelled_cells(data: pd.DataFrame, labels: pd.DataFrame, kpis: tuple[str, ...] = KPIS) -> pd.DataFrame:
    mask = pd.DataFrame(False, index=data.index, columns=list(kpis))
    for _, label in labels.iterrows():
        mask.loc[data["date"].between(label["start"], label["end"]), label["kpi"]] = True
    return mask


def _ratio_to_same_hour_of_nearby_weeks(data: pd.DataFrame, kpi: str, hours: pd.DatetimeIndex) -> np.ndarray:
    """Values at ``hours`` over the median of the same weekday-hour 1 and 2 weeks either side."""
    series = data.set_index("date")[kpi]
    nearby = np.column_stack([series.reindex(hours + pd.Timedelta(weeks=weeks)).to_numpy() for weeks in (-2, -1, 1, 2)])
    return series.reindex(hours).to_numpy() / np.nanmedian(nearby, axis=1)


def _log_ratio_spread(data: pd.DataFrame, kpi: str, hours: pd.DatetimeIndex) -> float:
    return float(np.nanstd(np.log(_ratio_to_same_hour_of_nearby_weeks(data, kpi, hours))))


def test_same_seed_gives_identical_frames_and_another_seed_differs():
    data, labels = generate(seed=7, periods=FOUR_MONTHS)
    same_data, same_labels = generate(seed=7, periods=FOUR_MONTHS)
    other_data, other_labels = generate(seed=8, periods=FOUR_MONTHS)

    pd.testing.assert_frame_equal(data, same_data)
    pd.testing.assert_frame_equal(labels, same_labels)
    assert not labels.empty
    assert not data[list(KPIS)].equals(other_data[list(KPIS)])
    assert not labels.equals(other_labels)


def test_data_is_wide_hourly_and_utc():
    data, _ = generate(start="2025-01-01", periods=FOUR_WEEKS)

    assert list(data.columns) == ["date", *KPIS]
    assert len(data) == FOUR_WEEKS
    assert str(data["date"].dt.tz) == "UTC"
    assert data["date"].iloc[0] == pd.Timestamp("2025-01-01T00:00:00Z")
    assert (data["date"].diff().dropna() == pd.Timedelta(hours=1)).all()
    assert all(data[kpi].dtype == np.float64 for kpi in KPIS)


def test_series_within_the_clean_history_has_no_anomalies():
    _, labels = generate(periods=FOUR_WEEKS)

    assert labels.empty
    assert list(labels.columns) == ["kpi", "start", "end", "kind"]


def test_every_kind_appears_at_least_twice_and_every_kpi_gets_a_mix(full_year):
    _, labels = full_year

    kinds_per_kpi = labels.groupby("kpi")["kind"].agg(set)
    assert len(labels) >= 25
    assert set(labels["kind"]) == set(ANOMALY_KINDS)
    assert labels["kind"].value_counts().min() >= 2
    assert labels["kpi"].value_counts().between(4, 7).all()
    assert set(kinds_per_kpi.index) == set(KPIS)
    assert all(len(kinds) >= 4 for kinds in kinds_per_kpi)


def test_label_windows_lie_inside_the_data_and_after_february(full_year):
    data, labels = full_year

    assert (labels["start"] <= labels["end"]).all()
    assert (labels["start"] >= pd.Timestamp("2025-03-01T00:00:00Z")).all()
    assert (labels["end"] <= data["date"].iloc[-1]).all()


def test_anomalies_on_one_kpi_are_more_than_three_days_apart(full_year):
    _, labels = full_year

    for _, windows in labels.sort_values("start").groupby("kpi"):
        gaps = windows["start"].iloc[1:].to_numpy() - windows["end"].iloc[:-1].to_numpy()
        assert (gaps > pd.Timedelta(days=3)).all()


def test_flatline_windows_hold_one_value(full_year):
    data, labels = full_year

    for label in _labels_of(labels, "flatline"):
        window = _window(data, label)
        assert window.notna().all()
        assert window.nunique() == 1


def test_missing_gap_windows_are_empty(full_year):
    data, labels = full_year

    for label in _labels_of(labels, "missing_gap"):
        assert _window(data, label).isna().all()


@pytest.mark.parametrize(
    ("kind", "lowest", "highest"),
    [
        ("spike", 1.3, np.inf),
        ("dip", 0.0, 0.7),
        # Night hours carrying the afternoon's level stand far above other nights.
        ("seasonal", 1.3, np.inf),
    ],
)
def test_anomalous_hours_depart_from_same_hours_of_nearby_weeks(full_year, kind, lowest, highest):
    data, labels = full_year

    for label in _labels_of(labels, kind):
        hours = pd.date_range(label["start"], label["end"], freq="h")
        ratios = _ratio_to_same_hour_of_nearby_weeks(data, label["kpi"], hours)
        assert ((ratios > lowest) & (ratios < highest)).all(), (label.to_dict(), ratios)


def test_level_shifts_move_the_whole_window(full_year):
    data, labels = full_year

    for label in _labels_of(labels, "level_shift"):
        hours = pd.date_range(label["start"], label["end"], freq="h")
        ratio = np.nanmedian(_ratio_to_same_hour_of_nearby_weeks(data, label["kpi"], hours))
        assert abs(np.log(ratio)) > np.log(1.15), label.to_dict()


def test_variance_bursts_are_noisier_than_normal_hours(full_year):
    data, labels = full_year
    unlabelled = ~_labelled_cells(data, labels)

    for label in _labels_of(labels, "variance_burst"):
        kpi = label["kpi"]
        normal_hours = pd.DatetimeIndex(data.loc[unlabelled[kpi], "date"])
        burst_hours = pd.date_range(label["start"], label["end"], freq="h")
        normal_spread = _log_ratio_spread(data, kpi, normal_hours)
        burst_spread = _log_ratio_spread(data, kpi, burst_hours)
        assert burst_spread > 2 * normal_spread, label.to_dict()


def test_revenue_follows_sales(full_year):
    data, _ = full_year

    assert data["revenue"].corr(data["sales"]) > 0.9


def test_conversion_rate_is_orders_per_session_outside_labels(full_year):
    data, labels = full_year
    involved = ["sessions", "orders", "conversion_rate"]
    labelled = _labelled_cells(data, labels)[involved].any(axis=1)
    clean = ~labelled & data[involved].notna().all(axis=1)

    implied = data.loc[clean, "orders"] / data.loc[clean, "sessions"]
    assert clean.sum() > 0.9 * len(data)
    np.testing.assert_allclose(data.loc[clean, "conversion_rate"], implied, atol=5e-6)


def test_sessions_dip_on_weekends_and_at_night():
    data, _ = generate(periods=FOUR_WEEKS)
    sessions = data.set_index("date")["sessions"]
    weekend = sessions.index.day_of_week >= 5
    hour = sessions.index.hour

    weekend_ratio = sessions[weekend].mean() / sessions[~weekend].mean()
    night_ratio = sessions[hour < 6].mean() / sessions[(hour >= 12) & (hour < 21)].mean()
    assert 0.6 < weekend_ratio < 0.8
    assert night_ratio < 0.5


def test_random_missing_cells_exist_outside_labels_but_are_rare(full_year):
    data, labels = full_year
    missing = data[list(KPIS)].isna()

    random_missing = missing & ~_labelled_cells(data, labels)
    assert random_missing.to_numpy().any()
    assert random_missing.to_numpy().mean() < 0.01


def test_written_files_read_back_as_generated(written_dir, full_year):
    data, labels = _read_dataset(written_dir)

    pd.testing.assert_frame_equal(data, full_year[0])
    pd.testing.assert_frame_equal(labels, full_year[1])
    assert (written_dir / DATA_FILE).read_text().splitlines()[1].startswith("2025-01-01T00:00:00Z,")


@pytest.mark.parametrize("file_name", [DATA_FILE, LABELS_FILE])
def test_committed_dataset_is_reproducible(written_dir, file_name):
    assert (COMMITTED_DIR / file_name).read_bytes() == (written_dir / file_name).read_bytes()


def test_cli_writes_the_hourly_sample_by_default(tmp_path, capsys):
    main(["--out", str(tmp_path)])

    written = [str(tmp_path / DATA_FILE), str(tmp_path / LABELS_FILE)]
    assert capsys.readouterr().out.split() == written
    for file_name in (DATA_FILE, LABELS_FILE):
        assert (tmp_path / file_name).read_bytes() == (COMMITTED_DIR / file_name).read_bytes()


@pytest.mark.parametrize("profile", ["daily", "minute", "five-minute", "multivariate"])
def test_cli_writes_each_profile_as_committed_and_as_generated(tmp_path, profile):
    main(["--profile", profile, "--out", str(tmp_path), "--seed", "42"])
    data, labels = _read_dataset(tmp_path)
    generated_data, generated_labels = PROFILES[profile].generate(42)

    committed = COMMITTED_DIR.parent / PROFILES[profile].out_dir
    for file_name in (DATA_FILE, LABELS_FILE):
        assert (tmp_path / file_name).read_bytes() == (committed / file_name).read_bytes()
    pd.testing.assert_frame_equal(data, generated_data, check_dtype=False)
    pd.testing.assert_frame_equal(labels, generated_labels)


def test_spread_keeps_windows_apart_and_inside_their_range():
    rng = np.random.default_rng(0)
    lengths = [5, 1, 30, 2, 12]

    starts = spread(rng, 100, 300, lengths, min_gap=10)
    stops = starts + lengths

    assert starts[0] >= 100 and stops[-1] <= 300
    assert (starts[1:] - stops[:-1] >= 10).all()
    with pytest.raises(ValueError, match="do not fit"):
        spread(rng, 100, 180, lengths, min_gap=10)


# --- daily profile ---------------------------------------------------------------------------

DAILY_KPIS = daily.KPIS
HALF_YEAR = 182


@pytest.fixture(scope="module")
def daily_fold() -> tuple[pd.DataFrame, pd.DataFrame]:
    return daily.generate()


def test_daily_same_seed_gives_identical_frames_and_another_seed_differs():
    data, labels = daily.generate(seed=3, periods=HALF_YEAR)
    same_data, same_labels = daily.generate(seed=3, periods=HALF_YEAR)
    other_data, other_labels = daily.generate(seed=4, periods=HALF_YEAR)

    pd.testing.assert_frame_equal(data, same_data)
    pd.testing.assert_frame_equal(labels, same_labels)
    assert not labels.empty
    assert not data[list(DAILY_KPIS)].equals(other_data[list(DAILY_KPIS)])
    assert not labels.equals(other_labels)


def test_daily_data_is_four_years_of_utc_midnights(daily_fold):
    data, labels = daily_fold

    assert list(data.columns) == ["date", *DAILY_KPIS]
    assert data["date"].iloc[0] == pd.Timestamp("2022-01-01T00:00:00Z")
    assert data["date"].iloc[-1] == pd.Timestamp("2025-12-31T00:00:00Z")
    assert (data["date"].diff().dropna() == pd.Timedelta(days=1)).all()
    assert data[list(DAILY_KPIS)].notna().all().all()
    assert list(labels.columns) == ["kpi", "start", "end", "kind"]
    assert set(labels["kind"]) == set(daily.ANOMALY_KINDS)


@pytest.mark.parametrize("share", [0.02, 0.05, 0.10])
def test_daily_anomalous_day_share_is_as_configured(share):
    config = daily.DailyConfig(anomalies=daily.DailyAnomalies(anomalous_day_share=share))
    data, labels = daily.generate(config=config)

    anomalous_days = _labelled_cells(data, labels, DAILY_KPIS).any(axis=1)
    assert anomalous_days.mean() == pytest.approx(share, abs=0.002)
    # Incidents lie throughout the history, not only at its end: the history is contaminated.
    assert anomalous_days[: len(data) // 2].mean() > share / 2


def test_daily_incidents_hit_several_kpis_on_the_same_days(daily_fold):
    _, labels = daily_fold

    kpis_per_incident = labels.groupby(["start", "end"])["kpi"].nunique()
    assert (kpis_per_incident >= 2).all()
    assert kpis_per_incident.mean() >= 3
    assert (kpis_per_incident == len(DAILY_KPIS)).any()


def test_daily_labels_map_to_whole_days_of_rows(daily_fold):
    data, labels = daily_fold

    for kpi, kpi_labels in labels.groupby("kpi"):
        windows = windows_from_labels(data["date"], kpi_labels)
        days = (kpi_labels["end"] - kpi_labels["start"]).dt.days + 1
        assert sorted(last - first + 1 for first, last in windows) == sorted(days)
    lengths = labels["end"] - labels["start"] + pd.Timedelta(days=1)
    is_shift = labels["kind"] == "level_shift"
    assert lengths[is_shift].between(pd.Timedelta(days=2), pd.Timedelta(days=5)).all()
    assert (lengths[~is_shift] == pd.Timedelta(days=1)).all()


# Injection draws the same random numbers whatever the magnitudes, so a fold generated with these
# is the same fold without its anomalies' effect: the two compare row by row.
NO_EFFECT = Magnitudes(
    spike_lift=(0.0, 0.0),
    dip_drop=(0.0, 0.0),
    level_shift_size=(0.0, 0.0),
    variance_burst_noise_factor=1.0,
    drift_size=(0.0, 0.0),
)


def _injected_ratios(data: pd.DataFrame, unaffected: pd.DataFrame, label: pd.Series) -> np.ndarray:
    """Values in the label's window over the same rows without the anomaly's effect."""
    rows = data["date"].between(label["start"], label["end"])
    return (data.loc[rows, label["kpi"]] / unaffected.loc[rows, label["kpi"]]).to_numpy()


@pytest.fixture(scope="module")
def daily_fold_without_effect() -> pd.DataFrame:
    config = daily.DailyConfig(anomalies=daily.DailyAnomalies(magnitudes=NO_EFFECT))
    return daily.generate(config=config)[0]


def test_daily_anomalies_multiply_by_the_configured_factors(daily_fold, daily_fold_without_effect):
    data, labels = daily_fold

    def factors(kind: str, extreme: bool) -> np.ndarray:
        is_extreme = labels["kpi"] == "conversion_rate"
        chosen = labels[(labels["kind"] == kind) & (is_extreme == extreme)]
        unaffected = daily_fold_without_effect
        ratios = [_injected_ratios(data, unaffected, row) for _, row in chosen.iterrows()]
        return np.concatenate(ratios)

    # Rounding to cents or whole counts moves a ratio by far less than 1%.
    spikes, dips = factors("spike", False), factors("dip", False)
    assert spikes == pytest.approx(np.clip(spikes, 1.6, 2.5), rel=0.01)
    assert dips == pytest.approx(np.clip(dips, 0.3, 0.6), rel=0.01)
    assert factors("spike", True) == pytest.approx(2.5, rel=0.01)
    assert factors("dip", True) == pytest.approx(0.3, rel=0.01)
    shifts = factors("level_shift", False)
    assert np.abs(shifts - 1) == pytest.approx(np.clip(np.abs(shifts - 1), 0.35, 0.6), abs=0.01)
    assert np.ptp(spikes) > 0.3, "factors are drawn, not fixed"


def test_daily_conversion_rate_anomalies_lie_outside_its_normal_range(daily_fold):
    data, labels = daily_fold
    labelled = _labelled_cells(data, labels, DAILY_KPIS)["conversion_rate"]
    normal = data.loc[~labelled, "conversion_rate"]
    anomalous = data.loc[labelled, "conversion_rate"]

    assert 1.4 < normal.min() < 1.8 and 3.2 < normal.max() < 3.7
    assert labelled.sum() >= 20
    assert ((anomalous > 0.4) & (anomalous < 1.1) | (anomalous > 3.7) & (anomalous < 8.8)).all()
    assert (labels.loc[labels["kpi"] == "conversion_rate", "kind"] != "level_shift").all()


def test_daily_weekly_pattern_is_mild_on_traffic_and_absent_on_ratios(daily_fold):
    data, labels = daily_fold
    normal = data[~_labelled_cells(data, labels, DAILY_KPIS).any(axis=1)]
    weekday = normal["date"].dt.day_of_week

    def weekend_ratio(kpi: str) -> float:
        return normal.loc[weekday >= 5, kpi].mean() / normal.loc[weekday < 5, kpi].mean()

    assert 0.85 < weekend_ratio("sessions") < 0.95
    assert weekend_ratio("conversion_rate") == pytest.approx(1, abs=0.03)
    assert weekend_ratio("average_order_value") == pytest.approx(1, abs=0.03)


# --- minute-level profiles -------------------------------------------------------------------

SERVICE_KPIS = service.KPIS
CONFIGS = {"minute": service.MINUTE, "five-minute": service.FIVE_MINUTE}


@pytest.fixture(scope="module", params=list(CONFIGS))
def service_fold(request) -> tuple[service.ServiceConfig, pd.DataFrame, pd.DataFrame]:
    config = CONFIGS[request.param]
    return (config, *service.generate(config=config))


def _grid(config: service.ServiceConfig) -> pd.DatetimeIndex:
    return pd.date_range("2026-01-05", periods=config.periods, freq=config.step, tz="UTC")


def test_service_same_seed_gives_identical_frames_and_another_seed_differs():
    # 20 days at 5 minutes: the shortest length that still holds every anomaly with room to spare.
    short = 20 * 288
    config = service.FIVE_MINUTE
    data, labels = service.generate(seed=3, config=config, periods=short)
    same_data, same_labels = service.generate(seed=3, config=config, periods=short)
    other_data, other_labels = service.generate(seed=4, config=config, periods=short)

    pd.testing.assert_frame_equal(data, same_data)
    pd.testing.assert_frame_equal(labels, same_labels)
    assert not data[list(SERVICE_KPIS)].equals(other_data[list(SERVICE_KPIS)])
    assert not labels.equals(other_labels)


@pytest.mark.parametrize(("config", "points"), [(service.MINUTE, 30_240), (service.FIVE_MINUTE, 17_280)])
def test_service_rows_lie_on_the_stated_step(config, points):
    data, _ = service.generate(config=config)
    steps = data["date"].diff().dropna()

    assert config.periods == points
    assert list(data.columns) == ["date", *SERVICE_KPIS]
    assert str(data["date"].dt.tz) == "UTC"
    assert data["date"].iloc[0] == pd.Timestamp("2026-01-05T00:00:00Z")
    assert data["date"].iloc[-1] == _grid(config)[-1]
    # Every gap between rows is a whole number of steps; all but the collector outage are one.
    assert (steps % pd.Timedelta(config.step) == pd.Timedelta(0)).all()
    assert (steps == pd.Timedelta(config.step)).mean() > 0.999


def test_service_outages_are_missing_values_and_labelled(service_fold):
    config, data, labels = service_fold
    full = data.set_index("date").reindex(_grid(config))
    outages = labels[labels["kind"] == "missing_gap"]
    outage_cells = pd.DataFrame(False, index=full.index, columns=list(SERVICE_KPIS))
    for _, label in outages.iterrows():
        outage_cells.loc[label["start"] : label["end"], label["kpi"]] = True

    # Missing exactly inside outages: never a zero there, never a gap elsewhere.
    assert full[list(SERVICE_KPIS)].isna().equals(outage_cells)
    # The collector outage leaves no row at all; each KPI outage leaves rows with empty cells.
    absent = full.index.difference(pd.DatetimeIndex(data["date"]))
    collector = outages.groupby(["start", "end"])["kpi"].nunique() == len(SERVICE_KPIS)
    start, end = collector[collector].index[0]
    assert absent.equals(pd.date_range(start, end, freq=config.step))
    assert len(outages) == 2 * len(SERVICE_KPIS)


def test_service_outages_range_from_minutes_to_days(service_fold):
    _, _, labels = service_fold
    outages = labels[labels["kind"] == "missing_gap"]
    lengths = outages["end"] - outages["start"]

    assert lengths.min() <= pd.Timedelta(minutes=30)
    assert lengths.max() >= pd.Timedelta(hours=12)
    assert lengths.max() < pd.Timedelta(days=2)


def test_service_every_kpi_gets_every_kind_after_its_history(service_fold):
    config, data, labels = service_fold
    history_end = data["date"].iloc[0] + 0.4 * config.periods * pd.Timedelta(config.step)

    kinds_per_kpi = labels.groupby("kpi")["kind"].agg(set)
    assert set(kinds_per_kpi.index) == set(SERVICE_KPIS)
    assert all(kinds == set(service.ANOMALY_KINDS) for kinds in kinds_per_kpi)
    assert (labels["start"] >= history_end).all()


def test_service_labels_on_one_kpi_never_overlap_and_map_to_row_windows(service_fold):
    _, data, labels = service_fold

    for kpi, kpi_labels in labels.sort_values("start").groupby("kpi"):
        starts, ends = kpi_labels["start"].to_numpy(), kpi_labels["end"].to_numpy()
        assert (starts[1:] > ends[:-1]).all()
        windows = windows_from_labels(data["date"], kpi_labels)
        # The collector outage has no rows: it maps to the first row after it, still a window.
        assert len(windows) == len(kpi_labels)
        assert all(first <= last for first, last in windows)


def test_service_kpis_follow_daily_and_weekly_cycles_with_count_noise(service_fold):
    _, data, labels = service_fold
    normal = data[~_labelled_cells(data, labels, SERVICE_KPIS).any(axis=1)].set_index("date")
    hour, weekday = normal.index.hour, normal.index.day_of_week
    requests = normal["requests"]

    afternoon, night = requests[(hour >= 13) & (hour < 17)], requests[(hour >= 1) & (hour < 5)]
    assert afternoon.mean() > 2.5 * night.mean()
    assert 0.6 < requests[weekday >= 5].mean() / requests[weekday < 5].mean() < 0.75
    for kpi in ("requests", "errors", "signups"):
        assert (normal[kpi] >= 0).all() and (normal[kpi] % 1 == 0).all()
    # Busier hours are a little slower.
    latency = normal["latency_p95_ms"]
    assert latency[(hour >= 13) & (hour < 17)].median() > latency[(hour >= 1) & (hour < 5)].median()


def test_service_anomalies_change_values_as_configured(service_fold):
    config, data, labels = service_fold
    no_effect = replace(config, anomalies=replace(config.anomalies, magnitudes=NO_EFFECT))
    unaffected, _ = service.generate(config=no_effect)
    # Only KPIs of large values, whose rounding moves a ratio by under 1%: a few sign-ups or
    # errors a minute would need a tolerance wider than the effects. Each KPI has every kind.
    labels = labels[labels["kpi"].isin(["requests", "latency_p95_ms"])]
    tolerance = dict(rel=0.01)

    def ratios(label: pd.Series) -> np.ndarray:
        return _injected_ratios(data, unaffected, label)

    for label in _labels_of(labels, "spike"):
        ratio = ratios(label)
        assert ratio == pytest.approx(np.clip(ratio, 2.0, 4.0), **tolerance), label.to_dict()
    for label in _labels_of(labels, "dip"):
        ratio = ratios(label)
        assert ratio == pytest.approx(np.clip(ratio, 0.1, 0.5), **tolerance), label.to_dict()
    for label in _labels_of(labels, "level_shift"):
        shift = np.abs(ratios(label) - 1)
        size = np.clip(np.median(shift), 0.3, 0.6)
        assert shift == pytest.approx(size, abs=0.01), label.to_dict()
    for label in _labels_of(labels, "drift"):
        change = np.abs(ratios(label) - 1)
        # A drift grows steadily from nothing to its full size on its last row.
        assert change[0] < 0.05 and 0.29 < change[-1] < 0.81, label.to_dict()
        assert np.corrcoef(np.arange(len(change)), change)[0, 1] > 0.95, label.to_dict()
    for label in _labels_of(labels, "variance_burst"):
        assert np.std(np.log(ratios(label))) > 0.05, label.to_dict()


def test_service_config_changes_the_step_and_the_anomaly_mix():
    config = replace(
        service.FIVE_MINUTE,
        step="15min",
        days=30,
        anomalies=replace(service.FIVE_MINUTE.anomalies, per_kpi=(("spike", 3),), collector_outages=0),
    )
    data, labels = service.generate(config=config)

    assert len(data) == 30 * 96
    assert (data["date"].diff().dropna() == pd.Timedelta(minutes=15)).all()
    assert labels["kind"].value_counts().to_dict() == {"spike": 3 * len(SERVICE_KPIS)}
