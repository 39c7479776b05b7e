"""Reading a plan a `[[channels]]` table at a time gives exactly what reading it whole gives.

`load_config` cuts the file at its `[[channels]]` headers and validates each channel as it is
read, so that a plan of 100,000 services never holds its whole parse tree and its plan objects
at once. Each test compares it with the whole file's reading (`parse_toml` then
`validate_config`): the same plan, or the same problems in the same order. Files where a cut
could change the meaning (a header-like line inside a string or an array, `channels` named
another way) must be read whole, and are checked to be.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.plan.errors import ConfigError
from monitor.plan.load import _NotInParts, _plan_in_parts, load_config, parse_toml, validate_config
from monitor.plan.schema import PlanConfig


def channel(cid: str, *services: str, extra: str = "") -> str:
    head = f'[[channels]]\nid = "{cid}"\nname = "渠道 {cid}"\nkind = "web"\ngroup = "online"\n'
    return head + extra + "".join(services)


def service(sid: str, *, during: str = "freeze", extra: str = "") -> str:
    return (
        f'[[channels.services]]\nid = "{sid}"\nname = "业务 {sid}"\n'
        f'expect = [{{ during = "{during}", state = "down" }}]\n{extra}'
    )


FREEZE = "[periods.freeze]\nstart = 2022-06-22T18:00:00\nend = 2022-07-25T08:30:00+08:00\n"
ALERTS = '[[alerts]]\ntype = "webhook"\nurl = "https://hooks.example/x"\n'
MILESTONE = '[[milestones]]\nat = 2022-06-22T18:00:00+08:00\ntitle = "停机"\n'


def outcome(read: Callable[[], PlanConfig]) -> tuple[str, object]:
    try:
        config = read()
    except ConfigError as exc:
        return "problems", exc.problems
    assert isinstance(config, PlanConfig)
    return "plan", config


def compare(text: str | bytes, directory: Path) -> bool:
    """Assert that `load_config` and the whole file's reading agree; whether it was cut."""
    raw = text.encode() if isinstance(text, str) else text
    path = directory / "channels.toml"
    path.write_bytes(raw)
    whole = outcome(lambda: validate_config(parse_toml(raw, path, "plan file"), str(path)))
    assert outcome(lambda: load_config(path)) == whole

    def without_alerts() -> PlanConfig:  # `run --no-alerts`
        data = parse_toml(raw, path, "plan file")
        data.pop("alerts", None)
        return validate_config(data, str(path))

    assert outcome(lambda: load_config(path, alerts=False)) == outcome(without_alerts)
    try:
        data, channels = _plan_in_parts(raw)
        data["channels"] = list(channels)
    except _NotInParts:
        return False
    assert data == parse_toml(raw, path, "plan file")
    assert list(data) == list(parse_toml(raw, path, "plan file"))  # the keys' order too
    return True


SAFE = {
    "one channel": FREEZE + channel("a", service("s")),
    "tables between and after channels": (
        '[monitor]\ngrace = "1m"\n\n'
        + channel("a", service("s"), service("t"))
        + MILESTONE
        + channel(
            "b", service("s", extra='[channels.services.probe]\nurl = "https://b.example/"\n')
        )
        + FREEZE
        + ALERTS
        + '[periods.later]\nweekdays = [\n  "monday:friday",\n]\n'
    ),
    "headers with spaces, comments and CRLF": (
        FREEZE + "[[ channels ]] # the portal\n" + channel("a", service("s"))[13:]
    ).replace("\n", "\r\n"),
    "strings that hold channel tables inside a channel": channel(
        "a", service("s"), extra='note = """\n  [channels.x]\n"""\n'
    )
    + FREEZE,
    "errors in several channels and at the top": (
        'colour = 1\n[monitor]\ninterval = "soon"\n'
        + channel("a", service("s", during="frieze"), service("s"))
        + channel("a", service("t", extra="colour = 1\n"))
        + channel("c", service("u", extra='[channels.services.probe]\nurl = "ftp://tok@x/"\n'))
        + FREEZE
        + '[periods.Bad]\nstart = "x"\n'
        + ALERTS
        + ALERTS
        + '[[alerts]]\ntype = "pager"\nurl = "https://hooks.example/y"\n'
    ),
    "a channel without services, one that is not a table's shape": (
        FREEZE + channel("a") + channel("b", extra="services = 3\n") + channel("c", service("s"))
    ),
    "dates inside a channel": channel("a", service("s", extra="note = 2022-06-22T18:00:00+08:00\n"))
    + FREEZE,
}

#: Files a cut would misread: each must be read whole, with the whole file's result.
WHOLE = {
    # The head's string holds what looks like a channel and a table: read without the
    # header-like lines' cuts, `x` would hold only the table.
    "a multi-line string holding headers": (
        '[site]\nx = """\n' + channel("a", service("s")) + '[bar]\n"""\n' + FREEZE
    ),
    # The same, opened in a table after a channel and closed in one after the next channel.
    "a multi-line string across a channel": (
        FREEZE
        + channel("a", service("s"))
        + '[site]\nx = """\n'
        + channel("b", service("t"))
        + '[bar]\n"""\n'
    ),
    "an array whose lines look like headers": (
        "[monitor]\nweekdays = [\n" + channel("a", service("s")) + "[1]]\n"
    ),
    "a quoted first key": FREEZE + '[["channels"]]\nid = "a"\n' + service("s"),
    "a channel's table after a top-level table": (
        FREEZE + channel("a", service("s")) + ALERTS + '[channels.services.probe]\nurl = "x"\n'
    ),
    "channels given twice": "channels = []\n" + FREEZE + channel("a", service("s")),
    "a table defined before and after the channels": (
        '[monitor]\ngrace = "1m"\n' + channel("a", service("s")) + '[monitor]\ngrace = "2m"\n'
    ),
    "a syntax error inside a channel": FREEZE + channel("a", service("s", extra="x = = 1\n")),
    "a service table before any channel": FREEZE + service("s") + channel("a", service("t")),
    "a 5,000-digit number in a channel": channel("a", service("s", extra=f"n = {'9' * 5000}\n")),
    "nesting 100,000 deep in a channel": channel(
        "a", service("s", extra="x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    ),
    "no channel at all": FREEZE,
}


@pytest.mark.parametrize("name", list(SAFE))
def test_plans_read_in_parts_equal_the_whole(name: str, tmp_path: Path) -> None:
    assert compare(SAFE[name], tmp_path), "this plan should have been read in parts"


@pytest.mark.parametrize("name", list(WHOLE))
def test_plans_a_cut_could_misread_are_read_whole(name: str, tmp_path: Path) -> None:
    assert not compare(WHOLE[name], tmp_path), "this plan must be read whole"


def test_a_channel_that_is_not_utf8_is_read_whole(tmp_path: Path) -> None:
    text = (FREEZE + channel("a", service("s", extra='note = "x"\n'))).encode()
    assert not compare(text.replace(b'"x"', b'"\xff"'), tmp_path)
    assert outcome(lambda: load_config(tmp_path / "channels.toml"))[1] == [
        f"{tmp_path / 'channels.toml'}: the file is not UTF-8 text (invalid start byte)"
    ]


def test_errors_keep_their_key_paths_and_order(tmp_path: Path) -> None:
    """The errors of channels validated on their own come where the whole plan's would."""
    path = tmp_path / "channels.toml"
    path.write_text(SAFE["errors in several channels and at the top"], encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    where = [p.removeprefix(f"{path}: ").split(":")[0] for p in caught.value.problems]
    assert where == [
        "monitor.interval",
        "periods.Bad.start",
        'channels[1].services[0].colour (channel "a", service "t")',
        'channels[2].services[0].probe.url (channel "c", service "u")',
        "alerts[2].type",
        "colour",
        "periods.Bad",
        'channels[0].services[0].expect[0].during (channel "a", service "s")',
        'channels[0].services[1].id (channel "a", service "s")',
        'channels[1].id (channel "a")',
        "alerts[1].name",
    ]
    assert not any("tok" in problem for problem in caught.value.problems)


#: Odd pieces put in here and there: strings and arrays that open in one piece and close in
#: another, `channels` spelt other ways, mistakes.
ODD = [
    service("u", during="nope"),
    "[channels.extra]\n",
    '[["channels"]]\n',
    'note = """\n',
    '"""\n',
    "weekdays = [\n",
    "]\n",
    "[1]]\n",
    "colour = 1\n",
    "channels = []\n",
    "# [[channels]]\n",
]


@st.composite
def plan_texts(draw: st.DrawFn) -> str:
    """Channels of services, with top-level tables before, between and after them."""
    pieces = [FREEZE] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["channel", "channel", "alerts", "milestone"]))
        if kind == "channel":
            services = [
                service(draw(st.sampled_from("st")), during=draw(st.sampled_from(["freeze", "x"])))
                + draw(st.sampled_from(["", '[channels.services.probe]\nurl = "https://x.cn/"\n']))
                for _ in range(draw(st.integers(0, 2)))
            ]
            pieces.append(channel(draw(st.sampled_from("abc")), *services))
        else:
            pieces.append(ALERTS if kind == "alerts" else MILESTONE)
    if draw(st.booleans()):
        pieces.insert(draw(st.integers(0, len(pieces))), FREEZE.replace("freeze", "later"))
    for _ in range(draw(st.integers(0, 2))):
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(ODD)))
    return "".join(pieces)


@settings(max_examples=300, deadline=None)
@given(plan_texts())
def test_random_plans_read_in_parts_equal_the_whole(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        compare(text, Path(directory))


def test_services_share_what_is_equal_and_copies_stay_apart(tmp_path: Path) -> None:
    """At 100,000 services each model's own set of named fields, each probe's own empty
    headers table held about 90 MB: equal ones are one object. Sharing must not leak: a copy
    with a field changed names it in its own set, the others' stay as they were."""
    import pickle

    probe = '[channels.services.probe]\nurl = "https://api.example/q"\n'
    path = tmp_path / "channels.toml"
    path.write_text(
        FREEZE
        + channel("a", service("s", extra=probe), service("t", extra=probe))
        + channel("b", service("s", extra=probe), service("t"))
    )
    config = load_config(path)
    (s1, t1), (s2, t2) = (c.services for c in config.channels)
    assert s1.model_fields_set is t1.model_fields_set is s2.model_fields_set
    assert t2.model_fields_set == {"id", "name", "expect"}  # no probe: a set of its own
    assert s1.probe.model_fields_set is s2.probe.model_fields_set
    assert s1.probe.headers is s2.probe.headers == {}
    assert s1.probe.url is s2.probe.url
    assert config == validate_config(parse_toml(path.read_bytes(), path, "plan"), str(path))

    copy = s1.model_copy(update={"note": "改"})
    assert copy.model_fields_set == {"id", "name", "expect", "probe", "note"}
    assert s2.model_fields_set == {"id", "name", "expect", "probe"}

    again = pickle.loads(pickle.dumps(config))  # how the page's worker gets the plan
    assert again == config
    (s1, t1), (s2, _) = (c.services for c in again.channels)
    assert s1.model_fields_set is s2.model_fields_set
