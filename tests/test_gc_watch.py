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
