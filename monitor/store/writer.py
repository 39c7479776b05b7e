"""The writer: buffered observations written as runs and hourly rollups on the store's own
thread, incident transitions with their hooks in one transaction, and pruning.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import sqlite3
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from monitor.judge import IncidentEvent
from monitor.store.checkpoints import Checkpointer
from monitor.store.errors import _check_file
from monitor.store.lock import lock_store
from monitor.store.outbox import Outbox
from monitor.store.read import StoreReads
from monitor.store.records import (
    IncidentRecord,
    PendingObservation,
    Rollup,
    _dt,
    _ts,
)
from monitor.store.schema import open_reader, open_writer
from monitor.store.subscribers import Subscribers

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_ROLLUP_RETENTION = timedelta(days=400)
#: Observations kept in memory while the disk refuses writes; beyond it the oldest are dropped
#: (counted), so a full disk costs history, never the monitor's memory.
MAX_PENDING = 100_000
#: The default `--store-limit`: at 100,000 services a minute a store holds about a week of raw
#: runs and rollups in it; at the few thousand services of a real plan, the whole retention.
DEFAULT_SIZE_LIMIT = 4 * 1024**3
#: Pruning for size stops once the store uses this share of its limit, so it does not prune
#: again at the next hour for a few MB.
SIZE_LOW_WATER = 0.9
#: A run goes on while each gap stays within this factor of its mean spacing, either way: its
#: observations are then evenly spaced to within half an interval, which is what readers
#: assume of the observations inside it.
GAP_FACTOR = 1.5
DAY = 86400
#: Expired rows `prune` deletes at once (a fifth of a second at 100,000 services here), and
#: each flush after it until none is left.
PRUNE_SLICE = 5_000
FLUSH_PRUNE_SLICE = 1_000
#: How long `close` waits for a reader still in the WAL before it gives up emptying it, ms.
CLOSE_WAIT_MS = 2000


@dataclass(slots=True)
class _Current:
    """The run a service's next observation may extend, as written (rowid None: not yet)."""

    service: int
    rowid: int | None = None
    at: float = 0.0
    until: float = 0.0
    count: int = 0  # 0: no current run
    gap: int = 0
    state: tuple = ()
    status_code: int | None = None
    duration: float = 0.0

    def goes_on(self, at: float, state: tuple) -> bool:
        """Whether an observation at `at` seeing `state` extends this run."""
        if not self.count or state != self.state or at < self.until:
            return False
        if at - at % 3600 != self.at - self.at % 3600:  # a run stays inside its hour
            return False
        if self.count == 1:
            return True
        spacing = (self.until - self.at) / (self.count - 1)
        return spacing / GAP_FACTOR <= at - self.until <= spacing * GAP_FACTOR


#: `_Runs.latest` of a service whose row in `hour_now` was not looked up, or that has none.
UNKNOWN, NO_ROW = -2, -1
#: Distinct states (serving, reason, expected, mismatch) `_Runs` keeps before it forgets those
#: no service is in any more (reasons are few, but nothing bounds them).
MAX_STATES = 10_000


class _Runs:
    """The current run of every service, and the hour of its row in `hour_now`, by service
    number in flat arrays of numbers: no object per service (the dict of `_Current` it replaces
    held about 40 MiB at 100,000 services, and 100,000 objects for full collections to walk).
    A state is kept once, by its index in `states`. A run's rowid 0 is none; status -1 None."""

    def __init__(self) -> None:
        #: The number of every service written since the store was opened, channel first.
        self.ids: dict[str, dict[str, int]] = {}
        self.rowid, self.count, self.gap, self.status, self.state, self.latest = (
            array("q") for _ in range(6)
        )
        self.at, self.until, self.duration = (array("d") for _ in range(3))
        self.states: list[tuple] = []
        self._index: dict[tuple, int] = {}
        self._compact_at = MAX_STATES

    def service(self, key: tuple[str, str]) -> int | None:
        """The number of a service seen before, None for a new one."""
        inner = self.ids.get(key[0])
        return None if inner is None else inner.get(key[1])

    def current(self, service: int) -> _Current:
        """A copy of the service's current run (count 0: none), for a flush to work on."""
        if service >= len(self.count) or not self.count[service]:
            return _Current(service)
        return _Current(
            service,
            self.rowid[service] or None,
            self.at[service],
            self.until[service],
            self.count[service],
            self.gap[service],
            self.states[self.state[service]],
            None if self.status[service] < 0 else self.status[service],
            self.duration[service],
        )

    def keep(self, key: tuple[str, str], run: _Current) -> None:
        """Take a committed run as the service's current one."""
        service = run.service
        self.ids.setdefault(key[0], {})[key[1]] = service
        self._grow(service)
        index = self._index.get(run.state)
        if index is None:
            if len(self.states) >= self._compact_at:
                self._compact()
            index = self._index[run.state] = len(self.states)
            self.states.append(run.state)
        self.rowid[service] = run.rowid or 0
        self.at[service], self.until[service] = run.at, run.until
        self.count[service], self.gap[service] = run.count, run.gap
        self.state[service] = index
        self.status[service] = -1 if run.status_code is None else run.status_code
        self.duration[service] = run.duration

    def _grow(self, service: int) -> None:
        more = service + 1 - len(self.count)
        if more > 0:
            more = max(more, len(self.count) // 4)  # amortised: a new service is not a copy
            for column in (self.rowid, self.count, self.gap, self.status, self.state):
                column.extend(array("q", bytes(8 * more)))
            for column in (self.at, self.until, self.duration):
                column.extend(array("d", bytes(8 * more)))
            self.latest.extend(array("q", [UNKNOWN]) * more)

    def _compact(self) -> None:
        """Keep only the states some service's current run has, renumbered."""
        used = sorted({self.state[s] for s in range(len(self.count)) if self.count[s]})
        renumber = {old: new for new, old in enumerate(used)}
        self.states = [self.states[old] for old in used]
        self._index = {state: index for index, state in enumerate(self.states)}
        for s in range(len(self.count)):
            self.state[s] = renumber.get(self.state[s], 0) if self.count[s] else 0
        self._compact_at = max(MAX_STATES, 2 * len(self.states))

    def forget_before(self, stamp: float) -> None:
        """Runs whose last observation is before `stamp` are current no more."""
        count, until = self.count, self.until
        for s in range(len(count)):
            if count[s] and until[s] < stamp:
                count[s] = 0

    def latest_hour(self, service: int) -> int | None:
        """The hour of the service's row in `hour_now` (NO_ROW, or UNKNOWN if not looked up)."""
        return self.latest[service] if service < len(self.latest) else UNKNOWN

    def set_latest(self, service: int, hour: int | None) -> None:
        self._grow(service)
        self.latest[service] = NO_ROW if hour is None else hour

    def forget_latest(self) -> None:
        """Every service's row in `hour_now` is to be looked up again."""
        self.latest = array("q", [UNKNOWN]) * len(self.latest)


#: What a slice of expiry deleted (runs, rollups, sent alerts), and whether it was the last.
_Slice = tuple[tuple[int, int, int], bool]


@dataclass(slots=True)
class _Shrink:
    """A drop of whole days past the size limit, under way: the bytes in use when it began,
    the day it now keeps from, the days and rows dropped so far."""

    before: int
    keep_from: float = 0.0
    days: int = 0
    dropped: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"runs": 0, "hourly": 0, "alerts": 0}
    )


def _update_from_values(
    db: sqlite3.Connection,
    table: str,
    key: str,
    columns: tuple[str, ...],
    rows: list[tuple],
    assign: dict[str, str] | None = None,
) -> None:
    """`UPDATE table SET column = ... WHERE key = ?` for many rows (key first in each) in a few
    statements, not one step a row.

    Each step of a statement hands the GIL back and waits to take it again, behind the event
    loop's thread: while 400 probes are in flight that wait can be the whole switch interval,
    and the 3,300 steps of a flush at 100,000 services took seconds; APScheduler then skipped
    flushes. One `UPDATE ... FROM (VALUES ...)` a few thousand rows at a time is one step each,
    with the values bound as they are (no text or JSON, so floats stay exact). Keys must be
    unique within `rows`. `assign` gives a column's new value in terms of `{value}` (the row's);
    by default the value itself."""
    if not rows:
        return
    sets = ", ".join(
        f"{column} = " + (assign or {}).get(column, "{value}").format(value=f"v.column{i + 2}")
        for i, column in enumerate(columns)
    )
    width = len(columns) + 1
    per = max(1, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width)
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        values = ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))
        db.execute(
            f"UPDATE {table} SET {sets} FROM (VALUES {values}) AS v "
            f"WHERE {table}.{key} = v.column1",
            [value for row in chunk for value in row],
        )


class WriteFailed(sqlite3.Error):
    """A write that failed for a reason other than SQLite's own (a value it could not take).

    It is a `sqlite3.Error` on purpose: every caller already treats that as "the store refuses
    writes now; what was written is kept in memory and tried again" (the scheduler's flush, the
    pipeline's incident transitions), and this failure is handled the same way instead of
    escaping as an error nobody expects (a push answered 500, a batch lost)."""


def _said(exc: BaseException) -> str:
    """What a failed write says in the log and /healthz: SQLite's words, or the error's type
    and words for any other failure."""
    if isinstance(exc, sqlite3.Error):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


#: Hooks that run inside an incident's transaction, on the store's thread: what they write
#: through the store (the alert sender queues its rows in `Store.outbox`) commits or rolls
#: back with the incident.
IncidentHook = Callable[[IncidentRecord, IncidentEvent], None]


class Store(StoreReads):
    """One SQLite file. Methods without `async` run on the caller's thread; use `call` from
    the event loop so they run on the store's own worker thread instead."""

    def __init__(
        self,
        path: str | Path,
        retention: timedelta = DEFAULT_RETENTION,
        rollup_retention: timedelta = DEFAULT_ROLLUP_RETENTION,
        readonly: bool = False,
        max_pending: int = MAX_PENDING,
        exclusive: bool = False,
        size_limit: int | None = None,
    ) -> None:
        """Open the store at `path`, read-only or as a writer; an `exclusive` writer (`run`)
        first takes the one-writer lock and raises StoreBusy when another process holds it.
        `size_limit` (bytes in use, None: none) makes `prune` drop the oldest history past it."""
        self.path = Path(path)
        self.retention = retention
        self.rollup_retention = rollup_retention
        self.max_pending = max_pending
        self.size_limit = size_limit
        #: Rows of expired history `prune` deletes at once, and each flush after it.
        self.prune_slice = PRUNE_SLICE
        self.flush_prune_slice = FLUSH_PRUNE_SLICE
        #: (raw runs, rollups, sent alerts) instants before which history is being deleted,
        #: a slice at a time, while some is left (alerts: None, only past the size limit).
        self._expiry: tuple[float, float, float | None] | None = None
        #: A drop of the oldest days past `size_limit` under way (see `prune_for_size`).
        self._shrink: _Shrink | None = None
        #: The start of the day of the last `prune`: the size limit never drops it.
        self._today: float | None = None
        #: Times the store passed `size_limit` and dropped its oldest days of history.
        self.size_prunes = 0
        #: The current run of every service written since the store was opened, and the hour
        #: of its row in `hour_now` once looked up.
        self._runs = _Runs()
        self.incident_hooks: list[IncidentHook] = []
        self._pending: deque[PendingObservation] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.write_errors = 0
        #: Observations dropped from a full buffer while writes failed (oldest first).
        self.dropped = 0
        #: The last write's error while writes fail (None while they succeed), and when the
        #: last write succeeded (seconds since the epoch; opening counts as one).
        self.write_error: str | None = None
        self.last_write = time.time()
        _check_file(self.path)  # before the lock: no `/dev/null.lock`
        self._owner = lock_store(self.path) if exclusive and not readonly else None
        try:
            self.db = open_reader(self.path) if readonly else open_writer(self.path)
        except BaseException:
            if self._owner is not None:
                self._owner.release()
            raise
        #: The alert outbox, on this store's connection.
        self.outbox = Outbox(self.db)
        #: Citizens' subscriptions and their outbox, on this store's connection.
        self.subscribers = Subscribers(self.db)
        #: The writer's checkpoints, on a thread of their own (None: read-only).
        self.checkpoints: Checkpointer | None = None
        if not readonly:
            self.checkpoints = Checkpointer(self.path)

    @property
    def healthy(self) -> bool:
        """Whether the last write reached the disk."""
        return self.write_error is None

    @property
    def pending(self) -> int:
        """Observations waiting to be written."""
        return len(self._pending)

    def _wrote(self) -> None:
        if self.write_error is not None:
            self.write_error = None
            log.warning("store %s: writes succeed again", self.path)
        self.last_write = time.time()

    def _failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        said = _said(exc)
        if self.write_error is None:
            log.error("store %s: writing failed (%s); observations wait in memory", self.path, said)
        self.write_error = said

    # --- plumbing --------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the store's worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Write what is buffered, copy the WAL back into the file, and close it."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pending:
            try:
                self.flush()
            except sqlite3.Error as exc:
                log.error(
                    "store %s: %d observation(s) could not be written at exit (%s)",
                    self.path,
                    len(self._pending),
                    exc,
                )
        if self.checkpoints is not None:
            self.checkpoints.close()
            self.checkpoints = None
            self._checkpoint_at_close()
        self.db.close()
        if self._owner is not None:
            self._owner.release()
            self._owner = None

    def _checkpoint_at_close(self) -> None:
        """Copy the whole WAL back and empty it, so the file alone holds the store once `run`
        stops. A reader still in the WAL (the page worker ending) is waited for a little; past
        that, closing the last connection copies it back as well."""
        try:
            self.db.execute(f"PRAGMA busy_timeout = {CLOSE_WAIT_MS}")
            busy, frames, copied = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("store %s: the checkpoint at close failed (%s)", self.path, exc)
            return
        if busy:
            log.info(
                "store %s: a reader held the WAL at close (%d of %d copied)",
                self.path,
                copied,
                frames,
            )

    # --- observations ----------------------------------------------------------------------

    def add(self, item: PendingObservation) -> None:
        """Buffer one observation; `flush` writes the buffer in one transaction. A full buffer
        (the disk refuses writes) drops its oldest observation, counted in `dropped`."""
        with self._lock:
            self._pending.append(item)
            self._trim()

    def _trim(self) -> None:
        extra = len(self._pending) - self.max_pending
        for _ in range(max(0, extra)):
            self._pending.popleft()
        self.dropped += max(0, extra)

    def flush(self) -> int:
        """Write buffered observations into their runs and hourly rollups; return how many.

        One transaction: a crash loses at most what was buffered. The runs in memory change
        only once it is committed, so a failed write leaves them as the file has them."""
        with self._lock:
            items, self._pending = list(self._pending), deque()
        if not items and self._expiry is None:
            return 0
        try:
            with self.db:
                current, latest = self._write(items)
                expired = self._expire(self.flush_prune_slice)
        except Exception as exc:
            # whatever failed (a full disk, or a value SQLite could not take, such as text
            # that is not UTF-8), the transaction rolled back: keep the batch for the next
            # attempt rather than lose it, and say so in /healthz until a write succeeds
            self._failed(exc)
            with self._lock:
                self._pending.extendleft(reversed(items))
                self._trim()
            if isinstance(exc, sqlite3.Error):
                raise
            raise WriteFailed(_said(exc)) from exc
        for key, run in current.items():
            self._runs.keep(key, run)
        for service, hour in latest.items():
            self._runs.set_latest(service, hour)
        self._wrote()
        if self.checkpoints is not None:  # copied back in the second before the next flush
            self.checkpoints.poke()
        self._expired(expired)
        return len(items)

    def _write(
        self, items: list[PendingObservation]
    ) -> tuple[dict[tuple[str, str], _Current], dict[int, int | None]]:
        """Extend or start runs and add to rollups inside the caller's transaction; return the
        services' runs as they now are (copies: nothing in memory changes before the commit)
        and their latest rollup hours."""
        touched: dict[tuple[str, str], _Current] = {}
        started: list[_Current] = []
        extended: dict[int, _Current] = {}  # by rowid, superseded in this flush or not
        hours: dict[tuple[int, int], list[int]] = {}
        for item in items:
            key = (item.channel, item.business)
            seen = item.observation
            at = _ts(seen.at)
            state = (
                int(seen.serving),
                seen.reason,
                item.expected,
                item.mismatch.value if item.mismatch else None,
            )
            run = touched.get(key)
            if run is None:
                service = self._runs.service(key)
                if service is None:
                    service = self._service_id(key)
                run = touched[key] = self._runs.current(service)
            if run.goes_on(at, state):
                run.gap = max(run.gap, math.ceil((at - run.until) * 1000))
                run.until = at
                run.count += 1
                if run.rowid is not None:
                    extended[run.rowid] = run
            else:
                run = _Current(run.service, None, at, at, 1, 0, state)
                touched[key] = run
                started.append(run)
            run.status_code, run.duration = seen.status_code, seen.duration_seconds
            ms = round(seen.duration_seconds * 1000)
            hour = int(at - at % 3600)
            sums = hours.get((run.service, hour))
            if sums is None:
                hours[(run.service, hour)] = [
                    1,
                    state[0],
                    item.expected == "up",
                    item.expected == "down",
                    state[3] is not None,
                    ms,
                    ms,
                ]
            else:
                sums[0] += 1
                sums[1] += state[0]
                sums[2] += item.expected == "up"
                sums[3] += item.expected == "down"
                sums[4] += state[3] is not None
                sums[5] += ms
                sums[6] = max(sums[6], ms)
        _update_from_values(
            self.db,
            "runs",
            "id",
            ("until", "count", "gap", "status_code", "duration"),
            [
                (r.rowid, r.until, r.count, r.gap, r.status_code, r.duration)
                for r in extended.values()
            ],
        )
        # the runs superseded in this flush were current at some point: their rows are final
        for run in started:
            run.rowid = self.db.execute(
                "INSERT INTO runs (service, at, until, count, gap, serving, reason, expected, "
                "mismatch, status_code, duration) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run.service,
                    run.at,
                    run.until,
                    run.count,
                    run.gap,
                    *run.state,
                    run.status_code,
                    run.duration,
                ),
            ).lastrowid
        latest = self._add_hours(hours)
        return touched, latest

    def _add_hours(self, hours: dict[tuple[int, int], list[int]]) -> dict[int, int | None]:
        """Add a flush's sums to the rollups (inside the caller's transaction): the service's
        latest hour in `hour_now`, a new hour moving the one there into `hourly`, an hour
        older than it (a late observation) into `hourly` at once. Returns the latest hour of
        every service touched (None: no row), for `_Runs.latest` once committed."""
        latest: dict[int, int | None] = {}
        db = self.db
        hours_of = Counter(service for service, _ in hours)
        adds: list[tuple] = []  # services with one hour in this flush, the one in `hour_now`
        for (service, hour), sums in hours.items():  # a service's hours in time order
            if service in latest:
                now = latest[service]
            elif (known := self._runs.latest_hour(service)) != UNKNOWN:
                now = None if known == NO_ROW else known
            else:
                row = db.execute("SELECT hour FROM hour_now WHERE service = ?", (service,))
                found = row.fetchone()
                now = None if found is None else int(found[0])
            if now == hour and hours_of[service] == 1:
                adds.append((service, *sums))
            elif now == hour:
                db.execute(_ADD_NOW, (*sums, service))
            elif now is None or hour > now:
                if now is not None:
                    db.execute(_MOVE_NOW, (service,))
                # the hour may be in `hourly` already (imported, or migrated): it moves over
                found = db.execute(_TAKE_PAST, (service, hour)).fetchone()
                if found is not None:
                    sums = [
                        *(a + b for a, b in zip(sums[:6], found, strict=False)),
                        max(sums[6], found[6]),
                    ]
                db.execute(
                    "INSERT OR REPLACE INTO hour_now VALUES (?,?,?,?,?,?,?,?,?)",
                    (service, hour, *sums),
                )
                now = hour
            else:
                db.execute(_ADD_PAST, (service, hour, *sums))
            latest[service] = now
        _update_from_values(db, "hour_now", "service", _HOUR_COLUMNS, adds, _ADD_NOW_FROM)
        return latest

    def _service_id(self, key: tuple[str, str]) -> int:
        """The number of a service, given it on first sight (inside the caller's transaction)."""
        row = self.db.execute(
            "SELECT id FROM services WHERE channel = ? AND business = ?", key
        ).fetchone()
        if row is not None:
            return int(row[0])
        cursor = self.db.execute("INSERT INTO services (channel, business) VALUES (?, ?)", key)
        return int(cursor.lastrowid or 0)

    def prune(self, now: datetime) -> None:
        """Drop raw runs and rollups older than their retention windows; then, past the size
        limit, the oldest days of history (see `prune_for_size`).

        At most `prune_slice` rows of each go at once; the flushes that follow take the rest,
        `flush_prune_slice` rows each (`pruning` says whether some is left), so an hour of
        100,000 services' history expiring, or a day past the size limit, never holds the
        store's thread (and the next flush) for long. Runs go oldest first: the report sees
        the hour being pruned as incomplete and reads it from its rollups. Rollups go in their
        key's order, service by service (ordering them by hour would sort every expired row
        for each slice): while a prune lasts, an expiring hour may be gone for some services
        and not yet for others, and only hours past the retention window differ."""
        raw, rolled, alerts = _ts(now - self.retention), _ts(now - self.rollup_retention), None
        if self._expiry is not None:  # a drop under way (past the size limit) goes on
            raw, rolled = max(raw, self._expiry[0]), max(rolled, self._expiry[1])
            alerts = self._expiry[2]
        self._today = _ts(now) - _ts(now) % DAY
        self._expire_before(raw, rolled, alerts)
        with self.db:
            expired = self._expire(self.prune_slice)
        self._expired(expired)

    @property
    def pruning(self) -> bool:
        """Whether expired history (or history past the size limit) is left to delete."""
        return self._expiry is not None

    def _expire_before(self, raw: float, rolled: float, alerts: float | None) -> None:
        """Set what the slices delete; the services' current runs older than that are
        forgotten first (the next observation starts a new run rather than extend a row
        about to go)."""
        self._expiry = (raw, rolled, alerts)
        self._runs.forget_before(raw)

    def _expire(self, budget: int) -> _Slice | None:
        """Delete up to `budget` expired runs, as many rollups and as many sent alerts (in the
        caller's transaction); return how many of each and whether that was all, or None when
        nothing is expiring."""
        if self._expiry is None:
            return None
        raw, rolled, alerts = self._expiry
        # a run that reaches into the window stays whole
        runs = self.db.execute(
            "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE at < ? AND until < ? "
            "ORDER BY at LIMIT ?)",
            (raw, raw, budget),
        ).rowcount
        hours = self.db.execute(
            "DELETE FROM hourly WHERE (service, hour) IN (SELECT service, hour FROM hourly "
            "WHERE service IN (SELECT id FROM services) AND hour < ? LIMIT ?)",
            (rolled, budget),
        ).rowcount
        sent = 0
        if alerts is not None:
            sent = self.outbox.delete_done_before(alerts, budget)
        last = max(runs, hours, sent) < budget
        if last:  # the latest hours of services long gone go with the last slice
            self._drop_latest_before(rolled)
        return (runs, hours, sent), last

    def _expired(self, done: _Slice | None) -> None:
        """After a slice's commit: count it, and once nothing is left, end the expiry and look
        at the size limit."""
        if done is None:
            return
        deleted, last = done
        if self._shrink is not None:
            for name, count in zip(("runs", "hourly", "alerts"), deleted, strict=True):
                self._shrink.dropped[name] += count
        if not last:
            return
        self._expiry = None
        if self._shrink is not None:
            self._shrink.days += 1
        self.prune_for_size()

    def _drop_latest_before(self, stamp: float) -> None:
        """The latest hours of services not seen since `stamp` go too (a service the plan
        dropped); the next flush of any service looks its row up again."""
        if self.db.execute("DELETE FROM hour_now WHERE hour < ?", (stamp,)).rowcount:
            self._runs.forget_latest()

    def used_bytes(self) -> int:
        """Bytes of the file in use (its free pages are reused before it grows)."""
        size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * size)

    def prune_for_size(self) -> None:
        """Past `size_limit`, drop whole days of history, oldest first, until the store uses
        at most SIZE_LOW_WATER of it: rollups and runs before the day kept, and alerts
        delivered (or given up) before it. Never the day of the last `prune`, never an
        incident, never an alert still to be sent. Called once an expiry is all deleted; sets
        the next day to drop, which the slices of `prune` and the flushes then delete. The
        freed pages are reused by what is written next, so the file stops growing (it does
        not shrink: no VACUUM, which would hold the writer for minutes). Logs once at warning
        what was dropped, and counts it in `size_prunes`."""
        limit, today, shrink = self.size_limit, self._today, self._shrink
        if limit is None or today is None:
            self._shrink = None
            return
        used = self.used_bytes()
        if used <= (limit if shrink is None else limit * SIZE_LOW_WATER):
            if shrink is not None:
                self._shrunk(shrink, used)
            return
        oldest = [
            v
            for (v,) in (
                self.db.execute("SELECT min(at) FROM runs").fetchone(),
                self.db.execute(_OLDEST_HOUR).fetchone(),
            )
            if v is not None
        ]
        if not oldest or min(oldest) >= today:
            if shrink is None or not shrink.days:
                log.warning(
                    "store %s: %d MiB in use passes --store-limit %d MiB, but only today's "
                    "history is left; raise the limit",
                    self.path,
                    used >> 20,
                    limit >> 20,
                )
            else:
                self._shrunk(shrink, used)
            self._shrink = None
            return
        if shrink is None:
            self._shrink = shrink = _Shrink(before=used)
        shrink.keep_from = min(min(oldest) - min(oldest) % DAY + DAY, today)
        self._expire_before(shrink.keep_from, shrink.keep_from, shrink.keep_from)

    def _shrunk(self, shrink: _Shrink, used: int) -> None:
        self._shrink = None
        self.size_prunes += 1
        assert self.size_limit is not None
        log.warning(
            "store %s: %d MiB in use passed --store-limit %d MiB: dropped the history "
            "before %s (%d runs, %d hourly rollups, %d sent alerts); now %d MiB",
            self.path,
            shrink.before >> 20,
            self.size_limit >> 20,
            _dt(shrink.keep_from).date().isoformat(),  # type: ignore[union-attr]
            shrink.dropped["runs"],
            shrink.dropped["hourly"],
            shrink.dropped["alerts"],
            used >> 20,
        )

    def add_rollups(self, rows: Iterable[Rollup]) -> None:
        """Insert whole hours at once (imports, tests that need long history)."""
        rows = list(rows)
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO services (channel, business) VALUES (?, ?)",
                sorted({(r.channel, r.business) for r in rows}),
            )
            # an imported hour replaces the hour as written so far
            if self.db.execute("SELECT 1 FROM hour_now LIMIT 1").fetchone():
                self.db.executemany(
                    "DELETE FROM hour_now WHERE hour = ? AND service = (SELECT id FROM services "
                    "WHERE channel = ? AND business = ?)",
                    [(int(_ts(r.hour)), r.channel, r.business) for r in rows],
                )
                self._runs.forget_latest()
            self.db.executemany(
                "INSERT OR REPLACE INTO hourly SELECT id, ?, ?, ?, ?, ?, ?, ?, ? FROM services "
                "WHERE channel = ? AND business = ?",
                [
                    (
                        int(_ts(r.hour)),
                        r.probes,
                        r.serving,
                        r.expected_up,
                        r.expected_down,
                        r.mismatches,
                        round(r.duration_sum * 1000),
                        round(r.duration_max * 1000),
                        r.channel,
                        r.business,
                    )
                    for r in rows
                ],
            )

    # --- incidents -------------------------------------------------------------------------

    def record_event(self, channel: str, business: str, event: IncidentEvent) -> IncidentRecord:
        """Write an incident transition, and whatever the hooks add, in one transaction.

        Buffered observations are written first so the history never lags its incidents.
        """
        self.flush()
        try:
            return self._record_event(channel, business, event)
        except sqlite3.Error as exc:
            self._failed(exc)
            raise
        except (ValueError, TypeError) as exc:  # e.g. text SQLite cannot encode: as above
            self._failed(exc)
            raise WriteFailed(_said(exc)) from exc

    def _record_event(self, channel: str, business: str, event: IncidentEvent) -> IncidentRecord:
        with self.db:
            if event.kind == "opened":
                cursor = self.db.execute(
                    "INSERT INTO incidents (channel, business, direction, opened_at, reason, "
                    "expected, period) VALUES (?,?,?,?,?,?,?)",
                    (
                        channel,
                        business,
                        event.direction.value,
                        _ts(event.at),
                        event.reason,
                        event.expected,
                        event.period,
                    ),
                )
                incident_id = int(cursor.lastrowid or 0)
            else:
                incident_id = self._resolve_target(channel, business, event)
                self.db.execute(
                    "UPDATE incidents SET resolved_at = ?, resolve_reason = ? WHERE id = ?",
                    (_ts(event.at), event.reason, incident_id),
                )
            record = self._incident(incident_id)
            for hook in self.incident_hooks:
                hook(record, event)
        self._wrote()
        return record

    def _resolve_target(self, channel: str, business: str, event: IncidentEvent) -> int:
        if event.incident.id is not None:
            return event.incident.id
        row = self.db.execute(
            "SELECT id FROM incidents WHERE channel = ? AND business = ? AND direction = ? "
            "AND resolved_at IS NULL ORDER BY opened_at DESC LIMIT 1",
            (channel, business, event.direction.value),
        ).fetchone()
        if row is None:
            raise LookupError(f"no open {event.direction} incident for {channel}/{business}")
        return int(row[0])


#: Rollup sums: added to the row there (`hour_now`), or to the row an insert met (`hourly`).
_SUMS = (
    "probes = probes + excluded.probes, serving = serving + excluded.serving, "
    "expected_up = expected_up + excluded.expected_up, expected_down = expected_down + "
    "excluded.expected_down, mismatches = mismatches + excluded.mismatches, "
    "duration_sum = duration_sum + excluded.duration_sum, "
    "duration_max = max(duration_max, excluded.duration_max)"
)
_ADD_NOW = (
    "UPDATE hour_now SET probes = probes + ?, serving = serving + ?, expected_up = "
    "expected_up + ?, expected_down = expected_down + ?, mismatches = mismatches + ?, "
    "duration_sum = duration_sum + ?, duration_max = max(duration_max, ?) WHERE service = ?"
)
_HOUR_COLUMNS = (
    "probes",
    "serving",
    "expected_up",
    "expected_down",
    "mismatches",
    "duration_sum",
    "duration_max",
)
#: `_ADD_NOW` for many services in one statement (`_update_from_values`).
_ADD_NOW_FROM = {
    "duration_max": "max(duration_max, {value})",
    **{column: f"{column} + {{value}}" for column in _HOUR_COLUMNS[:-1]},
}
_TAKE_PAST = (
    "DELETE FROM hourly WHERE service = ? AND hour = ? RETURNING probes, serving, expected_up, "
    "expected_down, mismatches, duration_sum, duration_max"
)
_ADD_PAST = (
    "INSERT INTO hourly VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (service, hour) DO UPDATE SET "
    + _SUMS
)
_MOVE_NOW = (
    "INSERT INTO hourly SELECT * FROM hour_now WHERE service = ? "
    "ON CONFLICT (service, hour) DO UPDATE SET " + _SUMS
)
#: The oldest hour, sought service by service along the primary key (service, hour): a seek
#: each instead of a scan of every rollup the store holds.
_OLDEST_HOUR = "SELECT min((SELECT min(hour) FROM hourly WHERE service = s.id)) FROM services s"


def _hour(at: datetime) -> float:
    stamp = at.timestamp()
    return stamp - stamp % 3600
