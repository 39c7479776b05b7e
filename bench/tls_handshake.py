"""Client CPU of one full TLS handshake and GET: Python's `ssl` against `cryptography`'s OpenSSL.

    python bench/tls_handshake.py [--requests 300] [--rounds 5]

The library alone, without the event loop or the probe: a blocking socket, a fresh connection,
the handshake (certificate chain and host checked), one GET, the answer read to its end, close.
Both clients drive TLS on memory buffers the same way, so what differs is the library:

- `python-ssl`: Python's `ssl` (the system's OpenSSL), as `ssl.create_default_context()` sets it;
- `cryptography`: the OpenSSL in the `cryptography` wheel through its cffi bindings, with the
  key-exchange groups `monitor/net/tls.py` offers (an X25519 share);
- `cryptography-default-shares`: the same with that OpenSSL's default groups (OpenSSL 3.5 and
  newer send a post-quantum share as well).

The target is the benchmarks' aiohttp TLS server (`common.Target`) in its own process, with an
ECDSA P-256 certificate from a CA made here; only the client's CPU (`process_time`) is counted.
Rounds alternate between the clients; prints the median and range per client.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import REPO, Target, loadavg, machine

REQUEST = b"GET /open HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
HOST = "127.0.0.1"


def python_ssl(context: ssl.SSLContext, port: int) -> bytes:
    """One request through Python's `ssl` on memory BIOs."""
    sock = socket.create_connection((HOST, port))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=HOST)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    if outgoing.pending:
        sock.sendall(outgoing.read())
    tls.write(REQUEST)
    sock.sendall(outgoing.read())
    answer = []
    while data := sock.recv(65536):
        incoming.write(data)
        try:
            while chunk := tls.read(65536):
                answer.append(chunk)
            break  # b"": the server's close_notify
        except ssl.SSLWantReadError:
            continue
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            break
    sock.close()
    return b"".join(answer)


def cryptography_client(ca: Path, groups: bytes | None) -> Callable[[int], bytes]:
    """A request function on `cryptography`'s OpenSSL with one context made here."""
    from cryptography.hazmat.bindings.openssl.binding import Binding

    ffi, lib = Binding.ffi, Binding.lib
    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    assert lib.SSL_CTX_load_verify_locations(ctx, str(ca).encode(), ffi.NULL) == 1
    lib.SSL_CTX_set_verify(ctx, lib.SSL_VERIFY_PEER, ffi.NULL)
    if groups:
        assert lib.SSL_CTX_set1_curves_list(ctx, groups) == 1
    buffer = ffi.new("char[]", 65536)
    address = ipaddress.ip_address(HOST).packed

    def request(port: int) -> bytes:
        sock = socket.create_connection((HOST, port))
        conn = lib.SSL_new(ctx)
        incoming, outgoing = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(conn, incoming, outgoing)
        lib.X509_VERIFY_PARAM_set1_ip(lib.SSL_get0_param(conn), address, len(address))
        lib.SSL_set_connect_state(conn)

        def flush() -> None:
            while (count := lib.BIO_read(outgoing, buffer, 65536)) > 0:
                sock.sendall(ffi.buffer(buffer, count)[:])

        while (result := lib.SSL_do_handshake(conn)) != 1:
            flush()
            if lib.SSL_get_error(conn, result) != lib.SSL_ERROR_WANT_READ:
                raise RuntimeError(f"handshake failed: {lib.SSL_get_verify_result(conn)}")
            data = sock.recv(65536)
            lib.BIO_write(incoming, data, len(data))
        flush()
        lib.SSL_write(conn, REQUEST, len(REQUEST))
        flush()
        answer, ended = [], False
        while not ended and (data := sock.recv(65536)):
            lib.BIO_write(incoming, data, len(data))
            while (count := lib.SSL_read(conn, buffer, 65536)) > 0:
                answer.append(ffi.buffer(buffer, count)[:])
            ended = lib.SSL_get_error(conn, count) == lib.SSL_ERROR_ZERO_RETURN
        lib.SSL_free(conn)
        sock.close()
        return b"".join(answer)

    return request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from cryptography.hazmat.bindings.openssl.binding import Binding
    from servers import make_ca, make_server_cert

    from monitor.net.tls import _GROUPS

    info = machine()
    library = Binding.ffi.string(Binding.lib.OpenSSL_version(0)).decode()
    print(
        f"{args.rounds} rounds of {args.requests} requests; {info['cpus']} CPUs ({info['cpu']}); "
        f"Python's ssl on {ssl.OPENSSL_VERSION}, cryptography's on {library}; load {loadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="tls-handshake-") as tmp:
        ca = make_ca(Path(tmp))
        server = make_server_cert(Path(tmp), issuer=ca, ip_addresses=(HOST,))
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        clients: dict[str, Callable[[int], bytes]] = {
            "python-ssl": lambda port: python_ssl(context, port),
            "cryptography": cryptography_client(ca.cert_path, _GROUPS[0]),
            "cryptography-default-shares": cryptography_client(ca.cert_path, None),
        }
        with Target(1, 1, tls=(server.cert_path, server.key_path)) as target:
            for name, client in clients.items():
                if not client(target.port).startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"{name}: no answer from the target")
            spent: dict[str, list[float]] = {name: [] for name in clients}
            for _ in range(args.rounds):
                for name, client in clients.items():
                    started = time.process_time()
                    for _ in range(args.requests):
                        client(target.port)
                    spent[name].append((time.process_time() - started) / args.requests * 1e6)
    print("client CPU per request (us): median (min-max)")
    for name, values in spent.items():
        print(
            f"  {name:28s} {statistics.median(values):5.0f} ({min(values):.0f}-{max(values):.0f})"
        )
    print(f"load after {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
