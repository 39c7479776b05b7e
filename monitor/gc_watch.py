"""How long the cyclic garbage collector holds the process, per generation.

While a collection runs nothing else does: no probe starts, `/healthz` does not answer. A full
(generation 2) collection walks every tracked object the process holds, so its pause grows with
the plan; `run` freezes what it has loaded (`gc.freeze()`) so that walk stays short. This watch
makes the pauses visible in `/healthz` (count and longest per generation since the start), where
a watchdog or a benchmark can read them without parsing `/metrics`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import time
from collections import deque

#: Pauses remembered per generation for `longest_last_minute_seconds` (young collections come
#: a few dozen times a second at most; a minute of full ones fits many times over).
RECENT = 4096


class GcPauses:
    """A `gc.callbacks` entry that times each collection; `install` / `remove` it."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        #: The longest pause's CPU time (the collecting thread's): on a busy machine the wall
        #: time also counts the moments the OS gave the core to another process.
        self.longest_cpu = [0.0, 0.0, 0.0]
        #: Per generation, the last pauses: (when it ended on `time.monotonic`, seconds, CPU).
        self.recent: list[deque[tuple[float, float, float]]] = [
            deque(maxlen=RECENT) for _ in range(3)
        ]
        self._started = self._started_cpu = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._started_cpu = time.thread_time()
            return
        generation = info.get("generation", 2)
        pause = time.perf_counter() - self._started
        cpu = time.thread_time() - self._started_cpu
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], pause)
        self.longest_cpu[generation] = max(self.longest_cpu[generation], cpu)
        self.recent[generation].append((time.monotonic(), pause, cpu))

    def install(self) -> GcPauses:
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def health(self) -> dict[str, dict[str, float | int]]:
        """Per generation: collections since the start, the longest pause since the start and
        in the last minute (seconds; wall time and the collector's CPU time): the first shows
        the start-up, the second what runs now."""
        since = time.monotonic() - 60
        out = {}
        for gen, longest in enumerate(self.longest):
            # copied in one C call first: reading it allocates, which can run a collection,
            # whose callback appends to it (and so can one on another thread)
            kept = list(self.recent[gen])
            recent = [(wall, cpu) for at, wall, cpu in kept if at >= since]
            out[f"gen{gen}"] = {
                "collections": self.count[gen],
                "longest_seconds": round(longest, 4),
                "longest_cpu_seconds": round(self.longest_cpu[gen], 4),
                "longest_last_minute_seconds": round(max((w for w, _ in recent), default=0), 4),
                "longest_last_minute_cpu_seconds": round(max((c for _, c in recent), default=0), 4),
            }
        return out


def settle(collect: bool = False) -> None:
    """After making what lives as long as the process (the plan at start; every service's
    counters and state after its first round): freeze it, so full collections never walk it
    again and their pauses stay short, and hand the heap the work freed back to the OS.

    The first time, no collection first: at 100,000 services one would hold the process for
    seconds. What is cyclic garbage at this instant is frozen with the rest and never
    collected, which is nothing much: refcounting frees everything else, and the plan's load
    makes no cycles. A later freeze (`collect`: the state of services first judged after the
    first) collects first, which then walks only what was made since, as any full collection
    does, so no garbage is frozen. Reading a plan of 100,000 services peaks hundreds of
    megabytes above what it keeps, and glibc keeps freed heap unless asked (`malloc_trim`)."""
    if collect:
        gc.collect()
    gc.freeze()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
