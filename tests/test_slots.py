"""The probes in flight at once: a probe that holds its slot past `linger` gives it back and
runs on lent, within a bound, so hung targets never hold every slot."""

from __future__ import annotations

import asyncio
import resource

import pytest

from monitor.slots import MOST_LENT, RESERVED_FDS, Slots, lendable


async def hold_until(slots: Slots, gate: asyncio.Event, entered: list[int]) -> None:
    token = await slots.acquire()
    try:
        entered.append(1)
        await gate.wait()
    finally:
        slots.release(token)


async def test_a_probe_that_lingers_gives_its_slot_back_and_the_next_one_runs() -> None:
    loans: list[int] = []
    slots = Slots(1, linger=0.05, most_lent=5, on_lend=lambda: loans.append(slots.lent))
    gate, entered = asyncio.Event(), []
    hung = asyncio.create_task(hold_until(slots, gate, entered))
    # the second waits for the only slot until the first has lingered, then runs beside it
    second = asyncio.create_task(hold_until(slots, asyncio.Event(), entered))
    try:
        async with asyncio.timeout(10):
            while len(entered) < 2:
                await asyncio.sleep(0.01)
        assert slots.lent == 1 and slots.loans == 1 and loans == [1]
        assert len(slots._held) == 1, "the second is held, the first lent"
        gate.set()
        await hung
        assert slots.lent == 0, "a lent probe that ends is no longer counted"
        assert slots._free.locked(), "the second holds the one slot: no permit was added"
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
    assert not slots._free.locked(), "every slot is free again"


async def test_no_more_than_most_lent_at_once_the_others_keep_their_slots() -> None:
    slots = Slots(3, linger=0.02, most_lent=2)
    gate, entered = asyncio.Event(), []
    tasks = [asyncio.create_task(hold_until(slots, gate, entered)) for _ in range(6)]
    try:
        async with asyncio.timeout(10):
            while len(entered) < 5:  # 3 slots, 2 of them lent again
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # five lingers more: still nothing more may be lent
        assert len(entered) == 5 and slots.lent == 2
    finally:
        gate.set()
        await asyncio.gather(*tasks)
    assert slots.lent == 0 and slots.loans == 2


async def test_a_probe_that_is_cancelled_while_lent_is_counted_out() -> None:
    slots = Slots(1, linger=0.02, most_lent=1)
    gate, entered = asyncio.Event(), []
    task = asyncio.create_task(hold_until(slots, gate, entered))
    async with asyncio.timeout(10):
        while slots.lent == 0:
            await asyncio.sleep(0.01)
    task.cancel()  # as a probe's timeout ends it
    await asyncio.gather(task, return_exceptions=True)
    assert slots.lent == 0 and not slots._free.locked()


def test_lending_leaves_room_in_the_open_files_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    assert lendable(400) == 1024 - 400 - RESERVED_FDS
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (800, 4096))
    assert lendable(400) == 0
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1 << 20, 1 << 20))
    assert lendable(400) == MOST_LENT


def test_run_raises_its_open_files_limit_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.slots import raise_fd_limit

    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 65536))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: asked.append(limits))
    assert raise_fd_limit() == 65536 and asked == [(65536, 65536)]

    def refused(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refused)
    assert raise_fd_limit() == 1024, "refused: lending stays within the soft limit"


async def test_holding_a_slot_makes_no_object_for_the_collector_and_no_timer_per_probe() -> None:
    """100,000 services a minute are 1,667 probes a second: a probe held is a dict entry of
    plain numbers, and a single timer looks for the lingering ones."""
    import gc

    slots = Slots(100, linger=60)
    tokens = [await slots.acquire() for _ in range(50)]
    loop = asyncio.get_running_loop()
    timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]
    assert len(timers) <= 1
    assert not any(gc.is_tracked(v) for v in slots._held.values())
    for token in tokens:
        slots.release(token)
    assert not slots._held and slots.lent == 0
