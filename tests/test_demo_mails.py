"""The demo's subscribers: a whole replay mails the made-up addresses through the demo's own
relay on 127.0.0.1, paused at the freeze's start and reopened at its end, and lists the mails at
the end, one line each; a plan's own `[subscriptions]` relay is never used."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from datetime import timedelta
from pathlib import Path

from helpers import REAL_PLAN as PLAN
from helpers import closed_port

from monitor.demo.mails import PEOPLE, choices
from monitor.demo.replay import Cadence
from monitor.demo.run import REPLAY_END, REPLAY_START, DemoOptions, run_demo
from monitor.plan import Plan
from monitor.plan.load import load_config


def test_the_services_offered_change_at_the_freezes_start_first() -> None:
    plan = Plan(load_config(PLAN))
    offered = choices(plan, REPLAY_START, REPLAY_END)
    assert len(offered) >= sum(count for _, _, count in PEOPLE)
    first = offered[0]
    ref = plan.service(*first.split("/"))
    changes = [
        t for t in plan.transitions(REPLAY_START, REPLAY_END) if (t.channel, t.service) == ref.key
    ]
    assert [t.to_state for t in changes][:1] == ["down"], "paused first, at the freeze's start"
    assert len(changes) <= 2


def test_the_demo_shows_the_mails_it_sent(tmp_path: Path) -> None:
    config = load_config(PLAN)
    options = DemoOptions(
        config,
        tmp_path / "site",
        tmp_path / "demo.db",
        "127.0.0.1",
        closed_port(),
        False,
        False,
        Cadence(quiet=timedelta(hours=6)),
    )
    story = io.StringIO()
    with contextlib.redirect_stdout(story):
        asyncio.run(run_demo(options))
    text = story.getvalue()
    _, _, listed = text.partition("mails to the demo's subscribers")
    assert listed, text[-2000:]
    lines = list(itertools.takewhile(lambda x: x.startswith("  "), listed.splitlines()[1:]))
    addresses = {address for address, _, _ in PEOPLE}
    assert lines and all(line.split()[0] in addresses for line in lines)
    assert any("【暂停】" in line for line in lines), lines
    assert any("【恢复】" in line for line in lines), lines
    assert any("[paused]" in line for line in lines) and any("[reopened]" in line for line in lines)
    assert int(listed.splitlines()[0].rsplit(": ", 1)[1]) == len(lines)
