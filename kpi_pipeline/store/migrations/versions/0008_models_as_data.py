"""Models as data: convert the registry's pickled artifacts, once, to the data format.

Revision ID: 0008
Revises: 0007
Create Date: 2025-04-08

Until now ``kpi_models.artifact`` held pickles of the detector's objects; models are now data
(``detection.artifacts``: JSON and arrays, never unpickled when loaded). The pickles in a
registry were written by this application, so this migration reads them once more, in a
restricted way (``_LegacyUnpickler``: this application's classes become plain holders of their
pickled attributes; only numpy, pandas, scikit-learn and a few standard modules are importable),
rebuilds each version's detector from those attributes, with the defaults older pickles relied
on, and rewrites its rows with ``EnsembleDetector.to_artifacts``: its scores do not change. A
version that cannot be rebuilt (incomplete, or pickled by a scikit-learn whose trees this one
cannot read) is deleted with a warning: it could not score, and training fills the gap (a KPI
left without versions is walked forward again). No pickle is read after this migration.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

KINDS = ("prophet", "iforest", "ensemble")
PICKLE_START = b"\x80"

# Modules a detector's pickle may name besides this application's: array and scalar types and
# the fitted scikit-learn forest.
_IMPORTABLE = (
    "numpy",
    "pandas",
    "sklearn",
    "scipy",
    "pytz",
    "zoneinfo",
    "dateutil",
    "datetime",
    "copyreg",
    "_codecs",
    "array",
    "collections",
    "prophet",
)
_BUILTINS = {"complex", "set", "frozenset", "slice", "range", "bytearray", "object"}


class _Holder:
    """A pickled object of this application: its class name and its attributes."""

    legacy_name = ""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state)


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "kpi_pipeline":
            return type(name, (_Holder,), {"legacy_name": name})
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if module.split(".")[0] in _IMPORTABLE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a model pickle names {module}.{name}")


def _unpickle(data: bytes) -> Any:
    return _LegacyUnpickler(io.BytesIO(data)).load()


def _attributes(holder: Any, name: str) -> dict[str, Any]:
    if not isinstance(holder, _Holder) or holder.legacy_name != name:
        raise TypeError(f"expected a pickled {name}, found {type(holder).__name__}")
    return holder.__dict__


def _config(holder: Any) -> Any:
    """The ``DetectorConfig`` of a pickled one: fields it lacks (added later) take their
    defaults, as they did when such a pickle was loaded; fields since removed are dropped."""
    from kpi_pipeline.detection.ensemble import DetectorConfig, IForestConfig, ProphetConfig

    def fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
        known = {field.name for field in dataclasses.fields(cls)}
        return {key: value for key, value in values.items() if key in known}

    if holder is None:
        return None
    values = fields(DetectorConfig, _attributes(holder, "DetectorConfig"))
    nested = {"prophet": (ProphetConfig, "ProphetConfig"), "iforest": (IForestConfig, "IForestConfig")}
    for key, (cls, name) in nested.items():
        if key in values:
            values[key] = cls(**fields(cls, _attributes(values[key], name)))
    return DetectorConfig(**values)


def _tail(holder: Any) -> Any:
    """A pickled ``ExceedanceTail``: tails pickled before the recurrence cap existed judge
    without it, those of the row-counting cap have no episode peaks (as they were loaded)."""
    from kpi_pipeline.detection.calibration import NO_RECURRENCE_CAP, ExceedanceTail

    found = {**NO_RECURRENCE_CAP, "episode_peaks_": None, "trim_at": None, **_attributes(holder, "ExceedanceTail")}
    params = {key: found.get(key, default) for key, default in vars(ExceedanceTail()).items()}
    return ExceedanceTail.from_state(
        {
            "params": params,
            "sorted": found["sorted_"],
            "threshold": found["threshold_"],
            "episode_peaks": found["episode_peaks_"],
            "shape": found["shape_"],
            "scale": found["scale_"],
            "trimmed": found.get("trimmed_", 0),
        }
    )


def _iforest(holder: Any) -> Any:
    from kpi_pipeline.detection.calibration import NO_RECURRENCE_CAP
    from kpi_pipeline.detection.iforest import IsolationForestDetector, _FlatForest

    found = {**NO_RECURRENCE_CAP, "trim_at": None, **_attributes(holder, "IsolationForestDetector")}
    params = {key: found.get(key, default) for key, default in IsolationForestDetector().get_params().items()}
    detector = IsolationForestDetector(**params)
    detector.forest_ = found["forest_"]
    detector.flat_ = _FlatForest.of(detector.forest_)
    detector.calibration_ = _tail(found["calibration_"])
    detector.n_features_in_ = int(found.get("n_features_in_", detector.forest_.n_features_in_))
    return detector


def _prophet(holder: Any) -> Any:
    from prophet.serialize import model_from_json

    from kpi_pipeline.detection.prophet_model import ProphetDetector

    found = _attributes(holder, "ProphetDetector")
    params = {key: found.get(key, default) for key, default in ProphetDetector().get_params().items()}
    detector = ProphetDetector(**params)
    model = found["model_"]
    detector.model_ = model_from_json(model) if isinstance(model, str) else model
    return detector


def legacy_detector(artifacts: dict[str, bytes]) -> Any:
    """The ``EnsembleDetector`` of one version's pickled rows, rebuilt from their attributes."""
    from kpi_pipeline.detection.ensemble import EnsembleDetector

    found = dict(_attributes(_unpickle(artifacts["ensemble"]), "EnsembleDetector"))
    detector = EnsembleDetector(_config(found.pop("config", None)), random_state=found.pop("random_state", 0))
    # Set before thresholds followed the KPI's frequency: the hourly threshold.
    found.setdefault("threshold_", detector._config.threshold)
    # Set before the step had its own scale: the residual scale.
    found.setdefault("step_scale_", found["residual_scale_"])
    for name in ("deviation_tail_", "sustained_tail_"):
        if name in found:
            found[name] = _tail(found[name])
    learned = {key: value for key, value in found.items() if key.endswith("_")}
    detector.__dict__.update(learned)
    detector.prophet_ = _prophet(_unpickle(artifacts["prophet"]))
    detector.iforest_ = _iforest(_unpickle(artifacts["iforest"]))
    return detector


def upgrade() -> None:
    from kpi_pipeline.detection.ensemble import EnsembleDetector

    bind = op.get_bind()
    models = sa.table(
        "kpi_models",
        sa.column("kpi"),
        sa.column("kind"),
        sa.column("version"),
        sa.column("artifact", sa.LargeBinary),
    )
    versions = bind.execute(
        sa.select(models.c.kpi, models.c.version).distinct().order_by(models.c.kpi, models.c.version)
    ).all()
    converted = dropped = 0
    for kpi, version in versions:
        this_version = (models.c.kpi == kpi) & (models.c.version == version)
        rows = dict(bind.execute(sa.select(models.c.kind, models.c.artifact).where(this_version)).all())
        if not any(bytes(artifact or b"")[:1] == PICKLE_START for artifact in rows.values()):
            continue
        try:
            detector = legacy_detector({kind: bytes(rows[kind]) for kind in KINDS})
            artifacts = detector.to_artifacts()
            EnsembleDetector.from_artifacts(artifacts)  # it reads back
        except Exception as error:  # noqa: BLE001 - any version that cannot be rebuilt
            log.warning(
                "kpi_models: deleting version %s of %r, whose pickles cannot be "
                "converted (%s: %s); training replaces it",
                version,
                kpi,
                type(error).__name__,
                error,
            )
            bind.execute(sa.delete(models).where(this_version))
            dropped += 1
            continue
        for kind, artifact in artifacts.items():
            bind.execute(sa.update(models).where(this_version, models.c.kind == kind).values(artifact=artifact))
        converted += 1
    if converted or dropped:
        log.info("kpi_models: %d model versions converted from pickles, %d deleted", converted, dropped)


def downgrade() -> None:
    raise NotImplementedError("models stored as data are not turned back into pickles")
