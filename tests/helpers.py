"""Shared test helpers: a local channel server in its own thread, a never-answering listener,
polling with a deadline, plans written and loaded from TOML, the monitor as a real process
(`python -m monitor ...`), and the rule for tools a test needs (fail in CI, skip elsewhere).

The channel server runs on its own event loop in a background thread, so the same server serves
synchronous tests (which call `asyncio.run` themselves), async tests and subprocesses alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from aiohttp import web
from servers import closed_port

from monitor.plan import Plan
from monitor.plan.load import load_config

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
#: The project's real plan (the 2022 Hubei cutover).
REAL_PLAN = ROOT / "channels.toml"
#: The command line of the monitor as a program.
MONITOR = (sys.executable, "-m", "monitor")
#: The keys of one service in the JSON of `plan` (and of `check`, which adds two).
PLAN_KEYS = frozenset(
    {
        "channel",
        "channel_name",
        "service",
        "service_name",
        "expected",
        "rule",
        "period",
        "in_grace",
        "next_change",
        "observed_by",
        "not_configured",
    }
)

#: The `[monitor]` table of a plan for a real `run` in a test: probes every second, incidents
#: after two observations, so a test sees them open and resolve within seconds.
FAST_MONITOR = """\
[monitor]
timezone = "Asia/Shanghai"
interval = "1s"
timeout = "2s"
failure_threshold = 2
success_threshold = 2
"""

SERVING_TEXT = "<html><body>业务办理 · online service</body></html>"
MAINTENANCE_TEXT = "<html><body>系统维护中，暂停办理 · under maintenance</body></html>"
#: A probe condition that tells the maintenance page apart from the normal one.
MAINTENANCE_PATTERN = "系统维护"

#: What the server answers, per path (or for every path without its own mode):
#: `serving` 200 normal page; `maintenance` 200 maintenance notice; `error` 503;
#: `hold` waits until `release()` (or the server stops) and then serves.
MODES = ("serving", "maintenance", "error", "hold")


class ChannelServer:
    """An aiohttp server on 127.0.0.1 (free port) whose answers the test switches at will."""

    def __init__(self) -> None:
        self.default = "serving"
        self.modes: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        #: POST requests as (path, headers, parsed JSON body), in arrival order: the server
        #: doubles as a webhook receiver that counts what it was sent.
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- control from the test --------------------------------------------------------------

    def set(self, mode: str, path: str | None = None) -> None:
        """Answer `path` (every path without its own mode when None) in `mode`."""
        assert mode in MODES, mode
        if path is None:
            self.default = mode
        else:
            self.modes[path] = mode

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hit_count(self, path: str | None = None) -> int:
        """Requests seen so far on `path` (on every path when None)."""
        with self._cond:
            return sum(self.hits.values()) if path is None else self.hits[path]

    def wait_hits(self, count: int, path: str | None = None, timeout: float = 10.0) -> int:
        """Block until `path` (any path when None) has had `count` requests; return the count."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = sum(self.hits.values()) if path is None else self.hits[path]
                if seen >= count:
                    return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{path or 'server'}: {seen} of {count} requests seen")
                self._cond.wait(left)

    def received(self, path: str | None = None) -> list[Any]:
        """The JSON bodies POSTed to `path` (to any path when None), in arrival order."""
        with self._cond:
            return [body for where, _, body in self.posts if path is None or where == path]

    def release(self) -> None:
        """Let every request held in `hold` mode answer (and later ones pass at once)."""
        if self._loop is not None and self._gate is not None:
            self._loop.call_soon_threadsafe(self._gate.set)

    # --- the server ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        if request.method == "POST":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", errors="replace")
            with self._cond:
                self.posts.append((path, dict(request.headers), body))
                self._cond.notify_all()
        with self._cond:
            self.hits[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._cond.notify_all()
        try:
            mode = self.modes.get(path, self.default)
            if mode == "hold":
                assert self._gate is not None
                await self._gate.wait()
                mode = "serving"
        finally:
            with self._cond:
                self.in_flight -= 1
        if mode == "maintenance":
            return web.Response(text=MAINTENANCE_TEXT, content_type="text/html")
        if mode == "error":
            return web.Response(status=503, text="unavailable")
        return web.Response(text=SERVING_TEXT, content_type="text/html")

    async def _start(self) -> None:
        self._gate = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> ChannelServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            loop.close()

        self._thread = threading.Thread(target=main, name="channel-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the channel server did not start within 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the channel server did not stop"
        self._thread = None

    def __enter__(self) -> ChannelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def silent_listener() -> Iterator[str]:
    """A port that accepts connections (in the kernel's backlog) and never answers: its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        sock.close()


def _mount(*args: str) -> None:
    """`mount ARGS`; skips the test (with the reason) where the machine does not allow it
    (not root, no mount namespace), whatever CI says: nothing can be installed to fix that."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting is not permitted here: {done.stderr.strip() or done.returncode}")


@contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (made if missing) for the test, unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_readonly(path: Path) -> None:
    """Make a mount point read-only (for root too, unlike chmod)."""
    _mount("-o", "remount,ro", str(path))


@contextmanager
def readonly_file(path: Path) -> Iterator[Path]:
    """`path` bind-mounted read-only over itself: the file refuses writes, its folder not."""
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _give_up_after(deadline: float, timeout: float, what: object) -> None:
    """Fail the wait once `deadline` (a `time.monotonic()` value) has passed."""
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for(
    check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        _give_up_after(deadline, timeout, what or check)
        time.sleep(interval)
    return value


async def async_wait_for(
    check: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """`wait_for` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        _give_up_after(deadline, timeout, what or check)
        await asyncio.sleep(interval)
    return value


def query(db: str | os.PathLike, sql: str, *params: object) -> list[tuple]:
    """Run one statement on its own short-lived connection (committed) and return the rows."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_rows(db: str | os.PathLike, sql: str) -> list[tuple]:
    """`query` on a store another process writes: no rows while its tables are not there yet."""
    try:
        return query(db, sql)
    except sqlite3.OperationalError:  # the file or its tables are not there yet
        return []


# --- TOML ------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are TOML basic-string escapes
    if isinstance(value, datetime | date | clock_time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(data: dict, path: list[str], out: list[str]) -> None:
    subtables = []
    for name, value in data.items():
        if isinstance(value, dict) or _is_table_array(value):
            subtables.append((name, value))
        else:
            out.append(f"{_key(name)} = {_value(value)}")
    for name, value in subtables:
        full = [*path, _key(name)]
        if isinstance(value, dict):
            out.append(f"\n[{'.'.join(full)}]")
            _table(value, full, out)
        else:
            for item in value:
                out.append(f"\n[[{'.'.join(full)}]]")
                _table(item, full, out)


def dump_toml(data: dict) -> str:
    """Write parsed TOML (dicts, lists, strings, numbers, dates) back as TOML text."""
    out: list[str] = []
    _table(data, [], out)
    return "\n".join(out).lstrip("\n") + "\n"


# --- plans -----------------------------------------------------------------------------------


def write_plan(path: Path, plan: str | dict) -> Path:
    """Write a plan file, TOML text as it is or parsed TOML through `dump_toml`; its path."""
    path.write_text(plan if isinstance(plan, str) else dump_toml(plan), encoding="utf-8")
    return path


def load_plan(path: Path, plan: str | dict) -> Plan:
    """Write a plan file (`write_plan`) and load it as the monitor does."""
    return Plan(load_config(write_plan(path, plan)))


def real_plan() -> Plan:
    """The project's real plan, loaded."""
    return Plan(load_config(REAL_PLAN))


# --- tools and processes ---------------------------------------------------------------------


def missing(reason: str) -> NoReturn:
    """Something a test needs is not installed: fail in CI (CI=true), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


def require_binary(*names: str, package: str) -> str:
    """The path of the first of `names` on PATH (a tool from the Debian `package`)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    missing(f"{names[0]} not found (Debian package {package}; .ci/run installs it)")


def python_m(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m monitor ARGS` run to its end, its output captured as text."""
    return subprocess.run(
        [*MONITOR, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


class MonitorRun(subprocess.Popen):
    """`python -m monitor run` as a real process on a free port of 127.0.0.1, its output
    (stdout and stderr) appended to `log`."""

    def __init__(
        self,
        config: Path,
        db: Path,
        log: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ):
        self.port = closed_port()
        self.log = log
        listen = f"127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            super().__init__(
                [
                    *MONITOR,
                    "run",
                    "--config",
                    str(config),
                    "--db",
                    str(db),
                    "--listen",
                    listen,
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=config.parent,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def healthz(self) -> tuple[int, dict] | None:
        """/healthz: its status and body, None while nothing answers; fails if the run ended."""
        if self.poll() is not None:
            raise AssertionError(f"run exited with {self.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status, json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def wait_ticking(self) -> dict:
        """Wait for /healthz to answer with a tick age; return its body."""
        status, body = wait_for(
            lambda: (h := self.healthz()) and h[1]["last_tick_age_seconds"] is not None and h,
            timeout=30,
            what="/healthz with a tick",
        )
        assert status == 200
        return body

    def stop(self, within: float = 5.0) -> int:
        """SIGTERM; the exit code, which must come within `within` seconds."""
        self.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            code = self.wait(timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"run did not exit within {within} s after SIGTERM") from None
        assert time.monotonic() - started < within
        return code
