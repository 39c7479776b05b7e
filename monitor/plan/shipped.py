"""The plan shipped inside the package: the 2022 Hubei cutover (`channels.toml`).

It is package data, found with `importlib.resources`, so `channel-monitor demo` and
`channel-monitor plan --example` work from any folder after `pip install`, not only from a
checkout. In the repository `monitor/channels.toml` is a link to the top-level file, so there is
one plan to edit; a built wheel holds a copy.
"""

from __future__ import annotations

from importlib.resources import as_file, files

from monitor.plan.load import load_config
from monitor.plan.schema import PlanConfig

#: The file name of the shipped plan inside the `monitor` package.
NAME = "channels.toml"
#: How the demo names it when it is used (no `channels.toml` in the current folder).
LABEL = "the 2022 Hubei cutover shipped with channel-monitor"


def shipped_text() -> str:
    """The shipped plan as text, comments and all: a starting point for a plan of one's own."""
    return files("monitor").joinpath(NAME).read_text(encoding="utf-8")


def load_shipped() -> PlanConfig:
    """The shipped plan, validated (a real path even when the package is zipped)."""
    with as_file(files("monitor").joinpath(NAME)) as path:
        return load_config(path)
