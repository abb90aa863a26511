"""The ensemble's registry rows (docs/models.md): one artifact per fitted component and the
``ensemble`` artifact with the config, learned scalars and calibrations, all data packed by
``artifacts`` (its ``FORMAT_VERSION`` versions the format), no pickle."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from kpi_pipeline.detection.artifacts import pack, read_document, unpack
from kpi_pipeline.detection.autoencoder import AutoencoderDetector
from kpi_pipeline.detection.calibration import ExceedanceTail
from kpi_pipeline.detection.config import DetectorConfig
from kpi_pipeline.detection.iforest import IsolationForestDetector
from kpi_pipeline.detection.prophet_model import ProphetDetector

if TYPE_CHECKING:
    from kpi_pipeline.detection.ensemble import EnsembleDetector

COMPONENT_KINDS = ("prophet", "iforest")

SHELL_SCALARS = (
    "threshold_",
    "log_space_",
    "log_floor_",
    "scale_floor_",
    "residual_scale_",
    "step_scale_",
    "repeat_rate_",
    "longest_run_",
    "n_train_points_",
)
"""Learned numbers stored as they are in the ``ensemble`` artifact."""


def to_artifacts(detector: EnsembleDetector) -> dict[str, bytes]:
    """The fitted detector as registry rows, data only: one artifact per component, and the
    ``ensemble`` with the config, learned scalars and calibrations."""
    artifacts = {kind: pack(kind, getattr(detector, f"{kind}_").to_state()) for kind in COMPONENT_KINDS}
    if hasattr(detector, "autoencoder_"):  # optional (``DetectorConfig.autoencoder``)
        artifacts["autoencoder"] = pack("autoencoder", detector.autoencoder_.to_state())
    artifacts["ensemble"] = pack("ensemble", _shell_state(detector))
    return artifacts


def from_artifacts(cls: type[EnsembleDetector], artifacts: dict[str, bytes]) -> EnsembleDetector:
    """The detector (of class ``cls``) ``to_artifacts`` stored, scoring exactly as it did."""
    detector = shell_from_artifact(cls, artifacts["ensemble"])
    detector.prophet_ = ProphetDetector.from_state(unpack(artifacts["prophet"], "prophet"))
    detector.iforest_ = IsolationForestDetector.from_state(unpack(artifacts["iforest"], "iforest"))
    if detector._config.autoencoder:
        if "autoencoder" not in artifacts:
            raise ValueError("the model was trained with the autoencoder on, but has no autoencoder artifact")
        detector.autoencoder_ = AutoencoderDetector.from_state(unpack(artifacts["autoencoder"], "autoencoder"))
    return detector


def shell_from_artifact(cls: type[EnsembleDetector], artifact: bytes) -> EnsembleDetector:
    """The detector (of class ``cls``) of an ``ensemble`` artifact without its fitted
    components (``prophet_``, ``iforest_``): config, grid step (``freq_``), calibrations and
    ``context_points``, what choosing a scoring window needs."""
    state = unpack(artifact, "ensemble")
    config = None if state["config"] is None else DetectorConfig.from_dict(state["config"])
    detector = cls(config, random_state=state["random_state"])
    detector.__dict__.update({name: state[name] for name in SHELL_SCALARS})
    detector.freq_ = _timedelta(state["freq"])
    detector.deviation_tail_ = ExceedanceTail.from_state(state["deviation_tail"])
    if state["sustained_tail"] is not None:
        detector.sustained_scale_ = state["sustained_scale"]
        detector.sustained_tail_ = ExceedanceTail.from_state(state["sustained_tail"])
    detector.train_start_ = _timestamp(state["train_start"])
    detector.train_end_ = _timestamp(state["train_end"])
    detector.metrics_ = state["metrics"]
    return detector


def scoring_window_of_artifact(cls: type[EnsembleDetector], artifact: bytes) -> tuple[pd.Timedelta, int]:
    """(grid step, ``context_points``) of an ``ensemble`` artifact, read from its JSON document
    alone (none of its arrays decoded): what choosing a scoring window needs."""
    state = read_document(artifact, "ensemble")["state"]
    config = None if state["config"] is None else DetectorConfig.from_dict(state["config"])
    step = _timedelta(state["freq"])
    if step is None:
        raise ValueError("this ensemble artifact has no grid step: its detector was never fitted")
    return step, cls(config).context_points


def _shell_state(detector: EnsembleDetector) -> dict:
    sustained = hasattr(detector, "sustained_tail_")
    return {
        "config": None if detector.config is None else detector.config.to_dict(),
        "random_state": detector.random_state,
        **{name: getattr(detector, name) for name in SHELL_SCALARS},
        "freq": _timedelta_state(detector.freq_),
        "deviation_tail": detector.deviation_tail_.to_state(),
        "sustained_scale": detector.sustained_scale_ if sustained else None,
        "sustained_tail": detector.sustained_tail_.to_state() if sustained else None,
        "train_start": _timestamp_state(detector.train_start_),
        "train_end": _timestamp_state(detector.train_end_),
        "metrics": detector.metrics_,
    }


def _timestamp_state(ts: pd.Timestamp) -> dict:
    # The unit too: a grid built on a microsecond step keeps microsecond timestamps.
    return {"ns": ts.value, "unit": ts.unit, "tz": None if ts.tz is None else str(ts.tz)}


def _timestamp(state: dict) -> pd.Timestamp:
    return pd.Timestamp(state["ns"], unit="ns", tz=state["tz"]).as_unit(state["unit"])


def _timedelta_state(step: pd.Timedelta | None) -> dict | None:
    return None if step is None else {"ns": step.value, "unit": step.unit}


def _timedelta(state: dict | None) -> pd.Timedelta | None:
    return None if state is None else pd.Timedelta(state["ns"], unit="ns").as_unit(state["unit"])
