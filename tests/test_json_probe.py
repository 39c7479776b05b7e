"""JSON answers (issue 11, item 1): an HTTP probe that posts a body and holds the answer to
JMESPath conditions, against a real aiohttp server on 127.0.0.1.

An app's back-end API is how the monitor sees an app, a WeChat account or a mini-program: the
API answers 200 in both states, and only its JSON says whether business is taken.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiohttp import web
from servers import aiohttp_server

from monitor.kinds.http import DEFAULT_BODY_CAP, HttpProbe, Prober, json_failure
from monitor.observation import Observation
from monitor.reasons import PHRASES as REASON_PHRASES

OPEN = {"code": 0, "data": {"open": True, "menu": ["pension", "medical"]}}
PAUSED = {"code": 1001, "msg": "系统升级，暂停办理", "data": {"open": False, "menu": []}}


class Api:
    """The back end of an app: `/status` answers its state as JSON; remembers what it got."""

    def __init__(self) -> None:
        self.state = OPEN
        self.requests: list[tuple[str, str, bytes]] = []

    async def status(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.headers.get("Content-Type", ""), body))
        return web.json_response(self.state)

    async def html(self, _request: web.Request) -> web.Response:
        return web.Response(text="<html>系统维护中</html>", content_type="text/html")

    async def huge(self, _request: web.Request) -> web.Response:
        padding = "x" * (DEFAULT_BODY_CAP + 10)  # valid JSON, but only its head is read
        return web.json_response({"code": 0, "padding": padding})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/status", self.status)
        app.router.add_get("/html", self.html)
        app.router.add_get("/huge", self.huge)
        return app


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, str]]:
    server = Api()
    async with aiohttp_server(server.app()) as base:
        yield server, base


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    async with Prober() as prober:
        yield prober


async def probe(prober: Prober, **fields: object) -> Observation:
    spec = HttpProbe.model_validate(fields)
    return await prober.probe(spec, timedelta(seconds=5))


def documented(observation: Observation) -> None:
    assert any(observation.reason.startswith(p) for p in REASON_PHRASES), observation


CONDITIONS = ["code == `0`", "data.open"]


async def test_open_answer_is_serving(api: tuple[Api, str], prober: Prober) -> None:
    _server, base = api
    observation = await probe(prober, url=f"{base}/status", json=CONDITIONS)
    assert (observation.serving, observation.reason, observation.status_code) == (
        True,
        "HTTP 200",
        200,
    )


async def test_paused_answer_names_the_first_condition_that_failed(
    api: tuple[Api, str], prober: Prober
) -> None:
    server, base = api
    server.state = PAUSED
    observation = await probe(prober, url=f"{base}/status", json=CONDITIONS)
    assert observation.serving is False
    assert observation.reason == "json condition failed: code == `0`"
    assert observation.status_code == 200
    documented(observation)
    server.state = {"code": 0, "data": {"open": False}}
    observation = await probe(prober, url=f"{base}/status", json=CONDITIONS)
    assert observation.reason == "json condition failed: data.open"


async def test_a_body_that_is_not_json(api: tuple[Api, str], prober: Prober) -> None:
    _server, base = api
    observation = await probe(prober, url=f"{base}/html", json=["code == `0`"])
    assert (observation.serving, observation.reason) == (False, "body is not JSON")
    documented(observation)


async def test_a_body_cut_by_the_cap_is_not_json(api: tuple[Api, str], prober: Prober) -> None:
    """The cap holds for JSON too: the monitor never reads more to make a condition work."""
    _server, base = api
    observation = await probe(prober, url=f"{base}/huge", json=["code == `0`"])
    assert (observation.serving, observation.reason) == (False, "body is not JSON")


async def test_post_sends_the_body_with_a_json_content_type(
    api: tuple[Api, str], prober: Prober
) -> None:
    server, base = api
    body = json.dumps({"business": "pension"})
    observation = await probe(
        prober, url=f"{base}/status", method="POST", body=body, json=["data.open"]
    )
    assert observation.serving is True
    assert server.requests[-1] == ("POST", "application/json", body.encode())
    # a Content-Type the plan gives wins; a body that is not JSON goes as text
    await probe(
        prober,
        url=f"{base}/status",
        method="POST",
        body="q=pension",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert server.requests[-1] == ("POST", "application/x-www-form-urlencoded", b"q=pension")
    await probe(prober, url=f"{base}/status", method="POST", body="pension")
    assert server.requests[-1] == ("POST", "text/plain; charset=utf-8", b"pension")


async def test_status_is_checked_before_the_json(prober: Prober) -> None:
    async def unavailable(_request: web.Request) -> web.Response:
        return web.json_response({"code": 0}, status=503)

    app = web.Application()
    app.router.add_get("/", unavailable)
    async with aiohttp_server(app) as base:
        observation = await probe(prober, url=f"{base}/", json=["code == `0`"])
    assert (observation.serving, observation.reason) == (False, "HTTP 503")


@pytest.mark.parametrize(
    ("document", "condition", "holds"),
    [
        (b'{"n": 0}', "n", True),  # JMESPath: 0 is truthy
        (b'{"n": ""}', "n", False),
        (b'{"n": []}', "n", False),
        (b'{"n": {}}', "n", False),
        (b'{"n": null}', "n", False),
        (b"{}", "n", False),
        (b'{"menu": ["pension"]}', "contains(menu, 'pension')", True),
        (b'{"menu": ["medical"]}', "contains(menu, 'pension')", False),
        (b'{"n": "x"}', "abs(n)", False),  # a type error at run time fails, never raises
        (b"[" * 100_000, "n", None),  # nested deeper than the parser goes
        (b"\xff\xfe{", "n", None),
    ],
)
def test_condition_truth(document: bytes, condition: str, holds: bool | None) -> None:
    failure = json_failure(document, (condition,))
    expected = {True: None, False: f"json condition failed: {condition}", None: "body is not JSON"}
    assert failure == expected[holds]
