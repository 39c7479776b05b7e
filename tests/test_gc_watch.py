"""The collector's pauses, as `/healthz` reports them."""

from __future__ import annotations

import gc

from monitor.gc_watch import GcPauses


def test_a_full_collection_is_counted_and_timed_until_removed() -> None:
    pauses = GcPauses().install()
    try:
        gc.collect(2)
        health = pauses.health()
        assert health["gen2"]["collections"] >= 1
        assert health["gen2"]["longest_seconds"] > 0
        assert (
            0 < health["gen2"]["longest_last_minute_seconds"] <= health["gen2"]["longest_seconds"]
        )
        assert pauses.install() is pauses and gc.callbacks.count(pauses) == 1
    finally:
        pauses.remove()
    counted = pauses.count[2]
    gc.collect(2)
    assert pauses.count[2] == counted and pauses not in gc.callbacks


def test_reading_the_pauses_while_collections_run_is_safe() -> None:
    """Reading allocates, and an allocation can run a collection whose callback appends a
    pause: /healthz once answered 500 ("deque mutated during iteration") that way."""
    pauses = GcPauses().install()
    old = gc.get_threshold()
    try:
        for _ in range(3):
            gc.collect(0)
        gc.set_threshold(1)  # a young collection at nearly every allocation
        for _ in range(50):
            assert pauses.health()["gen0"]["collections"] > 0
    finally:
        gc.set_threshold(*old)
        pauses.remove()
