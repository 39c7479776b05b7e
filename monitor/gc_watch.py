"""How long the cyclic garbage collector holds the process, per generation.

While a collection runs nothing else does: no probe starts, `/healthz` does not answer. A full
(generation 2) collection walks every tracked object the process holds, so its pause grows with
the plan; `run` freezes what it has loaded (`gc.freeze()`) so that walk stays short. This watch
makes the pauses visible in `/healthz` (count and longest per generation since the start), where
a watchdog or a benchmark can read them without parsing `/metrics`.
"""

from __future__ import annotations

import gc
import time


class GcPauses:
    """A `gc.callbacks` entry that times each collection; `install` / `remove` it."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 2)
        pause = time.perf_counter() - self._started
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], pause)

    def install(self) -> GcPauses:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def health(self) -> dict[str, dict[str, float | int]]:
        """Per generation: collections since the start and the longest pause (seconds)."""
        return {
            f"gen{gen}": {"collections": self.count[gen], "longest_seconds": round(longest, 4)}
            for gen, longest in enumerate(self.longest)
        }
