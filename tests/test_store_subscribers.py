"""The store's half of subscriptions: confirmation before any choice counts, deletion that
leaves nothing, one row per subscriber and event, and delivery at most once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from monitor.store import Request, Store
from monitor.store.subscribers import FULL, QUEUED


def token_hash(nonce: bytes, turn: int) -> bytes:
    return hashlib.sha256(nonce + bytes([turn])).digest()


def request(n: int, choices: tuple[str, ...] = ("web/pension",)) -> Request:
    return Request(
        lookup=f"lookup-{n}".encode(),
        address=f"sealed-{n}".encode(),
        medium="email",
        lang="zh",
        choices=choices,
        nonce=f"nonce-{n}".encode(),
        unsubscribe_hash=f"unsub-{n}".encode(),
    )


def test_choices_count_only_once_confirmed_and_expired_ones_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    subs = store.subscribers
    try:
        assert subs.ask(request(1), token_hash, 1000.0, cap=10) == QUEUED
        assert subs.choosers(["web"]) == {}, "unconfirmed: no choices yet"
        assert [r["key"] for r in subs.outbox_rows()] == ["confirm:1:1"]
        assert not subs.confirm(b"wrong", 1001.0, 48 * 3600)
        assert subs.confirm(token_hash(b"nonce-1", 1), 1001.0, 48 * 3600)
        assert subs.choosers(["web"]) == {1: [("web", "pension")]}
        # an unconfirmed one past 48 h cannot be confirmed, and is gone
        subs.ask(request(2), token_hash, 1000.0, cap=10)
        assert not subs.confirm(token_hash(b"nonce-2", 1), 1000.0 + 49 * 3600, 48 * 3600)
        assert subs.counts()["unconfirmed"] == 0
        subs.ask(request(3), token_hash, 1000.0, cap=10)
        assert subs.expire(1000.5) == 1
    finally:
        store.close()


def test_the_cap_on_unconfirmed_addresses(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        assert store.subscribers.ask(request(1), token_hash, 1.0, cap=1) == QUEUED
        assert store.subscribers.ask(request(2), token_hash, 1.0, cap=1) == FULL
        assert store.subscribers.ask(request(1), token_hash, 2.0, cap=1) == QUEUED, "known"
    finally:
        store.close()


def test_an_event_is_queued_once_and_unsubscribing_deletes_everything(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    subs = store.subscribers
    try:
        subs.add_confirmed(request(1, ("web",)), 1.0)
        subs.add_confirmed(request(2, ("web/pension", "hall/card")), 1.0)
        chosen = subs.choosers(["web"])
        assert set(chosen) == {1, 2}
        assert subs.offer("plan:t", "{}", {1: [0, 1], 2: [0]}, 2.0) == 2
        assert subs.offer("plan:t", "{}", {1: [0, 1], 2: [0]}, 3.0) == 0, "once"
        with store.db:
            assert subs.offer_service("incident-1-opened", "{}", "hall", "card", 3.0) == 1
        assert subs.unsubscribe(b"unsub-2")
        assert not subs.unsubscribe(b"unsub-2")
        assert {r["subscriber"] for r in subs.outbox_rows()} == {1}
        assert [s.id for s in subs.all()] == [1]
    finally:
        store.close()


def test_a_claimed_row_is_never_sent_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    subs = store.subscribers
    try:
        subs.add_confirmed(request(1, ("web",)), 1.0)
        subs.offer("plan:a", '{"x": 1}', {1: [0]}, 2.0)
        subs.offer("plan:b", '{"x": 2}', {1: []}, 2.0)
        first, _second = subs.claim(5.0, 10)
        assert (first.event_key, first.items, first.address) == ("plan:a", (0,), b"sealed-1")
        assert subs.claim(5.0, 10) == [], "claimed rows are not handed out again"
        subs.delivered([first.id], 6.0)
        # the process dies here: the second was handed to the relay, maybe sent
        assert subs.interrupted(7.0) == 1
        assert subs.claim(8.0, 10) == []
        rows = {r["key"]: r for r in subs.outbox_rows()}
        assert rows["plan:a"]["delivered_at"] and rows["plan:b"]["failed_at"]
    finally:
        store.close()
