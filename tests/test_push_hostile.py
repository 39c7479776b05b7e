"""Pushes no well-behaved agent sends, and a store write that fails for a reason other than
SQLite's: whatever a client sends is stored or refused with a 4xx and a sentence, never a 500,
and a write that fails keeps its batch and says so in /healthz.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_push import KEY, push, started

from monitor.daemon import Daemon
from monitor.receiver import MAX_BODY, MAX_DEPTH, clean_text, parse_body, too_deep


@pytest.fixture(autouse=True)
def _token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIOSK_TOKEN", "kiosk-push-token-7f3a9c1e5b2d4f60")
    monkeypatch.delenv("KIOSK_TOKEN_NOT_SET", raising=False)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    running = await started(tmp_path)
    try:
        yield running
    finally:
        await running.stop()


def kept(db: Path) -> dict[str, int]:
    """Observations in the store, counted by reason (equal ones in a row share a run)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT reason, sum(count) FROM observations GROUP BY reason")
        return dict(rows.fetchall())


def incidents(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT business, direction, resolved_at FROM incidents").fetchall()


# --- lone surrogates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("\udc80 x", "\ufffd x"),  # a low surrogate alone
        ("cut \ud83d", "cut \ufffd"),  # a high one, the string cut after it
        ("a\ud83d\ude00b", "a\U0001f600b"),  # a pair in two code points: joined
        ("维护中 ok", "维护中 ok"),  # nothing to replace: the same text
    ],
)
def test_lone_surrogates_are_replaced_and_pairs_joined(text: str, kept: str) -> None:
    assert clean_text(text) == kept
    clean_text(text).encode("utf-8")  # what SQLite, the log and the page need


async def test_a_lone_surrogate_in_a_reason_is_stored_and_opens_its_incident(
    daemon: Daemon,
) -> None:
    body = '{"reason":"\\udc80 x","serving":false}'  # as the kiosk agent sent it
    status, answer = await push(daemon, body=body)
    assert status == 202, answer
    # the second opens the incident (failure threshold 2): its write flushes the first
    status, answer = await push(daemon, body=body)
    assert status == 202, answer
    assert answer["verdict"] == "unexpected_down"
    await daemon.pipeline.flush()
    assert kept(daemon.db_path) == {"pushed: \ufffd x": 2}
    assert incidents(daemon.db_path) == [("pension", "unexpected_down", None)]
    body_, status = daemon.health()
    assert status == 200 and body_["store"]["healthy"] is True
    assert body_["store"]["dropped_observations"] == 0


# --- a write that fails for any reason -------------------------------------------------------


async def test_a_flush_failing_for_any_reason_keeps_its_batch_and_says_so(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = daemon.store
    status, _ = await push(daemon, body='{"serving": true, "reason": "first"}')
    assert status == 202
    real_write = store._write

    def broken(items: list) -> tuple:
        raise UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(store, "_write", broken)
    with pytest.raises(sqlite3.Error):  # what every caller waits out as a failing store
        await daemon.pipeline.flush()
    assert store.pending == 1 and store.dropped == 0
    body, status = daemon.health()
    assert status == 503
    assert body["status"] == "store_failing"
    assert body["store"]["healthy"] is False
    assert body["store"]["error"].startswith("UnicodeEncodeError: ")
    assert "encode" in body["message"]
    # a push that opens an incident meanwhile is answered, not a 500, and its incident
    # waits with the observations (retried with the next one)
    for _ in range(2):
        status, answer = await push(daemon, body='{"serving": false}')
        assert status == 202, answer
    assert incidents(daemon.db_path) == []
    # the cause goes away (as a full disk does): the next write keeps everything
    monkeypatch.setattr(store, "_write", real_write)
    status, answer = await push(daemon, body='{"serving": false}')
    assert status == 202
    assert incidents(daemon.db_path) == [("pension", "unexpected_down", None)]
    await daemon.pipeline.flush()
    assert kept(daemon.db_path) == {"pushed: first": 1, "push": 3}
    body, status = daemon.health()
    assert status == 200 and body["store"]["healthy"] is True and "error" not in body["store"]


# --- nesting ---------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A body whose arrays and objects nest `depth` deep (the object counts as one)."""
    return b'{"reason": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_nesting_is_measured_outside_strings() -> None:
    assert not too_deep(nested(MAX_DEPTH))
    assert too_deep(nested(MAX_DEPTH + 1))
    brackets_in_a_string = json.dumps({"reason": "[" * 1000}).encode()
    assert not too_deep(brackets_in_a_string)
    escaped_quote = b'{"reason": "\\"' + b"[" * 100 + b'"}'
    assert not too_deep(escaped_quote)
    assert too_deep(b'"\\\\"' + b"[" * 40)  # an escaped backslash ends before the quote


async def test_json_nested_30000_deep_is_refused_with_400_and_a_sentence(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"[" * 30_000 + b"]" * 30_000
    assert len(body) <= MAX_BODY
    status, answer = await push(daemon, body=body)
    assert status == 400
    assert answer["error"] == f"the body is nested more than {MAX_DEPTH} levels deep"
    assert answer["error_zh"]
    status, answer = await push(daemon, body=nested(40))
    assert status == 400
    assert "Traceback" not in caplog.text
    assert daemon.pipeline.states.get(KEY) is None  # nothing was judged
    with pytest.raises(Exception) as refused:
        parse_body(body)
    assert getattr(refused.value, "status", None) == 400
