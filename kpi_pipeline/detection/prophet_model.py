"""Prophet as the expected-value model: trend + daily/weekly/yearly seasonality + holidays.

We only use Prophet's point forecast (``uncertainty_samples=0``: its sampled intervals are slow and
too narrow for residuals); the band comes from the ensemble's heavy-tailed residual model.
``Prophet.predict`` builds several DataFrames per call (tens of ms even for one point), so
``predict`` evaluates the fitted model's formula directly with numpy (``PointForecast``); the
tests hold it to ``Prophet.predict``'s ``yhat``.
"""

from __future__ import annotations

import logging
import lzma
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from kpi_pipeline.detection.features import holiday_dates

# Prophet logs a plotly import failure at ERROR on import, and cmdstanpy logs every fit at INFO
# through a handler it installs on first use unless its logger already has one: give it a quiet one.
logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
logging.getLogger("prophet").setLevel(logging.WARNING)
_cmdstanpy_logger = logging.getLogger("cmdstanpy")
_cmdstanpy_logger.addHandler(logging.NullHandler())
_cmdstanpy_logger.setLevel(logging.WARNING)

from prophet import Prophet  # noqa: E402
from prophet.serialize import model_from_json, model_to_json  # noqa: E402

COMPONENTS = ("trend", "daily", "weekly", "yearly", "holidays")


def _naive_utc(ts) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(ts)
    return index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index


_NS_PER_DAY = 24 * 60 * 60 * 10**9


@dataclass(frozen=True)
class PointForecast:
    """A fitted Prophet model's ``yhat`` as plain arrays: ``trend * (1 + multiplicative terms) +
    additive terms``, each term a feature matrix times the fitted coefficients.

    Mirrors ``Prophet.predict`` step by step (same operations in the same order, so results
    agree to rounding) for linear or flat growth, unconditional seasonalities and holidays; a
    model with anything else (logistic growth, conditional seasonalities, extra regressors)
    has no ``PointForecast`` and is predicted by Prophet itself.
    """

    growth: str
    k: float
    m: float
    deltas: np.ndarray
    changepoints_t: np.ndarray
    start_ns: int
    t_scale_ns: int
    y_scale: float
    floor: float
    seasonalities: tuple[tuple[float, int], ...]
    """(period in days, Fourier order) of each seasonality, in the model's column order."""
    holiday_days: tuple[np.ndarray, ...]
    """Per holiday column (Prophet's sorted order), the days (since the epoch) it is 1 on."""
    additive_beta: np.ndarray
    multiplicative_beta: np.ndarray

    @classmethod
    def from_model(cls, model: Prophet) -> "PointForecast | None":
        """The point forecast of a fitted ``model``, or None if it needs ``Prophet.predict``."""
        conditional = any(p["condition_name"] is not None for p in model.seasonalities.values())
        if model.growth not in ("linear", "flat") or conditional or model.extra_regressors:
            return None
        if model.country_holidays is not None:
            return None  # its holiday rows depend on the years predicted
        # Only used to look up country holidays.
        # pandas-stubs read dtype="M8[ns]" as a Series of str.
        no_dates: pd.Series[pd.Timestamp] = pd.Series([], dtype="M8[ns]")  # type: ignore[assignment]
        holiday_days = _holiday_columns(model.construct_holiday_dataframe(no_dates))
        seasonalities = tuple((float(p["period"]), int(p["fourier_order"])) for p in model.seasonalities.values())
        if (
            model.start is None
            or model.t_scale is None
            or model.y_scale is None
            or model.y_min is None
            or model.train_component_cols is None
        ):
            raise ValueError("a PointForecast needs a fitted Prophet model")
        beta = np.asarray(model.params["beta"])
        n_columns = 2 * sum(order for _, order in seasonalities) + len(holiday_days)
        if beta.shape[-1] != n_columns:
            return None
        columns = model.train_component_cols
        floor = 0.0 if model.scaling == "absmax" else float(model.y_min)
        return cls(
            growth=model.growth,
            k=float(np.nanmean(model.params["k"])),
            m=float(np.nanmean(model.params["m"])),
            deltas=np.nanmean(model.params["delta"], axis=0),
            changepoints_t=np.asarray(model.changepoints_t, dtype=float),
            start_ns=pd.Timestamp(model.start).value,
            t_scale_ns=pd.Timedelta(model.t_scale).value,
            y_scale=float(model.y_scale),
            floor=floor,
            seasonalities=seasonalities,
            holiday_days=holiday_days,
            # As in predict_seasonal_components: coefficients masked per component.
            additive_beta=beta * columns["additive_terms"].to_numpy(),
            multiplicative_beta=beta * columns["multiplicative_terms"].to_numpy(),
        )

    def to_state(self) -> dict:
        """The forecast as data (``artifacts.pack``)."""
        return {
            "growth": self.growth,
            "k": self.k,
            "m": self.m,
            "deltas": self.deltas,
            "changepoints_t": self.changepoints_t,
            "start_ns": self.start_ns,
            "t_scale_ns": self.t_scale_ns,
            "y_scale": self.y_scale,
            "floor": self.floor,
            "seasonalities": [list(pair) for pair in self.seasonalities],
            "holiday_days": list(self.holiday_days),
            "additive_beta": self.additive_beta,
            "multiplicative_beta": self.multiplicative_beta,
        }

    @classmethod
    def from_state(cls, state: dict) -> "PointForecast":
        return cls(
            growth=state["growth"],
            k=float(state["k"]),
            m=float(state["m"]),
            deltas=np.asarray(state["deltas"], dtype=float),
            changepoints_t=np.asarray(state["changepoints_t"], dtype=float),
            start_ns=int(state["start_ns"]),
            t_scale_ns=int(state["t_scale_ns"]),
            y_scale=float(state["y_scale"]),
            floor=float(state["floor"]),
            seasonalities=tuple((float(period), int(order)) for period, order in state["seasonalities"]),
            holiday_days=tuple(np.asarray(days, dtype=np.int64) for days in state["holiday_days"]),
            additive_beta=np.asarray(state["additive_beta"], dtype=float),
            multiplicative_beta=np.asarray(state["multiplicative_beta"], dtype=float),
        )

    def __call__(self, ds: pd.DatetimeIndex) -> np.ndarray:
        """``yhat`` at naive-UTC timestamps ``ds``, in their order."""
        ns = ds.as_unit("ns").asi8
        t = (ns - self.start_ns) / self.t_scale_ns
        if self.growth == "linear":
            trend = Prophet.piecewise_linear(t, self.deltas, self.k, self.m, self.changepoints_t)
        else:
            trend = Prophet.flat_trend(t, self.m)
        trend = trend * self.y_scale + self.floor
        features = self._features(ns)
        additive = np.nanmean(np.matmul(features, self.additive_beta.T) * self.y_scale, axis=1)
        multiplicative = np.nanmean(np.matmul(features, self.multiplicative_beta.T), axis=1)
        return trend * (1 + multiplicative) + additive

    def _features(self, ns: np.ndarray) -> np.ndarray:
        """Prophet's feature matrix: Fourier terms of each seasonality, then holiday dummies."""
        n_fourier = 2 * sum(order for _, order in self.seasonalities)
        features = np.empty((len(ns), n_fourier + len(self.holiday_days)))
        # fourier_series: days since the epoch, the same arithmetic in the same order.
        seconds, residual = np.divmod(ns, 10**9)
        x_t = np.pi * 2 * ((seconds + residual / 10**9) / (24 * 60 * 60))
        column = 0
        for period, order in self.seasonalities:
            for i in range(order):
                c = (i + 1) / period * x_t
                features[:, column] = np.sin(c)
                features[:, column + 1] = np.cos(c)
                column += 2
        days = np.floor_divide(ns, _NS_PER_DAY)
        for offset, on_days in enumerate(self.holiday_days):
            features[:, n_fourier + offset] = np.isin(days, on_days)
        return features


def _holiday_columns(holidays: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Per holiday feature column, the days it is 1 on, as ``make_holiday_features`` builds them.

    Each holiday row adds a column per day of its window (``lower_window`` .. ``upper_window``,
    named ``<holiday>_delim_<+/-><offset>``); columns are in sorted name order.
    """
    columns: dict[str, list[int]] = {}
    for row in holidays.itertuples():
        try:
            lower = int(getattr(row, "lower_window", 0))
            upper = int(getattr(row, "upper_window", 0))
        except ValueError:  # a NaN window, which Prophet reads as 0
            lower = upper = 0
        ds = cast(pd.Timestamp, row.ds)  # the frame's ds column holds timestamps (or NaT)
        day = None if pd.isna(ds) else pd.Timestamp(ds).normalize().value // _NS_PER_DAY
        for offset in range(lower, upper + 1):
            key = f"{row.holiday}_delim_{'+' if offset >= 0 else '-'}{abs(offset)}"
            on_days = columns.setdefault(key, [])
            if day is not None:
                on_days.append(day + offset)
    return tuple(np.array(columns[key], dtype=np.int64) for key in sorted(columns))


class ProphetDetector(BaseEstimator):
    """Expected value per timestamp from a Prophet model fitted on past points only."""

    _model: Prophet | None
    _model_json: bytes | None
    """The fitted model's stored JSON (xz), until ``model_`` decodes it."""

    def __init__(
        self,
        changepoint_prior_scale: float = 0.05,
        seasonality_prior_scale: float = 10.0,
        seasonality_mode: Literal["additive", "multiplicative"] = "additive",
        daily_seasonality: bool | Literal["auto"] = "auto",
        weekly_seasonality: bool | Literal["auto"] = "auto",
        yearly_seasonality: bool | Literal["auto"] = "auto",
        holidays_country: str | None = "US",
        holidays_prior_scale: float = 10.0,
    ):
        self.changepoint_prior_scale = changepoint_prior_scale
        self.seasonality_prior_scale = seasonality_prior_scale
        self.seasonality_mode = seasonality_mode
        self.daily_seasonality = daily_seasonality
        self.weekly_seasonality = weekly_seasonality
        self.yearly_seasonality = yearly_seasonality
        self.holidays_country = holidays_country
        self.holidays_prior_scale = holidays_prior_scale

    def _holidays_frame(self, ds: pd.DatetimeIndex) -> pd.DataFrame | None:
        if not self.holidays_country:
            return None
        # Cover the year after training too: Prophet needs holiday dates for future timestamps.
        span = pd.DatetimeIndex([ds.min(), ds.max() + pd.Timedelta(days=366)])
        dates = sorted(holiday_dates(self.holidays_country, span))
        if not dates:
            return None
        # One shared "holiday" effect: a year of data holds each named holiday only once.
        return pd.DataFrame({"holiday": "holiday", "ds": pd.to_datetime(dates)})

    def fit(self, ts, y) -> "ProphetDetector":
        ds = _naive_utc(ts)
        frame = pd.DataFrame({"ds": ds, "y": np.asarray(y, dtype=float)}).dropna()
        model = Prophet(
            changepoint_prior_scale=self.changepoint_prior_scale,
            seasonality_prior_scale=self.seasonality_prior_scale,
            seasonality_mode=self.seasonality_mode,
            daily_seasonality=self.daily_seasonality,
            weekly_seasonality=self.weekly_seasonality,
            yearly_seasonality=self.yearly_seasonality,
            holidays=self._holidays_frame(pd.DatetimeIndex(frame["ds"])),
            holidays_prior_scale=self.holidays_prior_scale,
            uncertainty_samples=0,
        )
        self.model_ = model.fit(frame)
        self.__dict__.pop("_point_forecast_", None)
        return self

    def predict(self, ts) -> np.ndarray:
        """Prophet's ``yhat`` at ``ts``, in the order given."""
        ds = _naive_utc(ts)
        forecast = self._point_forecast()
        if forecast is None:
            return self.forecast(ds)["yhat"].to_numpy(dtype=float)
        return forecast(ds)

    def forecast(self, ts) -> pd.DataFrame:
        """``Prophet.predict`` itself: every component, sorted by time (slow; for inspection)."""
        return self.model_.predict(pd.DataFrame({"ds": _naive_utc(ts)}))

    def components(self, ts) -> pd.DataFrame:
        """Trend and seasonal components (those the model has) for plotting."""
        forecast = self.forecast(ts)
        present = [c for c in COMPONENTS if c in forecast.columns]
        return forecast[["ds", *present, "yhat"]]

    @property
    def model_(self) -> Prophet:
        """The fitted Prophet model. A loaded detector decodes it from its stored JSON on first
        use (``forecast``, ``components``, or ``predict`` without a ``PointForecast``): scoring
        needs only the point forecast, and decoding takes longer than loading the rest."""
        model = self.__dict__.get("_model")
        if model is None:
            stored = self.__dict__.get("_model_json")
            if stored is None:
                raise AttributeError("model_: the detector is not fitted")
            model = self._model = model_from_json(lzma.decompress(stored).decode())
        return model

    @model_.setter
    def model_(self, model: Prophet) -> None:
        self._model, self._model_json = model, None

    def _point_forecast(self) -> PointForecast | None:
        # Built on first use after fitting; a loaded detector has it from its artifact.
        if "_point_forecast_" not in self.__dict__:
            self._point_forecast_ = PointForecast.from_model(self.model_)
        return self._point_forecast_

    def to_state(self) -> dict:
        """The fitted detector as data (``artifacts.pack``): Prophet's own JSON
        (``prophet.serialize.model_to_json``, xz-compressed) and the point forecast scoring
        evaluates (None if it needs ``Prophet.predict``)."""
        stored = self.__dict__.get("_model_json")
        if stored is None:
            stored = lzma.compress(model_to_json(self.model_).encode(), preset=MODEL_JSON_PRESET)
        forecast = self._point_forecast()
        return {
            "params": self.get_params(),
            "model_json_xz": bytes(stored),
            "point_forecast": None if forecast is None else forecast.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict) -> "ProphetDetector":
        """The detector ``to_state`` described; its Prophet model is decoded when first used."""
        detector = cls(**state["params"])
        detector._model, detector._model_json = None, bytes(state["model_json_xz"])
        forecast = state["point_forecast"]
        detector._point_forecast_ = None if forecast is None else PointForecast.from_state(forecast)
        return detector


MODEL_JSON_PRESET = 0
"""xz preset of the stored Prophet JSON (0.65 MB for 4,032 hourly points, its history most of
it): 100 KB in 40 ms; the default preset (6) saves 25 KB more in 290 ms (docs/models.md)."""
