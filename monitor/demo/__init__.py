"""The demo: the 2022 Hubei cutover replayed against simulated channels on one machine."""

from pathlib import Path

#: The operators' notices the demo shows when none lie beside the plan.
NOTICES = Path(__file__).with_name("notices.toml")
