"""Policies that a library's release could change are set by the project, not left to defaults.

A fresh install once failed its own tests because a new `cryptography` wheel (OpenSSL 4.1)
stopped reading a certificate's Common Name while Python's `ssl` still did. Each test here
makes the library's default the opposite of the project's choice, or inspects what the code
hands the library, so that dropping an explicit setting fails here and not on the day a release
changes its default.
"""

from __future__ import annotations

import inspect
import ssl
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import pytest
from aiohttp import web
from servers import ENGINES, HOST, Issued, aiohttp_server, make_ca, make_server_cert

from monitor.kinds.http import Prober
from monitor.net import http1, tls

#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, the verify code of a certificate for another host.
HOSTNAME_MISMATCH = 62


def _careless_default_context(**kwargs: Any) -> ssl.SSLContext:
    """Python's default context made as loose as a release could make it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.hostname_checks_common_name = True
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.verify_flags = ssl.VerifyFlags.VERIFY_X509_PARTIAL_CHAIN
    context.set_ciphers("DEFAULT")
    if kwargs.get("cafile") or kwargs.get("capath"):
        context.load_verify_locations(kwargs.get("cafile"), kwargs.get("capath"))
    return context


def _assert_policy(context: ssl.SSLContext) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.hostname_checks_common_name is False
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_flags == ssl.VerifyFlags.VERIFY_X509_TRUSTED_FIRST


def test_python_ssl_contexts_carry_the_policy_whatever_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every context the probes make for Python's `ssl` (the fallback, and the one for names
    OpenSSL 4 cannot check) sets the policy itself, even if Python's default loosens it."""
    ca = make_ca(tmp_path)
    expected_ciphers = ssl.create_default_context().get_ciphers()  # Python's own string
    monkeypatch.setattr(ssl, "create_default_context", _careless_default_context)
    assert ssl.create_default_context().hostname_checks_common_name is True
    contexts = [
        tls.python_context(),
        tls.python_context(cafile=ca.cert_path),
        tls.ClientContext(cafile=ca.cert_path).python_context,
    ]
    for context in contexts:
        _assert_policy(context)
        assert context.get_ciphers() == expected_ciphers


async def test_the_fallback_prober_uses_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where `cryptography` cannot be used, the default prober's context is the project's."""
    monkeypatch.setattr(tls, "system_context", lambda: None)
    async with Prober() as prober:
        context = prober._context()
    assert isinstance(context, ssl.SSLContext)
    _assert_policy(context)


class _RecordingLib:
    """`cryptography`'s lib, recording the host flags that `monitor.net.tls` sets."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.host_flags: list[int] = []

    def X509_VERIFY_PARAM_set_hostflags(self, param: Any, flags: int) -> None:
        self.host_flags.append(flags)
        self._lib.X509_VERIFY_PARAM_set_hostflags(param, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


def test_cryptography_engine_sets_its_host_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No partial wildcards and never the subject's Common Name, on the context that every
    connection inherits its verification parameters from."""
    bindings = tls._bindings()
    assert bindings is not None, "cryptography's bindings load here"
    ffi, lib = bindings
    recording = _RecordingLib(lib)
    monkeypatch.setattr(tls, "_bindings", lambda: (ffi, recording))
    tls.ClientContext(cafile=make_ca(tmp_path).cert_path)
    wanted = lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT
    assert recording.host_flags == [wanted]


def _page() -> web.Application:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    return app


async def _refusal(url: str, context: ssl.SSLContext | tls.ClientContext) -> int:
    """The verify code with which a fetch of `url` is refused."""
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        await http1.fetch(
            "GET",
            url,
            headers={},
            body=None,
            context=lambda: context,
            cap=1024,
            follow_redirects=False,
            user_agent="test",
            timings=http1.Timings(),
        )
    return refused.value.verify_code


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_a_common_name_alone_is_a_host_name_mismatch(tmp_path: Path, engine: str) -> None:
    """Both engines refuse a certificate named only by its Common Name with the code of a
    certificate for another host, on every `cryptography` build (48's OpenSSL 4.0 would
    still match the Common Name by default, 51's 4.1 does not)."""
    ca = make_ca(tmp_path)
    make: Callable[[Issued], ssl.SSLContext | tls.ClientContext] = ENGINES[engine]
    cn_only = make_server_cert(
        tmp_path, issuer=ca, dns_names=(), ip_addresses=(), common_name="localhost"
    )
    other = make_server_cert(
        tmp_path, issuer=ca, dns_names=("other.example",), ip_addresses=(), stem="other"
    )
    codes = []
    for cert in (cn_only, other):
        async with aiohttp_server(_page(), cert.server_context()) as base:
            codes.append(await _refusal(f"{base.replace(HOST, 'localhost')}/", make(ca)))
    assert codes == [HOSTNAME_MISMATCH, HOSTNAME_MISMATCH]


async def test_every_response_parser_has_its_leniencies_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of llhttp's leniencies that `httptools` exposes is set, off, on every parser: a
    new one in a later release (a parameter the code does not name) fails here."""
    settings: list[dict[str, Any]] = []

    class Recording(httptools.HttpResponseParser):
        def set_dangerous_leniencies(self, **kwargs: Any) -> None:
            settings.append(kwargs)
            super().set_dangerous_leniencies(**kwargs)

    monkeypatch.setattr(
        http1,
        "httptools",
        types.SimpleNamespace(
            HttpResponseParser=Recording, HttpParserUpgrade=httptools.HttpParserUpgrade
        ),
    )
    async with aiohttp_server(_page()) as base:
        response = await http1.fetch(
            "GET",
            f"{base}/",
            headers={},
            body=None,
            context=lambda: tls.python_context(),
            cap=1024,
            follow_redirects=False,
            user_agent="test",
            timings=http1.Timings(),
        )
    assert response.status == 200
    exposed = inspect.signature(httptools.HttpResponseParser.set_dangerous_leniencies).parameters
    # every leniency the parser has is named; only the two RFC 9112 asks a client to accept
    # (a folded header line, a line ended by LF alone) are on
    on = {"lenient_headers", "lenient_optional_cr_before_lf"}
    assert settings == [{name: name in on for name in set(exposed) - {"self"}}]
