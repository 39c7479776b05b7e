"""TLS for HTTPS probes on the OpenSSL that `cryptography` ships, with the system's trust store.

Why not Python's `ssl`: a probe makes a full handshake every time (a resumed session would not
check the certificate again), and the handshake is most of an HTTPS probe's CPU. Python's `ssl`
uses the system's OpenSSL, here 3.0, whose handshake costs about 200 us more than the newer
OpenSSL in `cryptography`'s wheels: 766 against 561 us of client CPU for a handshake and a GET in
a loop (bench/RESULTS.md section 4, "Sixth round").

What a probe checks is what `ssl.create_default_context()` checks, set explicitly on both
engines (`python_context` for Python's `ssl`) so that no release of a library changes it: the
same trust files (`ssl.get_default_verify_paths()`, so `SSL_CERT_FILE` and `SSL_CERT_DIR`
apply), the certificate chain, the host name or IP address (OpenSSL's own check, no partial
wildcards and never the subject's Common Name: `host_flags`), TLS 1.2 at least, Python's cipher
string, and the key-exchange groups OpenSSL 3.0 offers (an X25519 key share first; no
post-quantum share that a server would then ask for in a second round trip).
Failures are raised as Python's own exceptions (`ssl.SSLCertVerificationError` with its
`verify_code`, `ssl.SSLError`, `ConnectionResetError`), so the probe's reasons do not change.

Where `cryptography` is missing or its bindings lack a function used here, `system_context()`
returns None and probes use Python's `ssl` as before.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import re
import ssl
import threading
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

#: Python's default cipher string (TLS 1.2; TLS 1.3's suites are OpenSSL's defaults in both).
_CIPHERS = (
    b"@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"
)
#: OpenSSL 3.0's default groups, in its order; the first gets the key share.
_GROUPS = (
    b"X25519:P-256:X448:P-521:P-384:ffdhe2048:ffdhe3072:ffdhe4096:ffdhe6144:ffdhe8192",
    b"X25519:P-256:P-384",  # a build without X448 or the finite-field groups
)
#: Plaintext and ciphertext move through one buffer of a TLS record's size at a time.
_CHUNK = 16 * 1024
#: What is used of the bindings; without any of them, Python's `ssl` is used instead.
_NEEDED = (
    "SSL_CTX_new",
    "TLS_client_method",
    "SSL_CTX_free",
    "SSL_CTX_set_options",
    "SSL_CTX_set_mode",
    "SSL_CTX_set_min_proto_version",
    "SSL_CTX_set_cipher_list",
    "SSL_CTX_set1_curves_list",
    "SSL_CTX_set_verify",
    "SSL_CTX_get0_param",
    "SSL_CTX_load_verify_locations",
    "X509_VERIFY_PARAM_set_hostflags",
    "X509_VERIFY_PARAM_set1_host",
    "X509_VERIFY_PARAM_set1_ip",
    "X509_VERIFY_PARAM_new",
    "X509_VERIFY_PARAM_free",
    "SSL_new",
    "SSL_free",
    "SSL_get0_param",
    "SSL_set_tlsext_host_name",
    "SSL_set_connect_state",
    "SSL_set_bio",
    "BIO_new",
    "BIO_s_mem",
    "BIO_set_mem_eof_return",
    "BIO_read",
    "BIO_write",
    "SSL_do_handshake",
    "SSL_read",
    "SSL_write",
    "SSL_get_error",
    "SSL_get_verify_result",
    "X509_verify_cert_error_string",
    "SSL_get_peer_certificate",
    "X509_free",
    "X509_getm_notAfter",
    "ASN1_TIME_to_generalizedtime",
    "ASN1_GENERALIZEDTIME_free",
    "ASN1_STRING_get0_data",
    "ASN1_STRING_length",
    "ERR_get_error",
    "ERR_clear_error",
    "ERR_reason_error_string",
    "OpenSSL_version",
    # and the constants
    "SSL_OP_ALL",
    "SSL_OP_NO_SSLv2",
    "SSL_OP_NO_SSLv3",
    "SSL_OP_NO_COMPRESSION",
    "SSL_OP_CIPHER_SERVER_PREFERENCE",
    "SSL_OP_SINGLE_DH_USE",
    "SSL_OP_SINGLE_ECDH_USE",
    "SSL_MODE_AUTO_RETRY",
    "TLS1_2_VERSION",
    "SSL_VERIFY_PEER",
    "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS",
    "X509_CHECK_FLAG_NEVER_CHECK_SUBJECT",
    "SSL_ERROR_WANT_READ",
    "SSL_ERROR_WANT_WRITE",
    "SSL_ERROR_ZERO_RETURN",
    "X509_V_OK",
)


#: TLS 1.2 at least on both engines, whatever a library's own floor is.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: The X509 flags Python's `ssl` gets from `create_default_context()` on 3.11: trusted
#: certificates first, and neither `VERIFY_X509_STRICT` nor `VERIFY_X509_PARTIAL_CHAIN`, which
#: Python 3.13 added to its defaults (a chain trusted today would be refused after an upgrade).
VERIFY_FLAGS = ssl.VerifyFlags.VERIFY_X509_TRUSTED_FIRST


def host_flags(lib: Any) -> int:
    """The host-name policy of the probes' own engine: no partial wildcard (`w*.example`), and
    the subject's Common Name never read, even when the certificate names no host in a subject
    alternative name (as browsers, Go and RFC 9525 decide). OpenSSL 4.0 still fell back to the
    Common Name and 4.1 does not: set explicitly, a certificate is trusted or not whichever
    `cryptography` wheel is installed."""
    return lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT


def python_context(
    cafile: str | os.PathLike | None = None, capath: str | None = None
) -> ssl.SSLContext:
    """Python's own client context with the probes' policy set, not left to the defaults of a
    Python or OpenSSL release: the same trust as `ClientContext` (the system's store, or
    `cafile` and `capath`), the host name checked without the Common Name fallback that
    Python's default still allows (`hostname_checks_common_name`), TLS 1.2 at least, Python's
    cipher string and 3.11's verification flags. Used for the names OpenSSL 4 cannot check and
    where `cryptography` cannot be used, so both engines trust the same certificates."""
    if cafile is None and capath is None:
        context = ssl.create_default_context()
    else:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.hostname_checks_common_name = False
    context.minimum_version = MINIMUM_VERSION
    context.verify_flags = VERIFY_FLAGS
    context.set_ciphers(_CIPHERS.decode("ascii"))
    return context


@functools.cache
def _bindings() -> tuple[Any, Any] | None:
    """`cryptography`'s (ffi, lib), or None where they cannot be used here."""
    try:
        from cryptography.hazmat.bindings.openssl.binding import Binding
    except Exception:  # not installed, or a build that fails to load
        return None
    lib = Binding.lib
    missing = [name for name in _NEEDED if not hasattr(lib, name)]
    if missing:
        log.info("cryptography's OpenSSL bindings lack %s: probes use Python's ssl", missing[0])
        return None
    return Binding.ffi, lib


def _lib() -> tuple[Any, Any]:
    bindings = _bindings()
    if bindings is None:
        raise RuntimeError("cryptography's OpenSSL bindings are not available")
    return bindings


def _last_error(ffi: Any, lib: Any) -> str:
    """OpenSSL's reason for the last failure (its error queue emptied: the thread's queue is
    shared with `cryptography`, which would read a stale entry as its own)."""
    code = lib.ERR_get_error()
    lib.ERR_clear_error()
    text = lib.ERR_reason_error_string(code) if code else ffi.NULL
    return ffi.string(text).decode("ascii", "replace") if text != ffi.NULL else "unknown error"


class ClientContext:
    """What every probe's TLS connection shares: the trust store and the settings above.

    Built once (loading the system's trust store takes milliseconds); `cafile` and `capath` as
    `ssl.SSLContext.load_verify_locations` takes them, none of either for the system's."""

    def __init__(self, cafile: str | os.PathLike | None = None, capath: str | None = None) -> None:
        ffi, lib = _lib()
        self._ffi, self._lib = ffi, lib
        ctx = lib.SSL_CTX_new(lib.TLS_client_method())
        if ctx == ffi.NULL:
            raise ssl.SSLError(f"cannot make a TLS context: {_last_error(ffi, lib)}")
        self._ctx = ffi.gc(ctx, lib.SSL_CTX_free)
        lib.SSL_CTX_set_options(
            ctx,
            lib.SSL_OP_ALL
            | lib.SSL_OP_NO_SSLv2
            | lib.SSL_OP_NO_SSLv3
            | lib.SSL_OP_NO_COMPRESSION
            | lib.SSL_OP_CIPHER_SERVER_PREFERENCE
            | lib.SSL_OP_SINGLE_DH_USE
            | lib.SSL_OP_SINGLE_ECDH_USE,
        )
        lib.SSL_CTX_set_mode(ctx, lib.SSL_MODE_AUTO_RETRY)
        if lib.SSL_CTX_set_min_proto_version(ctx, lib.TLS1_2_VERSION) != 1:
            raise ssl.SSLError(f"cannot require TLS 1.2: {_last_error(ffi, lib)}")
        if lib.SSL_CTX_set_cipher_list(ctx, _CIPHERS) != 1:
            raise ssl.SSLError(f"cannot set the ciphers: {_last_error(ffi, lib)}")
        if not any(lib.SSL_CTX_set1_curves_list(ctx, groups) == 1 for groups in _GROUPS):
            raise ssl.SSLError(f"cannot set the key-exchange groups: {_last_error(ffi, lib)}")
        lib.ERR_clear_error()
        lib.SSL_CTX_set_verify(ctx, lib.SSL_VERIFY_PEER, ffi.NULL)
        # inherited by every connection's parameters (SSL_new), where the host is set
        lib.X509_VERIFY_PARAM_set_hostflags(lib.SSL_CTX_get0_param(ctx), host_flags(lib))
        self._cafile, self._capath = cafile, capath
        if cafile is None and capath is None:
            self._load_system_trust()
        else:
            file = os.fsencode(cafile) if cafile is not None else ffi.NULL
            folder = os.fsencode(capath) if capath is not None else ffi.NULL
            if lib.SSL_CTX_load_verify_locations(ctx, file, folder) != 1:
                raise ssl.SSLError(f"cannot load the trust store: {_last_error(ffi, lib)}")

    def _load_system_trust(self) -> None:
        """The system's store as OpenSSL's default paths read it for Python's `ssl`: the file
        and the folders (`SSL_CERT_DIR` may list several) each loaded if they can be, a missing
        or unreadable one skipped. With neither, no certificate is trusted (as with `ssl`)."""
        ffi, lib = self._ffi, self._lib
        paths = ssl.get_default_verify_paths()
        file = os.environ.get(paths.openssl_cafile_env, paths.openssl_cafile)
        folders = os.environ.get(paths.openssl_capath_env, paths.openssl_capath)
        if file:
            lib.SSL_CTX_load_verify_locations(self._ctx, os.fsencode(file), ffi.NULL)
        if folders:
            lib.SSL_CTX_load_verify_locations(self._ctx, ffi.NULL, os.fsencode(folders))
        lib.ERR_clear_error()

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (a context lives as long as its prober)
    def checks(self, host: str) -> bool:
        """Whether this OpenSSL can check a certificate against `host`. OpenSSL 4 refuses some
        names that OpenSSL 3.0 checked (a trailing dot, a label ending in a hyphen); a probe
        of such a name goes through Python's `ssl` (`python_context`), as before."""
        ffi, lib = self._ffi, self._lib
        if _ip(host) is not None:
            return True
        param = lib.X509_VERIFY_PARAM_new()
        if param == ffi.NULL:
            return False
        try:
            encoded = host.encode("ascii")
            return lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded)) == 1
        except UnicodeEncodeError:
            return False
        finally:
            lib.X509_VERIFY_PARAM_free(param)
            lib.ERR_clear_error()

    @functools.cached_property
    def python_context(self) -> ssl.SSLContext:
        """Python's own context with the same trust and policy, for the names `checks`
        refuses."""
        return python_context(self._cafile, self._capath)

    @property
    def library(self) -> str:
        """The OpenSSL that makes the handshakes, e.g. 'OpenSSL 4.0.0 14 Apr 2026'."""
        return self._ffi.string(self._lib.OpenSSL_version(0)).decode("ascii", "replace")


@functools.cache
def system_context() -> ClientContext | None:
    """The context of every probe that brings no trust store of its own; None where
    `cryptography`'s bindings cannot be used (the caller then uses Python's `ssl`)."""
    if _bindings() is None:
        return None
    context = ClientContext()
    log.info("HTTPS probes make their handshakes with %s (cryptography's)", context.library)
    return context


_buffers = threading.local()


def _buffer(ffi: Any) -> Any:
    """A per-thread scratch buffer (the bindings release the GIL while OpenSSL runs)."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = ffi.new("char[]", _CHUNK)
    return buffer


@functools.lru_cache(maxsize=4096)
def _generalized_time(text: bytes) -> datetime | None:
    """'YYYYMMDDHHMMSSZ' as OpenSSL writes a certificate's end date; None for anything else."""
    try:
        return datetime.strptime(text.decode("ascii"), "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except (UnicodeDecodeError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> bytes | None:
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None


def _verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    """The exception Python's `ssl` raises for a certificate it does not trust."""
    exc = ssl.SSLCertVerificationError(
        1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}"
    )
    exc.verify_code, exc.verify_message = code, message
    exc.reason, exc.library = "CERTIFICATE_VERIFY_FAILED", "SSL"
    return exc


#: The words OpenSSL puts before the name of an alert the peer sent ("tlsv1 alert protocol
#: version"): the alert's own name is what is kept.
_ALERT = re.compile(r"^(?:sslv3|tlsv1|tlsv13|tls|ssl/tls) alert ")


def failure_words(exc: ssl.SSLError) -> str | None:
    """Why a TLS connection failed, in OpenSSL's words, for the probe's reason: the name of the
    alert the server sent (`protocol version`, `handshake failure`) or of what OpenSSL itself
    refused (`wrong version number`, `unsupported protocol`). The same on both engines, as both
    carry OpenSSL's reason code (`SSLError.reason`); None when there is none to tell."""
    code = getattr(exc, "reason", None)
    if not code or not isinstance(code, str) or code == "UNKNOWN_ERROR":
        return None
    return _ALERT.sub("", code.lower().replace("_", " ")) or None


def _io_error(ffi: Any, lib: Any, what: str) -> ssl.SSLError:
    """A failure after the handshake, with OpenSSL's reason code as Python's `ssl` gives it."""
    reason = _last_error(ffi, lib)
    exc = ssl.SSLError(1, f"TLS {what} failed: {reason}")
    exc.reason, exc.library = reason.upper().replace(" ", "_"), "SSL"
    return exc


class TlsTransport(asyncio.Protocol):
    """TLS on memory buffers between a TCP connection and the probe's protocol (`app`).

    To the TCP transport it is the protocol; to `app` it is the transport (`write`, `close`,
    `abort`). `handshake` resolves once the server is verified, or fails with the reason."""

    def __init__(
        self,
        context: ClientContext,
        host: str,
        app: asyncio.Protocol,
        handshake: asyncio.Future[None],
    ) -> None:
        ffi, lib = context._ffi, context._lib
        self._ffi, self._lib = ffi, lib
        self._app: asyncio.Protocol | None = app
        self._handshake = handshake
        self._tcp: asyncio.Transport | None = None
        self._connected = False  # the app has been given this transport
        #: The end date of the server's certificate, once verified.
        self.expiry: datetime | None = None
        ssl_ = lib.SSL_new(context._ctx)
        if ssl_ == ffi.NULL:
            raise ssl.SSLError(f"cannot make a TLS connection: {_last_error(ffi, lib)}")
        self._ssl = ffi.gc(ssl_, lib.SSL_free)
        incoming, outgoing = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        if incoming == ffi.NULL or outgoing == ffi.NULL:
            raise MemoryError("cannot make TLS buffers")
        lib.BIO_set_mem_eof_return(incoming, -1)  # empty means "wait for more", not EOF
        lib.SSL_set_bio(ssl_, incoming, outgoing)  # the connection owns both from here
        self._in, self._out = incoming, outgoing
        param = lib.SSL_get0_param(ssl_)
        packed = _ip(host)
        if packed is not None:  # an IP literal: checked against the certificate's addresses
            ok = lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed))
        else:
            encoded = host.encode("ascii")  # the URL's host, already IDNA-encoded
            lib.SSL_set_tlsext_host_name(ssl_, encoded)  # declared void by the bindings
            ok = lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded))
        if not ok:
            raise ssl.SSLError(f"cannot check the host name: {_last_error(ffi, lib)}")
        lib.SSL_set_connect_state(ssl_)

    # the TCP connection's events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]
        self._step()

    def data_received(self, data: bytes) -> None:
        if self._ssl is None:
            return
        self._lib.BIO_write(self._in, data, len(data))
        if self._connected:
            self._read()
        else:
            self._step()

    def eof_received(self) -> bool:
        # Before the handshake ends it failed; after it, a close without close_notify ends the
        # answer as a plain close would (a body without a length is cut there by the server).
        if not self._connected:
            self._fail_handshake(ConnectionResetError("connection closed during the TLS handshake"))
        elif self._app is not None:
            self._app.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._connected:
            self._fail_handshake(exc or ConnectionResetError("connection lost in TLS handshake"))
        elif self._app is not None:
            app, self._app = self._app, None
            app.connection_lost(exc)
        self._release()

    # the app's transport
    def write(self, data: bytes) -> None:
        if not data or self._ssl is None or self._tcp is None or self._tcp.is_closing():
            return
        if self._lib.SSL_write(self._ssl, data, len(data)) <= 0:
            self._abort(_io_error(self._ffi, self._lib, "write"))
            return
        self._flush()

    def abort(self) -> None:
        if self._tcp is not None:
            self._tcp.abort()

    def detach(self) -> None:
        """Tell the app nothing more: its caller has given up on it."""
        self._app = None

    def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()

    def is_closing(self) -> bool:
        return self._tcp is None or self._tcp.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tcp.get_extra_info(name, default) if self._tcp is not None else default

    # TLS
    def _step(self) -> None:
        """One turn of the handshake with what has come in so far."""
        lib = self._lib
        result = lib.SSL_do_handshake(self._ssl)
        self._flush()
        if result == 1:
            self.expiry = self._expiry()
            self._connected = True
            if not self._handshake.done():
                self._handshake.set_result(None)
            if self._app is not None:
                self._app.connection_made(self)
            self._read()  # what came with the server's last handshake message
            return
        error = lib.SSL_get_error(self._ssl, result)
        if error in (lib.SSL_ERROR_WANT_READ, lib.SSL_ERROR_WANT_WRITE):
            return
        self._fail_handshake(self._handshake_error(error))

    def _handshake_error(self, error: int) -> Exception:
        ffi, lib = self._ffi, self._lib
        code = lib.SSL_get_verify_result(self._ssl)
        reason = _last_error(ffi, lib)
        if code != lib.X509_V_OK:
            message = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
            return _verification_error(code, message)
        exc = ssl.SSLError(1, f"[SSL] {reason} (error {error})")
        exc.reason, exc.library = reason.upper().replace(" ", "_"), "SSL"
        return exc

    def _fail_handshake(self, exc: BaseException) -> None:
        if not self._handshake.done():
            self._handshake.set_exception(exc)
        self._app = None
        if self._tcp is not None:
            self._tcp.abort()

    def _read(self) -> None:
        """Decrypt what has come in and hand it to the app, record by record."""
        ffi, lib, buffer = self._ffi, self._lib, _buffer(self._ffi)
        while self._ssl is not None and self._app is not None:
            if self._tcp is None or self._tcp.is_closing():  # the app is done with it
                return
            count = lib.SSL_read(self._ssl, buffer, _CHUNK)
            if count > 0:
                self._app.data_received(ffi.buffer(buffer, count)[:])
                continue
            error = lib.SSL_get_error(self._ssl, count)
            self._flush()  # a key update or an alert to answer
            if error == lib.SSL_ERROR_WANT_READ:
                return
            if error == lib.SSL_ERROR_ZERO_RETURN:  # the server's close_notify
                self._app.eof_received()
                return
            self._abort(_io_error(ffi, lib, "read"))
            return

    def _flush(self) -> None:
        """Send what OpenSSL has written to its outgoing buffer."""
        if self._ssl is None or self._tcp is None:
            return
        ffi, lib, buffer = self._ffi, self._lib, _buffer(self._ffi)
        while (count := lib.BIO_read(self._out, buffer, _CHUNK)) > 0:
            self._tcp.write(ffi.buffer(buffer, count)[:])

    def _abort(self, exc: Exception) -> None:
        app, self._app = self._app, None
        if self._tcp is not None:
            self._tcp.abort()
        if app is not None:
            app.connection_lost(exc)

    def _expiry(self) -> datetime | None:
        """The verified certificate's end date (a probe records it as `tls_expiry`)."""
        ffi, lib = self._ffi, self._lib
        certificate = lib.SSL_get_peer_certificate(self._ssl)
        if certificate == ffi.NULL:
            return None
        try:
            when = lib.ASN1_TIME_to_generalizedtime(lib.X509_getm_notAfter(certificate), ffi.NULL)
            if when == ffi.NULL:
                lib.ERR_clear_error()
                return None
            try:
                text = ffi.cast("ASN1_STRING *", when)
                data = ffi.cast("char *", lib.ASN1_STRING_get0_data(text))
                return _generalized_time(ffi.unpack(data, lib.ASN1_STRING_length(text)))
            finally:
                lib.ASN1_GENERALIZEDTIME_free(when)
        finally:
            lib.X509_free(certificate)

    def _release(self) -> None:
        """Free the connection's OpenSSL state now rather than at the next garbage collection."""
        if self._ssl is not None:
            ssl_, self._ssl = self._ssl, None
            self._ffi.release(ssl_)
        self._tcp = None


async def connect(
    loop: asyncio.AbstractEventLoop,
    app: asyncio.Protocol,
    address: str,
    port: int,
    host: str,
    context: ClientContext,
) -> TlsTransport:
    """A verified TLS connection to `address`:`port` for `host`, with `app` as its protocol
    (its `connection_made` is called once the handshake is done)."""
    handshake = loop.create_future()
    transport, tls = await loop.create_connection(
        lambda: TlsTransport(context, host, app, handshake), address, port
    )
    try:
        await handshake
    except BaseException:  # cancelled (the probe's timeout), perhaps just as the handshake ended
        tls.detach()
        transport.abort()
        raise
    return tls
