"""Citizens' subscriptions and their outbox: the store's half of monitor/subscriptions/.

What is kept of a person is what the law lets us keep and no more: the address, sealed by the
caller (`address` is ciphertext; this module never sees the key or the clear text), a keyed
hash of the normalised address to find it again (`lookup`), the language and the services
chosen. Tokens are not kept either, only their hashes: the caller derives them from the row's
`nonce` and its key whenever a mail needs one. An unsubscribe deletes the row, its choices and
its queued mails; nothing is flagged.

Only confirmed subscribers have rows in `subscriber_choices`, so every fan-out (a planned
instant, an incident) reaches them alone: an unconfirmed address gets its confirmation and
nothing else. One event row is written per instant or transition (`subscription_events`,
unique by its key), and one outbox row per subscriber and event, unique too, so an event is
queued at most once for a subscriber however often it is offered, also across restarts.

Delivery is at most once: a row is claimed (`claimed_at`, committed) before it is handed to
the relay, and a start finds rows claimed but never marked delivered (the process died while
sending them) and gives them up instead of sending them twice. Every method runs on the
store's worker thread (`Store.call`), or inside an incident hook's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: Migration 4.
SUBSCRIBERS_SCHEMA = """
CREATE TABLE subscribers (
    id INTEGER PRIMARY KEY,
    lookup BLOB NOT NULL UNIQUE,
    address BLOB NOT NULL,
    medium TEXT NOT NULL,
    lang TEXT NOT NULL,
    choices TEXT NOT NULL,
    pending TEXT,
    nonce BLOB NOT NULL,
    round INTEGER NOT NULL DEFAULT 1,
    confirm_hash BLOB UNIQUE,
    unsubscribe_hash BLOB NOT NULL UNIQUE,
    confirmed_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX subscribers_unconfirmed ON subscribers (created_at) WHERE confirmed_at IS NULL;
CREATE TABLE subscriber_choices (
    channel TEXT NOT NULL,
    service TEXT NOT NULL,
    subscriber INTEGER NOT NULL,
    PRIMARY KEY (channel, service, subscriber)
) WITHOUT ROWID;
CREATE INDEX subscriber_choices_of ON subscriber_choices (subscriber);
CREATE TABLE subscription_events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE subscription_outbox (
    id INTEGER PRIMARY KEY,
    subscriber INTEGER NOT NULL,
    event INTEGER NOT NULL,
    items TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_at REAL,
    last_error TEXT,
    delivered_at REAL,
    failed_at REAL,
    UNIQUE (subscriber, event)
);
CREATE INDEX subscription_outbox_due ON subscription_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL AND claimed_at IS NULL;
CREATE INDEX subscription_outbox_of ON subscription_outbox (subscriber);
"""

_WAITING = "delivered_at IS NULL AND failed_at IS NULL"
_DUE = f"{_WAITING} AND claimed_at IS NULL"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One subscriber as kept: the address still sealed."""

    id: int
    address: bytes
    medium: str
    lang: str
    choices: tuple[str, ...]
    confirmed_at: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Mail:
    """One claimed outbox row with what its message needs: the sealed address, the language,
    the token material (`nonce`, `round`), the event and which of its items concern this
    subscriber (empty: all)."""

    id: int
    subscriber: int
    address: bytes
    medium: str
    lang: str
    nonce: bytes
    round: int
    event_key: str
    payload: str
    items: tuple[int, ...]
    attempts: int


@dataclass(frozen=True, slots=True)
class Request:
    """A subscription asked for through the public API (or a webhook an operator adds)."""

    lookup: bytes
    address: bytes
    medium: str
    lang: str
    choices: tuple[str, ...]
    nonce: bytes
    unsubscribe_hash: bytes


#: What `ask` did: a confirmation was queued, or the cap on unconfirmed ones was reached.
QUEUED, FULL = "queued", "full"


class Subscribers:
    """The subscription tables on the store's writer connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    # --- subscribing -----------------------------------------------------------------------

    def ask(
        self,
        request: Request,
        confirm_hash: Callable[[bytes, int], bytes],
        now: float,
        cap: int,
    ) -> str:
        """Queue a confirmation for an address, new or known (a known one's choices change
        only when the new confirmation is used). `confirm_hash(nonce, round)` hashes the token
        of that round. FULL when `cap` unconfirmed addresses are waiting already."""
        db = self.db
        with db:
            row = db.execute(
                "SELECT id, nonce, round, confirmed_at FROM subscribers WHERE lookup = ?",
                (request.lookup,),
            ).fetchone()
            wanted = json.dumps({"lang": request.lang, "choices": list(request.choices)})
            if row is None:
                waiting = db.execute(
                    "SELECT count(*) FROM subscribers WHERE confirmed_at IS NULL"
                ).fetchone()[0]
                if waiting >= cap:
                    return FULL
                cursor = db.execute(
                    "INSERT INTO subscribers (lookup, address, medium, lang, choices, pending, "
                    "nonce, round, confirm_hash, unsubscribe_hash, created_at) "
                    "VALUES (?,?,?,?,?,?,?,1,?,?,?)",
                    (
                        request.lookup,
                        request.address,
                        request.medium,
                        request.lang,
                        "[]",
                        wanted,
                        request.nonce,
                        confirm_hash(request.nonce, 1),
                        request.unsubscribe_hash,
                        now,
                    ),
                )
                ident, turn = int(cursor.lastrowid or 0), 1
            else:
                ident, nonce, turn = row[0], row[1], row[2] + 1
                db.execute(
                    "UPDATE subscribers SET pending = ?, round = ?, confirm_hash = ? WHERE id = ?",
                    (wanted, turn, confirm_hash(nonce, turn), ident),
                )
                if row[3] is None:  # still unconfirmed: the newest ask decides its language
                    db.execute(
                        "UPDATE subscribers SET lang = ?, created_at = ? WHERE id = ?",
                        (request.lang, now, ident),
                    )
            self._queue_one(
                ident,
                f"confirm:{ident}:{turn}",
                {"kind": "confirm", "choices": list(request.choices)},
                now,
            )
        return QUEUED

    def add_confirmed(self, request: Request, now: float) -> int:
        """A subscriber confirmed at once (a partner's webhook, added by an operator); a known
        one has its choices replaced. Returns its id."""
        db = self.db
        with db:
            row = db.execute(
                "SELECT id FROM subscribers WHERE lookup = ?", (request.lookup,)
            ).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO subscribers " + _NEW_COLUMNS,
                    _new_row(request, now),
                )
                ident = int(cursor.lastrowid or 0)
            else:
                ident = row[0]
                db.execute(
                    "UPDATE subscribers SET lang = ?, choices = ?, confirmed_at = ? WHERE id = ?",
                    (request.lang, json.dumps(list(request.choices)), now, ident),
                )
            self._choose(ident, request.choices)
        return ident

    def add_confirmed_many(self, requests: Iterable[Request], now: float) -> int:
        """Many new subscribers confirmed at once, in one transaction (a migration from another
        list, the scale bench): rows and choices inserted in bulk, not one `add_confirmed`
        each. An address already kept is left as it is. Returns how many were added."""
        db = self.db
        added = 0
        with db:
            for request in requests:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO subscribers " + _NEW_COLUMNS,
                    _new_row(request, now),
                )
                if cursor.rowcount:
                    added += 1
                    ident = int(cursor.lastrowid or 0)
                    db.executemany(
                        "INSERT OR IGNORE INTO subscriber_choices (channel, service, subscriber) "
                        "VALUES (?,?,?)",
                        [(*_split(choice), ident) for choice in request.choices],
                    )
        return added

    def confirm(self, confirm_hash: bytes, now: float, expires: float) -> bool:
        """Use a confirmation: its choices take effect. False for a token that is unknown,
        used already or older than `expires` seconds (an expired unconfirmed row goes)."""
        db = self.db
        with db:
            row = db.execute(
                "SELECT id, pending, confirmed_at, created_at FROM subscribers "
                "WHERE confirm_hash = ?",
                (confirm_hash,),
            ).fetchone()
            if row is None:
                return False
            ident, pending, confirmed, created = row
            if confirmed is None and created < now - expires:
                self._delete(ident)
                return False
            wanted = json.loads(pending or "{}")
            choices = tuple(wanted.get("choices", ()))
            db.execute(
                "UPDATE subscribers SET lang = ?, choices = ?, pending = NULL, "
                "confirm_hash = NULL, confirmed_at = coalesce(confirmed_at, ?) WHERE id = ?",
                (wanted.get("lang", "zh"), json.dumps(list(choices)), now, ident),
            )
            self._choose(ident, choices)
        return True

    def _choose(self, ident: int, choices: Iterable[str]) -> None:
        self.db.execute("DELETE FROM subscriber_choices WHERE subscriber = ?", (ident,))
        self.db.executemany(
            "INSERT OR IGNORE INTO subscriber_choices (channel, service, subscriber) "
            "VALUES (?,?,?)",
            [(*_split(choice), ident) for choice in choices],
        )

    def unsubscribe(self, unsubscribe_hash: bytes) -> bool:
        """Delete the subscriber whose unsubscribe token this is, with everything of it."""
        with self.db:
            row = self.db.execute(
                "SELECT id FROM subscribers WHERE unsubscribe_hash = ?", (unsubscribe_hash,)
            ).fetchone()
            if row is None:
                return False
            self._delete(row[0])
        return True

    def delete(self, ident: int) -> bool:
        """Delete one subscriber by id (`channel-monitor subscription delete`)."""
        with self.db:
            return self._delete(ident)

    def _delete(self, ident: int) -> bool:
        db = self.db
        db.execute("DELETE FROM subscriber_choices WHERE subscriber = ?", (ident,))
        db.execute("DELETE FROM subscription_outbox WHERE subscriber = ?", (ident,))
        db.execute("DELETE FROM subscription_events WHERE key LIKE ?", (f"confirm:{ident}:%",))
        return db.execute("DELETE FROM subscribers WHERE id = ?", (ident,)).rowcount > 0

    def expire(self, before: float) -> int:
        """Delete unconfirmed subscribers asked for before `before`; how many went."""
        with self.db:
            ids = [
                r[0]
                for r in self.db.execute(
                    "SELECT id FROM subscribers WHERE confirmed_at IS NULL AND created_at < ?",
                    (before,),
                ).fetchall()
            ]
            for ident in ids:
                self._delete(ident)
        return len(ids)

    def forget_sent(self, before: float) -> int:
        """Delete outbox rows done before `before`, and events no row refers to any more."""
        with self.db:
            gone = self.db.execute(
                f"DELETE FROM subscription_outbox WHERE created_at < ? AND NOT ({_WAITING})",
                (before,),
            ).rowcount
            self.db.execute(
                "DELETE FROM subscription_events WHERE created_at < ? AND id NOT IN "
                "(SELECT event FROM subscription_outbox)",
                (before,),
            )
        return gone

    # --- fan-out ---------------------------------------------------------------------------

    def choosers(self, channels: Iterable[str]) -> dict[int, list[tuple[str, str]]]:
        """The confirmed subscribers of these channels, each with its choices there
        (`(channel, "")` for a whole channel)."""
        found: dict[int, list[tuple[str, str]]] = {}
        for channel in set(channels):
            for service, ident in self.db.execute(
                "SELECT service, subscriber FROM subscriber_choices WHERE channel = ?",
                (channel,),
            ):
                found.setdefault(ident, []).append((channel, service))
        return found

    def offer(self, key: str, payload: str, items: dict[int, Sequence[int]], now: float) -> int:
        """Queue one event for subscribers, each with the indices of the event's items that
        concern it; in a transaction of its own. An event offered again (its key is known)
        queues nothing new for anyone who has it. Returns how many rows are new."""
        with self.db:
            return self._offer(key, payload, items, now)

    def _offer(self, key: str, payload: str, items: dict[int, Sequence[int]], now: float) -> int:
        event = self._event(key, payload, now)
        return self.db.executemany(
            "INSERT OR IGNORE INTO subscription_outbox (subscriber, event, items, created_at, "
            "next_attempt_at) VALUES (?,?,?,?,?)",
            [
                (ident, event, ",".join(map(str, sorted(chosen))), now, now)
                for ident, chosen in items.items()
            ],
        ).rowcount

    def offer_service(self, key: str, payload: str, channel: str, service: str, now: float) -> int:
        """Queue an event about one service for everyone who chose it or its whole channel,
        inside the caller's transaction (an incident hook: no commit here)."""
        event = self._event(key, payload, now)
        return self.db.execute(
            "INSERT OR IGNORE INTO subscription_outbox (subscriber, event, created_at, "
            "next_attempt_at) SELECT DISTINCT subscriber, ?, ?, ? FROM subscriber_choices "
            "WHERE channel = ? AND service IN (?, '')",
            (event, now, now, channel, service),
        ).rowcount

    def _queue_one(self, ident: int, key: str, payload: dict, now: float) -> None:
        self._offer(key, json.dumps(payload), {ident: ()}, now)

    def _event(self, key: str, payload: str, now: float) -> int:
        db = self.db
        db.execute(
            "INSERT OR IGNORE INTO subscription_events (key, payload, created_at) VALUES (?,?,?)",
            (key, payload, now),
        )
        return db.execute("SELECT id FROM subscription_events WHERE key = ?", (key,)).fetchone()[0]

    # --- delivery --------------------------------------------------------------------------

    def claim(self, now: float, limit: int) -> list[Mail]:
        """Due rows, oldest first, claimed (committed) before anything is sent."""
        db = self.db
        with db:
            rows = db.execute(
                "SELECT o.id, o.subscriber, s.address, s.medium, s.lang, s.nonce, s.round, "
                "e.key, e.payload, o.items, o.attempts FROM subscription_outbox o "
                "JOIN subscribers s ON s.id = o.subscriber "
                "JOIN subscription_events e ON e.id = o.event "
                f"WHERE o.{_DUE.replace(' AND ', ' AND o.')} AND o.next_attempt_at <= ? "
                "ORDER BY o.next_attempt_at, o.id LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE subscription_outbox SET claimed_at = ? WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
        return [Mail(*r[:9], tuple(int(i) for i in r[9].split(",") if i), r[10]) for r in rows]

    def delivered(self, ids: Sequence[int], now: float) -> None:
        with self.db:
            self.db.executemany(
                "UPDATE subscription_outbox SET delivered_at = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                [(now, i) for i in ids],
            )

    def retry(self, ident: int, next_at: float, error: str) -> None:
        """A transient failure: unclaimed, tried again at `next_at`."""
        with self.db:
            self.db.execute(
                "UPDATE subscription_outbox SET attempts = attempts + 1, claimed_at = NULL, "
                "next_attempt_at = ?, last_error = ? WHERE id = ?",
                (next_at, error, ident),
            )

    def give_up(self, ident: int, now: float, error: str) -> None:
        with self.db:
            self.db.execute(
                "UPDATE subscription_outbox SET attempts = attempts + 1, failed_at = ?, "
                "last_error = ? WHERE id = ?",
                (now, error, ident),
            )

    def interrupted(self, now: float) -> int:
        """At a start: rows claimed but never marked delivered were maybe sent already by a
        process that died; they are given up, so no one gets a mail twice."""
        with self.db:
            return self.db.execute(
                "UPDATE subscription_outbox SET failed_at = ?, last_error = "
                "'interrupted while sending; not sent again' "
                f"WHERE claimed_at IS NOT NULL AND {_WAITING}",
                (now,),
            ).rowcount

    def next_attempt(self) -> float | None:
        row = self.db.execute(
            f"SELECT min(next_attempt_at) FROM subscription_outbox WHERE {_DUE}"
        ).fetchone()
        return row[0] if row else None

    # --- reading ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Confirmed and unconfirmed subscribers, mails waiting, sent and given up."""
        one = self.db.execute(
            "SELECT count(confirmed_at), count(*) - count(confirmed_at) FROM subscribers"
        ).fetchone()
        two = self.db.execute(
            f"SELECT sum({_WAITING}), count(delivered_at), count(failed_at) "
            "FROM subscription_outbox"
        ).fetchone()
        return {
            "confirmed": one[0],
            "unconfirmed": one[1],
            "waiting": two[0] or 0,
            "delivered": two[1],
            "failed": two[2],
        }

    def all(self) -> list[Subscriber]:
        """Every subscriber, address sealed (the command line opens it for operators)."""
        rows = self.db.execute(
            "SELECT id, address, medium, lang, choices, confirmed_at, created_at "
            "FROM subscribers ORDER BY id"
        ).fetchall()
        return [
            Subscriber(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6]) for r in rows
        ]

    def find(self, lookup: bytes) -> int | None:
        row = self.db.execute("SELECT id FROM subscribers WHERE lookup = ?", (lookup,)).fetchone()
        return None if row is None else row[0]

    def outbox_rows(self) -> list[dict]:
        """Every outbox row's bookkeeping, for tests and diagnostics."""
        cursor = self.db.execute(
            "SELECT o.id, o.subscriber, e.key, o.items, o.attempts, o.claimed_at, "
            "o.delivered_at, o.failed_at, o.last_error FROM subscription_outbox o "
            "JOIN subscription_events e ON e.id = o.event ORDER BY o.id"
        )
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def _split(choice: str) -> tuple[str, str]:
    channel, _, service = choice.partition("/")
    return channel, service


#: The columns of a confirmed subscriber's new row, in `_new_row`'s order.
_NEW_COLUMNS = (
    "(lookup, address, medium, lang, choices, nonce, unsubscribe_hash, confirmed_at, "
    "created_at) VALUES (?,?,?,?,?,?,?,?,?)"
)


def _new_row(request: Request, now: float) -> tuple:
    """The values of a confirmed subscriber's new row (one place for both ways of adding)."""
    return (
        request.lookup,
        request.address,
        request.medium,
        request.lang,
        json.dumps(list(request.choices)),
        request.nonce,
        request.unsubscribe_hash,
        now,
        now,
    )
