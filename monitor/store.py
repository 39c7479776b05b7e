"""History in one SQLite file: observations, hourly rollups, incidents.

Raw observations are kept for a short retention window, hourly rollups per service for long
history (the page's 90-day bars), incidents for ever. The file is in WAL mode so readers (the
site renderer, `channel-monitor render`) never wait for the writer. All writes run on one
worker thread through `Store.call`, so the event loop never blocks on the disk.

The file carries its schema version (`PRAGMA user_version`); opening it as the writer runs the
migrations it lacks, so a store written by an older version opens in a newer one, and one
written by a newer version is refused rather than half understood. Only one writer may hold a
store: `lock_store` takes an OS lock beside it that the kernel drops when the process dies.
A store that cannot be opened raises `StoreError`, whose message says what is wrong and what
to do, in both languages, so the command line can print it as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from monitor.judge import IncidentEvent, OpenIncident, Verdict
from monitor.probe import Observation

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_RETENTION = timedelta(days=7)
DEFAULT_ROLLUP_RETENTION = timedelta(days=400)
#: Observations kept in memory while the disk refuses writes; beyond it the oldest are dropped
#: (counted), so a full disk costs history, never the monitor's memory.
MAX_PENDING = 100_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    at REAL NOT NULL,
    serving INTEGER NOT NULL,
    reason TEXT NOT NULL,
    status_code INTEGER,
    duration REAL NOT NULL,
    expected TEXT NOT NULL,
    mismatch TEXT
);
CREATE INDEX IF NOT EXISTS observations_service_at ON observations (channel, business, at);
CREATE INDEX IF NOT EXISTS observations_at ON observations (at);
CREATE TABLE IF NOT EXISTS rollups (
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    hour REAL NOT NULL,
    probes INTEGER NOT NULL,
    serving INTEGER NOT NULL,
    expected_up INTEGER NOT NULL,
    expected_down INTEGER NOT NULL,
    mismatches INTEGER NOT NULL,
    duration_sum REAL NOT NULL,
    duration_max REAL NOT NULL,
    PRIMARY KEY (channel, business, hour)
);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    direction TEXT NOT NULL,
    opened_at REAL NOT NULL,
    resolved_at REAL,
    reason TEXT NOT NULL,
    resolve_reason TEXT,
    expected TEXT NOT NULL,
    period TEXT
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (resolved_at);
"""

#: `MIGRATIONS[n]` takes a store from schema version n to n + 1. Version 0 is a new file or one
#: written before versions were kept (its tables are exactly SCHEMA's, so `IF NOT EXISTS` makes
#: both whole). Add a change as a new entry; never edit an old one.
MIGRATIONS: tuple[str, ...] = (SCHEMA,)
SCHEMA_VERSION = len(MIGRATIONS)
#: The tables a file must have to be read as a store.
TABLES = ("observations", "rollups", "incidents")


class StoreError(Exception):
    """The store cannot be used; the message says what is wrong and what to do."""


class StoreBusy(StoreError):
    """Another process holds the store (two writers would open every incident twice)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"{path}: in use by {who} (another `channel-monitor run`); stop it or name another "
            f"--db. / 存储正被{'进程 ' + str(pid) if pid else '另一个进程'}使用（另一个 run），"
            "请先停止它或换一个 --db。"
        )
        self.pid = pid


class StoreLock:
    """The writer's lock on a store: `<store>.lock`, holding the owner's pid.

    `flock` belongs to the open file, so the kernel releases it when the process ends, however
    it ends (SIGKILL included): a stale lock file never blocks the next start.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(f"{path}.lock")
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        """Take the lock or raise StoreBusy (or StoreError when the file cannot be made)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(_os_problem(self.path, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise StoreBusy(self.path.with_suffix(""), holder) from None
            raise StoreError(_os_problem(self.path, exc)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def lock_store(path: str | Path) -> StoreLock:
    """Take the one-writer lock of the store at `path`; raises StoreBusy when it is held."""
    return StoreLock(Path(path)).acquire()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _os_problem(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"{path}: cannot be written ({exc.strerror}); run needs a writable store: make the "
            "folder writable or name another --db. / 无法写入，run 需要可写的存储：请让文件夹"
            "可写或换一个 --db。"
        )
    return (
        f"{path}: {exc.strerror or exc}; check the path or name another --db. / "
        "无法使用该路径，请检查或换一个 --db。"
    )


def _sqlite_problem(path: Path, exc: sqlite3.Error, writing: bool) -> str:
    """What an SQLite error at open means to the person who named the file."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    missing_table = not writing and name == "SQLITE_ERROR"  # "no such table"
    if name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT") or missing_table:
        return (
            f"{path}: not a channel-monitor store, or a damaged one ({exc}); move it aside and "
            "name a new --db (a new store starts empty). / 不是本程序的存储文件或已损坏：请移开"
            "它并换一个新的 --db（新存储从空开始）。"
        )
    if writing and (name.startswith("SQLITE_READONLY") or not _writable(path)):
        return (
            f"{path}: read-only ({exc}); run needs to write its store: make the file and its "
            "folder writable or name another --db (render can read a read-only store). / 存储"
            "只读，run 需要写入：请让文件及其文件夹可写或换一个 --db（render 可以读取只读存储）。"
        )
    if name == "SQLITE_FULL":
        return f"{path}: the disk is full ({exc}); free some space. / 磁盘已满，请腾出空间。"
    return (
        f"{path}: cannot be opened as a store ({exc}); check the file or name another --db. / "
        "无法打开存储，请检查文件或换一个 --db。"
    )


def _writable(path: Path) -> bool:
    target = path if path.exists() else path.parent
    return os.access(target, os.W_OK) and os.access(path.parent, os.W_OK)


def _check_file(path: Path) -> None:
    """Refuse at once what SQLite would only half refuse (a folder, /dev/null, a FIFO)."""
    if path.is_dir():
        raise StoreError(
            f"{path}: is a folder, not a store file; name a file, e.g. {path / 'monitor.db'}. / "
            "这是一个文件夹而不是存储文件，请指定一个文件。"
        )
    if path.exists() and not path.is_file():
        raise StoreError(
            f"{path}: not a regular file; name a file for the store. / 不是普通文件，请为存储"
            "指定一个文件。"
        )


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION; refuse a file that is some other program's."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by a newer channel-monitor (schema {version}, this one knows up "
            f"to {SCHEMA_VERSION}); upgrade, or name another --db. / 存储由更新版本写入，请升级"
            "本程序或换一个 --db。"
        )
    if version == 0:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if names and not names & set(TABLES):
            raise StoreError(
                f"{path}: an SQLite file of another program (no observations, rollups or "
                "incidents table); name another --db. / 这是其他程序的 SQLite 文件，请换一个 --db。"
            )
    for step in range(version, SCHEMA_VERSION):
        db.executescript(MIGRATIONS[step])
    # written every time: it is also the proof that the file takes writes
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.commit()


def open_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection, migrated; StoreError with the reason when it cannot be."""
    _check_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(_os_problem(path.parent, exc)) from None
    db = None
    try:
        db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        _migrate(db, path)
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise StoreError(_sqlite_problem(path, exc, writing=True)) from None
    except StoreError:
        if db is not None:
            db.close()
        raise
    return db


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection that works on a read-only file or mount too.

    `mode=ro` still needs the WAL's shared-memory file beside the store, which a read-only
    folder cannot hold; then the file is opened `immutable`, which is right for it: nothing can
    be writing to a store on a read-only folder.
    """
    _check_file(path)
    uri = path.resolve().as_uri()  # percent-encodes `?`, `#`, `%`
    last: sqlite3.Error | None = None
    for query in ("mode=ro", "immutable=1"):
        db = sqlite3.connect(f"{uri}?{query}", uri=True, check_same_thread=False)
        try:
            for table in TABLES:
                db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            db.close()
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN":
                raise StoreError(_sqlite_problem(path, exc, writing=False)) from None
            last = exc
            continue
        return db
    assert last is not None
    raise StoreError(_sqlite_problem(path, last, writing=False))


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """An incident as stored."""

    id: int
    channel: str
    business: str
    direction: str
    opened_at: datetime
    resolved_at: datetime | None
    reason: str
    resolve_reason: str | None
    expected: str
    period: str | None


@dataclass(frozen=True, slots=True)
class Rollup:
    """One hour of one service."""

    channel: str
    business: str
    hour: datetime
    probes: int
    serving: int
    expected_up: int
    expected_down: int
    mismatches: int
    duration_sum: float
    duration_max: float


@dataclass(frozen=True, slots=True)
class PendingObservation:
    """An observation waiting in the write buffer, with what the judge made of it."""

    channel: str
    business: str
    observation: Observation
    expected: str
    mismatch: Verdict | None


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


#: Hooks that run inside an incident's transaction (the alert outbox adds its rows here).
IncidentHook = Callable[[sqlite3.Connection, IncidentRecord, IncidentEvent], None]


class Store:
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
    ) -> None:
        """Open the store at `path`, read-only or as a writer; an `exclusive` writer (`run`)
        first takes the one-writer lock and raises StoreBusy when another process holds it."""
        self.path = Path(path)
        self.retention = retention
        self.rollup_retention = rollup_retention
        self.max_pending = max_pending
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

    def _failed(self, exc: sqlite3.Error) -> None:
        self.write_errors += 1
        if self.write_error is None:
            log.error("store %s: writing failed (%s); observations wait in memory", self.path, exc)
        self.write_error = str(exc)

    # --- plumbing --------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store method on the store's worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Write what is buffered and close the file."""
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
        self.db.close()
        if self._owner is not None:
            self._owner.release()
            self._owner = None

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
        """Write buffered observations and their hourly rollups; return how many."""
        with self._lock:
            items, self._pending = list(self._pending), deque()
        if not items:
            return 0
        try:
            with self.db:
                self.db.executemany(
                    "INSERT INTO observations (channel, business, at, serving, reason, "
                    "status_code, duration, expected, mismatch) VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            i.channel,
                            i.business,
                            _ts(i.observation.at),
                            int(i.observation.serving),
                            i.observation.reason,
                            i.observation.status_code,
                            i.observation.duration_seconds,
                            i.expected,
                            i.mismatch.value if i.mismatch else None,
                        )
                        for i in items
                    ],
                )
                self.db.executemany(
                    "INSERT INTO rollups VALUES (?,?,?,1,?,?,?,?,?,?) "
                    "ON CONFLICT (channel, business, hour) DO UPDATE SET "
                    "probes = probes + 1, serving = serving + excluded.serving, "
                    "expected_up = expected_up + excluded.expected_up, "
                    "expected_down = expected_down + excluded.expected_down, "
                    "mismatches = mismatches + excluded.mismatches, "
                    "duration_sum = duration_sum + excluded.duration_sum, "
                    "duration_max = max(duration_max, excluded.duration_max)",
                    [
                        (
                            i.channel,
                            i.business,
                            _hour(i.observation.at),
                            int(i.observation.serving),
                            int(i.expected == "up"),
                            int(i.expected == "down"),
                            int(i.mismatch is not None),
                            i.observation.duration_seconds,
                            i.observation.duration_seconds,
                        )
                        for i in items
                    ],
                )
        except sqlite3.Error as exc:
            self._failed(exc)
            with self._lock:  # keep them for the next attempt rather than lose them
                self._pending.extendleft(reversed(items))
                self._trim()
            raise
        self._wrote()
        return len(items)

    def prune(self, now: datetime) -> None:
        """Drop raw observations and rollups older than their retention windows."""
        with self.db:
            self.db.execute("DELETE FROM observations WHERE at < ?", (_ts(now - self.retention),))
            self.db.execute(
                "DELETE FROM rollups WHERE hour < ?", (_ts(now - self.rollup_retention),)
            )

    def add_rollups(self, rows: Iterable[Rollup]) -> None:
        """Insert whole hours at once (imports, tests that need long history)."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO rollups VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.channel,
                        r.business,
                        _ts(r.hour),
                        r.probes,
                        r.serving,
                        r.expected_up,
                        r.expected_down,
                        r.mismatches,
                        r.duration_sum,
                        r.duration_max,
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
                hook(self.db, record, event)
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

    def _incident(self, incident_id: int) -> IncidentRecord:
        row = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents WHERE id = ?",
            (incident_id,),
        ).fetchone()
        return _incident_record(row)

    def open_incidents(self) -> list[IncidentRecord]:
        """Incidents not yet resolved: `run` resumes them after a restart."""
        rows = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents WHERE resolved_at IS NULL "
            "ORDER BY opened_at"
        ).fetchall()
        return [_incident_record(r) for r in rows]

    def incidents(self, since: datetime | None = None, limit: int = 500) -> list[IncidentRecord]:
        """Incidents opened or still open since `since`, newest first."""
        floor = _ts(since) if since else 0.0
        rows = self.db.execute(
            "SELECT id, channel, business, direction, opened_at, resolved_at, reason, "
            "resolve_reason, expected, period FROM incidents "
            "WHERE opened_at >= ? OR resolved_at IS NULL OR resolved_at >= ? "
            "ORDER BY opened_at DESC LIMIT ?",
            (floor, floor, limit),
        ).fetchall()
        return [_incident_record(r) for r in rows]

    # --- reads -----------------------------------------------------------------------------

    def rollups(self, since: datetime, until: datetime | None = None) -> list[Rollup]:
        """Hourly rollups in `[since, until)`, ordered by service and hour."""
        top = _ts(until) if until else float("inf")
        rows = self.db.execute(
            "SELECT channel, business, hour, probes, serving, expected_up, expected_down, "
            "mismatches, duration_sum, duration_max FROM rollups WHERE hour >= ? AND hour < ? "
            "ORDER BY channel, business, hour",
            (_ts(since), top),
        ).fetchall()
        return [Rollup(r[0], r[1], _dt(r[2]), *r[3:]) for r in rows]  # type: ignore[arg-type]

    def last_observations(self) -> dict[tuple[str, str], Observation]:
        """The newest stored observation of every service."""
        rows = self.db.execute(
            "SELECT o.channel, o.business, o.at, o.serving, o.reason, o.status_code, o.duration "
            "FROM observations o JOIN (SELECT channel, business, max(at) AS at FROM observations "
            "GROUP BY channel, business) last USING (channel, business, at)"
        ).fetchall()
        return {
            (r[0], r[1]): Observation(
                at=_dt(r[2]),  # type: ignore[arg-type]
                serving=bool(r[3]),
                reason=r[4],
                status_code=r[5],
                duration_seconds=r[6],
            )
            for r in rows
        }

    def observations(self, channel: str, business: str, since: datetime) -> list[tuple]:
        """Raw rows of one service since `since`: (at, serving, reason, expected, mismatch)."""
        return self.db.execute(
            "SELECT at, serving, reason, expected, mismatch FROM observations "
            "WHERE channel = ? AND business = ? AND at >= ? ORDER BY at",
            (channel, business, _ts(since)),
        ).fetchall()


def _hour(at: datetime) -> float:
    stamp = at.timestamp()
    return stamp - stamp % 3600


def _incident_record(row: tuple) -> IncidentRecord:
    return IncidentRecord(
        id=row[0],
        channel=row[1],
        business=row[2],
        direction=row[3],
        opened_at=_dt(row[4]),  # type: ignore[arg-type]
        resolved_at=_dt(row[5]),
        reason=row[6],
        resolve_reason=row[7],
        expected=row[8],
        period=row[9],
    )


def as_open_incident(record: IncidentRecord) -> OpenIncident:
    """A stored open incident, in the judge's terms (for resuming after a restart)."""
    return OpenIncident(
        id=record.id,
        direction=Verdict(record.direction),
        opened_at=record.opened_at,
        reason=record.reason,
        expected=record.expected,
        period=record.period,
    )
