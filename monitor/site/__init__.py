"""The public status page: static files rendered from the plan and the store.

`build(...)` makes the site's part of a running monitor: a pipeline listener that re-renders
after every verdict change and at every planned transition (coalesced, in a worker process),
and a handler that serves the site folder on the monitor's web server (`/`, beside `/healthz`
and `/metrics`, which match first).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.part import Part
from monitor.site.slim import Slim
from monitor.site.slim import slim as _page_config  # what `run` sends the render worker

if TYPE_CHECKING:  # the server's libraries stay out of commands that only read (`report`)
    from aiohttp import web

    from monitor.clock import Clock
    from monitor.notices import NoticesFile
    from monitor.part import PlanSource
    from monitor.pipeline import Pipeline, Result
    from monitor.plan import Plan
    from monitor.plan.change import PlanChange

log = logging.getLogger(__name__)

#: How long a stop waits for the page's last render (`run` stops within 10 s in all).
CLOSE_SECONDS = 5.0
#: A render starts at least this many times as long as the last one took after its start:
#: the worker is busy at most half of the time.
RENDER_SHARE = 2.0

#: Content types the handler sends (the rest are guessed by aiohttp).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".atom": "application/atom+xml; charset=utf-8",
    ".ics": "text/calendar; charset=utf-8",
    ".svg": "image/svg+xml; charset=utf-8",
}


# --- the render worker (a separate process) ----------------------------------------------------

_worker: dict = {}


def _die_with_parent(parent: int) -> None:
    """Ask Linux to end this worker when the monitor dies, even by SIGKILL (a worker left
    behind would hold the store open and render stale pages); elsewhere nothing to do."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(0)


def _worker_init(config: Slim, site: str, db: str, parent: int) -> None:
    from monitor.plan import Plan
    from monitor.plan.load import gc_paused
    from monitor.site.history import DayCache
    from monitor.site.render import PageCache
    from monitor.site.slim import unslim

    _die_with_parent(parent)
    with gc_paused():  # 100,000 services' plan: objects that all live on
        plan = Plan(unslim(config))
    _worker.update(
        plan=plan,
        site=Path(site),
        db=Path(db),
        store=None,
        days=DayCache(),
        pages=PageCache(),
    )


def _worker_render(at: datetime, snapshot, notices=None) -> float:
    from monitor.site.model import with_seen
    from monitor.site.render import open_store, render

    snapshot = with_seen(snapshot)

    if _worker["store"] is None:
        _worker["store"] = open_store(_worker["db"])
    w = _worker
    seconds = render(
        w["plan"],
        w["site"],
        at,
        w["store"],
        snapshot,
        notices=notices,
        days=w["days"],
        pages=w["pages"],
    ).seconds
    # A render leaves reference cycles (Jinja's macros and their context) that hold its whole
    # model; with the rest frozen, a full collection comes seldom, and the models of several
    # renders piled up (at 100,000 services tens of MB each). Collected now: only what is not
    # frozen is walked.
    gc.collect()
    if not w.get("frozen"):
        # What the first render leaves (the plan, the kept days and pages: millions of
        # objects at 10,000 services) lives as long as the worker; the collector walked all of
        # it several times a render (a fifth of a later render's CPU). Frozen, it is not walked.
        gc.freeze()
        w["frozen"] = True
    return seconds


class SiteListener:
    """Re-renders the site when what it shows changes.

    A render costs about half a second of CPU, most of it Python holding the GIL, so it runs
    in one worker process of its own: the event loop keeps probing at full speed (in the demo's
    fast replay, rendering on a thread tripled the run time). Requests that arrive while a
    render runs or within `min_interval` of the last one are coalesced into one render.
    """

    def __init__(
        self,
        site_dir: Path,
        db_path: Path,
        clock: Clock,
        plan: PlanSource,
        pipeline: Pipeline,
        notices: Callable[[], NoticesFile | None] = lambda: None,
        min_interval: float = 2.0,
    ) -> None:
        self.site_dir = Path(site_dir)
        self.db_path = Path(db_path)
        self.clock = clock
        #: The plan running now (a reload swaps it).
        self.plan = plan
        #: Whose verdicts and last observations the page shows (read, never changed).
        self.pipeline = pipeline
        #: The operators' notices shown now (None: no notices file).
        self.notices = notices
        self.min_interval = min_interval
        self.renders = 0
        self._pool: ProcessPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._dirty = False
        self._closing = False
        self._wake = asyncio.Event()
        self._last = float("-inf")
        #: How long the last render took (wall seconds).
        self._took = 0.0
        #: A stop stopped waiting for the render (`close`): a worker starting now is ended.
        self._given_up = False
        self._not_before: datetime | None = None

    async def observed(self, result: Result) -> None:
        if result.verdict != result.previous_verdict or result.incidents:
            self.request()

    async def transition(self, at: datetime) -> None:
        self._not_before = at if self._not_before is None else max(self._not_before, at)
        self.request()

    def use_plan(self, change: PlanChange) -> None:
        """A reload: the worker holds the plan it started with, so the next render starts a
        new one (the old one finishes a render it has begun, then exits); render now."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._last = float("-inf")
        self.request()

    def wait(self) -> float:
        """Seconds until the next render may start: `min_interval` after the last one began,
        or RENDER_SHARE times as long as it took (at 100,000 services one takes seconds, and
        back to back they would hold a core the probes need)."""
        gap = max(self.min_interval, RENDER_SHARE * self._took)
        return self._last + gap - time.monotonic()

    def request(self) -> None:
        """Ask for a render; many requests in a burst give one render."""
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _start(self, plan: Plan) -> ProcessPoolExecutor:
        """A new worker for `plan` (the daemon's now). Run on a thread: at 100,000
        services slimming the plan (`_page_config`) and pickling it for the new process take
        seconds that the event loop must not wait for."""
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(
                _page_config(plan.config),
                str(self.site_dir),
                str(self.db_path),
                os.getpid(),
            ),
        )
        pool.submit(int).result()  # the process starts (and the plan is sent) here
        if self._given_up:  # a stop came meanwhile and did not wait: nobody will use it
            pool.shutdown(wait=False, cancel_futures=True)
        return pool

    async def _run(self) -> None:
        from monitor.site.model import snapshot_from_pipeline

        loop = asyncio.get_running_loop()
        while self._dirty:
            wait = self.wait()
            if wait > 0 and not self._closing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._dirty = False
            at = self.clock.now()
            if self._not_before is not None and at < self._not_before:
                at = self._not_before
            snapshot = snapshot_from_pipeline(self.pipeline, at)
            notices = self.notices()
            self._last = time.monotonic()
            try:
                if self._pool is None:
                    plan = self.plan()
                    pool = await loop.run_in_executor(None, self._start, plan)
                    if self.plan() is not plan:  # reloaded meanwhile: start again
                        pool.shutdown(wait=False)
                        self._dirty = True
                        continue
                    self._pool = pool
                began = time.monotonic()
                seconds = await loop.run_in_executor(
                    self._pool, _worker_render, at, snapshot, notices
                )
                self._took = time.monotonic() - began
                self.renders += 1
                log.debug("site rendered in %.3f s to %s", seconds, self.site_dir)
            except BrokenProcessPool:
                log.error("the site render worker died; starting a new one")
                self._pool = None
            except Exception:
                log.exception("rendering the site failed")

    async def close(self, seconds: float = CLOSE_SECONDS) -> None:
        """Finish the render that is due (so the site shows the final state), then stop; a
        render that takes longer than `seconds` (100,000 services: tens of seconds) is given
        up and its worker ended. Publishing swaps a whole folder in at once, so the page left
        is the last one published, whole."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), seconds)
            except TimeoutError:
                log.warning(
                    "the page's last render did not finish within %.0f s at stop; the page "
                    "shows the render before it / 停止时最后一次页面生成未在时限内完成，"
                    "页面保持上一版",
                    seconds,
                )
                self._given_up = True
                self._task.cancel()
                self._end_workers()
        if self._pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
            self._pool = None

    def _end_workers(self) -> None:
        """Stop the worker process now, whatever it is doing."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError):
                process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)


def site_handler(site_dir: Path):
    """Serve the published site folder; the path is resolved per request, so a swap of the
    folder is seen at once, and nothing outside the folder is ever served. A path no file
    could have (a NUL byte, a name longer than the file system takes) is the client's
    error, answered 400 or 404, never an exception in the log."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        if "\x00" in tail:
            raise web.HTTPBadRequest(text="bad path / 路径无效")
        try:
            path = _resolve(os.path.realpath(site_dir), tail)
        except (OSError, ValueError):
            path = None
        if path is None:
            raise web.HTTPNotFound()
        if path.endswith(os.sep) and tail and not tail.endswith("/"):
            raise web.HTTPFound(f"/{tail}/")
        if path.endswith(os.sep):
            path = os.path.join(path, "index.html")
        if not os.path.isfile(path):
            raise web.HTTPNotFound()
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        kind = CONTENT_TYPES.get(os.path.splitext(path)[1])
        if kind:
            headers["Content-Type"] = kind
        return web.FileResponse(path, headers=headers)

    return handle


def _resolve(root: str, tail: str) -> str | None:
    """The file system path of `tail` inside `root` (a folder ends with the separator), or
    None when it would leave the folder."""
    path = os.path.realpath(os.path.join(root, tail))
    if path != root and not path.startswith(root + os.sep):
        return None
    return os.path.join(path, "") if os.path.isdir(path) else path


def build(
    site_dir: Path,
    db_path: Path,
    clock: Clock,
    plan: PlanSource,
    pipeline: Pipeline,
    notices: Callable[[], NoticesFile | None],
) -> tuple[SiteListener, Part]:
    """The site of a running monitor: a listener on the pipeline that holds the plan, the
    route that serves the folder (matched last), and a first render when the server starts."""
    listener = SiteListener(site_dir, db_path, clock, plan, pipeline, notices)

    async def first_render(_app: web.Application) -> None:
        listener.request()

    return listener, Part(
        listener=listener,
        plan_user=listener,
        routes=(("GET", "/{tail:.*}", site_handler(listener.site_dir)),),
        on_startup=(first_render,),
    )
