"""The tuning step: per KPI, search its detector's parameters on its own history and store them.

Joins the store and ``detection.tuning`` (no Dagster), so ``kpi-pipeline tune`` and the
``kpi_parameters`` asset run the same code. Training then applies what is stored
(``parameters.apply_parameters``, as ``pipeline.train_models`` does). Tuning is an explicit
step: nothing in the default path runs it (docs/tuning.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.config import get_settings
from kpi_pipeline.detection.ensemble import DetectorConfig, ProphetConfig
from kpi_pipeline.detection.parameters import apply_parameters
from kpi_pipeline.detection.tuning import TuningResult, TuningSettings, tune
from kpi_pipeline.errors import describe_error
from kpi_pipeline.pipeline import Progress, load_cleaned, training_exclusions


@dataclass(frozen=True)
class KpiTuning:
    """What tuning did for one KPI."""

    kpi: str
    status: str
    """``tuned`` (parameters stored) or ``failed`` (too little history or an error, in
    ``detail``; nothing stored, earlier parameters kept)."""
    result: TuningResult | None = None
    pinned: dict[str, Any] = field(default_factory=dict)
    """The KPI's pinned parameters: kept fixed, not searched."""
    detail: str = ""


def run_config() -> DetectorConfig:
    """The configuration tuning starts every KPI from: the defaults with the configured holiday
    country, as the training asset's defaults (``ModelTrainingConfig``)."""
    return DetectorConfig(prophet=ProphetConfig(holidays_country=get_settings().holiday_country))


def tune_kpis(
    engine: sa.Engine,
    config: DetectorConfig,
    kpis: list[str] | None = None,
    settings: TuningSettings | None = None,
    progress: Progress = lambda _message: None,
) -> list[KpiTuning]:
    """Tune every KPI of ``kpis`` (all stored KPIs if None) on its cleaned history and store the
    chosen parameters as its ``tuned`` row; one KPI's failure is reported and the others go on.

    Each KPI starts from ``config`` with its pinned parameters applied, which are not searched.
    Its training exclusions (confident anomalies, confirmed incidents) are left out of training
    and of the forecast error; a KPI with analysts' feedback is tuned on event F1, with the
    points confirmed as incidents as its labels.
    """
    cleaned, _ = load_cleaned(engine, kpis)
    names = sorted(str(kpi) for kpi in cleaned["kpi"].unique())
    excluded = training_exclusions(engine, config, names)
    feedback = store.load_anomalies(engine, names)
    feedback = feedback[feedback["feedback"].notna()]
    pins = {
        str(row.kpi): dict(row.params)
        for row in store.load_parameter_rows(engine, names).itertuples()
        if row.source == "pinned"
    }
    results = []
    for position, (kpi, rows) in enumerate(cleaned.groupby("kpi", sort=True), start=1):
        kpi = str(kpi)
        pinned = pins.get(kpi, {})
        say = _prefixed(progress, f"[{position}/{len(names)}] {kpi}")
        ts = pd.DatetimeIndex(rows["ts"])
        labelled = feedback[feedback["kpi"] == kpi]
        incidents = None
        if len(labelled):
            incidents = ts.isin(pd.DatetimeIndex(labelled.loc[labelled["feedback"] == "true_positive", "ts"]))
        try:
            result = tune(
                ts,
                rows["value"].to_numpy(dtype=float),
                apply_parameters(config, pinned),
                gap=rows["gap"].to_numpy(dtype=bool),
                exclude=ts.isin(excluded[kpi]) if kpi in excluded else np.zeros(len(ts), dtype=bool),
                incidents=incidents,
                fixed=pinned,
                settings=settings,
                progress=say,
            )
            store.save_tuned_parameters(
                engine,
                kpi,
                result.params,
                objective=result.objective,
                objective_value=result.value,
                default_value=result.default_value,
                trials=result.trials,
                pruned_trials=result.pruned_trials,
            )
            outcome = KpiTuning(kpi, "tuned", result, pinned)
        except Exception as error:  # noqa: BLE001 - one KPI's failure must not stop the others
            outcome = KpiTuning(kpi, "failed", None, pinned, describe_error(error))
        progress(f"[{position}/{len(names)}] {kpi}: {describe_tuning(outcome)}")
        results.append(outcome)
    return results


def describe_tuning(outcome: KpiTuning) -> str:
    """One line: the objective before and after, the trials, the time taken."""
    result = outcome.result
    if result is None:
        return f"{outcome.status}: {outcome.detail}"
    verdict = "better than the defaults" if result.improved else "the defaults kept their value"
    return (
        f"{result.objective} {result.default_value:.4g} -> {result.value:.4g} ({verdict}); "
        f"{result.trials} trials, {result.pruned_trials} pruned, {result.seconds:.1f}s"
    )


def _prefixed(progress: Progress, prefix: str) -> Progress:
    return lambda message: progress(f"{prefix}: {message}")
