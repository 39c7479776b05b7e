"""The scripted faults of the demo: each breaks the plan once, in a known direction, so the
replay shows (and its test proves) that both directions are detected and recovered from."""

from __future__ import annotations

from datetime import datetime

from monitor.plan import Plan

from .simulator import Fault


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text + "+08:00")


def scripted_faults(plan: Plan) -> list[Fault]:
    """The faults, checked against the plan so a renamed service fails loudly."""
    faults = [
        Fault(
            "chushuitong", "si-contribution",
            _at("2022-06-22T18:00"), _at("2022-06-22T20:00"), serving=True,
            story="楚税通在 6月22日18:00 之后仍继续受理社保费缴纳两小时",
            story_en="楚税通APP keeps taking payments for two hours after the 06-22 18:00 freeze",
        ),
        Fault(
            "hubei-zwfw", "certificate-print",
            _at("2022-07-06T13:00"), _at("2022-07-06T17:30"), serving=False,
            story="参保证明线上打印在 7月6日下午故障",
            story_en="online certificate printing fails one afternoon (07-06) inside its window",
        ),
        Fault(
            "hubei-12333-wechat", "pension",
            _at("2022-07-25T08:30"), _at("2022-07-25T09:10"), serving=False,
            story="湖北12333 在 7月25日晚 40 分钟才恢复",
            story_en="湖北12333 comes back 40 minutes late on 07-25",
        ),
        Fault(
            "hubei-etax", "medical-premium",
            _at("2022-07-12T10:00"), _at("2022-07-12T10:40"), serving=False,
            story="停机期间医保费征收短暂中断",
            story_en="medical-insurance premium collection is down briefly during the freeze",
        ),
    ]  # fmt: skip
    for fault in faults:
        plan.service(fault.channel, fault.service)  # KeyError names a fault that lost its service
    return faults
