"""`push`: one push to a running monitor, for cron jobs and kiosk scripts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from monitor import DEFAULT_PORT
from monitor.cli.common import (
    EXIT_MISMATCH,
    EXIT_OK,
    UsageError,
)
from monitor.fields import check_probe_url

PUSH_TOKEN_VARIABLE = "CHANNEL_MONITOR_PUSH_TOKEN"


def cmd_push(args: argparse.Namespace) -> int:
    """Send one push (cron jobs, kiosk scripts): exit 0 when the monitor accepted it, else 1.

    The standard library's client, so a push costs no import of aiohttp or httpx."""
    import os
    import urllib.error
    import urllib.request
    from urllib.parse import quote, urlsplit

    token = os.environ.get(PUSH_TOKEN_VARIABLE, "").strip()
    if not token:
        raise UsageError(
            f"set {PUSH_TOKEN_VARIABLE} to the service's push token "
            f"(请在环境变量 {PUSH_TOKEN_VARIABLE} 中设置该服务的推送令牌)"
        )
    if not all("!" <= c <= "~" for c in token):  # what a header can carry, nothing else
        raise UsageError(
            f"{PUSH_TOKEN_VARIABLE}: expected printable ASCII without spaces or line breaks "
            "(the token is not repeated here) (推送令牌只能包含可打印的 ASCII 字符)"
        )
    expected = f"--url: expected the monitor's address, e.g. http://127.0.0.1:{DEFAULT_PORT}"
    try:
        check_probe_url(args.url)  # the check probe URLs get: parses, a host, a port that exists
        base = urlsplit(args.url)
    except ValueError as exc:  # its messages never quote the URL
        raise UsageError(f"{expected}; {exc} (监测服务地址无效)") from None
    if base.scheme not in ("http", "https") or not base.netloc:
        raise UsageError(expected)
    body: dict[str, Any] = {}
    if args.down:
        body["serving"] = False
    if args.reason is not None:
        body["reason"] = args.reason
    if args.count is not None:
        body["count"] = args.count
    path = f"/push/{quote(args.channel, safe='')}/{quote(args.service, safe='')}"
    request = urllib.request.Request(
        args.url.rstrip("/") + path,
        data=json.dumps(body, ensure_ascii=False).encode("utf-8") if body else b"",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    where = base.netloc.rpartition("@")[2]  # never echo credentials written into the URL
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, answer = response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read(65536)
    except (ValueError, UnicodeError):  # what the URL checks above let through and http refuses
        raise UsageError(
            f"--url: cannot be sent as written (characters HTTP cannot carry?); {expected[7:]} "
            "(监测服务地址无法发送)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        text = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        print(
            f"channel-monitor push: cannot reach {where}: {text} (无法连接监测服务)",
            file=sys.stderr,
        )
        return EXIT_MISMATCH
    try:
        data = json.loads(answer)
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    if 200 <= status < 300:
        print(f"{args.channel}/{args.service}: accepted (HTTP {status}), {_answer(data)}")
        return EXIT_OK
    error = data.get("error") or "not accepted"
    error_zh = data.get("error_zh") or "未被接受"
    print(
        f"channel-monitor push: {args.channel}/{args.service}: HTTP {status}: {error} ({error_zh})",
        file=sys.stderr,
    )
    return EXIT_MISMATCH


def _answer(data: dict) -> str:
    """What the monitor made of the push, this push and the service's incident apart: a
    "down" during a freeze agrees with the plan even while an earlier incident is open."""
    if "matches_plan" not in data:  # a monitor from before the answer said so
        return f"verdict {data.get('verdict', '?')}"
    said = {True: "serving", False: "not serving"}.get(data.get("serving"), "?")
    agrees = "matches the plan" if data["matches_plan"] else "does not match the plan"
    agrees_zh = "符合计划" if data["matches_plan"] else "不符合计划"
    incident = data.get("incident") or {}
    if incident.get("open"):
        state = f"incident still open ({incident.get('direction')})"
        state_zh = "告警事件仍未解除"
    else:
        state, state_zh = "no incident open", "无未解除的事件"
    expected = data.get("expected", "?")
    return (
        f"this push: {said}, expected {expected}, {agrees}; {state} / "
        f"本次推送{agrees_zh}；{state_zh}"
    )


# --- parser ----------------------------------------------------------------------------------
