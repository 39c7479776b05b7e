"""Host name lookups on a pool of their own: hung name servers for a few channels never hold
back the probes of every other target named by host."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import ChannelServer
from test_scheduler import CHANNEL, HEAD, Running, service

from monitor.net import resolver


def hanging_names(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> list[str]:
    """`getaddrinfo` of names starting with `hung` blocks until `release` (as a resolver
    whose name servers drop the queries), then fails; the names asked are recorded. Asked for
    a numeric address only (`AI_NUMERICHOST`), it answers at once, as a resolver does."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if (args[4] if len(args) > 4 else kwargs.get("flags", 0)) & socket.AI_NUMERICHOST:
            return real(host, *args, **kwargs)
        asked.append(str(host))
        if str(host).startswith("hung"):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


async def test_hung_lookups_of_forty_names_do_not_hold_back_a_healthy_named_target(
    tmp_path: Path, server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty services on names whose lookups hang (the loop's default executor has at most
    32 threads, six on two cores) and one healthy target named `localhost`: it is judged
    serving within its 2 s timeout while the forty still wait."""
    release = threading.Event()
    asked = hanging_names(monkeypatch, release)
    toml = HEAD + CHANNEL
    toml += "".join(service(f"h{i}", f"http://hung{i}.example/") for i in range(40))
    toml += service("ok", server.url("/ok").replace("127.0.0.1", "localhost"))
    running = Running(tmp_path, toml)
    try:
        hung = [ref for ref in running.plan.services if ref.service.id != "ok"]
        (healthy,) = [ref for ref in running.plan.services if ref.service.id == "ok"]
        waiting = [asyncio.create_task(running.pipeline.probe(ref)) for ref in hung]
        async with asyncio.timeout(10):  # the hung lookups are under way first
            while len(asked) < 30:
                await asyncio.sleep(0.01)
        result = await running.pipeline.probe(healthy)
        assert result is not None and result.observation.serving, result
        assert not any(task.done() for task in waiting)
    finally:
        release.set()
        await asyncio.gather(*waiting, return_exceptions=True)
        await running.close()


async def test_lookups_of_one_name_at_once_share_one_thread_and_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    asked = hanging_names(monkeypatch, release)
    lookups = [asyncio.create_task(resolver.getaddrinfo("hung.example", 80)) for _ in range(20)]
    try:
        async with asyncio.timeout(10):
            while not asked:
                await asyncio.sleep(0.01)
        lookups[0].cancel()  # one probe's timeout does not end the lookup of the others
        release.set()
        results = await asyncio.gather(*lookups, return_exceptions=True)
    finally:
        release.set()
    assert asked == ["hung.example"], "one lookup for twenty probes"
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, socket.gaierror) for r in results[1:])
    assert not resolver._under_way, "nothing is kept once the lookup is done"


async def test_hung_lookups_each_get_a_thread_when_the_pool_has_idle_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Threads left idle by earlier lookups are woken for new ones, and more are started
    while lookups wait: an idle thread, woken but not yet running, was counted as free for
    every lookup asked in the same turn, and forty hung names then waited on one thread."""
    await asyncio.gather(*(resolver.getaddrinfo("localhost", port) for port in range(3)))
    release = threading.Event()
    asked = hanging_names(monkeypatch, release)
    lookups = [asyncio.create_task(resolver.getaddrinfo(f"hung{i}.example", 80)) for i in range(10)]
    try:
        async with asyncio.timeout(10):
            while len(asked) < 10:
                await asyncio.sleep(0.01)
    finally:
        release.set()
        await asyncio.gather(*lookups, return_exceptions=True)
    assert sorted(asked) == sorted(f"hung{i}.example" for i in range(10))


HUNG_AT_EXIT = """
import asyncio, socket, time
import uvloop
from monitor.net import resolver

def getaddrinfo(host, *args, **kwargs):
    time.sleep(120)  # a name server that never answers, for longer than any stop may take

socket.getaddrinfo = getaddrinfo

async def main():
    lookup = asyncio.create_task(resolver.getaddrinfo("hung.example", 80))
    while resolver._pool.started == 0:
        await asyncio.sleep(0.01)
    lookup.cancel()  # the probe's timeout

uvloop.run(main())
print("done", flush=True)
"""


def test_a_hung_lookup_does_not_hold_up_the_exit_of_the_process() -> None:
    """A pool of `concurrent.futures` joins its threads at exit: `run` stopped by SIGTERM
    waited for a hung lookup as long as the resolver took (20 s in a trial)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HUNG_AT_EXIT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    assert time.monotonic() - started < 30, "the process waited for the hung lookup"


async def test_a_thread_that_cannot_be_started_is_not_counted_and_the_lookup_waits_its_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`can't start new thread` (a process at its limit): the lookup is queued for the
    threads there are, and the next lookup tries to start one again."""
    pool = resolver._Pool(2)
    real_start = threading.Thread.start
    refused = {"left": 1}

    def start(self: threading.Thread) -> None:
        if refused["left"]:
            refused["left"] -= 1
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    loop = asyncio.get_running_loop()
    first = pool.submit(loop, ("localhost", 80))
    assert pool.started == 0
    second = pool.submit(loop, ("localhost", 81))
    assert pool.started == 1
    async with asyncio.timeout(10):
        assert await first and await second


def test_the_loop_of_run_looks_up_every_clients_names_on_the_pool(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp (Prometheus queries) and httpx (alert sinks) ask `loop.getaddrinfo`; under
    uvloop that ran on libuv's four threads, where four hung lookups for a sink would hold back
    every query by host name. On the loop of `run` forty hung names (a sink whose name servers
    drop queries, retried) hold back neither a query nor a sink on `localhost`."""
    import aiohttp

    from monitor.alerts.sender import new_client
    from monitor.cli import loop_factory

    release = threading.Event()
    asked = hanging_names(monkeypatch, release)
    url = server.url("/ok").replace("127.0.0.1", "localhost")

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        hung = [
            asyncio.create_task(loop.getaddrinfo(f"hung{i}.example", 443, type=socket.SOCK_STREAM))
            for i in range(40)
        ]
        try:
            async with asyncio.timeout(10):  # the hung lookups are under way first
                while len(asked) < 30:
                    await asyncio.sleep(0.01)
            async with asyncio.timeout(10):
                async with new_client() as client:
                    sink = (await client.get(url)).status_code
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    query = response.status
            assert not any(task.done() for task in hung)
            return sink, query
        finally:
            release.set()
            await asyncio.gather(*hung, return_exceptions=True)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        assert runner.run(main()) == (200, 200)


def test_on_the_loop_of_run_a_query_to_an_address_waits_for_no_lookup(
    server: ChannelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp connects with `loop.sock_connect`, which under uvloop asks `loop.getaddrinfo`
    for the address it already has; uvloop answered an IP address at once, but the pool queued
    it behind the hung names: with every thread of the pool held (a name server that is down
    hangs every name), a Prometheus query to 127.0.0.1 waited for them too."""
    import aiohttp

    from monitor.cli import loop_factory

    release = threading.Event()
    asked = hanging_names(monkeypatch, release)
    monkeypatch.setattr(resolver, "_pool", resolver._Pool(2))  # `THREADS` hung names, in small

    async def main() -> int:
        loop = asyncio.get_running_loop()
        hung = [asyncio.create_task(loop.getaddrinfo(f"hung{i}.example", 443)) for i in range(2)]
        try:
            async with asyncio.timeout(10):  # every thread of the pool is held first
                while len(asked) < 2:
                    await asyncio.sleep(0.01)
            async with (
                asyncio.timeout(10),
                aiohttp.ClientSession() as session,
                session.get(server.url("/ok")) as response,
            ):
                status = response.status
            assert not any(task.done() for task in hung)
            return status
        finally:
            release.set()
            await asyncio.gather(*hung, return_exceptions=True)

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        assert runner.run(main()) == 200
