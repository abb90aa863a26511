"""Multivariate detection over a KPI group: one detector over its members' residuals.

A group's members are KPIs that move together (orders, revenue and conversion). Each member is
already judged alone by its ensemble; an incident that moves several members a little each
can stay under every member's threshold while the joint move is very unlikely. This detector
judges the vector of the members' standardised residuals at each timestamp.

How a timestamp is judged (higher score = more anomalous, in [0, 1]; 0.5 = the threshold):

1. A member's residual is its value against the expected value its own model gave, in the
   model's space: ``ln(value / expected)`` for a positive KPI, ``value - expected`` otherwise
   (``member_residuals``). Training standardises each member by the median and robust scale
   (``ROBUST_SCALE`` x median absolute deviation) of its training residuals: ``z``.
2. Two components judge ``z``: the squared Mahalanobis distance under a robust covariance (scikit-learn's
   ``MinCovDet``, which past incidents in the training window cannot inflate) catches a move
   that breaks the members' usual correlation or is large jointly; a multivariate Isolation
   Forest over ``z`` catches the other shapes. Each raw score is calibrated on training points
   into a surprise (``-log10`` tail probability, ``calibration.ExceedanceTail``) with the
   confident tails trimmed, as every per-KPI component is.
3. The group surprise is the larger of the two; ``score = s / (s + threshold)``.
4. A timestamp whose group score reaches 0.5 fires; runs of firing timestamps (``merge_gap``
   quiet points allowed) are group events (``group_events``). The members that moved are those
   whose ``|z|`` is at least ``moved_share`` of the largest and at least ``moved_z``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.covariance import MinCovDet

from kpi_pipeline.detection.artifacts import pack, unpack
from kpi_pipeline.detection.calibration import ROBUST_SCALE, ExceedanceTail, score_from_surprise
from kpi_pipeline.detection.iforest import IsolationForestDetector

ARTIFACT_KIND = "group"
STATE_VERSION = 1
"""Version of the group detector's stored state (inside the artifact format's own version)."""


MIN_KEPT_SHARE = 0.9
"""Training keeps at least this share of its timestamps when it leaves out confidently flagged
ones. Lower than one KPI's 0.97 (``calibration.MIN_KEPT_SHARE``): a group's window holds the
incidents of all of its members."""


class InsufficientGroupHistory(ValueError):
    """Raised by ``fit`` when too few timestamps have every member's residual."""


@dataclass(frozen=True)
class GroupConfig:
    """Tunables of the group detector, with the defaults the measurements used
    (docs/multivariate.md)."""

    threshold: float = 3.5
    """Group surprise at which a timestamp fires (score 0.5): the per-KPI default."""
    tail_quantile: float = 0.9
    n_estimators: int = 100
    max_samples: int = 256
    min_train_points: int = 168
    """Timestamps with every member's residual a model needs (a week of an hourly group)."""
    train_window_points: int = 2016
    """Newest timestamps a version trains on (12 weeks of an hourly group)."""
    moved_share: float = 0.5
    """A member moved if its ``|z|`` is at least this share of the largest member's ..."""
    moved_z: float = 1.0
    """... and at least this many robust standard deviations."""
    event_merge_gap: int = 2
    """Quiet timestamps allowed inside one group event."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GroupConfig:
        return cls(**values)


def member_residuals(value: np.ndarray, expected: np.ndarray, log_space: np.ndarray) -> np.ndarray:
    """Residuals in each member's model space: ``ln(value / expected)`` where ``log_space`` (per
    column), ``value - expected`` elsewhere; NaN where either is missing or a log is undefined."""
    value, expected = np.asarray(value, dtype=float), np.asarray(expected, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(value / expected)
    ratio = np.where((value > 0) & (expected > 0), ratio, np.nan)
    return np.where(np.asarray(log_space, dtype=bool), ratio, value - expected)


def positive_members(value: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per column: whether every finite value and expected value is positive (log space)."""
    value, expected = np.asarray(value, dtype=float), np.asarray(expected, dtype=float)
    ok = np.where(np.isfinite(value), value > 0, True) & np.where(np.isfinite(expected), expected > 0, True)
    return np.asarray(ok.all(axis=0), dtype=bool)


class GroupDetector(BaseEstimator):
    """Robust-covariance Mahalanobis + multivariate Isolation Forest over a group's residuals."""

    def __init__(self, members: tuple[str, ...] = (), config: GroupConfig | None = None, random_state: int = 0):
        self.members = members
        self.config = config
        self.random_state = random_state

    @property
    def _config(self) -> GroupConfig:
        return self.config or GroupConfig()

    def fit(self, residuals: np.ndarray, log_space: np.ndarray) -> GroupDetector:
        """Learn the members' normal joint residuals from ``residuals`` (timestamps x members,
        time order; rows with a missing member are skipped). ``log_space``: per member, the
        space its residuals are in (kept so that ``score`` is given values and expected values
        alike)."""
        cfg = self._config
        residuals = np.asarray(residuals, dtype=float)
        if residuals.ndim != 2 or residuals.shape[1] != len(self.members) or len(self.members) < 2:
            raise ValueError(f"residuals must be timestamps x {len(self.members)} members (at least 2)")
        complete = residuals[np.isfinite(residuals).all(axis=1)]
        if len(complete) < cfg.min_train_points:
            raise InsufficientGroupHistory(
                f"insufficient history: {len(complete)} timestamps with every member's residual, "
                f"need at least {cfg.min_train_points}"
            )
        self.log_space_ = np.asarray(log_space, dtype=bool)
        self.center_ = np.median(complete, axis=0)
        spread = ROBUST_SCALE * np.median(np.abs(complete - self.center_), axis=0)
        # A member that never deviates (a constant) gets a tiny floor instead of a division by 0.
        self.scale_ = np.maximum(spread, 1e-9 + 1e-6 * np.abs(self.center_))
        z = (complete - self.center_) / self.scale_
        covariance = MinCovDet(random_state=self.random_state).fit(z)
        self.location_ = covariance.location_
        self.precision_ = covariance.get_precision()
        # The squared distance: for normal residuals a chi-square, whose tail is exponential,
        # the lightest tail the fitted Pareto allows (its shape is at least 0).
        distance = self._squared_distance(z)
        # Past incidents in the window must not teach either component that they are normal: the
        # timestamps the robust covariance confidently flags (chi-square surprise at least the
        # threshold) are left out, unless they are more than ``MIN_KEPT_SHARE`` (then they are the
        # residuals' own heavy tail, as ``ExceedanceTail`` decides for one KPI).
        robust_surprise = -np.log10(np.maximum(stats.chi2.sf(distance, len(self.members)), 1e-300))
        normal = robust_surprise < cfg.threshold
        if normal.mean() < MIN_KEPT_SHARE:
            normal[:] = True
        self.distance_tail_ = ExceedanceTail(cfg.tail_quantile, min_recurrences=0).fit(distance[normal])
        self.forest_ = IsolationForestDetector(
            n_estimators=cfg.n_estimators,
            max_samples=cfg.max_samples,
            tail_quantile=cfg.tail_quantile,
            random_state=self.random_state,
            min_recurrences=0,
        ).fit(z[normal])
        self.n_train_points_ = len(complete)
        self.trimmed_ = int((~normal).sum())
        return self

    def _squared_distance(self, z: np.ndarray) -> np.ndarray:
        """The squared Mahalanobis distance of each row of ``z`` under the robust covariance."""
        centred = z - self.location_
        return np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision_, centred), 0.0)

    def standardise(self, residuals: np.ndarray) -> np.ndarray:
        """``z``: residuals (timestamps x members) in robust standard deviations."""
        return (np.asarray(residuals, dtype=float) - self.center_) / self.scale_

    def judge(self, value: np.ndarray, expected: np.ndarray) -> GroupJudgement:
        """Judge each timestamp from the members' values and expected values (timestamps x
        members). A missing member counts as not deviating (``z`` 0): no evidence either way."""
        z = self.standardise(member_residuals(value, expected, np.broadcast_to(self.log_space_, np.shape(value))))
        filled = np.where(np.isfinite(z), z, 0.0)
        distance = self.distance_tail_.surprise(self._squared_distance(filled))
        forest = self.forest_.surprise(filled)
        surprise = np.fmax(np.nan_to_num(distance, nan=0.0), forest)
        any_member = np.isfinite(z).any(axis=1)
        surprise = np.where(any_member, surprise, 0.0)
        return GroupJudgement(
            z=z,
            distance_surprise=distance,
            forest_surprise=forest,
            score=score_from_surprise(surprise, self._config.threshold),
            moved=self.moved(z),
        )

    def moved(self, z: np.ndarray) -> np.ndarray:
        """Per timestamp and member: whether the member moved (see the module docstring)."""
        size = np.abs(np.where(np.isfinite(z), z, 0.0))
        largest = size.max(axis=1, keepdims=True)
        cfg = self._config
        return (size >= cfg.moved_share * largest) & (size >= cfg.moved_z)

    # -- stored as data ----------------------------------------------------------------------
    def to_artifact(self) -> bytes:
        """The fitted detector as one registry artifact (``artifacts.pack``, no pickle)."""
        return pack(
            ARTIFACT_KIND,
            {
                "state_version": STATE_VERSION,
                "members": list(self.members),
                "config": self._config.to_dict(),
                "random_state": self.random_state,
                "log_space": self.log_space_.astype(np.uint8),
                "center": self.center_,
                "scale": self.scale_,
                "location": self.location_,
                "precision": self.precision_,
                "distance_tail": self.distance_tail_.to_state(),
                "forest": self.forest_.to_state(),
                "n_train_points": self.n_train_points_,
                "trimmed": self.trimmed_,
            },
        )

    @classmethod
    def from_artifact(cls, artifact: bytes) -> GroupDetector:
        """The detector ``to_artifact`` stored, judging exactly as it did."""
        state = unpack(artifact, ARTIFACT_KIND)
        if state["state_version"] > STATE_VERSION:
            raise ValueError(f"group model state version {state['state_version']} is newer than this version reads")
        detector = cls(tuple(state["members"]), GroupConfig.from_dict(state["config"]), state["random_state"])
        detector.log_space_ = np.asarray(state["log_space"], dtype=bool)
        detector.center_ = np.asarray(state["center"], dtype=float)
        detector.scale_ = np.asarray(state["scale"], dtype=float)
        detector.location_ = np.asarray(state["location"], dtype=float)
        detector.precision_ = np.asarray(state["precision"], dtype=float)
        detector.distance_tail_ = ExceedanceTail.from_state(state["distance_tail"])
        detector.forest_ = IsolationForestDetector.from_state(state["forest"])
        detector.n_train_points_ = int(state["n_train_points"])
        detector.trimmed_ = int(state["trimmed"])
        return detector


@dataclass(frozen=True)
class GroupJudgement:
    """Per timestamp: the members' ``z`` (timestamps x members), the components' surprises,
    the group score in [0, 1] and which members moved."""

    z: np.ndarray
    distance_surprise: np.ndarray
    forest_surprise: np.ndarray
    score: np.ndarray
    moved: np.ndarray

    @property
    def fired(self) -> np.ndarray:
        return self.score >= 0.5


GROUP_EVENT_COLUMNS = ["group_name", "event_id", "start", "end", "points", "peak_score", "members"]


def group_event_id(group: str, start: pd.Timestamp) -> str:
    return f"group:{group}@{pd.Timestamp(start).isoformat()}"


def group_events(
    group: str,
    ts: pd.DatetimeIndex,
    score: np.ndarray,
    z: np.ndarray,
    relative: np.ndarray,
    members: tuple[str, ...],
    moved: np.ndarray,
    merge_gap: int,
) -> pd.DataFrame:
    """One row per group event: a run of timestamps (in ``ts`` order, one per grid slot) whose
    group ``score`` reaches 0.5, at most ``merge_gap`` quiet timestamps apart.

    ``members`` (JSON text) lists the members that moved at some firing timestamp, largest
    first, each with its ``z`` and ``relative`` deviation (value / expected - 1; NaN for a member
    outside log space) where its ``|z|`` peaked within the event.
    """
    ts = pd.DatetimeIndex(ts)
    fired = np.flatnonzero(np.asarray(score) >= 0.5)
    rows = []
    if len(fired):
        starts = np.concatenate(([0], np.flatnonzero(np.diff(fired) > merge_gap + 1) + 1))
        ends = np.concatenate((starts[1:], [len(fired)]))
        for first, stop in zip(starts, ends):
            positions = fired[first:stop]
            named = []
            for j, kpi in enumerate(members):
                when = positions[moved[positions, j]]
                if len(when) == 0:
                    continue
                peak = when[np.argmax(np.abs(z[when, j]))]
                rel = float(relative[peak, j])
                named.append(
                    {
                        "kpi": kpi,
                        "z": round(float(z[peak, j]), 2),
                        "relative": None if not np.isfinite(rel) else round(rel, 4),
                        "at": ts[peak].isoformat(),
                    }
                )
            named.sort(key=lambda item: -abs(item["z"]))
            rows.append(
                {
                    "group_name": group,
                    "event_id": group_event_id(group, ts[positions[0]]),
                    "start": ts[positions[0]],
                    "end": ts[positions[-1]],
                    "points": len(positions),
                    "peak_score": float(np.max(np.asarray(score)[positions])),
                    "members": json.dumps(named),
                }
            )
    return pd.DataFrame(rows, columns=GROUP_EVENT_COLUMNS)


def describe_members(members_json: str) -> str:
    """A group event's moved members as text: ``orders -3.1 sd (-12.0%), revenue ...``."""
    parts = []
    for item in json.loads(members_json):
        text = f"{item['kpi']} {item['z']:+.1f} sd"
        if item.get("relative") is not None:
            text += f" ({item['relative'] * 100:+.1f}%)"
        parts.append(text)
    return ", ".join(parts) or "no member named"
