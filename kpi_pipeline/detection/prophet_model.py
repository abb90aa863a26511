"""Prophet as the expected-value model: trend + daily/weekly/yearly seasonality + holidays.

We only use Prophet's point forecast (``uncertainty_samples=0``: its sampled intervals are slow and
too narrow for residuals); the band comes from the ensemble's heavy-tailed residual model.
"""

from __future__ import annotations

import logging

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


class ProphetDetector(BaseEstimator):
    """Expected value per timestamp from a Prophet model fitted on past points only."""

    def __init__(
        self,
        changepoint_prior_scale: float = 0.05,
        seasonality_prior_scale: float = 10.0,
        seasonality_mode: str = "additive",
        daily_seasonality: bool | str = "auto",
        weekly_seasonality: bool | str = "auto",
        yearly_seasonality: bool | str = "auto",
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
        return self

    def predict(self, ts) -> np.ndarray:
        forecast = self.model_.predict(pd.DataFrame({"ds": _naive_utc(ts)}))
        return forecast["yhat"].to_numpy(dtype=float)

    def components(self, ts) -> pd.DataFrame:
        """Trend and seasonal components (those the model has) for plotting."""
        forecast = self.model_.predict(pd.DataFrame({"ds": _naive_utc(ts)}))
        present = [c for c in COMPONENTS if c in forecast.columns]
        return forecast[["ds", *present, "yhat"]]

    def __getstate__(self):
        # Prophet objects hold a Stan backend that does not pickle portably; its JSON form does.
        state = self.__dict__.copy()
        if "model_" in state:
            state["model_"] = model_to_json(state["model_"])
        return state

    def __setstate__(self, state):
        if isinstance(state.get("model_"), str):
            state["model_"] = model_from_json(state["model_"])
        self.__dict__.update(state)
