"""The README is part of the product: its example plan must validate as written."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ROOT, load_plan


def test_readme_example_plan_validates(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert blocks, "the README shows an example plan"
    plan = load_plan(tmp_path / "example.toml", blocks[0])
    ref = plan.service("hubei-zwfw", "certificate-print")
    assert ref.service.probe is not None
    assert [r.during for r in ref.service.expect] == ["freeze", "certificate-window"]


def test_readme_names_the_two_setup_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e . && channel-monitor demo" in text
    assert "pip install -e '.[test]' && python3 -m pytest -q" in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python3 -m pytest -q" in ci
