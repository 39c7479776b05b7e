"""Local servers that misbehave on purpose, for the prober tests, and test TLS certificates.

Every server binds 127.0.0.1 on a free port, runs on the test's own event loop and is closed when
its `async with` block ends (open connections included). `aiohttp_server` serves a normal aiohttp
application; `RawServer` hands each accepted connection to a coroutine that writes whatever bytes
it likes, for the failures aiohttp will not produce (silence, trickles, resets mid-body).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from monitor.net import tls

HOST = "127.0.0.1"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens: bound to learn its number, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def aiohttp_server(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 (a free port); yields the base URL without a trailing slash."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        yield f"{scheme}://{HOST}:{port}"
    finally:
        await runner.cleanup()


class RawServer:
    """An asyncio socket server whose handler writes raw bytes; counts the connections it took."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.port = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up: that is what these servers are for
        finally:
            writer.close()
            self._tasks.discard(task)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request line and headers (the prober's GET has no body)."""
    return await reader.readuntil(b"\r\n\r\n")


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, read the request, say nothing until the client hangs up."""
    await read_request(reader)
    await reader.read()  # returns at the client's EOF; the server's exit cancels it otherwise


async def trickle_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send the headers at once, then one byte of a 100000-byte body a second."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(120):  # bounded; the client gives up long before
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(1)


async def trickle_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send the status line, then the headers one byte a second: never a complete answer."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for _ in range(120):
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(1)


def reset_mid_body(rst: bool) -> Handler:
    """Declare a 100000-byte body, send 1000 bytes, then close (FIN) or abort (RST)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 1000
        )
        await writer.drain()
        if rst:  # SO_LINGER with a zero timeout: close() sends RST instead of FIN
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    return handler


# --- TLS ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as objects and as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (a CA) and nothing else, with the
        probes' policy (`tls.python_context`, Python's `ssl` engine)."""
        return tls.python_context(cafile=str(self.cert_path))

    def tls_context(self) -> tls.ClientContext:
        """The same for the probes' own TLS engine (`cryptography`'s OpenSSL)."""
        return tls.ClientContext(cafile=self.cert_path)


#: Who makes a probe's handshakes, by test id: `cryptography`'s OpenSSL (`monitor.net.tls`, the
#: default where it loads) or Python's `ssl` (the fallback). Each makes a client context that
#: trusts the given CA and nothing else; the TLS tests run on both and expect the same.
ENGINES: dict[str, Callable[[Issued], ssl.SSLContext | tls.ClientContext]] = {
    "cryptography-openssl": lambda ca: ca.tls_context(),
    "python-ssl": lambda ca: ca.client_context(),
}


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _save(directory: Path, stem: str, cert: x509.Certificate, key) -> Issued:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert, key, cert_path, key_path)


def _sign(
    directory: Path,
    stem: str,
    builder: x509.CertificateBuilder,
    key: ec.EllipticCurvePrivateKey,
    issuer: Issued | None,
) -> Issued:
    """Sign with the issuer's key (naming it), or self-sign when there is no issuer; saved."""
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return _save(directory, stem, cert, key)


def make_ca(
    directory: Path,
    common_name: str = "channel-monitor test CA",
    *,
    issuer: Issued | None = None,
    stem: str = "ca",
) -> Issued:
    """A CA certificate: a root (self-signed) or, with `issuer`, an intermediate under it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=365))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _sign(directory, stem, builder, key, issuer)


def make_server_cert(
    directory: Path,
    *,
    issuer: Issued | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = (HOST,),
    stem: str = "server",
    common_name: str | None = None,
) -> Issued:
    """A server certificate for the given names, signed by `issuer` (self-signed when None);
    without names it has no subjectAltName at all, only its common name."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=0)
    subject = _name(common_name or (dns_names[0] if dns_names else "server"))
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _sign(directory, stem, builder, key, issuer)
