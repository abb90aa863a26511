from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kpi_pipeline.datagen import (
    ANOMALY_KINDS,
    DATA_FILE,
    KPIS,
    LABELS_FILE,
    generate,
    write_dataset,
)

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


def _labelled_cells(data: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    mask = pd.DataFrame(False, index=data.index, columns=list(KPIS))
    for _, label in labels.iterrows():
        mask.loc[data["date"].between(label["start"], label["end"]), label["kpi"]] = True
    return mask


def _ratio_to_same_hour_of_nearby_weeks(
    data: pd.DataFrame, kpi: str, hours: pd.DatetimeIndex
) -> np.ndarray:
    """Values at ``hours`` over the median of the same weekday-hour 1 and 2 weeks either side."""
    series = data.set_index("date")[kpi]
    nearby = np.column_stack(
        [series.reindex(hours + pd.Timedelta(weeks=weeks)).to_numpy() for weeks in (-2, -1, 1, 2)]
    )
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
