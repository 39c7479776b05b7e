"""The dns kind: ask a resolver for a name and judge its answer.

Citizens on some networks are sent to the wrong place before any HTTP request is made: a
resolver that answers with a stale address or a hijacked one, or that says the name does not
exist. An http probe from the monitor's own network cannot see that; this kind asks the
resolver those citizens use (`server`, e.g. a carrier's 114.114.114.114) and compares what it
answers with the addresses the channel really has (`answers`).

```toml
[channels.services.probe]
kind = "dns"
name = "www.hbzwfw.gov.cn"   # the name to resolve
type = "A"                   # A, AAAA, CNAME, TXT
server = "114.114.114.114"   # optional: the resolver to ask (host[:port]); default the system's
answers = ["59.175.0.0/16"]  # optional: any answer outside these is not serving
```

`answers` are addresses or networks for A and AAAA, host names for CNAME and texts for TXT.
Reasons name what was seen: `NXDOMAIN`, `no answer`, `resolver timeout`, `resolver failed`,
`DNS answer 198.51.100.66 outside the expected set`, and `DNS answered` when all is well.

dnspython is imported when the prober is built (`run`, `check`), never by the plan's schema:
`validate` and `plan` load no network code.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from monitor.fields import PositiveDuration, _Model
from monitor.kinds.base import Kind, ProberOptions
from monitor.observation import Observation
from monitor.reason_rows import Reason

if TYPE_CHECKING:
    import dns.asyncresolver

log = logging.getLogger(__name__)

RecordType = Literal["A", "AAAA", "CNAME", "TXT"]
#: One label of a host name, once encoded for DNS (IDNA): letters, digits, hyphens, underscores.
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,63}\Z")
#: `[v6]:port` or `[v6]` as a server.
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::(\d+))?\Z")

SERVING = "DNS answered"


def _check_name(value: str) -> str:
    """A host name DNS can carry: labels of at most 63 characters, 253 in all. A name in
    Chinese (中文域名) is accepted in its IDNA form, as a resolver would be asked."""
    name = value.strip().rstrip(".")
    try:
        encoded = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError("expected a host name (it cannot be encoded for DNS)") from None
    labels = encoded.split(".")
    if not name or len(encoded) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            "expected a host name such as www.hbzwfw.gov.cn (labels of letters, digits and "
            "hyphens, at most 63 characters each)"
        )
    return encoded


def _check_server(value: str) -> str:
    """A resolver's IP address, with an optional port: `114.114.114.114`, `127.0.0.1:5353`,
    `2400:3200::1` or `[2400:3200::1]:53`. An address, not a name: resolving the resolver's
    name would ask some other resolver first."""
    _split_server(value)
    return value


def _split_server(value: str) -> tuple[str, int]:
    """(address, port) of a `server` setting; ValueError when it is neither."""
    bracketed = _BRACKETED.match(value)
    if bracketed:
        host, port = bracketed.group(1), bracketed.group(2)
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            "expected the resolver's IP address, optionally with a port "
            '(such as "114.114.114.114" or "127.0.0.1:5353")'
        ) from None
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("expected a resolver port from 1 to 65535")
    return str(address), int(port) if port is not None else 53


class DnsProbe(_Model):
    """One question to a resolver: a name and a record type, and the answers that are right."""

    kind: Literal["dns"]
    name: Annotated[str, AfterValidator(_check_name)]
    type: RecordType = "A"
    server: Annotated[str, AfterValidator(_check_server)] | None = None
    answers: tuple[str, ...] = Field(default=())
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None

    @field_validator("answers")
    @classmethod
    def _answers_fit_the_type(cls, answers: tuple[str, ...], info: ValidationInfo) -> tuple:
        """Addresses or networks of the type's IP version for A and AAAA, host names for CNAME;
        TXT answers are texts, compared as written. A field's check (not the model's), so the
        error's key path ends in `answers`."""
        record_type = info.data.get("type")
        for index, answer in enumerate(answers):
            if record_type in ("A", "AAAA"):
                try:
                    network = ipaddress.ip_network(answer, strict=False)
                except ValueError:
                    raise ValueError(
                        f"expected answers[{index}] to be an IP address or network "
                        '(such as "59.175.0.0/16")'
                    ) from None
                if network.version != (4 if record_type == "A" else 6):
                    version = "IPv4" if record_type == "A" else "IPv6"
                    raise ValueError(
                        f"expected answers[{index}] to be an {version} address or network "
                        f"(type is {record_type})"
                    )
            elif record_type == "CNAME":
                _check_name(answer)
        return answers

    def __repr__(self) -> str:  # as every probe: only its kind in a log line
        return f"{type(self).__name__}(kind={self.kind!r})"

    __str__ = __repr__

    @property
    def unset(self) -> tuple[str, ...]:
        """A dns probe refers to no environment variables."""
        return ()

    def outside(self, answer: str) -> bool:
        """Whether one answer of the resolver is outside the expected set (never, when no set
        is given)."""
        if not self.answers:
            return False
        if self.type in ("A", "AAAA"):
            address = ipaddress.ip_address(answer)
            return not any(address in _network(expected) for expected in self.answers)
        if self.type == "CNAME":
            return answer.lower().rstrip(".") not in {
                _check_name(expected).lower() for expected in self.answers
            }
        return answer not in self.answers


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


class DnsProber:
    """Asks resolvers with dnspython's asyncio resolver: a fresh question every time (no
    cache), bounded as a whole by the probe's timeout. Failures come back as reasons."""

    kind = "dns"

    def __init__(self) -> None:
        #: One resolver per `server` setting (None: the system's, read once from resolv.conf).
        self._resolvers: dict[str | None, dns.asyncresolver.Resolver] = {}
        self._faults: set[type] = set()

    def _resolver(self, server: str | None) -> dns.asyncresolver.Resolver:
        import dns.asyncresolver

        resolver = self._resolvers.get(server)
        if resolver is None:
            resolver = dns.asyncresolver.Resolver(configure=server is None)
            if server is not None:
                address, port = _split_server(server)
                resolver.nameservers = [address]
                resolver.port = port
            resolver.cache = None  # every probe asks again
            self._resolvers[server] = resolver
        return resolver

    async def probe(
        self, spec: DnsProbe, timeout: timedelta, at: datetime | None = None
    ) -> Observation:
        """Ask once; never raises for anything the resolver or the network does."""
        import dns.exception
        import dns.resolver

        at = at or datetime.now(UTC)
        started = perf_counter()
        seconds = timeout.total_seconds()
        try:
            async with asyncio.timeout(seconds):
                answer = await self._resolver(spec.server).resolve(
                    spec.name + ".", spec.type, lifetime=seconds, search=False
                )
            serving, reason = judged(spec, [_text(spec.type, rdata) for rdata in answer])
        except dns.resolver.NXDOMAIN:
            serving, reason = False, "NXDOMAIN"
        except dns.resolver.NoAnswer:
            serving, reason = False, "no answer"
        except (TimeoutError, dns.exception.Timeout):
            serving, reason = False, "resolver timeout"
        except (dns.exception.DNSException, OSError):  # SERVFAIL, REFUSED, a bad reply
            serving, reason = False, "resolver failed"
        except Exception as exc:  # a fault of ours or of the library: still an observation
            if type(exc) not in self._faults:
                self._faults.add(type(exc))
                log.warning("a dns probe failed unexpectedly (%s)", type(exc).__name__)
            serving, reason = False, f"probe failed ({type(exc).__name__})"
        return Observation(at, serving, reason, None, perf_counter() - started)

    async def close(self) -> None:
        """Nothing to close: every question opens and closes its own socket."""


def _text(record_type: str, rdata: object) -> str:
    """One answer as the plan writes it: an address, a host name without its final dot, or a
    TXT record's strings joined."""
    if record_type in ("A", "AAAA"):
        return str(rdata.address)  # type: ignore[attr-defined]
    if record_type == "CNAME":
        return rdata.target.to_text(omit_final_dot=True)  # type: ignore[attr-defined]
    return b"".join(rdata.strings).decode("utf-8", errors="replace")  # type: ignore[attr-defined]


def judged(spec: DnsProbe, answers: list[str]) -> tuple[bool, str]:
    """(serving, reason) for the resolver's answers: not serving, naming the first answer
    outside the expected set, when there is one."""
    for answer in answers:
        if spec.outside(answer):
            return False, f"DNS answer {answer} outside the expected set"
    return True, SERVING


#: The dns kind's reasons. An answer outside the set is named to operators; the page says
#: only that the answer is wrong (a TXT answer could hold anything).
REASONS: tuple[Reason, ...] = (
    Reason(SERVING, "域名解析正常", "the name resolves as expected"),
    Reason("NXDOMAIN", "域名解析结果：域名不存在", "the resolver says the name does not exist"),
    Reason("no answer", "域名没有该类型的解析记录", "the name has no record of this type"),
    Reason("resolver timeout", "域名解析服务器未及时响应", "the resolver did not answer in time"),
    Reason("resolver failed", "域名解析服务器拒绝或出错", "the resolver refused or failed"),
    Reason(
        "DNS answer {what} outside the expected set",
        "域名解析到 {what}，不在预期范围内（可能被劫持）",
        "the name resolves to {what}, outside the expected set (possibly hijacked)",
        "域名解析结果不在预期范围内",
        "the name resolves to an unexpected address",
    ),
)


def _prober(options: ProberOptions) -> DnsProber:
    """The dns kind's prober; dnspython is loaded here, when `run` or `check` starts."""
    import dns.asyncresolver  # noqa: F401

    return DnsProber()


KIND = Kind("dns", DnsProbe, reasons=REASONS, prober=_prober)
