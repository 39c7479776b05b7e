"""History in one SQLite file: observations, hourly rollups, incidents, the alert outbox.

This package is the only place in `monitor` with SQL (`tests/test_store_owns_sql.py` checks
it): everyone else asks it through named methods that return records.
- `schema`: the tables, the `PRAGMA user_version` migrations, opening a file to write or read;
- `writer`: `Store`, the writer (its worker thread, observations, incidents, pruning);
- `read`: `StoreReads`, the queries of the report, the page and the command line, and
  `StoreReader`, a store opened read-only (`report`, `render`);
- `outbox`: the alert outbox, written in an incident's transaction (`Store.outbox`);
- `checkpoints`: the WAL's checkpoints, on a thread of their own;
- `records`, `errors`, `lock`: what the others hand back, raise and hold.

Raw observations are kept for a short retention window, as runs (a row for as long as a
service keeps seeing the same thing, see SCHEMA_V2), hourly rollups per service for long
history (the page's 90-day bars), incidents for ever; past a size limit the oldest days go
first (`Store.prune_for_size`). The file is in WAL mode so readers (the
site renderer, `channel-monitor render`) never wait for the writer. All writes run on one
worker thread through `Store.call`, so the event loop never blocks on the disk; the WAL is
copied back into the file by a thread of its own (`monitor.store.checkpoints`), never inside a
flush, and pruning deletes in slices that ride along with the flushes.

The file carries its schema version (`PRAGMA user_version`); opening it as the writer runs the
migrations it lacks, so a store written by an older version opens in a newer one, and one
written by a newer version is refused rather than half understood. Only one writer may hold a
store: `lock_store` takes an OS lock beside it that the kernel drops when the process dies.
A store that cannot be opened raises `StoreError`, whose message says what is wrong and what
to do, in both languages, so the command line can print it as it is.
"""

from monitor.store.errors import SQLiteError, StoreBusy, StoreError
from monitor.store.lock import StoreLock, lock_store
from monitor.store.outbox import OUTBOX_SCHEMA, Delivery, Message, Outbox
from monitor.store.read import StoreReader, StoreReads, read_runs
from monitor.store.records import (
    IncidentRecord,
    PendingObservation,
    RawRun,
    Rollup,
    Sighting,
    as_open_incident,
)
from monitor.store.schema import (
    MIGRATIONS,
    MIN_SQLITE,
    SCHEMA,
    SCHEMA_V2,
    SCHEMA_VERSION,
    TABLES,
    V0_TABLES,
    open_reader,
    open_writer,
    version_problem,
)
from monitor.store.subscribers import Mail, Request, Subscriber, Subscribers
from monitor.store.writer import (
    DEFAULT_RETENTION,
    DEFAULT_ROLLUP_RETENTION,
    DEFAULT_SIZE_LIMIT,
    MAX_PENDING,
    IncidentHook,
    Store,
)

__all__ = [
    "DEFAULT_RETENTION",
    "DEFAULT_ROLLUP_RETENTION",
    "DEFAULT_SIZE_LIMIT",
    "MAX_PENDING",
    "MIGRATIONS",
    "MIN_SQLITE",
    "OUTBOX_SCHEMA",
    "SCHEMA",
    "SCHEMA_V2",
    "SCHEMA_VERSION",
    "TABLES",
    "V0_TABLES",
    "Delivery",
    "IncidentHook",
    "IncidentRecord",
    "Mail",
    "Message",
    "Outbox",
    "PendingObservation",
    "RawRun",
    "Request",
    "Rollup",
    "SQLiteError",
    "Sighting",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreLock",
    "StoreReader",
    "StoreReads",
    "Subscriber",
    "Subscribers",
    "as_open_incident",
    "lock_store",
    "open_reader",
    "open_writer",
    "read_runs",
    "version_problem",
]
