"""The monitor's one HTTP server: `/healthz`, and the routes the parts hand the daemon
(`/metrics`, `POST /push/...`, the page).

The daemon builds it and adds each part's routes and hooks (`add`); the server knows no part
and no part knows it. `/healthz` answers what the daemon's health callable says, so what is
healthy is decided where the parts are known.

The port is open wherever pushes or a second location use it, and opening a TCP connection
needs no token. The probes share the process's open-files limit with the server, so the server
keeps to a share of it whatever its clients do (`Connections`):

- at most `most` connections are open at once (the daemon gives it a share of the limit that
  leaves the probes their descriptors, `connection_share`);
- at the limit, room is made by closing the longest idle connection (one that connected and
  never spoke, or one idle between requests), never one whose request is arriving, so a
  watchdog asking `/healthz` still gets in while thousands of idle connections are held
  against the port; a new connection that has not spoken yet only displaces one silent for a
  second, is given 50 ms for its request, and is otherwise closed before it costs a transport;
  of those waiting so, the longest waiting is closed first when more come (`Connections.room`,
  `Server._accept`, `Server._make_room_at_door`);
- a connection without a request in progress is closed after `IDLE_TIMEOUT` seconds, from its
  opening (a client that connects and never sends a request) or from its last answer (aiohttp's
  keep-alive timeout, which also runs from the connection's start);
- connections closed for room are counted (`refused`, for `/metrics`) and told in the log at most
  once a minute, as a sum, never one line per connection;
- a malformed request (a bad byte in the URL, a request line over 8 KB) gets aiohttp's 400 and
  a line at debug: it is the client's mistake, not the monitor's, and a traceback for each one
  let anyone fill the log.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import resource
import socket
import struct
import sys
import termios
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from monitor.part import Part

log = logging.getLogger(__name__)

#: The body of `/healthz` and its status (200, or 503 while the monitor cannot keep what it
#: observes).
Health = Callable[[], tuple[dict, int]]

#: Seconds a connection may stay open with no request in progress (time to the first request,
#: and keep-alive between requests).
IDLE_TIMEOUT = 10.0
#: The kernel's queue of connections not yet accepted (capped by `net.core.somaxconn`). It
#: costs no descriptor: a long queue means a flood of connections waits there to be accepted (and
#: closed, or let in) instead of having its handshakes dropped, which would make a watchdog's
#: connection wait a second for the retransmission behind it.
LISTEN_BACKLOG = 4096
#: Connections accepted in one turn of the event loop at most (the rest on the next turns).
ACCEPT_BATCH = 64
#: Seconds accepting pauses when the process is out of descriptors or memory.
ACCEPT_PAUSE = 1.0
#: The fewest and the most connections the server keeps open at once, whatever the limit.
FEWEST_CONNECTIONS = 32
MOST_CONNECTIONS = 10_000
#: Refused connections are told in the log at most once per this many seconds (as a sum).
LOG_EVERY = 60.0
#: Idle connections looked at for one to close when a new one comes at the limit (some are
#: passed over, `Connections._close_idle`).
EVICT_TRIES = 32
#: Seconds a connection that began sending a request is not closed to make room, and a silent
#: one is not displaced by another silent one.
SPEAKING_GRACE = 1.0
#: New silent connections held at the door at most, and for how long (seconds), waiting for
#: their request when there is no room for a silent one.
DOOR = 32
DOOR_WAIT = 0.05
#: Connections whose request is already waiting are let in this far past the limit when no
#: idle one may be closed for them.
OVERDRAFT = 32


def connection_share(kept: int, files: int | None = None) -> int:
    """How many connections the server may hold open: half of the open-files limit (`files`,
    the soft limit in force when None) left once `kept` descriptors are kept for the probes;
    the other half is for the store, the logs and the page worker. Between FEWEST_CONNECTIONS
    and MOST_CONNECTIONS."""
    if files is None:
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if files == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(FEWEST_CONNECTIONS, min(MOST_CONNECTIONS, (files - kept) // 2))


def _waiting_bytes(fd: int) -> int:
    """Bytes received on socket `fd` and not read yet (0 when it cannot be told)."""
    if fd < 0:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class _RequestLog(logging.LoggerAdapter):
    """The logger aiohttp's request handler is given: a request it could not parse (answered
    400 or another 4xx) is told at debug in one line, not at ERROR with a traceback; every
    other error is told as aiohttp tells it."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        code = getattr(exc, "code", 0) if isinstance(exc, HttpProcessingError) else 0
        if isinstance(code, int) and 400 <= code < 500:
            message = getattr(exc, "message", "") or type(exc).__name__
            self.debug("malformed request answered %d: %r", code, str(message)[:200])
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class _Guarded(asyncio.Protocol):
    """One accepted connection: aiohttp's request handler (`inner`) behind the limit."""

    __slots__ = (
        "busy",
        "connections",
        "counted",
        "fd",
        "idle_since",
        "inner",
        "spoke_at",
        "started",
        "transport",
    )

    def __init__(self, connections: Connections, inner: asyncio.Protocol) -> None:
        self.connections = connections
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        #: Whether aiohttp's handler was given the connection (then it is told of its end).
        self.started = False
        #: Whether it counts against the limit: from the moment it was accepted (the acceptor
        #: made room for it) until it is closed.
        self.counted = True
        #: Requests in progress on it (0: idle, may be closed for room).
        self.busy = 0
        #: When it began sending its next request (the loop's clock), None while it is silent.
        self.spoke_at: float | None = None
        #: Since when it has had no request in progress (the loop's clock).
        self.idle_since = 0.0
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.connections.made(self)
        self.started = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.release(self)
        if self.started:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.spoke_at is None:
            self.spoke_at = asyncio.get_running_loop().time()
        if self.started:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.started else None

    def pause_writing(self) -> None:
        if self.started:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.started:
            self.inner.resume_writing()


class Connections:
    """The count of open connections and their protocols (aiohttp's handlers): at most `most`
    open at once, idle ones closed first to make room (see the module's docstring)."""

    def __init__(self, most: int = MOST_CONNECTIONS) -> None:
        self.most = most
        #: aiohttp's protocol factory (`AppRunner.server`), set when the server starts.
        self.factory: Callable[[], asyncio.Protocol] | None = None
        #: Connections counted against the limit now.
        self.open = 0
        #: Idle connections (no request in progress), the longest idle first.
        self._idle: dict[_Guarded, None] = {}
        #: The connection of each aiohttp handler (a request knows its handler, `protocol`).
        self._of: dict[object, _Guarded] = {}
        #: Idle connections closed to make room, and new ones turned away (every open one was
        #: in a request), since the start.
        self.closed_for_room = 0
        self.turned_away = 0
        self._untold = 0
        self._told_at = float("-inf")
        self._telling: asyncio.TimerHandle | None = None

    @property
    def refused(self) -> int:
        """Connections closed for lack of room since the start (`/metrics`)."""
        return self.closed_for_room + self.turned_away

    def protocol(self) -> _Guarded:
        """The protocol of a connection `room` let in."""
        assert self.factory is not None, "the server has not started"
        return _Guarded(self, self.factory())

    def room(self, speaking: bool = False) -> bool:
        """Whether a connection just accepted may stay, counted from now on (False: the caller
        waits a moment for its request, or closes it, before it costs a transport).

        At the limit, the longest idle connection that may go is closed to make room. A new
        connection that has sent nothing yet (`speaking` False) only displaces one silent for
        SPEAKING_GRACE or longer, so a flood of silent connections is turned away at the door
        instead of churning through the ones just let in. One whose request is already
        waiting (a watchdog's `/healthz`) displaces any silent one, and is let in up to
        OVERDRAFT past the limit when none may go."""
        full = self.open >= self.most and not self._close_idle(speaking)
        if full and (not speaking or self.open >= self.most + OVERDRAFT):
            return False
        self.open += 1
        return True

    def turn_away(self) -> None:
        """Count a new connection closed for want of room."""
        self.turned_away += 1
        self._refused()

    def unreserve(self) -> None:
        """A connection `room` let in failed before it had a protocol."""
        self.open -= 1

    def made(self, conn: _Guarded) -> None:
        """A connection's transport is ready: it is idle until its first request."""
        if conn.counted:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle[conn] = None
            self._of[conn.inner] = conn

    def release(self, conn: _Guarded) -> None:
        """A connection ended (however it was closed)."""
        self._idle.pop(conn, None)
        self._of.pop(conn.inner, None)
        if conn.counted:
            conn.counted = False
            self.open -= 1

    def _close_idle(self, speaking: bool) -> bool:
        """Close the longest idle connection that may go; whether one was found.

        Passed over: a connection still writing an answer (a slow reader of /metrics), and one
        whose request is arriving (bytes waiting in the kernel, or a request begun less than
        SPEAKING_GRACE ago): under a flood of connections a watchdog's `/healthz`, already
        sent, must not be closed in the turns before its request is read. A request begun
        longer ago and still not complete may go (a client trickling its headers)."""
        now = asyncio.get_running_loop().time()
        for tried, conn in enumerate(self._idle):
            if tried >= EVICT_TRIES:
                break
            transport = conn.transport
            if transport is not None and transport.get_write_buffer_size():
                continue
            if conn.spoke_at is not None and now - conn.spoke_at < SPEAKING_GRACE:
                continue
            if conn.spoke_at is None and not speaking and now - conn.idle_since < SPEAKING_GRACE:
                continue  # a silent newcomer does not displace a silent connection as young
            if conn.spoke_at is None and _waiting_bytes(conn.fd):
                continue
            self.release(conn)
            if transport is not None:
                transport.abort()
            self.closed_for_room += 1
            self._refused()
            return True
        return False

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """The application's outermost middleware: a connection is busy while one of its
        requests is handled, and is not closed for room then."""

        @web.middleware
        async def track(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            conn = self._of.get(request.protocol)
            if conn is None:
                return await handler(request)
            self._idle.pop(conn, None)
            conn.busy += 1
            try:
                return await handler(request)
            finally:
                conn.busy -= 1
                conn.spoke_at = None  # silent until its next request
                conn.idle_since = asyncio.get_running_loop().time()
                if not conn.busy and conn.counted:
                    self._idle[conn] = None  # idle again, the most recently so

        return track

    def _refused(self) -> None:
        """Count a refusal into the next line of the log: at once after a quiet minute, else
        when the minute since the last line is over."""
        self._untold += 1
        if self._telling is None:
            loop = asyncio.get_running_loop()
            wait = max(0.0, self._told_at + LOG_EVERY - loop.time())
            self._telling = loop.call_later(wait, self._tell)

    def _tell(self) -> None:
        self._telling = None
        if not self._untold:
            return
        log.warning(
            "%d connections refused at the limit of %d open at once (idle ones closed "
            "to make room, or new ones turned away while all were in a request); the probes "
            "keep their descriptors / 连接数已达上限，已拒绝 %d 个连接",
            self._untold,
            self.most,
            self._untold,
        )
        self._untold = 0
        self._told_at = asyncio.get_running_loop().time()

    def stop(self) -> None:
        """Tell what is left to tell, and set no more timers."""
        if self._telling is not None:
            self._telling.cancel()
            self._telling = None
        self._tell()


class Server:
    """One aiohttp application on `host:port` (port 0: any free one, read back at start), at
    most `most_connections` connections open at once.

    The server accepts connections itself (not through the loop's `create_server`, whose
    accept loop takes every waiting connection, and a descriptor for each, before any limit
    can be applied): each one accepted is let in, with an idle one closed to make room, or
    closed at once, so the server never holds more than its share of descriptors."""

    def __init__(
        self, host: str, port: int, health: Health, most_connections: int = MOST_CONNECTIONS
    ) -> None:
        self.host = host
        self.port = port
        self.health = health
        self.connections = Connections(most_connections)
        self.app = web.Application(middlewares=[self.connections.middleware()])
        self.app.router.add_get("/healthz", self.healthz)
        self.runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        self._connecting: set[asyncio.Task] = set()
        #: New connections that found no room and had sent nothing yet, given DOOR_WAIT for
        #: their request to arrive (a client is often accepted before its first bytes).
        self._door: list[socket.socket] = []
        self._door_check: asyncio.TimerHandle | None = None
        #: Accepts that failed for want of descriptors or memory (each pauses accepting).
        self.accept_failures = 0
        self._accept_failure_told = float("-inf")

    @property
    def refused(self) -> int:
        """Connections closed for lack of room since the start (the metrics part reads it)."""
        return self.connections.refused

    def add(self, part: Part) -> None:
        """Serve a part's routes (in the order added: the page's catch-all comes last) and
        run its hooks with the server's start and stop."""
        for method, path, handler in part.routes:
            self.app.router.add_route(method, path, handler)
        self.app.on_startup.extend(part.on_startup)
        self.app.on_shutdown.extend(part.on_shutdown)
        self.app.on_cleanup.extend(part.on_cleanup)

    async def healthz(self, _request: web.Request) -> web.Response:
        body, status = self.health()
        return web.json_response(body, status=status)

    async def start(self) -> None:
        """Listen, after every part's start hook ran."""
        self.runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=IDLE_TIMEOUT,
            logger=_RequestLog(logging.getLogger("aiohttp.server"), None),
        )
        await self.runner.setup()
        self.connections.factory = self.runner.server  # type: ignore[assignment]
        self._sockets = _listen(self.host, self.port)
        loop = asyncio.get_running_loop()
        for sock in self._sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        if self.port == 0:
            self.port = self._sockets[0].getsockname()[1]
        log.info(
            "listening on http://%s:%d (at most %d connections at once)",
            self.host,
            self.port,
            self.connections.most,
        )

    def _accept(self, sock: socket.socket) -> None:
        """Accept what waits (a batch per turn): let each one in or close it at once."""
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors or memory: wait, do not spin
                self._accept_failed(sock, exc)
                return
            speaking = _waiting_bytes(conn.fileno()) > 0
            if self.connections.room(speaking):
                self._let_in(conn)
            elif not speaking:
                # accepted before its request arrived? a moment to tell it from a silent one
                self._make_room_at_door()
                self._door.append(conn)
                if self._door_check is None:
                    self._door_check = loop.call_later(DOOR_WAIT, self._check_door)
            else:
                self.connections.turn_away()
                conn.close()

    def _make_room_at_door(self) -> None:
        """Room at the door for one more: when it is full, those in it whose request came
        meanwhile go in (if there is room for one that speaks), and the one waiting longest
        is turned away. A flood of silent connections then passes through the door without
        shutting out a client accepted a moment before its request (a watchdog asking
        `/healthz` just as a flood's connections are being closed: turned away at once when
        a full door refused every newcomer)."""
        if len(self._door) < DOOR:
            return
        waiting, self._door = self._door, []
        for conn in waiting:
            if _waiting_bytes(conn.fileno()) > 0 and self.connections.room(True):
                self._let_in(conn)
            else:
                self._door.append(conn)
        while len(self._door) >= DOOR:
            self.connections.turn_away()
            self._door.pop(0).close()

    def _let_in(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _check_door(self) -> None:
        """The connections kept at the door: in when their request has come meanwhile (and
        there is room for one that speaks), else closed."""
        self._door_check = None
        waiting, self._door = self._door, []
        for conn in waiting:
            if _waiting_bytes(conn.fileno()) > 0 and self.connections.room(True):
                self._let_in(conn)
            else:
                self.connections.turn_away()
                conn.close()

    async def _connect(self, conn: socket.socket) -> None:
        """Give an accepted connection its transport and aiohttp's handler."""
        made: list[_Guarded] = []

        def protocol() -> _Guarded:
            made.append(self.connections.protocol())
            return made[0]

        try:
            await asyncio.get_running_loop().connect_accepted_socket(protocol, conn)
        except Exception as exc:  # the client left meanwhile, or the loop refused it
            conn.close()
            if not made or made[0].transport is None:
                self.connections.unreserve()
            log.debug("an accepted connection could not be set up: %s", exc)

    def _accept_failed(self, sock: socket.socket, exc: OSError) -> None:
        """Pause accepting for ACCEPT_PAUSE (the waiting connections stay in the kernel's
        queue); told at most once a minute."""
        self.accept_failures += 1
        loop = asyncio.get_running_loop()
        if loop.time() - self._accept_failure_told >= LOG_EVERY:
            self._accept_failure_told = loop.time()
            log.warning(
                "server: accepting a connection failed (%s); accepting pauses %.0f s each time "
                "(%d times since the start) / 接受连接失败，暂停接受",
                exc.strerror or exc,
                ACCEPT_PAUSE,
                self.accept_failures,
            )
        loop.remove_reader(sock.fileno())
        loop.call_later(ACCEPT_PAUSE, self._resume_accepting, sock)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if sock in self._sockets:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    async def stop(self) -> None:
        """Stop listening and run the parts' stop hooks; nothing when it never started."""
        if self._sockets:
            loop = asyncio.get_running_loop()
            for sock in self._sockets:
                loop.remove_reader(sock.fileno())
                sock.close()
            self._sockets = []
            if self._door_check is not None:
                self._door_check.cancel()
                self._door_check = None
            for conn in self._door:
                conn.close()
            self._door = []
            if self._connecting:
                await asyncio.wait(list(self._connecting), timeout=1.0)
            self.connections.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of `host` (all interfaces when empty), as the loop's
    `create_server` makes them; an address in use raises OSError saying which."""
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or str(exc)).lower()}",
                ) from None
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
