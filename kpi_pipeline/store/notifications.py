"""Notifications of writes (Postgres ``LISTEN`` / ``NOTIFY``), for the API's caches.

Every write to ``anomaly_scores`` (``scores.upsert_scores``, the only one) also sends one
notification per KPI written on ``SCORES_CHANNEL``, the KPI's name as payload, in the same
transaction. Postgres delivers notifications only when, and if, their transaction commits, so a
listener that hears about a KPI can already read its new rows. An empty payload (``ANY_KPI``)
means any KPI may have changed: it is sent for a KPI name too long for a payload, and an
operator who edits ``anomaly_scores`` by hand can send it too (``NOTIFY kpi_scores_written``).

Writes to ``kpi_observations`` and ``kpi_models`` notify ``INPUTS_CHANNEL`` the same way, from
triggers (migration 0004), so that rows a loader inserts directly are announced too.

SQLite has no notifications: nothing is sent there, and ``can_listen`` is False.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from kpi_pipeline.store.database import driver_errors

SCORES_CHANNEL = "kpi_scores_written"
INPUTS_CHANNEL = "kpi_inputs_written"
"""Observations or models of the KPI named were written (what real-time scoring reads)."""
INPUT_TRIGGERS = tuple(
    f"{table}_{event}_notify"
    for table in ("kpi_observations", "kpi_models")
    for event in ("inserted", "updated", "deleted", "truncated")
)
"""The triggers (migration 0004) that notify ``INPUTS_CHANNEL``."""
CHANNEL_TRIGGERS = {INPUTS_CHANNEL: INPUT_TRIGGERS}
"""Per channel, the triggers that send its notifications: a listener starts only when they
are all there and enabled (score writes notify from Python: no trigger)."""
PROBE_CHANNEL = "kpi_scores_probe"
"""Where a listener sends itself a test notification when it connects (see ``_probe``)."""
PROBE_TIMEOUT_S = 5.0
ANY_KPI = ""
"""The payload meaning "any KPI's scores may have changed"."""

MAX_PAYLOAD_BYTES = 8000
"""Postgres refuses a payload of this many bytes or more (and with it the transaction)."""

LISTENER_NAME = "kpi-api-score-listener"
"""``application_name`` of the listening connection, to find it in ``pg_stat_activity``."""
INPUTS_LISTENER_NAME = "kpi-api-input-listener"
"""The same for the listener on ``INPUTS_CHANNEL``."""

CONNECT_TIMEOUT_S = 10
KEEPALIVE_IDLE_S = 30
"""A listener sends no queries, so only TCP keepalives notice a peer that vanished silently:
after this long idle, then within ``KEEPALIVE_IDLE_S`` more (3 probes)."""

_NOTIFY = sa.text("SELECT pg_notify(:channel, kpi) FROM unnest(CAST(:kpis AS text[])) AS kpi")


def notify_scores_written(connection: sa.Connection, kpis: Iterable[str]) -> None:
    """Tell listeners, when ``connection``'s transaction commits, that the scores of ``kpis``
    changed (one statement; on Postgres only)."""
    if connection.dialect.name != "postgresql":
        return
    names = sorted(set(kpis))
    if any(len(name.encode()) >= MAX_PAYLOAD_BYTES for name in names):
        names = [ANY_KPI]
    if names:
        connection.execute(_NOTIFY, {"channel": SCORES_CHANNEL, "kpis": names})


Token = tuple[int, int]


class HeardWrites:
    """The bookkeeping of a cache kept current by a listener (``api.series_cache``'s watcher):
    ``live`` while the listener hears every write; per KPI, a version bumped by each write
    heard, so that what is read for a KPI is kept only if no write of it was heard since the
    read began (a ``token`` taken before it, checked with ``_unchanged_since``). Subclasses drop
    what they hold of a KPI in ``_forget`` (``None``: of every KPI), called with ``_lock`` held.
    Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live = False
        self._epoch = 0
        """Bumped whenever everything is dropped: a read begun before is not kept."""
        self._versions: dict[str, int] = {}
        """Per KPI, bumped by each write heard: a read begun before one is not kept."""

    @property
    def live(self) -> bool:
        return self._live

    def token(self, kpi: str) -> Token | None:
        """Take before reading ``kpi``; None while not live (keep nothing)."""
        with self._lock:
            return (self._epoch, self._versions.get(kpi, 0)) if self._live else None

    def _unchanged_since(self, kpi: str, token: Token | None) -> bool:
        """With ``_lock`` held: still live, and no write of ``kpi`` heard since ``token``."""
        return self._live and token == (self._epoch, self._versions.get(kpi, 0))

    def written(self, kpis: Iterable[str]) -> None:
        """Writes of ``kpis`` were committed (``ANY_KPI``: of any KPI): forget them."""
        with self._lock:
            for kpi in kpis:
                if kpi == ANY_KPI:
                    self._reset()
                else:
                    self._versions[kpi] = self._versions.get(kpi, 0) + 1
                    self._forget(kpi)

    def go_live(self) -> None:
        """A listener now hears every write: start from nothing."""
        with self._lock:
            self._reset()
            self._live = True

    def go_dark(self) -> None:
        """No listener: keep nothing, forget everything."""
        with self._lock:
            self._live = False
            self._reset()

    def _reset(self) -> None:
        self._forget(None)
        self._epoch += 1  # every token taken before is stale, whatever its KPI's version
        self._versions.clear()

    def _forget(self, kpi: str | None) -> None:
        raise NotImplementedError


def can_listen(engine: sa.Engine) -> bool:
    """Whether ``engine``'s database sends score notifications that ``ScoreWriteListener``
    can receive: Postgres through psycopg 3 (what ``make_engine`` builds)."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


class ScoreWriteListener:
    """A dedicated connection (autocommit, outside ``engine``'s pool) that listens to
    ``channel`` (default ``SCORES_CHANNEL``); blocking, for one thread, except ``interrupt``.

    Use it as a context manager: it connects and listens on entry, closes on exit. Connection
    failures, on entry or in ``wait``, raise ``sqlalchemy.exc.DBAPIError``.
    """

    def __init__(self, engine: sa.Engine, channel: str = SCORES_CHANNEL, name: str = LISTENER_NAME) -> None:
        if not can_listen(engine):
            raise ValueError(f"no score notifications on {engine.dialect.name}+{engine.dialect.driver}")
        self._engine = engine
        self.channel, self.name = channel, name
        self._connection: Any = None  # the driver's connection, once entered (the DBAPI is untyped)
        self._pending: list[str] = []
        """Score notifications that arrived while the probe was awaited."""
        self._selector = selectors.DefaultSelector()
        # A byte on this pair wakes ``wait`` from another thread.
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)

    def __enter__(self) -> ScoreWriteListener:
        dbapi = self._engine.dialect.loaded_dbapi
        args, options = self._engine.dialect.create_connect_args(self._engine.url)
        try:
            with driver_errors(self._engine):
                # The URL's own query options (its connect_timeout, keepalives...) win over
                # these defaults; the listener's name and autocommit always hold.
                self._connection = dbapi.connect(
                    *args,
                    **{
                        "connect_timeout": CONNECT_TIMEOUT_S,
                        "keepalives": 1,
                        "keepalives_idle": KEEPALIVE_IDLE_S,
                        "keepalives_interval": KEEPALIVE_IDLE_S // 3,
                        "keepalives_count": 3,
                        **options,
                        "autocommit": True,
                        "application_name": self.name,
                    },
                )
                self._connection.execute(f'LISTEN "{self.channel}"')
                self._connection.execute(f'LISTEN "{PROBE_CHANNEL}"')
            self._selector.register(self._connection.fileno(), selectors.EVENT_READ)
            self._selector.register(self._wake_in, selectors.EVENT_READ)
            self._probe()
            self._check_senders()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self._selector.close()
        if self._connection is not None:
            self._connection.close()
        self._wake_in.close()
        self._wake_out.close()

    @property
    def backend_pid(self) -> int:
        """The listening session's server process ID."""
        return self._connection.info.backend_pid

    def wait(self, timeout: float | None = None) -> list[str]:
        """The KPIs written (on ``channel``) and committed since the previous call (``ANY_KPI``: any),
        waiting up to ``timeout`` seconds (None: no limit) for the first one; ``[]`` when
        the wait timed out or was interrupted."""
        pending, self._pending = self._pending, []
        received = self._receive(0 if pending else timeout)
        return pending + [n.payload for n in received if n.channel == self.channel]

    def _receive(self, timeout: float | None) -> list:
        """Every notification received, waiting up to ``timeout`` for the first one."""
        if self._connection.closed or self._connection.broken:
            # A closed socket drops out of the selector silently: waiting would never end.
            raise sa.exc.OperationalError(
                "LISTEN", None, ConnectionError("the score-write listener's connection is closed")
            )
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._wake_in:
                self._drain_wake()
        with driver_errors(self._engine):
            # Also returns what arrived while LISTEN ran (psycopg keeps it aside).
            return list(self._connection.notifies(timeout=0))

    def _probe(self) -> None:
        """Check that notifications reach this session: send one from another connection (as a
        writer would) and wait for it. Behind a pooler in transaction mode (PgBouncer's
        ``pool_mode = transaction``) LISTEN holds no session, nothing would ever arrive, and a
        cache trusting this listener would serve stale rows forever."""
        token = uuid.uuid4().hex
        _send_probe(self._engine, token)
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            for notice in self._receive(left):
                if notice.channel == PROBE_CHANNEL and notice.payload == token:
                    return
                if notice.channel == self.channel:
                    self._pending.append(notice.payload)
        raise sa.exc.OperationalError(
            "LISTEN",
            None,
            ConnectionError(
                f"a test notification did not reach the listening session within "
                f"{PROBE_TIMEOUT_S:g} s: notifications are not delivered to it (a connection pooler "
                f"in transaction mode?); series are read from the database"
            ),
        )

    def _check_senders(self) -> None:
        """Refuse to listen to a channel whose triggers are missing or disabled: nothing would
        arrive, and a cache trusting this listener would serve stale data."""
        names = CHANNEL_TRIGGERS.get(self.channel, ())
        if names and not triggers_enabled(self._engine, names):
            raise sa.exc.OperationalError(
                "LISTEN",
                None,
                ConnectionError(
                    f"the triggers that notify {self.channel} are missing or disabled (migration "
                    "0004: run `kpi-pipeline init`; or ALTER TABLE ... ENABLE ALWAYS TRIGGER for "
                    f"{', '.join(names)})"
                ),
            )

    def interrupt(self) -> None:
        """Make the current (or next) ``wait`` return at once; from any thread."""
        try:
            self._wake_out.send(b"\0")
        except OSError:  # already woken (the pair is full), or closed
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_in.recv(4096):
                pass
        except BlockingIOError:
            pass


_ENABLED_TRIGGERS = sa.text(
    "SELECT count(*) FROM pg_trigger WHERE tgname = ANY(CAST(:names AS text[])) "
    "AND tgenabled IN ('O', 'A') AND NOT tgisinternal"
)


def triggers_enabled(engine: sa.Engine, names: tuple[str, ...]) -> bool:
    """Whether every trigger named is there and enabled."""
    with engine.connect() as connection:
        found = connection.execute(_ENABLED_TRIGGERS, {"names": list(names)}).scalar()
    return found == len(names)


def _send_probe(engine: sa.Engine, token: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("SELECT pg_notify(:channel, :token)"), {"channel": PROBE_CHANNEL, "token": token})
