"""Sinks that set the pace: one that trickles its answer a byte every 3 s must not hold its
queue for ever, and one that asks for time (`Retry-After` on a 429 or 503) gets it, up to five
minutes. Real local servers on 127.0.0.1; times asserted only as generous bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web
from helpers import async_wait_for
from servers import RawServer, aiohttp_server, read_request
from test_alerts import make_sender, open_event, outbox_rows

from monitor.alerts.base import DELIVERY_TIMEOUT, RETRY_AFTER_CAP, retry_after
from monitor.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "monitor.db")
    yield store
    store.close()


async def trickle_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Take the request, then answer 200 one byte every 3 s: every read succeeds in time."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\n")
    for _ in range(50):
        await writer.drain()
        await asyncio.sleep(3)
        writer.write(b"o")


def test_the_default_delivery_bound() -> None:
    assert DELIVERY_TIMEOUT == 30.0
    assert RETRY_AFTER_CAP == 300.0


async def test_a_trickling_sink_is_cut_off_and_retried_and_blocks_no_other(
    store: Store,
) -> None:
    delivered_at: list[float] = []

    async def fine(_request: web.Request) -> web.Response:
        delivered_at.append(time.monotonic())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", fine)
    async with RawServer(trickle_answer) as slow, aiohttp_server(app) as base:
        tables = [
            {"type": "webhook", "name": "slow", "url": slow.url("/hook")},
            {"type": "webhook", "name": "fine", "url": f"{base}/hook"},
        ]
        sender = make_sender(store, tables, delivery_timeout=1.0, close_timeout=0.5)
        await sender.start()
        try:
            await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
            await async_wait_for(lambda: sender.delivered["fine"] == 1, timeout=10)
            # cut off after its bound, then tried again: the queue moves
            await async_wait_for(lambda: slow.connections >= 2, timeout=20, what="a retry")
        finally:
            await sender.close()
    (row,) = [r for r in outbox_rows(store) if r["sink"] == "slow"]
    assert row["delivered_at"] is None
    assert "no complete answer within 1 s" in row["last_error"]


def _answers(statuses: list[tuple[int, dict[str, str]]], seen: list[float]) -> web.Application:
    async def handle(_request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        status, headers = statuses[min(len(seen), len(statuses)) - 1]
        return web.Response(status=status, headers=headers, text="busy" if status >= 400 else "")

    app = web.Application()
    app.router.add_post("/hook", handle)
    return app


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_retry_after_is_honoured(store: Store, status: int, form: str) -> None:
    wait = 3
    seen: list[float] = []
    if form == "seconds":
        header = str(wait)
    else:  # an HTTP date, one second of rounding aside
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=wait + 1), usegmt=True)
    app = _answers([(status, {"Retry-After": header}), (200, {})], seen)
    async with aiohttp_server(app) as base:
        sender = make_sender(store, [{"type": "webhook", "url": f"{base}/hook"}])
        await sender.start()  # backoff_base 0.05 s: without the header it would retry at once
        try:
            await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
            await async_wait_for(lambda: sender.delivered["webhook"] == 1, timeout=20)
        finally:
            await sender.close()
    assert len(seen) == 2
    assert seen[1] - seen[0] >= wait - 0.5


async def test_a_retry_after_of_a_day_is_cut_to_five_minutes(store: Store) -> None:
    seen: list[float] = []
    app = _answers([(429, {"Retry-After": "86400"})], seen)
    async with aiohttp_server(app) as base:
        sender = make_sender(store, [{"type": "webhook", "url": f"{base}/hook"}])
        await sender.start()
        try:
            await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
            await async_wait_for(lambda: outbox_rows(store)[0]["attempts"] == 1, timeout=10)
        finally:
            await sender.close()
    (row,) = outbox_rows(store)
    delay = row["next_attempt_at"] - time.time()
    assert 250 < delay <= RETRY_AFTER_CAP + 1
    assert len(seen) == 1


def test_retry_after_values() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert retry_after("120", now) == 120
    assert retry_after(" 0 ", now) == 0
    assert retry_after("99999", now) == RETRY_AFTER_CAP
    assert retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60
    assert retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0  # in the past: now
    for unreadable in (None, "", "soon", "-5", "1.5", "Thu, 99 Foo 2026"):
        assert retry_after(unreadable, now) is None


async def endless_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Take the request, then answer 200 with a chunked body that never ends (bounded here at
    1 GiB, which the sender must never read)."""
    await read_request(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    try:
        for _ in range(16384):
            writer.write(b"10000\r\n" + chunk + b"\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass  # the sender stopped reading and closed: as it should


async def test_a_sink_that_answers_without_end_is_read_only_so_far(store: Store) -> None:
    async with RawServer(endless_answer) as endless:
        tables = [{"type": "webhook", "name": "endless", "url": endless.url("/hook")}]
        sender = make_sender(store, tables, delivery_timeout=20.0, close_timeout=0.5)
        await sender.start()
        try:
            await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
            # a 2xx is a delivery; the rest of its answer is never waited for
            await async_wait_for(lambda: sender.delivered["endless"] == 1, timeout=15)
        finally:
            await sender.close()
    (row,) = outbox_rows(store)
    assert row["delivered_at"] is not None
