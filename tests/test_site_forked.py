"""`channel-monitor render` makes its pages in a forked helper process (`site/forked.py`): the
site is byte for byte the one process's, a helper that fails leaves its share to the parent, and
no helper outlives the render."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import python_m, write_plan
from site_data import DURING_LATE, fill_history, large_plan, large_plan_data

from monitor.judge import Verdict
from monitor.site import forked as forked_module
from monitor.site import render as render_module
from monitor.site.forked import Forked, ForkFailed
from monitor.site.model import Snapshot, build
from monitor.site.render import files, iter_files, open_store, render_from

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")


@pytest.fixture(scope="module")
def model():
    """A plan of channel pages (4 channels of 40) with a day of history and a broken service."""
    plan = large_plan(4, 40)
    return build(plan, DURING_LATE, Snapshot({ref.key: Verdict.OK for ref in plan.services}),
                 render_module.history.load(plan, None, DURING_LATE), None)  # fmt: skip


def _with_helper(model) -> dict[str, bytes]:
    return {
        name: data if isinstance(data, bytes) else b"".join(data)
        for name, data in iter_files(model, helper=True)
    }


def _gone(pid: int) -> bool:
    """Whether the process `pid` was already reaped (no zombie, nothing running)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_a_render_with_a_helper_gives_the_files_of_one_process(monkeypatch, model) -> None:
    """Every file, and the pages the helper made came from another process."""
    monkeypatch.setattr(render_module, "available", lambda: True)
    pages = render_module._pages
    made_by_helper = {name for name, _ in pages(model)}

    def noted(model, cache=None) -> Iterator[tuple[str, bytes]]:
        for name, data in pages(model, cache):
            yield name, data + f"<!--{os.getpid()}-->".encode()  # which process made it

    monkeypatch.setattr(render_module, "_pages", noted)
    alone = files(model)
    helped = _with_helper(model)
    assert set(helped) == set(alone) and len(helped) > 100
    pids = set()
    for name, data in helped.items():
        if name in made_by_helper:
            body, _, mark = data.rpartition(b"<!--")
            pids.add(int(mark[:-3]))
            assert body == alone[name].rpartition(b"<!--")[0], name
        else:
            assert data == alone[name], name
    assert len(made_by_helper) == 2 + 8 + 2  # the summary, the channel pages, the feeds
    assert pids and os.getpid() not in pids  # made by a helper, not here
    for pid in pids:
        assert _gone(pid)  # reaped


def test_the_render_command_publishes_the_same_site_with_a_helper(
    monkeypatch, tmp_path: Path
) -> None:
    plan = large_plan(4, 40)
    db = tmp_path / "monitor.db"
    fill_history(plan, db, DURING_LATE, days=2)
    monkeypatch.setattr(render_module, "available", lambda: False)
    alone = render_from(plan, tmp_path / "alone", DURING_LATE, db)
    monkeypatch.setattr(render_module, "available", lambda: True)
    helped = render_from(plan, tmp_path / "helped", DURING_LATE, db)
    assert helped.files == alone.files  # names and sizes
    for name in alone.files:
        assert (tmp_path / "helped" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
    assert not (tmp_path / ".helped.render").exists()


@pytest.mark.parametrize("how", ["raises", "exits", "killed"])
def test_a_helper_that_stops_short_leaves_its_share_to_the_parent(
    monkeypatch, caplog, model, how: str
) -> None:
    monkeypatch.setattr(render_module, "available", lambda: True)
    parent = os.getpid()
    pages = render_module._pages

    def short(model, cache=None) -> Iterator[tuple[str, bytes]]:
        for number, pair in enumerate(pages(model, cache)):
            if os.getpid() != parent and number == 3:
                if how == "raises":
                    raise RuntimeError("a page could not be made")
                if how == "exits":
                    os._exit(0)  # without the end mark
                os.kill(os.getpid(), 9)
            yield pair

    monkeypatch.setattr(render_module, "_pages", short)
    alone = files(model)
    with caplog.at_level(logging.WARNING, logger="monitor.site.render"):
        helped = _with_helper(model)
    assert helped == alone
    assert "making the rest here" in caplog.text


def test_no_process_to_fork_makes_every_file_here(monkeypatch, caplog, model) -> None:
    monkeypatch.setattr(render_module, "available", lambda: True)

    def refused() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(forked_module.os, "fork", refused)
    with caplog.at_level(logging.WARNING, logger="monitor.site.render"):
        assert _with_helper(model) == files(model)
    assert "no helper process" in caplog.text


def _endless() -> Iterator[tuple[str, bytes]]:
    number = 0
    while number < 10_000_000:  # bounded: the pipe fills long before
        yield f"f{number}", b"x" * 4096
        number += 1


def test_leaving_early_kills_and_reaps_the_helper() -> None:
    """A render that fails (a disk full while publishing) leaves no process behind."""
    started = time.monotonic()
    with Forked(_endless) as helper:
        pid = helper.pid
        taken = helper.rest()
        assert next(taken)[0] == "f0"
    assert _gone(pid)
    assert time.monotonic() - started < 30  # generous: no wait for the endless child


def test_what_is_held_is_capped_while_the_parent_is_busy(monkeypatch) -> None:
    """The child runs ahead of the parent only by `HELD` bytes (and a file and the pipe)."""
    monkeypatch.setattr(forked_module, "HELD", 200_000)
    sent = [(f"p{n}", bytes([n]) * 100_000) for n in range(60)]  # 6 MB, the pipe 1 MB
    with Forked(lambda: iter(sent)) as helper:
        deadline = time.monotonic() + 30
        while helper._held <= forked_module.HELD and time.monotonic() < deadline:
            time.sleep(0.01)  # polled: the reader is to reach its cap while nothing is taken
        got = list(helper.rest())
    assert got == sent
    assert helper.most_held <= 200_000 + 100_000


def test_a_child_that_raises_gives_fork_failed_after_what_it_sent() -> None:
    def two_then_fail() -> Iterator[tuple[str, bytes]]:
        yield "a", b"1"
        yield "b", b""  # an empty file is a file, not the end mark
        raise ValueError("no more")

    with Forked(two_then_fail) as helper:
        got = []
        with pytest.raises(ForkFailed):
            for pair in helper.rest():
                got.append(pair)
    assert got == [("a", b"1"), ("b", b"")]


def test_the_render_from_an_existing_store_is_unchanged(tmp_path: Path, monkeypatch) -> None:
    """The store the parent reads stays usable after the helper exits (the child never closes
    or finalises what it inherited)."""
    plan = large_plan(4, 40)
    db = tmp_path / "monitor.db"
    fill_history(plan, db, DURING_LATE, days=1)
    monkeypatch.setattr(render_module, "available", lambda: True)
    store = open_store(db)
    try:
        first = render_module.render(plan, tmp_path / "site", DURING_LATE, store, helper=True)
        again = render_module.render(plan, tmp_path / "site", DURING_LATE, store, helper=True)
        assert first.files == again.files
    finally:
        store.close()


def test_the_render_command_as_a_process_says_what_it_wrote_and_ends(tmp_path: Path) -> None:
    """`render` leaves the process at once when done (`cli._leave`): its line is still
    printed whole and the site is published, with nothing beside it."""
    config = write_plan(tmp_path / "channels.toml", large_plan_data(4, 40))
    site = tmp_path / "site"
    done = python_m("render", "--config", str(config), "--site", str(site),
                    "--at", DURING_LATE.isoformat())  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = [p for p in site.rglob("*") if p.is_file() and p.name != ".channel-monitor-site"]
    assert len(written) == 160 + 8 + 15  # badges, channel pages, the rest
    assert done.stdout.startswith(f"{site}: {len(written)} files as of "), done.stdout
    assert done.stdout.endswith(f"(no store at {tmp_path / 'monitor.db'}: no history yet)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channels.toml", "site"]
