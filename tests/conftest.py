"""Fixtures shared by the test modules (their helpers live in helpers.py and servers.py)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator, Mapping

import pytest
from helpers import ChannelServer


@pytest.fixture
def server() -> Iterator[ChannelServer]:
    """A local channel server for the test, serving the normal page until told otherwise."""
    with ChannelServer() as server:
        yield server


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Every process a test starts; all are killed in teardown, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


#: Test modules whose every test runs on asyncio's own loop and on uvloop, the loop `run` uses:
#: the probe's client is built on the loop's transports, and the two raise TLS and connection
#: errors through different code.
BOTH_LOOPS = ("test_probe.py", "test_json_probe.py", "test_tls.py", "test_probe_wire.py")


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in BOTH_LOOPS:
        import uvloop

        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
