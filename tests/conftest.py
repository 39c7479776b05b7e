"""Fixtures shared by the test modules (their helpers live in helpers.py and servers.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

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
