"""The store's schema, its versions (`PRAGMA user_version`) and migrations, and opening a
file as the writer (migrated) or as a reader (refused unless it is of this version).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from monitor.store.checkpoints import WAL_LIMIT
from monitor.store.errors import StoreError, _check_file, _os_problem, _sqlite_problem
from monitor.store.outbox import OUTBOX_SCHEMA
from monitor.store.subscribers import SUBSCRIBERS_SCHEMA

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

#: Version 2: raw history as runs, services by number, rollups keyed by that number.
#:
#: A row of `runs` stands for `count` observations of one service from `at` (the first) to
#: `until` (the last) that saw the same thing (serving, reason, expected, mismatch), inside one
#: hour, spaced evenly within half an interval either way, `gap` (ms, rounded up) the longest
#: time between two of them; `status_code` and `duration` are the last one's. A service that
#: keeps answering alike costs a row an hour instead of sixty, and the flush updates the run in
#: place. `hourly` holds the rollups by service number and hour (seconds), durations in ms,
#: except each service's latest hour, which is in `hour_now` (one row a service, in service
#: order) until its next hour begins: a flush then adds to a few neighbouring pages instead of
#: one page per service in a table of months of hours. The views `observations` (one row per
#: run) and `rollups` (exactly the old rows) give readers the old names and columns, and their
#: filters on channel, business, `at` and `hour` still reach the indexes. v1's raw rows become
#: runs of one observation each.
SCHEMA_V2 = """
CREATE TABLE services (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    business TEXT NOT NULL,
    UNIQUE (channel, business)
);
INSERT INTO services (channel, business)
    SELECT channel, business FROM observations UNION SELECT channel, business FROM rollups
    ORDER BY 1, 2;
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    service INTEGER NOT NULL,
    at REAL NOT NULL,
    until REAL NOT NULL,
    count INTEGER NOT NULL,
    gap INTEGER NOT NULL,
    serving INTEGER NOT NULL,
    reason TEXT NOT NULL,
    expected TEXT NOT NULL,
    mismatch TEXT,
    status_code INTEGER,
    duration REAL NOT NULL
);
INSERT INTO runs (service, at, until, count, gap, serving, reason, expected, mismatch,
                  status_code, duration)
    SELECT s.id, o.at, o.at, 1, 0, o.serving, o.reason, o.expected, o.mismatch, o.status_code,
           o.duration
    FROM observations o JOIN services s USING (channel, business) ORDER BY o.at, o.id;
CREATE INDEX runs_service_at ON runs (service, at);
CREATE INDEX runs_at ON runs (at);
CREATE TABLE hourly (
    service INTEGER NOT NULL,
    hour INTEGER NOT NULL,
    probes INTEGER NOT NULL,
    serving INTEGER NOT NULL,
    expected_up INTEGER NOT NULL,
    expected_down INTEGER NOT NULL,
    mismatches INTEGER NOT NULL,
    duration_sum INTEGER NOT NULL,
    duration_max INTEGER NOT NULL,
    PRIMARY KEY (service, hour)
) WITHOUT ROWID;
INSERT INTO hourly
    SELECT s.id, CAST(r.hour AS INTEGER), r.probes, r.serving, r.expected_up, r.expected_down,
           r.mismatches, CAST(round(r.duration_sum * 1000) AS INTEGER),
           CAST(round(r.duration_max * 1000) AS INTEGER)
    FROM rollups r JOIN services s USING (channel, business);
-- the columns of hourly, keyed by service alone
CREATE TABLE hour_now (service INTEGER PRIMARY KEY, hour INTEGER NOT NULL,
    probes INTEGER NOT NULL, serving INTEGER NOT NULL, expected_up INTEGER NOT NULL,
    expected_down INTEGER NOT NULL, mismatches INTEGER NOT NULL,
    duration_sum INTEGER NOT NULL, duration_max INTEGER NOT NULL);
INSERT INTO hour_now
    SELECT * FROM hourly WHERE (service, hour) IN (
        SELECT service, max(hour) FROM hourly GROUP BY service);
DELETE FROM hourly WHERE (service, hour) IN (SELECT service, hour FROM hour_now);
DROP TABLE observations;
DROP TABLE rollups;
CREATE VIEW observations AS
    SELECT s.channel, s.business, r.at, r.until, r.count, r.gap / 1000.0 AS gap, r.serving,
           r.reason, r.expected, r.mismatch, r.status_code, r.duration
    FROM runs r JOIN services s ON s.id = r.service;
CREATE VIEW rollups AS
    SELECT s.channel, s.business, h.hour, h.probes, h.serving, h.expected_up, h.expected_down,
           h.mismatches, h.duration_sum / 1000.0 AS duration_sum,
           h.duration_max / 1000.0 AS duration_max
    FROM hourly h JOIN services s ON s.id = h.service
    UNION ALL
    SELECT s.channel, s.business, h.hour, h.probes, h.serving, h.expected_up, h.expected_down,
           h.mismatches, h.duration_sum / 1000.0 AS duration_sum,
           h.duration_max / 1000.0 AS duration_max
    FROM hour_now h JOIN services s ON s.id = h.service;
"""

#: `MIGRATIONS[n]` takes a store from schema version n to n + 1. Version 0 is a new file or one
#: written before versions were kept (its tables are exactly SCHEMA's, so `IF NOT EXISTS` makes
#: both whole). Add a change as a new entry; never edit an old one. Version 3 adds the alert
#: outbox (`monitor.store.outbox`), which versions up to 2 created outside the migrations.
#: Version 4 adds citizens' subscriptions and their outbox (`monitor.store.subscribers`).
MIGRATIONS: tuple[str, ...] = (SCHEMA, SCHEMA_V2, OUTBOX_SCHEMA, SUBSCRIBERS_SCHEMA)
SCHEMA_VERSION = len(MIGRATIONS)
#: The oldest SQLite that can write the store: UPDATE ... FROM (3.33) and DELETE ... RETURNING
#: (3.35). Reading it needs neither.
MIN_SQLITE = (3, 35, 0)
#: The tables (and views) a file must have to be read as a store.
TABLES = (
    "runs",
    "hourly",
    "hour_now",
    "services",
    "observations",
    "rollups",
    "incidents",
    "alert_outbox",
    "subscribers",
    "subscription_outbox",
)
#: The tables of a version-0 file: one that has none of them is some other program's.
V0_TABLES = ("observations", "rollups", "incidents")


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
        if names and not names & set(V0_TABLES):
            raise StoreError(
                f"{path}: an SQLite file of another program (no observations, rollups or "
                "incidents table); name another --db. / 这是其他程序的 SQLite 文件，请换一个 --db。"
            )
    for step in range(version, SCHEMA_VERSION):
        # one transaction a step, with its version: a crash mid-way leaves the step undone
        db.executescript(f"BEGIN; {MIGRATIONS[step]}; PRAGMA user_version = {step + 1}; COMMIT;")
    # written every time: it is also the proof that the file takes writes
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.commit()


def version_problem(path: Path | str, version: int) -> str:
    """Why a reader cannot read a store of another schema version, and what to do."""
    if version > SCHEMA_VERSION:
        return (
            f"{path}: written by a newer channel-monitor (schema {version}, this one reads "
            f"{SCHEMA_VERSION}); upgrade. / 存储由更新版本写入，请升级本程序。"
        )
    return (
        f"{path}: written by an older channel-monitor (schema {version}); `channel-monitor run` "
        "with this version upgrades it when it opens it, keeping its history. / 存储由旧版本"
        "写入：用本版本的 channel-monitor run 打开一次即可升级（历史保留）。"
    )


def open_writer(path: Path) -> sqlite3.Connection:
    """The writer's connection, migrated; StoreError with the reason when it cannot be."""
    _check_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(_os_problem(path.parent, exc)) from None
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} is too old to write the store {path}: it needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or later (UPDATE ... FROM, DELETE ... RETURNING); "
            "use a Python linked against a newer SQLite"
        )
    db = None
    try:
        db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        _migrate(db, path)
        # the writer's commits never checkpoint (a flush never does one inside it): the
        # store's Checkpointer does, on a thread and connection of its own
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise StoreError(_sqlite_problem(path, exc, writing=True)) from None
    except StoreError:
        if db is not None:
            db.close()
        raise
    return db


def open_reader(path: Path, leave_no_files: bool = False) -> sqlite3.Connection:
    """A read-only connection that works on a read-only file or mount too.

    `mode=ro` still needs the WAL's shared-memory file beside the store, which a read-only
    folder cannot hold; then the file is opened `immutable`, which is right for it: nothing can
    be writing to a store on a read-only folder.

    `leave_no_files` (the one-shot commands: `report`, `render`, `notice`) leaves the folder as
    it was. A `mode=ro` connection to a WAL store makes its `-wal` and `-shm` files and, being
    read-only, never removes them. So where the file and its folder take writes, the store is
    opened `mode=rw` with `query_only` set: SQLite's own WAL protocol, correct however a `run`
    writes and checkpoints meanwhile, and the last connection to close removes both files (a
    writer that holds the store keeps them, as it always does). Not `immutable` when no files
    are there: a `run` that starts during a long render would checkpoint pages into the file
    under a reader that believes it never changes. Where the file or folder takes no writes,
    nothing can be writing, and `immutable` is opened at once.
    """
    _check_file(path)
    uri = path.resolve().as_uri()  # percent-encodes `?`, `#`, `%`
    queries: tuple[str, ...] = ("mode=ro", "immutable=1")
    if leave_no_files:
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
        queries = ("mode=rw",) if writable else ("immutable=1",)
    last: sqlite3.Error | None = None
    for query in queries:
        db = sqlite3.connect(f"{uri}?{query}", uri=True, check_same_thread=False)
        try:
            db.execute("PRAGMA query_only = 1")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            # a version-0 file is a store (of an old version) only if it has the old tables
            expected = {SCHEMA_VERSION: TABLES, 0: V0_TABLES}.get(version, ())
            for table in expected:
                db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            db.close()
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN":
                raise StoreError(_sqlite_problem(path, exc, writing=False)) from None
            last = exc
            continue
        if version != SCHEMA_VERSION:
            db.close()
            raise StoreError(version_problem(path, version))
        return db
    assert last is not None
    raise StoreError(_sqlite_problem(path, last, writing=False))
