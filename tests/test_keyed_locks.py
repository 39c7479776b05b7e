"""KeyedLocks: one holder per key, and no lock kept for a key nobody holds or waits for."""

from __future__ import annotations

import asyncio

import pytest

from monitor.keyed_locks import KeyedLocks


async def test_one_holder_per_key_and_nothing_kept_once_free() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def first() -> None:
        async with locks.hold("a"):
            order.append("first in")
            inside.set()
            await leave.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("a"):
            order.append("second in")

    one = asyncio.create_task(first())
    await inside.wait()
    two = asyncio.create_task(second())
    async with locks.hold("b"):  # another key is not held up
        order.append("other key")
    assert len(locks) == 1, "a waits; b's lock is gone once free"
    leave.set()
    await asyncio.gather(one, two)
    assert order == ["first in", "other key", "first out", "second in"]
    assert len(locks) == 0


async def test_a_holder_that_fails_or_is_cancelled_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold("a"):
            raise RuntimeError("judging failed")
    assert len(locks) == 0

    held = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("a"):
            held.set()
            await asyncio.Event().wait()

    async def waiter() -> None:
        async with locks.hold("a"):
            pass

    one = asyncio.create_task(holder())
    await held.wait()
    two = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # let the waiter queue up behind the holder
    assert len(locks) == 1
    two.cancel()
    one.cancel()
    await asyncio.gather(one, two, return_exceptions=True)
    assert len(locks) == 0
    async with locks.hold("a"):  # and the key can be held again
        pass
