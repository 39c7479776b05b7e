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


def test_readme_examples_of_each_kind_validate(tmp_path: Path) -> None:
    """Every example of the kinds section is a working probe or push table as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Kinds of observation") : text.index("## Commands")]
    blocks = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    base = (
        '[[channels]]\nid = "c"\nname = "渠道"\nkind = "web"\ngroup = "online"\n\n'
        '[[channels.services]]\nid = "s"\nname = "业务"\n\n'
    )
    kinds = []
    for index, block in enumerate(blocks):
        plan = load_plan(tmp_path / f"kind-{index}.toml", base + block)
        kinds.append(plan.service("c", "s").service.observed_by)
    assert kinds == ["http", "browser", "prometheus", "push", "dns", "prometheus"]
    assert "scrape_configs:" in section and "run --no-alerts" in section
