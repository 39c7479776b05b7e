"""The probes in flight at once: a probe that holds its slot past `linger` gives it back and
runs on lent, within a bound, so hung targets never hold every slot."""

from __future__ import annotations

import asyncio
import resource

import pytest

from monitor.net.slots import MOST_LENT, RESERVED_FDS, Slots, lendable


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


def test_run_raises_its_open_files_limit_to_what_lending_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to the hard limit, and no further than the slots, the most lent and the reserve:
    a hard limit of 2**30 (some container runtimes) is not handed whole to the browser's
    processes, and an unlimited one (macOS) still leaves room to lend."""
    from monitor.net.slots import raise_fd_limit

    wanted = 400 + MOST_LENT + RESERVED_FDS
    limits = {"now": (1024, 65536)}

    def setrlimit(_which: int, new: tuple[int, int]) -> None:
        if new[0] == resource.RLIM_INFINITY:
            raise ValueError("not allowed to raise maximum limit")
        limits["now"] = new

    monkeypatch.setattr(resource, "getrlimit", lambda _which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert raise_fd_limit(400) == wanted and limits["now"] == (wanted, 65536)
    assert lendable(400) == MOST_LENT

    limits["now"] = (1024, 4096)  # a low hard limit: all of it
    assert raise_fd_limit(400) == 4096 and lendable(400) == 4096 - 400 - RESERVED_FDS

    limits["now"] = (1024, 1 << 30)
    assert raise_fd_limit(400) == wanted

    limits["now"] = (256, resource.RLIM_INFINITY)
    assert raise_fd_limit(400) == wanted and lendable(400) == MOST_LENT

    limits["now"] = (1 << 20, 1 << 20)  # never lowered
    assert raise_fd_limit(400) == 1 << 20

    def refused(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    limits["now"] = (1024, 65536)
    monkeypatch.setattr(resource, "setrlimit", refused)
    assert raise_fd_limit(400) == 1024, "refused: lending stays within the soft limit"


def test_too_little_room_to_lend_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (800, 800))
    with caplog.at_level("WARNING", logger="monitor.net.slots"):
        slots = Slots(400)
    assert slots.most_lent == 0
    assert "room for 0 probes of slow or hung targets" in caplog.text


async def test_a_failing_on_lend_does_not_end_the_lending() -> None:
    """`on_lend` runs in the sweep: if it raises, the sweep is still scheduled again, or no
    probe would ever be lent again (the loop only logs the error)."""
    calls: list[int] = []

    def on_lend() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no stand-in")

    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        slots = Slots(1, linger=0.02, most_lent=10, on_lend=on_lend)
        first = await slots.acquire()
        async with asyncio.timeout(10):
            while slots.lent == 0:
                await asyncio.sleep(0.01)
        slots.release(first)
        second = await slots.acquire()
        async with asyncio.timeout(10):
            while slots.lent == 0:
                await asyncio.sleep(0.01)
        slots.release(second)
        assert slots.loans == 2 and len(errors) == 1
    finally:
        loop.set_exception_handler(None)
