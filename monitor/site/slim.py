"""The plan as the page's render worker holds it: what the page shows of every service, and
nothing of how a service is probed.

`run` sends its render worker the plan (a spawned process, so pickled). At 100,000 services the
whole plan was 390 MB in the worker, and a pydantic copy of each service with its probe
replaced (the first cut) still 200 MB, built and pickled in `run` too. `slim(config)` makes
plain tuples instead: a service's names and the index of its group (services planned and
observed alike share one: their default, rules and an `Observed` for the probe or push), a
few MB to pickle; `unslim` makes them `PageService`s in the worker, a slotted object each.
No probe's address, header or body, no push token and no alert sink ever reach the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

from monitor.plan.schema import Service

if TYPE_CHECKING:
    from monitor.plan.schema import PlanConfig, Rule


@dataclass(frozen=True)
class Observed:
    """What the page asks of a service's probe or push (its kind, the unset variables it
    waits for, how often it is observed), standing in for it in the render worker's plan."""

    kind: str
    unset: tuple[str, ...]
    interval: timedelta | None = None
    timeout: timedelta | None = None
    within: timedelta | None = None


class PageService:
    """A service as the page reads it (the names, the rules, `observed_by`, `unset`,
    `configured` of `config.Service`), with an `Observed` for its probe or push: a slotted
    object, a tenth of a pydantic model's memory."""

    __slots__ = ("default", "expect", "id", "name", "name_en", "note", "note_en", "probe", "push")

    def __init__(
        self,
        names: tuple[str, str, str, str, str],
        default: str,
        expect: tuple[Rule, ...],
        probe: Observed | None,
        push: Observed | None,
    ) -> None:
        self.id, self.name, self.name_en, self.note, self.note_en = names
        self.default, self.expect, self.probe, self.push = default, expect, probe, push

    #: How the service is observed, what it waits for and whether it is configured:
    #: `config.Service`'s own properties, reused (they read only `probe` and `push`, which a
    #: `PageService` has; `unset` uncached, as a slotted object keeps no cache), so the page
    #: and `plan --format json` cannot tell a service apart differently.
    observed_by = Service.observed_by
    unset = property(Service.unset.func)  # type: ignore[attr-defined]
    configured = Service.configured

    def __repr__(self) -> str:
        return f"PageService(id={self.id!r})"


class Slim(NamedTuple):
    """The plan in plain tuples, as `run` pickles it for the worker (see the module)."""

    head: PlanConfig  # the settings, periods and milestones; no channels, no alert sinks
    groups: tuple[tuple[str, tuple[Rule, ...], Observed | None, bool], ...]
    #: Per channel: the channel without its services, then per service its id, name, name_en,
    #: note, note_en and group (an index into `groups`).
    channels: tuple[tuple[object, tuple[tuple[str, str, str, str, str, int], ...]], ...]


def _group(service: Service) -> tuple[str, tuple[Rule, ...], Observed | None, bool]:
    """What services planned and observed alike share: default, rules, how observed."""
    probe, push = service.probe, service.push
    if probe is None and push is None:
        return (service.default, service.expect, None, False)
    found = Observed(
        probe.kind if probe is not None else "push",
        service.unset,
        probe.interval if probe is not None else None,
        probe.timeout if probe is not None else None,
        push.within if push is not None else None,
    )
    return (service.default, service.expect, found, push is not None)


def slim(config: PlanConfig) -> Slim:
    """The plan for the render worker (see the module): in `run`, a tuple per service whose
    strings are the plan's own, so it costs `run` little more than the pickle."""
    groups: dict[tuple, int] = {}
    channels = []
    for channel in config.channels:
        rows = tuple(
            (s.id, s.name, s.name_en, s.note, s.note_en, groups.setdefault(_group(s), len(groups)))
            for s in channel.services
        )
        channels.append((channel.model_copy(update={"services": ()}), rows))
    head = config.model_copy(update={"channels": (), "alerts": ()})
    return Slim(head, tuple(groups), tuple(channels))


def unslim(plan: Slim) -> PlanConfig:
    """The plan config the worker's `Plan` is made from: `PageService`s in the channels."""
    made = []
    for channel, rows in plan.channels:
        services = []
        for *names, group in rows:
            default, expect, observed, pushed = plan.groups[group]
            probe, push = (None, observed) if pushed else (observed, None)
            services.append(PageService(tuple(names), default, expect, probe, push))  # type: ignore[arg-type]
        made.append(channel.model_copy(update={"services": tuple(services)}))  # type: ignore[attr-defined]
    return plan.head.model_copy(update={"channels": tuple(made)})
