"""`validate`, `plan` (with `--transitions` and `--example`) and `plan diff`: the commands that
read the plan and nothing else, so they load no network stack."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from datetime import datetime

from monitor.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_MISMATCH,
    EXIT_OK,
    MAX_TRANSITIONS_SPAN,
    UsageError,
    instant,
    load_plan,
    load_plan_warned,
    local,
    parse_option,
)
from monitor.clock import RealClock
from monitor.plan import Plan, report
from monitor.plan.errors import ConfigError
from monitor.plan.schema import ObservedBy
from monitor.table import render_table


def cmd_validate(args: argparse.Namespace) -> int:
    plan, warnings = load_plan_warned(args.config)
    probed = sum(1 for ref in plan.services if ref.service.probe)
    config = plan.config
    print(
        f"{args.config}: OK: {len(config.channels)} channels, {len(plan.services)} services "
        f"({probed} probed), {len(config.periods)} periods, {len(config.milestones)} milestones"
    )
    unset = coverage(plan)
    warn_browser(plan)
    warn_subscription_key(plan)
    if (unset or warnings) and args.strict:
        print(
            f"{args.config}: --strict: {len(unset)} environment variable(s) not set for "
            f"probes or pushes, {len(warnings)} warning(s); set the variables or fix the "
            f"references / 有 {len(unset)} 个探测或推送的环境变量未设置，{len(warnings)} 条警告",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return EXIT_OK


def coverage(plan: Plan) -> dict[str, int]:
    """Print how the plan's services are observed, kind by kind, and which environment
    variables are unset; return those variables with how many services each keeps unobserved.
    """
    kinds = dict.fromkeys(typing.get_args(ObservedBy), 0)
    unset: dict[str, int] = {}
    for ref in plan.services:
        kinds[ref.service.observed_by] += 1
        for name in ref.service.unset:
            unset[name] = unset.get(name, 0) + 1
    counts = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
    print(f"coverage 观测方式: {counts} (schedule = not observed 仅按计划)")
    if unset:
        waiting = sum(1 for ref in plan.services if ref.service.unset)
        names = ", ".join(
            f"{name} ({count} service{'s' if count != 1 else ''})" for name, count in unset.items()
        )
        print(
            f"not configured 未配置: {waiting} service(s) stay unknown until these environment "
            f"variables are set 设置以下环境变量之前这些服务判定为 unknown: {names}"
        )
    return unset


def warn_browser(plan: Plan) -> None:
    """Say (on stderr, exit code unchanged) when browser probes cannot run on this machine:
    those services would stay `unknown` until the missing part is installed."""
    from monitor.kinds.browser import missing_parts

    browsers = sum(1 for ref in plan.services if ref.service.observed_by == "browser")
    what = missing_parts(plan.config.monitor.chromium) if browsers else None
    if what is not None:
        print(
            f"warning: {browsers} browser service(s) will stay unknown here: {what} / "
            f"警告：{browsers} 个浏览器观测的服务在装好 Playwright 和 Chromium 之前判定为 unknown",
            file=sys.stderr,
        )


def warn_subscription_key(plan: Plan) -> None:
    """Say (on stderr, exit code unchanged) when `[subscriptions]` is set but its key is not
    usable here: `run` would refuse to start, and validating the plan is the time to learn it."""
    if plan.config.subscriptions is None:
        return
    from monitor.subscriptions.keys import KeyProblem, Keys

    try:
        Keys.from_environment()
    except KeyProblem as exc:
        print(f"warning: [subscriptions]: {exc}", file=sys.stderr)


# --- plan ------------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    if args.example:
        from monitor.plan.shipped import shipped_text

        sys.stdout.write(shipped_text())
        return EXIT_OK
    plan = load_plan(args.config)
    if args.transitions:
        return _transitions(args, plan)
    data = report(plan, instant(args, plan))
    if args.format == "json":
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return EXIT_OK
    print(f"{plan.config.monitor.title} @ {local(plan, data['at'])} ({plan.zone.key})")
    rows = [
        [
            s["channel_name"],
            s["service_name"],
            s["expected"] + (" (grace)" if s["in_grace"] else ""),
            s["period"] or "default",
            local(plan, s["next_change"]),
        ]
        for s in data["services"]
    ]
    print(render_table(["channel", "service", "expected", "decided by", "next change"], rows))
    return EXIT_OK


def transitions_range(args: argparse.Namespace, plan: Plan) -> tuple[datetime, datetime]:
    """`--from` and `--until` of `plan --transitions`, each defaulting to the plan's whole span
    (a day before the first instant it names to a day after the last, as `plan diff` does;
    a year from now for a plan of recurring periods only). A default range is cut to ten
    years; one given in full that is longer is refused, as before."""
    from monitor.plan.diff import UNDATED_RANGE, default_range

    first, last = default_range(plan.config, plan.config, RealClock().now())
    start = instant(args, plan, "from_") if args.from_ else None
    end = instant(args, plan, "until") if args.until else None
    if start is not None and end is not None:
        if end <= start:
            raise UsageError("--until must be after --from")
        if end - start > MAX_TRANSITIONS_SPAN:
            raise UsageError(
                f"--from and --until are more than {MAX_TRANSITIONS_SPAN.days:,} days (ten years) "
                "apart; ask for a shorter range (recurring periods are walked day by day)"
            )
        return start, end
    if start is not None:
        end = last if last > start else start + UNDATED_RANGE
        return start, min(end, start + MAX_TRANSITIONS_SPAN)
    if end is not None:
        start = first if first < end else end - UNDATED_RANGE
        return max(start, end - MAX_TRANSITIONS_SPAN), end
    return first, min(last, first + MAX_TRANSITIONS_SPAN)


def _transitions(args: argparse.Namespace, plan: Plan) -> int:
    start, end = transitions_range(args, plan)
    names = {ref.key: ref for ref in plan.services}
    items = [
        {
            "at": t.at.astimezone(plan.zone).isoformat(),
            "channel": t.channel,
            "service": t.service,
            "from": t.from_state,
            "to": t.to_state,
            "period": t.period,
        }
        for t in plan.transitions(start, end)
    ]
    if args.format == "json":
        print(json.dumps({"transitions": items}, ensure_ascii=False, indent=2))
        return EXIT_OK
    # One group per instant: the same change of many services is read once, as one block.
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item["at"], []).append(item)
    rows = []
    for at, group in groups.items():
        group.sort(key=lambda i: (i["from"], i["to"], i["period"] or ""))
        for index, item in enumerate(group):
            ref = names[(item["channel"], item["service"])]
            rows.append(
                [
                    local(plan, at) if index == 0 else "",
                    ref.channel.name,
                    ref.service.name,
                    f"{item['from']} -> {item['to']}",
                    item["period"] or "-",
                ]
            )
    print(
        f"{local(plan, start.isoformat())} .. {local(plan, end.isoformat())} ({plan.zone.key}): "
        f"{len(items)} change(s) at {len(groups)} instant(s) / "
        f"{len(groups)} 个时刻共 {len(items)} 项变化"
    )
    print(render_table(["at", "channel", "service", "change", "period"], rows))
    return EXIT_OK


def cmd_plan_diff(args: argparse.Namespace) -> int:
    """Compare two plan files; both are validated first and every error of either is listed."""
    from monitor.plan.diff import as_json, as_text, default_range, diff_plans

    plans, problems = [], []
    for path in (args.old, args.new):
        try:
            plans.append(load_plan(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    old, new = plans
    start, end = default_range(old.config, new.config, RealClock().now())
    if args.diff_from:
        start = parse_option(args.diff_from, new, "--from")
    if args.diff_until:
        end = parse_option(args.diff_until, new, "--until")
    if end <= start:
        raise UsageError("--until must be after --from")
    if end - start > MAX_TRANSITIONS_SPAN:
        given = (
            "--from and --until are"
            if args.diff_from and args.diff_until
            else (
                "the range (from a day before the first to a day after the last date the plans "
                "name, or --from/--until where given) is"
            )
        )
        raise UsageError(
            f"{given} more than {MAX_TRANSITIONS_SPAN.days:,} days (ten years) apart; give "
            "--from and --until for a shorter range (recurring periods are walked day by day) "
            "(比较范围超过十年，请用 --from 和 --until 缩小范围)"
        )
    result = diff_plans(old, new, start, end)
    if args.diff_format == "json":
        print(json.dumps(as_json(result), ensure_ascii=False, indent=2))
    else:
        print(as_text(result))
    return EXIT_OK if result.same_expectations else EXIT_MISMATCH


# --- check ---------------------------------------------------------------------------------
