"""The kinds of observation, one module each, and the registry that names them.

Adding a kind is one module beside these (its plan table, prober and reasons; see
`monitor.kinds.base.Kind`) and one line in `KINDS`. The plan's schema (`monitor.plan.schema`), the
probers of `run` and `check` (`monitor.pipeline.make_probers`) and the table of reasons
(`monitor.reasons`) are built from this registry, so none of them names a kind.
"""

from __future__ import annotations

from monitor.kinds import browser, dns, http, prometheus, push
from monitor.kinds.base import Kind, KindProber, ProberOptions, registry

#: Every kind by its word, in the order outputs list them.
KINDS: dict[str, Kind] = registry(
    http.KIND,
    browser.KIND,
    prometheus.KIND,
    push.KIND,
    dns.KIND,
)


def probe_kinds() -> tuple[str, ...]:
    """The kinds a `[channels.services.probe]` table may name."""
    return tuple(name for name, kind in KINDS.items() if kind.table == "probe")


__all__ = ["KINDS", "Kind", "KindProber", "ProberOptions", "probe_kinds"]
