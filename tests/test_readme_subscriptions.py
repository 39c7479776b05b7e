"""The README's "Subscriptions" section says what the code does: its `[subscriptions]` table
validates as written, every command it shows is one the command line takes, and the limits it
names are the API's own numbers."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from helpers import ROOT, load_plan

from monitor.cli import build_parser
from monitor.subscriptions import api
from monitor.subscriptions.keys import ENV

BASE = (
    '[[channels]]\nid = "c"\nname = "渠道"\nkind = "web"\ngroup = "online"\n\n'
    '[[channels.services]]\nid = "s"\nname = "业务"\n\n'
)


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Subscriptions")
    return text[start : text.index("\n## ", start + 1)]


def test_the_table_validates_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", "monitor")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    (block,) = re.findall(r"```toml\n(.*?)```", section(), flags=re.S)
    settings = load_plan(tmp_path / "plan.toml", BASE + block).config.subscriptions
    assert settings is not None
    assert (settings.host, settings.port, settings.security) == (
        "relay.example.gov.cn",
        587,
        "starttls",
    )
    assert settings.username == "monitor" and settings.password == "secret"


def test_every_command_shown_is_taken_by_the_command_line() -> None:
    text = section()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            inner = re.search(r"\$\((channel-monitor [^)]*)\)", line)
            commands.append(inner.group(1) if inner else line)
    assert f"export {ENV}=" in blocks[0]
    assert len(commands) == 5
    parser = build_parser()
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["channel-monitor", "subscription"], command
        args = parser.parse_args(words[1:])
        assert args.subscription_command in {"key", "list", "export", "delete", "add"}


def test_the_limits_named_are_the_apis() -> None:
    text = " ".join(section().split())
    client, address = api.Limiter(10, 600.0), api.Limiter(3, 3600.0)
    made = api.Api(None, None, None, lambda: None)  # type: ignore[arg-type]
    assert (made.per_client.count, made.per_client.window) == (client.count, client.window)
    assert (made.per_address.count, made.per_address.window) == (address.count, address.window)
    assert "subscribe 10 times in 10 minutes" in text and "3 times an hour" in text
    assert f"at most {api.PENDING_CAP:,} unconfirmed addresses" in text
    assert f"a body over {api.MAX_BODY // 1024} KB is refused (413)" in text
    assert f"within {api.EXPIRES / 3600:.0f} hours" in text
