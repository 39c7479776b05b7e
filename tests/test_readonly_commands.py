"""The commands that only read the store (`render`, `notice add`, `report`) leave its folder as
they found it: no `-wal` or `-shm` beside a store no writer holds, and, while a `run` writes it,
they still read what it committed and leave the writer's own files to the writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import load_plan

from monitor.cli import main
from monitor.observation import Observation
from monitor.plan import Plan
from monitor.store import PendingObservation, Store, StoreReader

SHANGHAI = ZoneInfo("Asia/Shanghai")
PLAN: dict = {
    "monitor": {"timezone": "Asia/Shanghai", "interval": "10m", "grace": "5m"},
    "periods": {"freeze": {"start": datetime(2022, 7, 1, 10), "end": datetime(2022, 7, 1, 12)}},
    "channels": [
        {
            "id": "portal",
            "name": "政务服务网",
            "name_en": "Government portal",
            "kind": "web",
            "group": "online",
            "services": [
                {
                    "id": "pension",
                    "name": "养老保险",
                    "name_en": "Pension",
                    "expect": [{"during": "freeze", "state": "down"}],
                    "probe": {"url": "https://example.gov.cn/pension"},
                }
            ],
        }
    ],
}


def store_one(store: Store, plan: Plan, at: datetime) -> None:
    """One observation of the pension service, written and flushed as `run` writes it."""
    ref = plan.service("portal", "pension")
    seen = Observation(at=at, serving=True, reason="HTTP 200", status_code=200)
    store.add(PendingObservation(*ref.key, seen, plan.expected(ref, at).state, None))
    store.flush()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Plan, Path]]:
    plan = load_plan(tmp_path / "channels.toml", PLAN)
    store = Store(tmp_path / "monitor.db")
    try:
        store_one(store, plan, datetime(2022, 7, 1, 9, tzinfo=SHANGHAI))
    finally:
        store.close()
    yield plan, tmp_path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("monitor.db"))


#: What the store last holds of the service: changes with every observation it takes.
LATEST = "SELECT sum(count), max(until) FROM observations"

COMMANDS = {
    "render": ["render", "--at", "2022-07-01T09:30"],
    "notice add": ["notice", "add", "--id", "slow", "--title", "缓慢", "--title-en", "Slow"],
    "report": ["report", "--format", "csv"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_command_leaves_the_folder_as_it_was(
    home: tuple[Plan, Path], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder = home
    before = listing(folder)
    assert "monitor.db-wal" not in before and "monitor.db-shm" not in before
    assert main([*COMMANDS[command], "--config", str(folder / "channels.toml")]) == 0
    capsys.readouterr()
    assert listing(folder) == before


def test_while_a_writer_holds_the_store_a_reader_sees_its_commits_and_leaves_its_files(
    home: tuple[Plan, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    plan, folder = home
    db = folder / "monitor.db"
    writer = Store(db)
    try:
        store_one(writer, plan, datetime(2022, 7, 1, 9, 10, tzinfo=SHANGHAI))
        held = listing(folder)
        assert "monitor.db-wal" in held  # the writer's, for as long as it holds the store
        reader = StoreReader(db, leave_no_files=True)
        try:
            before = reader.db.execute(LATEST).fetchall()
            store_one(writer, plan, datetime(2022, 7, 1, 9, 50, tzinfo=SHANGHAI))
            # a commit made after the reader opened is read too: the WAL protocol, not a
            # snapshot of the main file that believes it never changes
            after = reader.db.execute(LATEST).fetchall()
            assert after != before
            assert after == sqlite3.connect(db).execute(LATEST).fetchall()
        finally:
            reader.close()
        assert (
            main(["render", "--at", "2022-07-01T09:30", "--config", str(folder / "channels.toml")])
            == 0
        )
        capsys.readouterr()
        assert listing(folder) == held  # the writer's files stay while it writes
        store_one(writer, plan, datetime(2022, 7, 1, 9, 40, tzinfo=SHANGHAI))  # still writes
    finally:
        writer.close()
    assert "monitor.db-wal" not in listing(folder)
