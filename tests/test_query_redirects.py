"""The prometheus kind and redirects (issue 23): a query never leaves the origin it was
written for.

A Prometheus server's own API answers a query itself; a redirect comes only from something in
front of it (a proxy moving a path prefix). Headers of a prometheus probe often carry a token
(`X-Api-Key`, `Authorization`), so a redirect to another origin (scheme, host, port) is
refused with `query failed (redirect to another host)` and nothing at all is sent there. A
redirect within the origin is followed, the form asked again. Two aiohttp servers on 127.0.0.1
on two ports: a different port is a different origin.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from aiohttp import web
from servers import aiohttp_server

from monitor.kinds.prometheus import PrometheusProbe, QueryProber

TOKEN = "key-that-must-stay-home"
Handler = Callable[[web.Request], Awaitable[web.Response]]
ANSWER = {"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}


def spec(url: str, **fields: object) -> PrometheusProbe:
    return PrometheusProbe.model_validate(
        {"kind": "prometheus", "url": url, "query": "up", "serving_if": "== 1", **fields}
    )


def answering(seen: list[dict[str, str]]) -> Handler:
    """A Prometheus stand-in that keeps the headers and the query of every request it gets
    (from the form of a POST, from the URL of a GET)."""

    async def query(request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        seen.append({**request.headers, "query": str(form.get("query"))})
        return web.json_response(ANSWER)

    return query


def recorder(seen: list[dict[str, str]]) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answering(seen))
    return app


def redirector(target: str, status: int = 307) -> web.Application:
    """A proxy that sends every request on to `target` + its path."""

    async def move(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": target + request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", move)
    return app


async def test_a_redirect_to_another_port_is_refused_and_the_header_stays_home() -> None:
    seen: list[dict[str, str]] = []
    headers = {"X-Api-Key": TOKEN, "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp_server(recorder(seen)) as other, QueryProber() as prober:
        for status in (301, 302, 303, 307, 308):
            async with aiohttp_server(redirector(other, status)) as first:
                observed = await prober.probe(spec(first, headers=headers), timedelta(seconds=5))
            assert (observed.serving, observed.reason) == (
                None,
                "query failed (redirect to another host)",
            ), status
    assert seen == []  # nothing reached the other origin, not even a request without headers


async def test_a_redirect_on_a_relative_location_to_another_origin_is_refused() -> None:
    """`//host:port/path` (scheme-relative) names another origin too."""
    seen: list[dict[str, str]] = []
    async with aiohttp_server(recorder(seen)) as other:
        relative = other.removeprefix("http:")
        async with aiohttp_server(redirector(relative)) as first, QueryProber() as prober:
            observed = await prober.probe(
                spec(first, headers={"X-Api-Key": TOKEN}), timedelta(seconds=5)
            )
    assert observed.reason == "query failed (redirect to another host)"
    assert seen == []


async def test_a_redirect_within_the_origin_is_followed_with_the_query_and_headers() -> None:
    seen: list[dict[str, str]] = []

    async def move(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        return web.Response(status=status, headers={"Location": "/prometheus/api/v1/query"})

    app = web.Application()
    app.router.add_route("*", "/old/{status}/api/v1/query", move)
    app.router.add_route("*", "/prometheus/api/v1/query", answering(seen))
    async with aiohttp_server(app) as base, QueryProber() as prober:
        for status in (301, 302, 303, 307, 308):
            observed = await prober.probe(
                spec(f"{base}/old/{status}", headers={"X-Api-Key": TOKEN}), timedelta(seconds=5)
            )
            assert (observed.serving, observed.reason) == (True, "query value 1 == 1"), status
    assert [(s["query"], s.get("X-Api-Key")) for s in seen] == [("up", TOKEN)] * 5


async def test_redirects_that_never_end_are_a_failed_query() -> None:
    async def loop(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", loop)
    async with aiohttp_server(app) as base, QueryProber() as prober:
        observed = await prober.probe(spec(base), timedelta(seconds=5))
    assert (observed.serving, observed.reason) == (None, "query failed (too many redirects)")
