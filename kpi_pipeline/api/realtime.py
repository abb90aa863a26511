"""Real-time scoring behind the API's ``POST /v1/score``: the pipeline's scoring step on
submitted points, with nothing written.

``score_points`` rebuilds the KPI's newest detector (``pipeline.load_detector``), cleans the
points with the stored observations before them on the KPI's grid and scores them as
``pipeline.score_new_points`` later would; ``ScoringCache`` keeps detectors and each KPI's
cleaned newest observations between calls in an API worker, and follows the writes it hears.
This lives with the API, the only caller; batch training and scoring stay in ``pipeline``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from kpi_pipeline import store
from kpi_pipeline.detection.ensemble import SCORE_COLUMNS, EnsembleDetector, ScoringState
from kpi_pipeline.detection.preprocess import Grid, clean_series, fill_between
from kpi_pipeline.detection.walkforward import score_segment
from kpi_pipeline.pipeline import (
    INCREMENTAL_MAX_SLOTS,
    SCORING_SLACK_POINTS,
    NoModel,
    load_detector,
    scoring_reach,
)
from kpi_pipeline.store import serving
from kpi_pipeline.store.notifications import HeardWrites, Token

__all__ = [
    "NoModel",
    "PointsTooSpread",
    "RealtimeScores",
    "ScoringCache",
    "UnknownKpi",
    "score_points",
]


class UnknownKpi(LookupError):
    """No observation, score or model of this KPI exists."""


class PointsTooSpread(ValueError):
    """The points lie so far apart that scoring them would mean scoring a huge empty grid."""


@dataclass(frozen=True)
class RealtimeScores:
    kpi: str
    model_version: str
    columns: dict[str, np.ndarray]
    """Per submitted point, in time order: the submitted ``ts`` and ``value``, then the
    detector's ``SCORE_COLUMNS``."""

    @property
    def scores(self) -> pd.DataFrame:
        """``columns`` as a frame."""
        return pd.DataFrame(self.columns)[SCORE_COLUMNS]

    def records(self) -> list[dict]:
        """One dict per point, plain Python values, missing numbers as None (JSON has no NaN)."""
        names = SCORE_COLUMNS
        ts = self.columns["ts"]
        if not isinstance(ts, list):
            ts = pd.DatetimeIndex(ts).to_pydatetime()
        listed = [ts] + [np.asarray(self.columns[name]).tolist() for name in names[1:]]
        return [{name: (None if value != value else value) for name, value in zip(names, row)} for row in zip(*listed)]


def score_points(
    engine: sa.Engine,
    kpi: str,
    points: pd.DataFrame,
    max_points: int,
    cache: ScoringCache | None = None,
) -> RealtimeScores:
    """Score ``points`` (columns ts, value; unique ts, any order) of ``kpi`` as the scoring
    step would score them once stored, with the KPI's newest model; nothing is written.

    The points are cleaned together with the stored observations before the first of them, on
    the KPI's grid (its first timestamp and the model's step), so each gets the numbers
    ``score_new_points`` later stores for it; an off-grid point gets those of the grid point it
    falls on. The newest model is used whatever the points' timestamps, so scoring a point
    older than its training window is in-sample. ``cache`` keeps detectors and the cleaned
    newest observations between calls. Raises ``UnknownKpi``, ``NoModel``, or
    ``PointsTooSpread`` when the points span more than ``2 * (max_points + context)`` steps.

    While ``cache`` hears every write of observations and models (``ScoringCache.go_live``),
    a KPI scored once is scored again without reading the database until one is written.
    """
    points = _in_time_order(points)
    token = None
    if cache is not None:
        trusted = cache.trusted(kpi)
        if trusted is not None:
            return trusted.scorer.score(engine, points, max_points, trusted.tail)[0]
        token = cache.token(kpi)  # before the reads: a write after it withholds the trust
    version = serving.newest_model_version(engine, kpi)
    if version is None:
        if serving.kpi_exists(engine, kpi):
            raise NoModel(f"no trained model for {kpi!r} yet (too little history, or training has not run)")
        raise UnknownKpi(f"unknown KPI {kpi!r}")
    if cache is None:
        return _KpiScorer(kpi, version, load_detector(engine, kpi, version)).score(engine, points, max_points)[0]
    scorer = cache.scorer(engine, kpi, version)
    result, tail = scorer.score(engine, points, max_points)
    cache.trust(kpi, scorer, tail, token)
    return result


def _in_time_order(points: pd.DataFrame) -> pd.DataFrame:
    if points["ts"].is_monotonic_increasing:
        return points.reset_index(drop=True)
    return points.sort_values("ts", ignore_index=True)


class ScoringCache(HeardWrites):
    """What ``score_points`` keeps between calls, per (KPI, model version), least recently used
    out first: the rebuilt detector and its KPI's newest observations, cleaned. Thread-safe.

    A retrain makes a new version, whose entry is built on first use while the old one ages
    out; the observations are re-read when new or changed ones land (see ``_KpiScorer``).

    Each call checks that the KPI's newest model and observations are still those cached (two
    probes of the database), unless the cache is live: a thread listening to the writes of
    observations and models (``api.series_cache.ScoreWriteWatcher`` on
    ``store.notifications.INPUTS_CHANNEL``) calls ``go_live`` once it hears every write, and
    ``written`` with the KPIs of each write as it commits. Then the scorer a call checked, with
    the observations it checked, is trusted for the KPI's next calls (``trusted``) until a
    write of that KPI is heard (which also drops the KPI's scorers: a retrain can rewrite the
    same version, an update need not move the probed watermark), unless one was heard while
    the call read (``token``), and for at most ``TRUST_MAX_AGE_S``, a safety net for writes no
    notification announces. ``go_dark`` (the listener lost) ends all trust.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._scorers: OrderedDict[tuple[str, str], _KpiScorer] = OrderedDict()
        self._trusted: dict[str, _Trusted] = {}

    def __len__(self) -> int:
        return len(self._scorers)

    def scorer(self, engine: sa.Engine, kpi: str, version: str) -> _KpiScorer:
        key = (kpi, version)
        with self._lock:
            if key in self._scorers:
                self._scorers.move_to_end(key)
                return self._scorers[key]
        scorer = _KpiScorer(kpi, version, load_detector(engine, kpi, version))
        with self._lock:
            self._scorers[key] = scorer
            while len(self._scorers) > self.size:
                (old_kpi, _), old = self._scorers.popitem(last=False)
                if old_kpi in self._trusted and self._trusted[old_kpi].scorer is old:
                    del self._trusted[old_kpi]
        return scorer

    def trusted(self, kpi: str) -> _Trusted | None:
        """The scorer and observations trusted to be ``kpi``'s newest, if any (a use, for the
        least-recently-used order)."""
        with self._lock:
            entry = self._trusted.get(kpi)
            if entry is None:
                return None
            if time.monotonic() - entry.since > TRUST_MAX_AGE_S:
                del self._trusted[kpi]
                return None
            key = (kpi, entry.scorer.version)
            if key in self._scorers:
                self._scorers.move_to_end(key)
            return entry

    def score_current(
        self, kpi: str, ns: np.ndarray, values: np.ndarray, stamps, max_points: int
    ) -> RealtimeScores | None:
        """``score_points`` with no database at all: points after the newest observation of a
        KPI with a trusted scorer (``trusted``); None for anything else. For a caller that
        must not block, such as an event loop: CPU only, well under a millisecond. The points
        as arrays in time order: ``ns`` their timestamps in nanoseconds since the epoch,
        ``stamps`` as the answer reports them."""
        entry = self.trusted(kpi)
        if entry is None:
            return None
        return entry.scorer.score_next(entry.tail, ns, values, stamps, max_points)

    def trust(self, kpi: str, scorer: _KpiScorer, tail: _StoredTail, token: Token | None) -> None:
        """Trust ``scorer`` with ``tail`` (the observations a call checked) for ``kpi``, if no
        write of it was heard since ``token`` and the scorer is still cached."""
        with self._lock:
            if self._unchanged_since(kpi, token) and self._scorers.get((kpi, scorer.version)) is scorer:
                self._trusted[kpi] = _Trusted(scorer, tail, time.monotonic())

    def _forget(self, kpi: str | None) -> None:
        if kpi is None:
            self._trusted.clear()
            self._scorers.clear()
            return
        self._trusted.pop(kpi, None)
        for key in [key for key in self._scorers if key[0] == kpi]:
            del self._scorers[key]


TRUST_MAX_AGE_S = 60.0
"""How long a live ``ScoringCache`` trusts a KPI's checked model and observations without
checking again, even if no write was heard: a bound for writes that no notification announces
(triggers disabled after the listener checked them) and for a listener whose connection died
silently (noticed within about a minute by TCP keepalives)."""


@dataclass(frozen=True)
class _Trusted:
    scorer: _KpiScorer
    tail: _StoredTail
    """The observations the trusting call checked (the scorer's own may be replaced since)."""
    since: float


@dataclass(frozen=True)
class _StoredTail:
    """A KPI's newest stored observations, read and cleaned once for many scorings.

    The observations from the last one at or before ``since`` (the newest one minus
    ``scoring_reach``) are cleaned on ``grid``: from the slack on, the whole series' rows, as
    ``load_scoring_window`` reads them. Points after the newest observation can only change the
    cleaned rows from a few slots before it on (the short gap before it, interpolated towards
    it, and its own slot, which a point may share), so the rows are split once, at an observed
    slot ``SCORING_SLACK_POINTS`` before the newest: ``settled`` rows stay as cleaned, and the
    observations from that slot on (``redo``) are cleaned again with the points. Valid while the
    observations from ``since`` on still match ``watermark``.
    """

    watermark: serving.ObservationWatermark
    since: pd.Timestamp | None
    grid: Grid | None
    last_slot: int
    """The newest observation's grid slot."""
    settled: pd.DataFrame
    redo: pd.DataFrame
    judged: ScoringState | None = None
    """The detector's state after the whole cleaned tail (settled rows, then the redo rows
    cleaned alone, which is what they stay while points come after the newest observation);
    its last value is the cleaned value in the newest observation's slot."""


class _KpiScorer:
    """Real-time scoring with one model version of one KPI."""

    def __init__(self, kpi: str, version: str, detector: EnsembleDetector) -> None:
        self.kpi, self.version, self.detector = kpi, version, detector
        self._tail: _StoredTail | None = None
        self._step_ns = detector.freq_.value
        self._context = detector.context_points

    def score(
        self, engine: sa.Engine, points: pd.DataFrame, max_points: int, tail: _StoredTail | None = None
    ) -> tuple[RealtimeScores, _StoredTail]:
        """Score ``points`` (in time order) after ``tail`` (known current; default: the cached
        tail, checked); also returns the tail used."""
        ns = pd.DatetimeIndex(points["ts"]).as_unit("ns").asi8
        values = points["value"].to_numpy(dtype=float)
        self._check_spread(int(ns[0]), int(ns[-1]), max_points)
        first = points["ts"].iloc[0]
        tail = tail or self._stored_tail(engine)
        if tail.watermark.last_ts is None or first > tail.watermark.last_ts:
            quick = self._quick(tail, ns, values, points["ts"].to_numpy())
            if quick is not None:
                return quick, tail
            cleaned = self._after_stored(tail, points)
        else:
            cleaned = self._among_stored(engine, tail, points)
        grid = Grid(cleaned["ts"].iloc[0], self.detector.freq_)
        positions = grid.slots(points["ts"])
        start, end = int(positions[0]), int(positions[-1]) + 1
        scored = score_segment(
            self.detector,
            pd.DatetimeIndex(cleaned["ts"]),
            cleaned["value"].to_numpy(dtype=float),
            cleaned["gap"].to_numpy(dtype=bool),
            start,
            end,
        )
        chosen = scored.iloc[positions - start].reset_index(drop=True)
        columns = {name: chosen[name].to_numpy() for name in SCORE_COLUMNS}
        columns.update(ts=points["ts"].to_numpy(), value=values)
        return RealtimeScores(self.kpi, self.version, columns), tail

    def score_next(
        self, tail: _StoredTail, ns: np.ndarray, values: np.ndarray, stamps, max_points: int
    ) -> RealtimeScores | None:
        """``score`` from ``tail`` alone, if the points (``ns``: their timestamps as
        nanoseconds since the epoch, increasing; ``stamps``: as the answer reports them) come
        after it; no database, no pandas. None: use ``score``."""
        self._check_spread(int(ns[0]), int(ns[-1]), max_points)
        return self._quick(tail, ns, values, stamps)

    def _quick(self, tail: _StoredTail, ns: np.ndarray, values: np.ndarray, stamps) -> RealtimeScores | None:
        columns = self._next_points(tail, ns, values)
        if columns is None:
            return None
        columns.update(ts=stamps, value=values)
        return RealtimeScores(self.kpi, self.version, columns)

    def _check_spread(self, first_ns: int, last_ns: int, max_points: int) -> None:
        steps = int((last_ns - first_ns) / self._step_ns) + 1
        limit = 2 * (max_points + self._context)
        if steps > limit:
            raise PointsTooSpread(
                f"the points span {steps} steps of {self.detector.freq_}, more than {limit}: "
                "send points closer together"
            )

    def _next_points(self, tail: _StoredTail, ns: np.ndarray, values: np.ndarray) -> dict | None:
        """The common case, scored from the tail's judged state: points after the newest
        observation, on distinct grid slots, within the context of it. Only the slots from the
        newest observation's on are cleaned (its value, the points, short gaps between them
        interpolated) and only the new slots judged (``EnsembleDetector.score_after``), with the
        numbers the general path gives (tested). Returns the score columns but ``ts`` and
        ``value``; None: take the general path."""
        if tail.judged is None:
            return None
        slots = tail.grid.slots_ns(ns.tolist())
        first, last = slots[0], slots[-1]
        listed = values.tolist()
        # A point on a later slot is later than the newest observation (slots never decrease).
        if (
            first <= tail.last_slot
            or last - tail.last_slot > INCREMENTAL_MAX_SLOTS
            or not all(map(math.isfinite, listed))
            or any(later <= earlier for earlier, later in zip(slots, slots[1:]))
        ):
            return None
        stamps = tail.grid.stamps(tail.last_slot, last)  # from the newest observation's slot
        if len(slots) == last - tail.last_slot:  # every slot after it taken: nothing to fill
            scored = self.detector.score_after(tail.judged, stamps[1:], values)
        else:  # gaps between them, cleaned as the general path would (from the newest value)
            value, gap = fill_between(
                [tail.last_slot, *slots],
                [float(tail.judged.y[-1]), *listed],
                stamps.view(np.int64).tolist(),
            )
            scored = self.detector.score_after(
                tail.judged,
                stamps[1:],
                value[1:],
                gap[1:],
                report=[slot - tail.last_slot - 1 for slot in slots],
            )
        return {name: scored[name] for name in SCORE_COLUMNS[2:]}

    def _stored_tail(self, engine: sa.Engine) -> _StoredTail:
        """The cached tail if no observation from its ``since`` on was added or changed since
        it was read (one probe of the index), else a fresh one."""
        tail = self._tail
        if tail is not None and tail.since is not None:
            now = serving.observation_watermark(engine, self.kpi, tail.since)
            if now == tail.watermark:
                return tail
        tail = self._read_tail(engine)
        self._tail = tail
        return tail

    def _read_tail(self, engine: sa.Engine) -> _StoredTail:
        newest = serving.newest_observation_ts(engine, self.kpi)
        if newest is None:
            nothing = pd.DataFrame(columns=["kpi", "ts", "value"])
            return _StoredTail(serving.ObservationWatermark(None, 0, None, None), None, None, -1, nothing, nothing)
        since = pd.Timestamp(newest) - scoring_reach(self.detector)
        # The watermark is read before the rows: a write in between makes it stale, not wrong.
        watermark = serving.observation_watermark(engine, self.kpi, since)
        raw = store.load_observations_from(engine, self.kpi, since)
        grid = Grid(pd.Timestamp(watermark.first_ts), self.detector.freq_)
        raw_slots = grid.slots(raw["ts"])
        last_slot = int(raw_slots[-1])
        settled_slots = raw_slots[raw_slots <= last_slot - SCORING_SLACK_POINTS]
        redo_from = settled_slots[-1] if len(settled_slots) else raw_slots[0]
        cleaned = clean_series(raw, grid)
        return _StoredTail(
            watermark,
            since,
            grid,
            last_slot,
            settled=cleaned[grid.slots(cleaned["ts"]) < redo_from],
            redo=raw[raw_slots >= redo_from],
            judged=self.detector.prepare(
                cleaned["ts"], cleaned["value"].to_numpy(dtype=float), ahead=INCREMENTAL_MAX_SLOTS
            ),
        )

    def _after_stored(self, tail: _StoredTail, points: pd.DataFrame) -> pd.DataFrame:
        """The cleaned series up to the points, all later than every stored observation: the
        tail's settled rows, then its last observations cleaned again with the points."""
        if tail.grid is None:  # no history: the points alone, on their own grid
            return clean_series(points, Grid(points["ts"].iloc[0], self.detector.freq_))
        context = self.detector.context_points
        first_slot = int(tail.grid.slots(points["ts"].iloc[:1])[0])
        if first_slot - tail.last_slot > context:
            # Silent for longer than the context: every context slot is part of one long gap.
            start = tail.grid.origin + (first_slot - context) * tail.grid.step
            silence = pd.DataFrame(
                {
                    "ts": pd.date_range(start, periods=context, freq=tail.grid.step),
                    "value": np.nan,
                    "filled": False,
                    "gap": True,
                }
            )
            return pd.concat([silence, clean_series(points, tail.grid)], ignore_index=True)
        fresh = clean_series(pd.concat([tail.redo, points]), tail.grid)
        return pd.concat([tail.settled, fresh], ignore_index=True)

    def _among_stored(self, engine: sa.Engine, tail: _StoredTail, points: pd.DataFrame) -> pd.DataFrame:
        """The cleaned series up to the points, read for them: the stored observations before
        the first point (the later ones are left out) and the points, as the scoring window
        would read them."""
        first = points["ts"].iloc[0]
        stored = store.load_observations_from(engine, self.kpi, first - scoring_reach(self.detector), before=first)
        origin = min(tail.grid.origin, first)  # points before the history start its grid
        return clean_series(pd.concat([stored, points]), Grid(origin, self.detector.freq_))
