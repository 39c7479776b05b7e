"""What citizens are told stays true to the notice (issue 14): the texts of the shipped plan
that once said more, less or other than the notice are pinned here, so they cannot drift back.
Dates, times and expected states are pinned by test_plan.py and test_demo.py, not here."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

import pytest
from helpers import REAL_PLAN, real_plan
from test_site import at, page, render_at

from monitor.plan.schema import Channel, Milestone, PlanConfig, Service


@pytest.fixture(scope="module")
def config() -> PlanConfig:
    return real_plan().config


def service(config: PlanConfig, channel: str, service_id: str) -> Service:
    found = next(c for c in config.channels if c.id == channel)
    return next(s for s in found.services if s.id == service_id)


def milestone(config: PlanConfig, title: str) -> Milestone:
    (found,) = [m for m in config.milestones if title in m.title]
    return found


def citizen_texts(config: PlanConfig) -> list[tuple[str, str]]:
    """Every text of the plan shown to citizens, with where it is from."""
    out: list[tuple[str, str]] = []
    channels: list[Channel] = list(config.channels)
    for c in channels:
        out += [(c.id, c.name), (c.id, c.name_en), (c.id, c.note), (c.id, c.note_en)]
        for s in c.services:
            where = f"{c.id}/{s.id}"
            out += [(where, s.name), (where, s.name_en), (where, s.note), (where, s.note_en)]
    for m in config.milestones:
        out += [(str(m.at), text) for text in (m.title, m.title_en, m.detail, m.detail_en)]
    for p in config.periods.values():
        out += [(p.id, p.title), (p.id, p.title_en)]
    return out


# --- item 1: the freeze stops the system, not every intake ------------------------------------


def test_the_freeze_milestone_says_what_stops_and_what_the_notice_keeps(
    config: PlanConfig,
) -> None:
    start = next(m for m in config.milestones if m.at == at("2022-06-22T18:00:00"))
    assert "全部业务" not in start.detail and "所有线上和线下渠道" not in start.detail
    assert "every piece" not in start.detail_en and "all online" not in start.detail_en
    for kept in ("失业保险金", "技能提升补贴", "工伤认定", "劳动能力鉴定", "登记备案", "缓缴"):
        assert kept in start.detail, kept
    for kept in ("unemployment benefit", "work-injury determination", "work-capacity assessment"):
        assert kept in start.detail_en, kept
    assert "register new staff and work accidents" in start.detail_en
    assert "deferral" in start.detail_en and "e-mail" in start.detail_en
    assert "少数事项仍可线下办理" in start.title and "stay open offline" in start.title_en
    # the services the plan keeps up in the freeze are the ones the milestone names
    hall = {s.id: s for s in next(c for c in config.channels if c.id == "si-service-hall").services}
    for kept in ("unemployment-benefit-claim", "injury-assessment", "deferral-application"):
        assert hall[kept].expect[-1].state == "up"


# --- item 2: the July batch deduction, said once --------------------------------------------


@pytest.mark.parametrize(
    ("channel_service", "day"), [("flex-batch-provincial", 15), ("flex-batch-wuhan", 20)]
)
def test_the_july_batch_deduction_is_said_once(
    config: PlanConfig, channel_service: str, day: int
) -> None:
    s = service(config, "tax-bank-outlets", channel_service)
    assert "2022年7月不批扣" in s.note
    assert s.note.count("7、8两个月") == 1 and f"8月{day}日一次扣缴7、8两个月" in s.note
    assert "整月" not in s.note and "停机结束后" not in s.note and "补扣" not in s.note
    assert "There is no July 2022 run" in s.note_en
    assert f"the run on {day} August takes July and August together" in s.note_en
    assert "even after" not in s.note_en and s.note_en.count("July and August") == 1


# --- item 3: the E Hui Ban contribution is the three insurances --------------------------------


def test_contribution_services_paused_in_the_freeze_name_the_three_insurances(
    config: PlanConfig,
) -> None:
    ehuiban = service(config, "ehuiban", "si-contribution")
    assert ehuiban.name == "养老、工伤、失业保险费缴纳"
    assert ehuiban.name_en == "Pension, work-injury and unemployment contribution payment"
    for c in config.channels:
        for s in c.services:
            paused = any(r.during == "freeze" and r.state == "down" for r in s.expect)
            quoted = s.name.startswith("一事联办：")  # the notice's own name of that service
            if paused and "保险费" in s.name and not quoted:
                assert "养老、工伤、失业" in s.name, (c.id, s.id, s.name)
                assert "pension, work-injury and unemployment" in s.name_en.lower(), (c.id, s.id)


# --- item 9: operators' instructions are not told to citizens -----------------------------------

OPERATOR_WORDS = ("探测", "运营方", "probe", "operator", "health-check")


def test_no_citizen_text_holds_an_operators_instruction(config: PlanConfig) -> None:
    for where, text in citizen_texts(config):
        for word in OPERATOR_WORDS:
            assert word not in text.lower(), (where, word, text)


def test_the_instructions_live_in_comments_and_the_operators_section(tmp_path: Path) -> None:
    raw = REAL_PLAN.read_text("utf-8")
    comments = "\n".join(line for line in raw.splitlines() if line.lstrip().startswith("#"))
    assert "For operators: probe addresses" in comments
    for channel in ("ehuiban", "alipay-smart-hrss", "hubei-12333-wechat", "chushuitong"):
        block = raw[raw.index(f'id = "{channel}"') :].split("[[channels.services]]")[0]
        assert "# For operators:" in block, channel
    site = render_at(real_plan(), tmp_path, at("2022-07-01T12:00:00"))
    _, s = page(site)
    citizens = "".join(text for key, text in s.text.items() if key != "ops")
    assert "探测地址" not in citizens and "运营方" not in citizens
    ops = s.text["ops"]
    unobserved = sum(1 for ref in real_plan().services if ref.service.observed_by == "schedule")
    unobserved += sum(1 for ref in real_plan().services if ref.service.unset)
    assert f"{unobserved} 项业务还没有接入监测" in ops and "需由渠道运营方提供" in ops
    _, es = page(site, "en/index.html")
    assert f"{unobserved} services are not observed yet" in es.text["ops"]
    assert "鄂汇办APP：企业职工基本养老保险业务、工伤保险业务" in ops  # grouped by channel
    assert "需设置环境变量 EHUIBAN_API_URL、EHUIBAN_API_TOKEN" in ops  # and what to set
    assert "自助机和POS机：" in ops and "KIOSK_PUSH_TOKEN" in ops  # offline ones push
    assert "平台门户" not in ops and "网站门户" not in ops  # probed as they are
    assert "operator" not in "".join(t for k, t in es.text.items() if k != "ops").lower()


# --- items 4 to 8: the remaining words ----------------------------------------------------------


def test_english_notes_say_what_the_notice_says(config: PlanConfig) -> None:
    claim = service(config, "si-service-hall", "unemployment-benefit-claim")
    assert "extended automatically by the length of the freeze" in claim.note_en
    assert "按停机时长自动延长" in claim.note
    death = service(config, "si-service-hall", "death-benefit-claim")
    assert "survivors keep their entitlement" in death.note_en and "遗属" in death.note
    texts = citizen_texts(config)
    for banned in ("moves back", "not reduced", "on paper", "纸质", "不打折扣"):
        assert not [w for w, t in texts if banned in t], banned


def test_unpaid_months_are_not_arrears_and_their_channels_are_named(config: PlanConfig) -> None:
    for where, text in citizen_texts(config):
        assert "欠费" not in text and "欠缴" not in text, where
    window = milestone(config, "补缴2021社保年度未缴费的月份")
    assert window.title_en.startswith("Window for June/July 2022 contributions")
    assert "未缴费的月份" in window.detail and "楚税通APP、鄂汇办APP" in window.detail
    assert "协作银行" in window.detail
    # the named channels are tied to the 2021 months, not to June/July in general
    first, second = window.detail.split("。")[:2]
    assert "楚税通" not in first and "楚税通" in second


def test_inferences_are_marked_in_the_header(config: PlanConfig) -> None:
    raw = REAL_PLAN.read_text("utf-8")
    header = raw[raw.index("# What is inferred") : raw.index("\n[monitor]")]
    for inferred in ("si-bank-outlets", "tax-bank-outlets", "injury-assessment", "协作银行"):
        assert inferred in header, inferred
    assessment = service(config, "si-service-hall", "injury-assessment")
    assert "照常" not in assessment.note and "线下受理" in assessment.note
    for channel in ("si-bank-outlets", "tax-bank-outlets"):
        note = next(c for c in config.channels if c.id == channel).note
        assert "自助机和POS机" in note, channel


def test_the_missing_advice_is_given(config: PlanConfig) -> None:
    medical = service(config, "si-service-hall", "work-injury-medical")
    assert "停机前到协议机构办好出院结算" in medical.note and "在院的工伤病人" in medical.note
    assert "settle their discharge" in medical.note_en and "still in hospital" in medical.note_en
    for s in ("flex-batch-provincial", "flex-batch-wuhan"):
        note = service(config, "tax-bank-outlets", s)
        assert "及时查询2021社保年度" in note.note and "Check your payments" in note.note_en
    deferral = service(config, "si-service-hall", "deferral-application")
    assert "社企联络工作群" in deferral.note and "电子邮箱" in deferral.note
    assert "线上补办" in deferral.note and "online" in deferral.note_en
    resumes = next(
        m for m in config.milestones if m.at == at("2022-07-25T08:30:00") and not m.until
    )
    assert "线上补办" in resumes.detail and "defer" in resumes.detail_en
    claim = service(config, "si-service-hall", "unemployment-benefit-claim")
    assert "享受职工医保待遇" in claim.note and "medical-insurance benefits" in claim.note_en


def test_the_batch_days_are_single_days(config: PlanConfig) -> None:
    batch = [m for m in config.milestones if "批扣" in m.title]
    assert all(m.until is None for m in batch)
    days = sorted(m.at for m in batch)
    wanted = ["2022-06-15", "2022-06-20", "2022-07-15", "2022-07-20", "2022-08-15", "2022-08-20"]
    assert days == [date.fromisoformat(d) for d in wanted]
    for m in batch:
        assert re.match(r"(省本级|武汉市)", m.title), m.title
        assert isinstance(m.at, date) and not isinstance(m.at, datetime)
