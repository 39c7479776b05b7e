"""What the page says, worked out once from the plan, the verdicts and the history.

Pure: the plan, an instant, a `Snapshot` of what was seen and the `History` go in; a `Model`
comes out, which the templates and the machine-readable files only format. Nothing of a probe
(URL, headers, body) is ever copied into the model: only names from the plan, verdicts and
reasons that `words.reason_text` translates from fixed phrases.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property

from monitor.judge import Verdict, thresholds_for
from monitor.notices import Notice, NoticesFile
from monitor.plan import TICK, Expectation, Plan, ServiceRef
from monitor.plan.schema import Milestone, Period
from monitor.site.history import History
from monitor.store import StoreReads

#: Page states of a service, in the order the page lists them. `open` is planned open and
#: seen working; `unobserved` is planned open with nothing observed (schedule-only, or no fresh
#: observation), so the page never claims more than monitoring saw.
STATES = ("broken", "closed", "open", "unobserved", "any", "leak")
#: The states in which the plan has the service open (where citizens may go instead).
PLANNED_OPEN = ("open", "unobserved")
#: How far ahead the page looks for the next planned pause.
LOOKAHEAD = timedelta(days=180)
#: How long a pause that is over stays the headline ("... ended on 07-25 08:30").
RECENT = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class Seen:
    """The last observation of a service, as far as the page may tell it."""

    at: datetime
    serving: bool | None  # None: the observation could not tell
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """What monitoring knows at one instant: confirmed verdicts and last observations."""

    verdicts: dict[tuple[str, str], Verdict] = field(default_factory=dict)
    seen: dict[tuple[str, str], Seen] = field(default_factory=dict)


def snapshot_from_pipeline(pipeline, at: datetime) -> Snapshot:
    """The running pipeline's verdicts and last observations (call on the event loop).

    The last observations are plain `(at, serving, reason)` tuples, which the collector stops
    tracking at once: at 100,000 services, 100,000 `Seen` objects alive in the monitor for as
    long as a render takes were walked by every full collection meanwhile. The render worker
    makes them `Seen` again (`with_seen`)."""
    verdicts = {ref.key: pipeline.verdict(ref, at) for ref in pipeline.plan.services}
    seen = {
        key: (state.last_at, state.last_serving, state.last_reason or "")
        for key, state in pipeline.states.items()
        if state.last_at is not None
    }
    return Snapshot(verdicts, seen)  # type: ignore[arg-type]


def with_seen(snapshot: Snapshot) -> Snapshot:
    """`snapshot` with its last observations as `Seen` (see `snapshot_from_pipeline`): in
    place, as each is made its tuple is dropped (the render worker's own copy; at 100,000
    services a second dict and the tuples beside the `Seen`s were 11 MB)."""
    seen = snapshot.seen
    for key, value in seen.items():
        if isinstance(value, tuple):
            seen[key] = Seen(*value)  # a value replaced, not a key added: safe while iterating
    return snapshot


def stale_after(plan: Plan, ref: ServiceRef) -> timedelta:
    """How old an observation may be and still count (the pipeline's own threshold)."""
    return thresholds_for(plan, ref).stale_after


def snapshot_from_store(plan: Plan, store: StoreReads | None, at: datetime) -> Snapshot:
    """Verdicts as of `at` from what the store holds: an incident open at `at` gives its
    direction, a fresh observation without one gives `ok`, anything else `unknown`."""
    if store is None:
        return Snapshot()
    open_at: dict[tuple[str, str], Verdict] = {}
    for record in store.incidents(since=at):
        if record.opened_at <= at and (record.resolved_at is None or record.resolved_at > at):
            open_at[(record.channel, record.business)] = Verdict(record.direction)
    verdicts: dict[tuple[str, str], Verdict] = {}
    seen: dict[tuple[str, str], Seen] = {}
    for ref in plan.services:
        limit = stale_after(plan, ref)
        rows = [r for r in store.observations(*ref.key, at - limit) if r[0] <= at.timestamp()]
        if rows:
            stamp, serving, reason = rows[-1][:3]
            seen[ref.key] = Seen(datetime.fromtimestamp(stamp, at.tzinfo), bool(serving), reason)
        if ref.key in open_at:
            verdicts[ref.key] = open_at[ref.key]
        elif rows:
            verdicts[ref.key] = Verdict.OK
        else:
            verdicts[ref.key] = Verdict.UNKNOWN
    return Snapshot(verdicts, seen)


@dataclass(frozen=True, slots=True)
class ServiceView:
    """One service as the page shows it (slotted: 100,000 of them at that scale)."""

    ref: ServiceRef
    expectation: Expectation
    verdict: Verdict
    state: str
    #: The plan's answers at the page's instant: when the expected state next changes (the
    #: end of its span), and when the service is next expected up (its reopening time; None
    #: while it is up, so an open service's page does not change with every render).
    next_change: datetime | None
    seen: Seen | None
    next_up: datetime | None = None

    @property
    def probed(self) -> bool:
        """Observed by a probe or push that has everything it needs."""
        return self.ref.service.configured

    @property
    def key(self) -> tuple[str, str]:
        return self.ref.key


def page_state(expectation: Expectation, verdict: Verdict) -> str:
    """`broken` (down although it should be up), `leak` (up although the plan pauses it),
    `closed` (paused as planned), `any`; a service the plan has open is `open` only when the
    judge confirmed it (`ok`), else `unobserved`: the plan alone does not show it works."""
    if expectation.state == "down":
        return "leak" if verdict == Verdict.UNEXPECTED_UP else "closed"
    if verdict == Verdict.UNEXPECTED_DOWN:
        return "broken"
    if expectation.state != "up":
        return "any"
    return "open" if verdict == Verdict.OK else "unobserved"


@dataclass(frozen=True, slots=True)
class Item:
    """One business in one page state, across the channels where it is in that state
    (slotted: with a name per service, 100,000 of them at that scale)."""

    state: str
    services: tuple[ServiceView, ...]
    alternatives: tuple[ServiceRef, ...] = ()

    @property
    def first(self) -> ServiceView:
        return self.services[0]

    def channels(self, group: str) -> list[ServiceRef]:
        return [s.ref for s in self.services if s.ref.channel.group == group]

    @property
    def notes(self) -> list[tuple[tuple[ServiceRef, ...], str, str]]:
        """The business's notes as (channels, zh, en); channels is empty when one note
        stands for every channel listed, else it names the channels the note is about."""
        found: dict[tuple[str, str], list[ServiceRef]] = {}
        for s in self.services:
            if s.ref.service.note:
                found.setdefault((s.ref.service.note, s.ref.service.note_en), []).append(s.ref)
        if len(found) == 1 and len(next(iter(found.values()))) == len(self.services):
            return [((), *next(iter(found)))]
        return [(tuple(refs), zh, en) for (zh, en), refs in found.items()]

    @property
    def next_change(self) -> datetime | None:
        """The earliest planned change among the services (None when none changes)."""
        changes = [s.next_change for s in self.services if s.next_change is not None]
        return min(changes, default=None)

    @property
    def same_change(self) -> bool:
        return len({s.next_change for s in self.services}) == 1

    @property
    def next_up(self) -> datetime | None:
        """When every service listed is next expected up, when the plan gives them one time
        (None when it gives none, or several: the page then names no single time)."""
        found = {s.next_up for s in self.services}
        return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class Headline:
    """The sentence at the top: the main planned pause (running, just over or coming), when
    it changes, and the other pauses running beside it."""

    kind: str  # down, down_open, upcoming, upcoming_open, past, ok
    period: Period | None = None
    start: datetime | None = None
    end: datetime | None = None
    broken: int = 0
    others: tuple[Maintenance, ...] = ()
    known: Known | None = None
    #: Services of the main period itself that reopen at another time than its end.
    parts: tuple[Maintenance, ...] = ()


@dataclass(frozen=True)
class Known:
    """What the headline may claim: how many services are planned open and seen working,
    planned open but not observed, and paused as planned (told as paused even when a paused
    service still answers: that is for operators)."""

    working: int
    unobserved: int
    paused: int

    @property
    def all_seen(self) -> bool:
        """Every service the plan has open was seen working (so "all is well" is true)."""
        return self.unobserved == 0 and self.working > 0


@dataclass(frozen=True)
class Change:
    """The next planned change: when, and which businesses open or pause."""

    at: datetime
    to: dict[str, list[ServiceRef]]


@dataclass(frozen=True)
class Window:
    """A special window: a period that opens services inside a pause (certificate printing).
    `start` and `end` are the plan's span of those services' `up` state in the period, which
    is what citizens can count on (another rule may cut the period short)."""

    period: Period
    services: tuple[ServiceRef, ...]
    status: str  # upcoming, active, ended
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class Maintenance:
    """A planned pause of some services: one scheduled maintenance of the Statuspage files."""

    period: Period | None
    start: datetime
    end: datetime | None
    services: tuple[ServiceRef, ...]
    #: Whether it began before the span looked at, at an instant not worked out.
    began_earlier: bool = False
    #: The day the plan was published (`[monitor] published`, the start of that day in the
    #: plan's zone), None when the plan does not say: the one date before its start on
    #: which the pause can be said to have changed (it was announced).
    published: datetime | None = None

    def status(self, at: datetime) -> str:
        if at < self.start:
            return "scheduled"
        if self.end is None or at < self.end:
            return "in_progress"
        return "completed"

    @property
    def id(self) -> str:
        """Stable across renders and unique among the pauses of one render: one period can
        pause services from one instant to several ends (the freeze, with certificate printing
        reopening early), so the end is part of it; a start before the span looked at (which
        moves with every render) is written `before`."""

        def stamp(at: datetime | None, unknown: str) -> str:
            return unknown if at is None else at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

        name = self.period.id if self.period else "default"
        start = stamp(None if self.began_earlier else self.start, "before")
        return f"{name}-{start}-{stamp(self.end, 'open')}"

    def changed(self, at: datetime) -> datetime:
        """Its last change as of `at`: the latest of its published day, start and end that is
        not after `at`, the same in every render between two changes (a feed reader sees an
        entry change only when the pause did).

        Only dates the plan gives count: it once counted a listing date `LOOKAHEAD` before the
        start, a day nobody published anything on. So a pause of a plan without `[monitor]
        published` that has not started yet is dated by its start, ahead of `at`: the one date
        the plan gives it (the render's own instant would move with every render)."""
        start = None if self.began_earlier else self.start
        marks = [t for t in (self.published, start, self.end) if t is not None]
        if not marks:  # began before the span looked at and never ends: its known start
            return self.start
        past = [t for t in marks if t <= at]
        return max(past) if past else min(marks)


@dataclass(frozen=True)
class Model:
    """Everything the page and its files show."""

    plan: Plan
    at: datetime
    services: tuple[ServiceView, ...]
    items: dict[str, tuple[Item, ...]]
    headline: Headline
    change: Change | None
    windows: tuple[Window, ...]
    milestones: tuple[Milestone, ...]
    maintenances: tuple[Maintenance, ...]
    history: History
    #: Operators' notices out by `at`, the latest update first (monitor/notices/__init__.py).
    notices: tuple[Notice, ...] = ()

    @property
    def probed(self) -> int:
        return sum(1 for s in self.services if s.probed)

    @cached_property
    def of_channel(self) -> dict[str, list[ServiceView]]:
        """The services shown, by channel id in the plan's order (every channel of the plan,
        none left out): one pass, shared by the channels' pages, their keys and the feeds."""
        out: dict[str, list[ServiceView]] = {c.id: [] for c in self.plan.config.channels}
        for view in self.services:
            out[view.ref.channel.id].append(view)
        return out

    @cached_property
    def bars_of_channel(self) -> dict[str, list]:
        """The history's bars by channel id, as `of_channel`."""
        out: dict[str, list] = {c: [] for c in self.of_channel}
        for bar in self.history.bars:
            out[bar.ref.channel.id].append(bar)
        return out

    @property
    def unobserved(self) -> list[tuple[ServiceRef, list[ServiceView], tuple[str, ...]]]:
        """Services nobody observes yet, by channel and cause: (the first service's ref, the
        services, the unset environment variables they wait for; none: no probe or push at
        all). What the operators' section asks the channel operators to supply."""
        groups: dict[tuple[str, tuple[str, ...]], list[ServiceView]] = {}
        for view in self.services:
            service = view.ref.service
            if service.observed_by == "schedule" or service.unset:
                groups.setdefault((view.ref.channel.id, service.unset), []).append(view)
        return [(views[0].ref, views, names) for (_, names), views in groups.items()]

    def count(self, state: str) -> int:
        return sum(len(i.services) for i in self.items.get(state, ()))

    def tally(self) -> dict[str, int]:
        """Services per page state, each counted once (`count` lists a leak as closed too)."""
        out = dict.fromkeys(STATES, 0)
        for view in self.services:
            out[view.state] += 1
        return out

    def view(self, key: tuple[str, str]) -> ServiceView | None:
        """The service with these ids (None for an incident of a service the plan dropped)."""
        return self.by_key.get(key)

    @cached_property
    def by_key(self) -> dict[tuple[str, str], ServiceView]:
        return {s.key: s for s in self.services}


def build(
    plan: Plan,
    at: datetime,
    snapshot: Snapshot,
    history: History,
    notices: NoticesFile | None = None,
) -> Model:
    """Work out the whole page as of `at` (with the operators' notices out by then)."""
    at = at.astimezone(UTC)
    pauses = maintenances(plan, at)
    views = []
    # per group planned alike: the plan's expectation, span end and reopening time
    planned: dict[int, tuple[Expectation, datetime | None, datetime | None]] = {}
    for ref in plan.services:
        alike = plan.alike(ref)
        if alike not in planned:
            expectation = plan.expected(ref, at)
            reopens = None if expectation.state == "up" else plan.next_up(ref, at)
            planned[alike] = (expectation, plan.span(ref, at).until, reopens)
        expectation, next_change, next_up = planned[alike]
        verdict = snapshot.verdicts.get(ref.key, Verdict.UNKNOWN)
        views.append(
            ServiceView(
                ref,
                expectation,
                verdict,
                page_state(expectation, verdict),
                next_change,
                snapshot.seen.get(ref.key),
                next_up,
            )
        )
    return Model(
        plan=plan,
        at=at,
        services=tuple(views),
        items=_items(views),
        headline=_headline(plan, at, views, pauses),
        change=_next_change(plan, views),
        windows=_windows(plan, at, views),
        milestones=_milestones(plan, at),
        maintenances=pauses,
        history=history,
        notices=notices.shown(at) if notices is not None else (),
    )


def _items(views: list[ServiceView]) -> dict[str, tuple[Item, ...]]:
    """Services grouped by page state, then by business name, in plan order."""
    grouped: dict[str, dict[str, list[ServiceView]]] = {state: {} for state in STATES}
    for view in views:
        grouped[view.state].setdefault(view.ref.service.name, []).append(view)
        if view.state == "leak":  # citizens are told what the plan says: paused
            grouped["closed"].setdefault(view.ref.service.name, []).append(view)
    open_by_name: dict[str, tuple[ServiceRef, ...]] = {}
    for state in PLANNED_OPEN:  # the plan says where else a business is open
        for name, found in grouped[state].items():
            open_by_name[name] = open_by_name.get(name, ()) + tuple(v.ref for v in found)
    out: dict[str, tuple[Item, ...]] = {}
    for state, by_name in grouped.items():
        items = []
        for name, found in by_name.items():
            alternatives = open_by_name.get(name, ()) if state in ("closed", "broken") else ()
            items.append(Item(state, tuple(found), alternatives))
        out[state] = tuple(items)
    return out


def _headline(
    plan: Plan, at: datetime, views: list[ServiceView], pauses: tuple[Maintenance, ...]
) -> Headline:
    """The main pause is the largest (most services) of those running now, over in the last
    `RECENT` or coming within `LOOKAHEAD`; a running one wins a tie. Other running pauses are
    named beside it, one sentence per period and end; the pieces of the main one (same
    period, same end, such as certificate printing closing again) count as the main one, and
    those of the same period with another end are its `parts` ("of these, n reopen at ..."):
    a period is never "another" pause beside itself.
    A running pause is named after the period that decides it now (the plan's expectation:
    the batch deductions' pause is the July batch pause in July, though it began with the
    freeze); its times are its span's, as the plan gives them."""
    broken = sum(1 for v in views if v.state == "broken")
    known = Known(
        working=sum(1 for v in views if v.state == "open"),
        unobserved=sum(1 for v in views if v.state == "unobserved"),
        paused=sum(1 for v in views if v.state in ("closed", "leak")),
    )
    deciding = {v.key: v.expectation.period for v in views}
    periods = plan.config.periods

    def now(p: Maintenance) -> Maintenance:
        period = periods.get(deciding.get(p.services[0].key) or "")
        return p if period is p.period else replace(p, period=period)

    running = [now(p) for p in pauses if p.status(at) == "in_progress"]
    candidates = running + [
        p
        for p in pauses
        if (p.status(at) == "completed" and p.end is not None and p.end >= at - RECENT)
        or p.status(at) == "scheduled"
    ]
    if not candidates:
        return Headline("ok", broken=broken, known=known)
    main = max(candidates, key=lambda p: (len(p.services), p in running))
    merged: dict[tuple[str | None, datetime | None], Maintenance] = {}
    main_id = main.period.id if main.period else None
    for p in running:
        key = (p.period.id if p.period else None, p.end)
        if p is main or key == (main_id, main.end):
            continue
        seen = merged.get(key)
        merged[key] = p if seen is None else replace(seen, services=seen.services + p.services)
    # The main period's own services paused to another end (the batch deductions handed on to
    # August, a window inside the freeze that opens earlier) are part of the main pause, told
    # as such: a period is never "another" pause beside itself.
    others = tuple(m for (pid, _), m in merged.items() if main.period is None or pid != main_id)
    parts = tuple(m for (pid, _), m in merged.items() if main.period is not None and pid == main_id)
    status = main.status(at)
    if status == "in_progress":
        kind = "down" if main.end else "down_open"
    elif status == "scheduled":
        kind = "upcoming" if main.end else "upcoming_open"
    else:
        kind = "past"
    return Headline(kind, main.period, main.start, main.end, broken, others, known, parts)


def _next_change(plan: Plan, views: list[ServiceView]) -> Change | None:
    changes = [v.next_change for v in views if v.next_change is not None]
    if not changes:
        return None
    at = min(changes)
    to: dict[str, list[ServiceRef]] = {}
    changing = [v.ref for v in views if v.next_change == at]  # the others change later
    for t in plan.transitions(at, at + TICK, changing):
        to.setdefault(t.to_state, []).append(plan.service(t.channel, t.service))
    return Change(at, to)


def _windows(plan: Plan, at: datetime, views: list[ServiceView]) -> tuple[Window, ...]:
    """Periods whose `up` rule overrides an earlier `down` rule of the same service (a window
    inside a pause), absolute ones only, told by the plan's span of the services' `up` state
    inside the period (services with different spans are separate windows). Shown until they
    end, and after that while their services are still paused (so "closed on 07-19" stays
    visible until the pause ends)."""
    found: dict[str, list[ServiceView]] = {}
    for view in views:
        rules = view.ref.service.expect
        for index, rule in enumerate(rules):
            if rule.state == "up" and any(r.state == "down" for r in rules[:index]):
                found.setdefault(rule.during, []).append(view)
    out = []
    for period_id, members in found.items():
        period = plan.config.periods[period_id]
        if period.recurring or period.start is None or period.end is None:
            continue
        by_span: dict[tuple[datetime | None, datetime | None], list[ServiceView]] = {}
        spans: dict[int, tuple[datetime | None, datetime | None] | None] = {}
        for view in members:
            alike = plan.alike(view.ref)
            if alike not in spans:
                ups = [s for s in plan.spans(view.ref, period.start, period.end) if s.state == "up"]
                spans[alike] = (ups[0].since, ups[0].until) if ups else None
            if spans[alike] is not None and None not in spans[alike]:  # type: ignore[operator]
                by_span.setdefault(spans[alike], []).append(view)  # type: ignore[arg-type]
        for (start, end), mine in by_span.items():
            if start is not None and at < start:
                status = "upcoming"
            elif end is None or at < end:
                status = "active"
            else:
                status = "ended"
            if status == "ended" and not any(v.expectation.state == "down" for v in mine):
                continue
            out.append(Window(period, tuple(v.ref for v in mine), status, start, end))
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda w: (w.end or far, w.period.id))
    return tuple(out)


def _milestone_end(milestone: Milestone, plan: Plan) -> datetime:
    value = milestone.until or milestone.at
    if isinstance(value, datetime):
        return value
    return datetime.combine(value + timedelta(days=1), datetime.min.time(), tzinfo=plan.zone)


def milestone_start(milestone: Milestone, plan: Plan) -> datetime:
    value = milestone.at
    if isinstance(value, datetime):
        return value
    return datetime.combine(value, datetime.min.time(), tzinfo=plan.zone)


def _milestones(plan: Plan, at: datetime) -> tuple[Milestone, ...]:
    """Milestones not yet over at `at`, by date."""
    ahead = [m for m in plan.config.milestones if _milestone_end(m, plan) > at]
    ahead.sort(key=lambda m: milestone_start(m, plan))
    return tuple(ahead)


def maintenances(
    plan: Plan, at: datetime, before: timedelta = timedelta(days=90), after: timedelta = LOOKAHEAD
) -> tuple[Maintenance, ...]:
    """Every planned pause overlapping `[at - before, at + after)`: the plan's spans of the
    `down` state, each from its own start to its own end (a pause handed from one rule to
    another, the freeze to the July batch pause, is one pause). It is named after the period
    that decides its first instant. A service paused twice (certificate printing before and
    after its window) is in two pauses."""
    lo, hi = at - before, at + after
    members: dict[int, list[ServiceRef]] = {}  # services planned alike pause alike
    for ref in plan.services:
        members.setdefault(plan.alike(ref), []).append(ref)
    found: dict[tuple[str | None, datetime, datetime | None, bool], list[int]] = {}
    for alike, refs in members.items():
        for span in plan.spans(refs[0], lo, hi):
            if span.state != "down":
                continue
            began_earlier = span.since is None  # longer ago than the plan looks back
            start = lo if span.since is None else span.since
            period = plan.expected(refs[0], start).period
            found.setdefault((period, start, span.until, began_earlier), []).append(alike)
    # One tuple per group, shared by its pauses (office hours: hundreds of nightly closures);
    # a pause of several groups lists their services in plan order, as one pass would.
    shared = {alike: tuple(refs) for alike, refs in members.items()}
    order = {ref.key: index for index, ref in enumerate(plan.services)}
    day = plan.config.monitor.published
    published = None if day is None else datetime.combine(day, datetime.min.time(), plan.zone)
    out = [
        Maintenance(
            plan.config.periods.get(p or ""),
            start,
            end,
            shared[groups[0]]
            if len(groups) == 1
            else tuple(sorted((r for g in groups for r in members[g]), key=lambda r: order[r.key])),
            began_earlier,
            published,
        )
        for (p, start, end, began_earlier), groups in found.items()
    ]
    out.sort(key=lambda m: (m.start, -len(m.services), m.id))
    return tuple(out)


def by_channel(model: Model, only: set[str] | None = None) -> dict[str, Model]:
    """The page of every channel (or of those in `only`): the model narrowed to the channel's
    services, pauses, windows, bars and incidents (the page at scale links one such page per
    channel). One pass over each part, so 100 channels of 100 services cost little more than
    one page."""
    views = model.of_channel
    ids = list(views)

    done: dict[int, dict[str, tuple[ServiceRef, ...]]] = {}  # pauses share their groups' tuples

    def split(refs: tuple[ServiceRef, ...]) -> dict[str, tuple[ServiceRef, ...]]:
        if id(refs) in done:
            return done[id(refs)]
        out: dict[str, list[ServiceRef]] = {}
        for ref in refs:
            out.setdefault(ref.channel.id, []).append(ref)
        done[id(refs)] = {c: tuple(found) for c, found in out.items()}
        return done[id(refs)]

    pauses: dict[str, list[Maintenance]] = {c: [] for c in ids}
    for p in model.maintenances:
        for c, refs in split(p.services).items():
            if only is None or c in only:
                pauses[c].append(replace(p, services=refs))
    windows: dict[str, list[Window]] = {c: [] for c in ids}
    for win in model.windows:
        for c, refs in split(win.services).items():
            windows[c].append(replace(win, services=refs))
    bars = model.bars_of_channel
    keys = {view.key: view.ref.channel.id for view in model.services}
    incidents: dict[str, list] = {c: [] for c in ids}
    for record in model.history.incidents:
        c = keys.get((record.channel, record.business))
        if c is not None:
            incidents[c].append(record)
    out = {}
    for c in ids if only is None else [c for c in ids if c in only]:
        mine = views[c]
        out[c] = replace(
            model,
            services=tuple(mine),
            items=_items(mine),
            headline=_headline(model.plan, model.at, mine, tuple(pauses[c])),
            change=_next_change(model.plan, mine),
            windows=tuple(windows[c]),
            maintenances=tuple(pauses[c]),
            history=replace(model.history, bars=tuple(bars[c]), incidents=tuple(incidents[c])),
        )
    return out
