"""The shipped Grafana dashboards use only options Grafana's current panel schemas have.

Grafana keeps each panel's options in `public/app/plugins/panel/<type>/panelcfg.cue` (plus the
common option groups it includes). Options it removed are dropped or migrated silently when a
dashboard loads, so a dashboard using one looks fine in an old Grafana and quietly loses the
setting in a new one; schema validators reject it. The table panel is the case that bit us: its
`options.footer` (`show`, `reducer`, `fields`, `countRows`) is gone; footer calculations are now a
field setting, `fieldConfig.defaults.custom.footer.reducers` or a `custom.footer.reducers`
override, and a table without reducers has no footer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

DASHBOARDS = sorted((Path(__file__).resolve().parent.parent / "grafana/dashboards").glob("*.json"))

#: The option keys each panel type has in Grafana's current schema.
CURRENT_OPTIONS: dict[str, set[str]] = {
    "table": {
        "frameIndex",
        "showHeader",
        "showTypeIcons",
        "sortBy",
        "cellHeight",
        "maxRowHeight",
        "frozenColumns",
        "enablePagination",
    },
    "stat": {
        "reduceOptions",
        "text",
        "orientation",
        "graphMode",
        "colorMode",
        "justifyMode",
        "textMode",
        "wideLayout",
        "showPercentChange",
        "percentChangeColorMode",
        "minVizWidth",
        "minVizHeight",
    },
    "state-timeline": {
        "legend",
        "tooltip",
        "timezone",
        "annotations",
        "showValue",
        "rowHeight",
        "mergeValues",
        "alignValue",
        "perPage",
    },
    "timeseries": {"legend", "tooltip", "timezone", "orientation"},
    "row": set(),
}
#: Options Grafana removed, and what replaced them.
REMOVED = {
    ("table", "footer"): "footer calculations are fieldConfig.defaults.custom.footer.reducers "
    "(or a custom.footer.reducers override); no reducers, no footer",
}


def panels(items: list[dict]) -> Iterator[dict]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict:
    return json.loads(request.param.read_text("utf-8"))


def test_there_are_dashboards() -> None:
    assert len(DASHBOARDS) >= 2


def test_no_panel_uses_an_option_grafana_removed(dashboard: dict) -> None:
    for panel in panels(dashboard["panels"]):
        kind = panel["type"]
        assert kind in CURRENT_OPTIONS, f"{panel['title']}: add the options of {kind!r} here"
        for key in panel.get("options") or {}:
            replaced = REMOVED.get((kind, key))
            assert replaced is None, f"{panel['title']}: options.{key} was removed: {replaced}"
            assert key in CURRENT_OPTIONS[kind], f"{panel['title']}: unknown options.{key}"


def test_table_footers_use_the_field_setting(dashboard: dict) -> None:
    for panel in panels(dashboard["panels"]):
        if panel["type"] != "table":
            continue
        config = panel.get("fieldConfig", {})
        footer = config.get("defaults", {}).get("custom", {}).get("footer")
        assert footer is None or set(footer) == {"reducers"}, panel["title"]
        for override in config.get("overrides", []):
            for prop in override.get("properties", []):
                if prop["id"].startswith("custom.footer"):
                    assert prop["id"] == "custom.footer.reducers", panel["title"]
                    assert isinstance(prop["value"], list), panel["title"]
