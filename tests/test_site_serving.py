"""The site handler against odd request paths, sent as raw bytes (a client library would tidy
them): each gets a 4xx answer, nothing outside the site folder is served, nothing is logged as
an exception."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from helpers import FAST_MONITOR, MonitorRun, wait_for
from servers import HOST, aiohttp_server

from monitor.site import site_handler

ODD_PATHS = [
    "/index.html%00",
    "/%00",
    "/en/%00/index.html",
    "/..%2f..%2fetc%2fpasswd",
    "/%2e%2e%2fsecret.db",
    "/%2e%2e/secret.db",
    "/../secret.db",
    "/en/../../secret.db",
    "/%5c..%5csecret.db",
    "//etc/passwd",
    "/" + "a" * 300,
    "/" + "a/" * 2000,
    "/" + "%ff%fe" * 20,
    "/index.html%2f..%2f..%2fsecret.db",
]


async def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """Send `GET target` exactly as written; the status code and the body."""
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "en").mkdir(parents=True)
    (site / "index.html").write_text("<p>home</p>", "utf-8")
    (site / "en" / "index.html").write_text("<p>en</p>", "utf-8")
    (tmp_path / "secret.db").write_text("not for the public", "utf-8")
    return site


async def test_odd_paths_get_4xx_without_a_traceback(
    site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", site_handler(site))
    caplog.set_level(logging.DEBUG)
    async with aiohttp_server(app) as base:
        assert await raw_get(base, "/") == (200, b"<p>home</p>")
        assert (await raw_get(base, "/en/"))[0] == 200
        for target in ODD_PATHS:
            status, body = await raw_get(base, target)
            assert 400 <= status < 500, (target, status)
            assert b"not for the public" not in body
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == [], [r.getMessage() for r in logged]
    assert "Traceback" not in caplog.text


def _served_services(port: int) -> set[str] | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/status.json", timeout=10) as answer:
            return {s["service"] for s in json.loads(answer.read())["services"]}
    except (OSError, ValueError):
        return None


def test_the_render_worker_takes_up_a_reloaded_plan(tmp_path: Path) -> None:
    """The render worker is started on a thread with the plan of its moment; an edit of the
    plan starts a new one, and the served site shows the edited plan."""
    plan = tmp_path / "channels.toml"
    head = FAST_MONITOR + '\n[[channels]]\nid = "hall"\nname = "大厅"\nkind = "offline"\n'
    head += 'group = "offline"\n'

    def service(sid: str) -> str:
        return f'\n[[channels.services]]\nid = "{sid}"\nname = "业务 {sid}"\n'

    plan.write_text(head + service("a"), encoding="utf-8")
    run = MonitorRun(plan, tmp_path / "monitor.db", tmp_path / "run.log")
    try:
        wait_for(lambda: _served_services(run.port) == {"a"}, 60, what="the first render")
        fresh = plan.with_suffix(".new")
        fresh.write_text(head + service("a") + service("b"), encoding="utf-8")
        fresh.replace(plan)
        wait_for(lambda: _served_services(run.port) == {"a", "b"}, 60, what="the edited plan")
    finally:
        run.terminate()
        run.wait(30)
    assert "Traceback" not in run.output(), run.output()


async def test_a_stop_does_not_wait_long_for_a_render(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At 100,000 services a render takes tens of seconds; a stop waits for it only so long,
    then ends the worker: the page left is the last one published, whole (or none yet)."""
    from helpers import load_plan

    from monitor.daemon import Daemon

    head = FAST_MONITOR + '\n[[channels]]\nid = "hall"\nname = "大厅"\nkind = "offline"\n'
    head += 'group = "offline"\n\n[[channels.services]]\nid = "a"\nname = "业务"\n'
    plan = load_plan(tmp_path / "channels.toml", head)
    daemon = Daemon(plan, db_path=tmp_path / "monitor.db", site_dir=tmp_path / "site", port=0)
    listener = next(part for part in daemon.listeners if hasattr(part, "renders"))
    listener.request()  # the first render starts a worker process: well over 10 ms
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        await listener.close(seconds=0.01)
    assert "did not finish" in caplog.text
    assert listener._pool is None and listener.renders == 0
    site = tmp_path / "site"
    assert not site.exists() or (site / ".channel-monitor-site").is_file()
    daemon.store.close()


def test_renders_are_spaced_by_their_own_length(tmp_path: Path) -> None:
    """A render of 10 s is followed by the next no sooner than 20 s after it began; quick ones
    by `min_interval`."""
    import time

    from helpers import load_plan

    from monitor.daemon import Daemon

    head = FAST_MONITOR + '\n[[channels]]\nid = "hall"\nname = "大厅"\nkind = "offline"\n'
    head += 'group = "offline"\n\n[[channels.services]]\nid = "a"\nname = "业务"\n'
    daemon = Daemon(
        load_plan(tmp_path / "channels.toml", head),
        db_path=tmp_path / "monitor.db",
        site_dir=tmp_path / "site",
        port=0,
    )
    try:
        listener = next(part for part in daemon.listeners if hasattr(part, "renders"))
        listener._last = time.monotonic()
        listener._took = 0.1
        assert listener.wait() <= listener.min_interval
        listener._took = 10.0
        assert 19 < listener.wait() <= 20
    finally:
        daemon.store.close()


def test_the_monitors_snapshot_is_nothing_for_the_collector_to_walk() -> None:
    """The monitor's snapshot for a render holds plain tuples (untracked by the collector: at
    100,000 services the `Seen` objects were walked by every full collection while a render
    took); the worker gets `Seen` back, equal to what it got before."""
    import gc
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from monitor.judge import ServiceState, Verdict
    from monitor.site.model import Seen, snapshot_from_pipeline, with_seen

    at = datetime(2022, 7, 1, 2, 0, tzinfo=UTC)
    pipeline = SimpleNamespace(
        plan=SimpleNamespace(services=[]),
        states={
            ("portal", "pension"): ServiceState(last_at=at, last_serving=True, last_reason="ok"),
            ("portal", "card"): ServiceState(),
        },
        verdict=lambda ref, now: Verdict.OK,
    )
    snapshot = snapshot_from_pipeline(pipeline, at)
    gc.collect(0)
    assert not any(gc.is_tracked(value) for value in snapshot.seen.values())
    assert with_seen(snapshot).seen == {("portal", "pension"): Seen(at, True, "ok")}
    assert with_seen(with_seen(snapshot)) == with_seen(snapshot)
