"""A sink that answers 429 or 503 with `Retry-After` is paused as a whole: neither the refused
alert nor the next one goes to it before the time it asked for, while another sink takes both
at once. The sinks' HTTP is mocked with respx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from helpers import async_wait_for
from test_alerts import make_sender, open_event

from monitor.store import Store

BUSY = "https://busy.example.invalid/hook"
FINE = "https://fine.example.invalid/hook"
WAIT = 2


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "monitor.db")
    yield store
    store.close()


@pytest.mark.parametrize("status", [429, 503])
@respx.mock
async def test_retry_after_pauses_every_delivery_to_that_sink(store: Store, status: int) -> None:
    busy_at: list[float] = []
    fine_at: list[float] = []

    def busy(_request: httpx.Request) -> httpx.Response:
        busy_at.append(time.monotonic())
        if len(busy_at) == 1:
            return httpx.Response(status, headers={"Retry-After": str(WAIT)}, text="slow down")
        return httpx.Response(200, text="ok")

    def fine(_request: httpx.Request) -> httpx.Response:
        fine_at.append(time.monotonic())
        return httpx.Response(200, text="ok")

    respx.post(BUSY).mock(side_effect=busy)
    respx.post(FINE).mock(side_effect=fine)
    tables = [
        {"type": "webhook", "name": "busy", "url": BUSY},
        {"type": "webhook", "name": "fine", "url": FINE},
    ]
    sender = make_sender(store, tables)  # backoff 0.05 s, poll 0.2 s: quick without a pause
    await sender.start()
    try:
        await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
        await async_wait_for(lambda: len(busy_at) == 1, timeout=10, what="the refusal")
        await store.call(store.record_event, "hbzwfw", "medical", open_event())
        # the other sink takes both at once, and the paused one nothing meanwhile
        await async_wait_for(lambda: sender.delivered["fine"] == 2, timeout=10)
        assert len(busy_at) == 1
        await async_wait_for(lambda: sender.delivered["busy"] == 2, timeout=WAIT + 10)
    finally:
        await sender.close()
    assert len(busy_at) == 3  # the refusal, then both alerts, in order
    assert min(busy_at[1:]) - busy_at[0] >= WAIT - 0.1  # not one before the time asked for
    assert fine_at[-1] - busy_at[0] < WAIT


@respx.mock
async def test_a_pause_ends_and_a_sink_without_retry_after_is_not_paused(store: Store) -> None:
    calls: list[float] = []

    def flaky(_request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(503 if len(calls) == 1 else 200, text="")

    respx.post(BUSY).mock(side_effect=flaky)
    sender = make_sender(store, [{"type": "webhook", "name": "busy", "url": BUSY}])
    await sender.start()
    try:
        await store.call(store.record_event, "hbzwfw", "social-insurance", open_event())
        await async_wait_for(lambda: sender.delivered["busy"] == 1, timeout=10)
    finally:
        await sender.close()
    assert sender.paused_until == {}  # a 503 without the header: the row's backoff only
    assert len(calls) == 2
