"""One device connection: an `asyncio.Protocol` that only moves bytes.

Parsing and decisions live in sans-I/O modules (`request`, `wsframes`, `inbound`, `sse`, `wire`);
lifecycle in `state`; everything shared (connection map, timers, registry and inbox calls,
the shedding policy) in `server.EdgeServer`. What an idle open connection holds is what the
`__slots__` below name: no h11 or wsproto object, no task, no timer handle.

A connection the node sheds (`zuulpush.edge.shedding`) is decided in `connection_made`, before
any byte is read: past the hard ceiling its socket is closed at once; otherwise it is answered a
canned `503` with a jittered `Retry-After` at once and closed the way every rejection is (our
side shut, the rest of the request read and discarded until the peer closes or the handshake
deadline), except that our side is shut only once the request's first bytes have come
(`SHED_UNREAD`).
No h11 object is made for it, and it is never counted as an open connection. A served
connection whose request arrives while the loop runs too late is shed the same way, unparsed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

import h11

from core.auth_throttle import source_of
from core.errors import ZuulpushError
from registry.base import Registration, new_version
from zuulpush.edge import admin, fasthead, inbound, sse, wsframes
from zuulpush.edge.answers import CORS, http_error
from zuulpush.edge.request import ONE_SHOT, Accept, Headers, Route, check_head_size, decide
from zuulpush.edge.shedding import Shed
from zuulpush.edge.state import Event, State, next_state
from zuulpush.edge.wire import SSE, WEBSOCKET, Outgoing, Wire, jittered_ms
from zuulpush.edge.wsframes import Close, FrameReader
from zuulpush.errors import FrameViolation, HandshakeRejected, InboundRateExceeded

if TYPE_CHECKING:
    from zuulpush.edge.server import EdgeServer

log = logging.getLogger("zuulpush.edge")

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"


_SHED_WHY = {
    Shed.MAX_CONNECTIONS: "this node holds as many connections as it may",
    Shed.LOOP_LAG: "this node is too busy",
    Shed.RATE: "too many new connections on this node",
}


@functools.lru_cache(maxsize=4 * 64)
def shed_answer(reason: Shed, retry_after_s: int) -> bytes:
    """The canned `503` for a shed request (one per reason and delay, made once)."""
    message = f"{_SHED_WHY[reason]}; retry after {retry_after_s} s"
    return http_error(503, {"error": {"code": "overloaded", "message": message}},
                      (("retry-after", str(retry_after_s)), *CORS))


SHED_SLOT = -2
"""`slot` of a connection being shed: it is not served and was never in the wheel."""

SHED_UNREAD = -3
"""`slot` of a connection shed at accept whose request has not come yet: its `503` is written,
but our side is shut (FIN) only when the request's first bytes arrive. A client that has not
sent its request when our end of stream reaches it may take it for a dropped connection and
never read the answer: aiohttp's client (the SDK's) closes on that EOF and then fails to write
its request, so it backs off blindly instead of honouring the Retry-After. Behind an L4 load
balancer, which connects to the node as soon as the client connects to it, the answer can
come first. Still bounded by the handshake deadline."""

HELD_MAX = 1000
"""Live pushes held back during a replay, at most; past it the device is a slow consumer."""


class _Replay:
    """Kept while a connection is REPLAYING: where it resumes, what is still to be written, live
    pushes held back meanwhile, the ids written so far, and whether the peer's reading paused us.

    A replay is written as fast as the peer reads (the transport's pause/resume), not at once: a
    device coming back to a large inbox is not a slow consumer."""

    __slots__ = ("held", "last_id", "paused", "queue", "sent")

    def __init__(self, last_id: str | None) -> None:
        self.last_id = last_id
        # Made when first needed: in a connect storm thousands of connections wait here for
        # their inbox, most of which is empty.
        self.held: list[Outgoing] | None = None
        self.queue: deque[Outgoing] | None = None  # None until the inbox has been read
        self.sent: set[str] | None = None
        self.paused = False


class EdgeConnection(asyncio.Protocol):
    """A device's WebSocket or SSE connection (or a diagnostic echo WebSocket)."""

    __slots__ = ("_parser", "_rate", "_replay", "_server", "age", "hw", "pong_due",
                 "registration", "slot", "state", "transport", "wire")

    def __init__(self, server: EdgeServer) -> None:
        self._server = server
        self.transport: asyncio.Transport | None = None
        self.state = State.HANDSHAKE
        # What reads the bytes now: h11 while the request head comes (HANDSHAKE, made only if
        # `fasthead` cannot parse it), then a WebSocket FrameReader while a frame is part-read.
        self._parser: h11.Connection | FrameReader | None = None
        self._replay: _Replay | None = None
        self._rate = 0
        self.wire: Wire | None = None
        self.registration: Registration | None = None
        self.slot = -1
        self.pong_due = False
        self.age = 0  # heartbeat-wheel visits so far, for the lifetime (server.EdgeServer)
        self.hw = ""  # the highest id written, from the resume point on (`given`)

    @property
    def client_id(self) -> str:
        assert self.registration is not None
        return self.registration.client_id

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = transport = cast(asyncio.Transport, transport)
        server = self._server
        shed = server.admit()
        if shed is not None:
            self._shed(shed)
            return
        limit = server.config.write_limit_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        server.handshake_started(self)

    def data_received(self, data: bytes) -> None:
        if self.state is State.HANDSHAKE:
            if self._server.shed_late(self):
                self._parser = None
                self._answer_shed(Shed.LOOP_LAG)
                return
            self._handshake(data)
        elif self.wire is WEBSOCKET and self.state is not State.CLOSING:
            self._frames(data)
        elif self.slot == SHED_UNREAD:  # its request is coming: now our side can be shut
            self.slot = SHED_SLOT
            assert self.transport is not None
            self.transport.write_eof()

    def pause_writing(self) -> None:
        if self.state is State.REPLAYING and self._replay is not None:
            self._replay.paused = True  # wait for resume_writing; tick() bounds the wait
        elif self.state is State.OPEN:
            # The peer reads slower than we push: close with a hint; its messages wait in the
            # inbox.
            self._slow_consumer()

    def resume_writing(self) -> None:
        replay = self._replay
        if self.state is State.REPLAYING and replay is not None and replay.paused:
            replay.paused = False
            self.pong_due = False
            if replay.queue is not None:
                self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = next_state(self.state, Event.LOST)
        self._parser = self._replay = None
        # A closed connection may stay referenced a while (the handshake-deadline deque, the
        # lifetime heap): it should not keep its transport alive meanwhile.
        self.transport = None
        self._server.connection_lost(self)

    # handshake

    def _handshake(self, data: bytes) -> None:
        """Parse the request head: a plain `/ws` upgrade in one read without h11 (`fasthead`),
        anything else with h11 (made at the first read that needs it)."""
        max_bytes = self._server.config.max_header_bytes
        conn = cast(h11.Connection | None, self._parser)
        if conn is None:  # the request's first bytes
            head = fasthead.parse(data, max_bytes)
            if head is not None:
                self._request(*head)
                return
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
            self._parser = conn
        try:
            conn.receive_data(data)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            self.reject(HandshakeRejected(exc.error_status_hint, str(exc)))
            return
        if event is h11.NEED_DATA:
            return
        if not isinstance(event, h11.Request):
            self.reject(HandshakeRejected(400, "expected an HTTP request"))
            return
        if event.http_version != b"1.1":
            self.reject(HandshakeRejected(400, "HTTP/1.1 is required"))
            return
        self._request(event.method, event.target, event.headers, conn.trailing_data[0])

    def _request(self, method: bytes, target: bytes, headers: Headers, trailing: bytes) -> None:
        server = self._server
        try:
            check_head_size(method, target, headers, server.config.max_header_bytes)
            accept = decide(method, target, headers, verifier=server.verifier,
                            echo_enabled=server.config.echo, admin_key=server.admin_key,
                            origins=server.origins, admin_throttle=server.admin_throttle,
                            source=self._source, now=server.clock())
        except ZuulpushError as exc:
            self.reject(exc)
            return
        self._accept(accept, trailing)

    def _source(self) -> str:
        """The peer's source address, as the admin key's brake counts it."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return source_of(peer[0] if isinstance(peer, tuple) and peer else None)

    def _shed(self, reason: Shed) -> None:
        assert self.transport is not None
        self.slot = SHED_SLOT
        if reason is Shed.HARD_LIMIT:
            self.state = next_state(self.state, Event.CLOSING)
            self.transport.abort()  # before any read: uvloop and asyncio then never read
            return
        self._server.handshake_started(self)  # its deadline bounds the linger
        self._answer_shed(reason, request_read=False)

    def _answer_shed(self, reason: Shed, *, request_read: bool = True) -> None:
        assert self.transport is not None
        answer = shed_answer(reason, self._server.retry_after_s())
        if request_read or not self.transport.can_write_eof():
            self._close_transport(answer, linger=True)
            return
        self.slot = SHED_UNREAD
        self.state = next_state(self.state, Event.CLOSING)
        self.transport.write(answer)  # our side is shut when the request comes (data_received)

    def _accept(self, accept: Accept, trailing: bytes) -> None:
        assert self.transport is not None
        if accept.route in ONE_SHOT:  # health, metrics, admin: answered, then closed
            self._parser = None
            self._close_transport(admin.answer(self._server, accept), linger=True)
            return
        if accept.route is Route.SSE:
            conn = self._parser
            assert isinstance(conn, h11.Connection)
            headers = sse.HEADERS if accept.origin is None else sse.headers_for(accept.origin)
            self.transport.write(conn.send(h11.Response(status_code=200, headers=headers))
                                 + sse.retry(self._server.config.sse_retry_ms))
            self.wire = SSE
        else:
            assert accept.ws_accept is not None
            self.transport.write(_SWITCHING + b"Sec-WebSocket-Accept: " + accept.ws_accept
                                 + b"\r\n\r\n")
            self.wire = WEBSOCKET
        self._parser = None
        self.state = next_state(self.state, Event.ACCEPTED)
        if accept.identity is None:  # echo: nothing to register or replay
            self.state = next_state(self.state, Event.REPLAYED)
        else:
            identity = accept.identity
            self.registration = Registration(identity.client_id, identity.user_id,
                                             identity.device_type, self._server.node_id,
                                             new_version())
            self._replay = _Replay(accept.last_id)
            self.hw = accept.last_id or ""
        self._server.accepted(self)
        if trailing and self.wire is WEBSOCKET:
            self._frames(trailing)

    def reject(self, error: ZuulpushError, *, linger: bool = True) -> None:
        """Answer the request with the error's status and JSON body, then close (lingering, as a
        client may still be sending its request; the handshake deadline bounds the linger)."""
        assert self.transport is not None
        self._server.stats.count_reject(error)
        headers = (*getattr(error, "headers", ()), *CORS)
        self._close_transport(http_error(error.http_status, error.body(), headers), linger=linger)

    # WebSocket frames

    def _frames(self, data: bytes) -> None:
        server = self._server
        reader = cast(FrameReader | None, self._parser)
        if reader is None:
            limit = (server.config.ws_max_message_bytes if self.registration is not None
                     else server.config.echo_max_message_bytes)
            reader = FrameReader(limit)
        try:
            for event in reader.feed(data):
                self.pong_due = False
                self._on_frame(event)
                if self.state is State.CLOSING:
                    return
        except FrameViolation as exc:
            if isinstance(exc, InboundRateExceeded):
                server.stats.rate_limited += 1
            else:
                server.stats.violations += 1
            self.close(exc.close_code, str(exc))
            return
        self._parser = None if reader.idle else reader

    def _on_frame(self, event: wsframes.Event) -> None:
        assert self.transport is not None
        if self.registration is not None and not isinstance(event, wsframes.CloseReceived):
            # Pings and pongs count too: each ping costs a pong, so a flood is closed as well.
            config = self._server.config
            self._rate = inbound.rate_step(self._rate, self._server.clock(),
                                           rate_per_s=config.ws_inbound_rate_per_s,
                                           burst=config.ws_inbound_burst)
        if isinstance(event, wsframes.Ping):
            self.transport.write(wsframes.pong_frame(event.payload))
        elif isinstance(event, wsframes.CloseReceived):
            code = None if event.code == 1005 else event.code
            self._close_transport(wsframes.close_frame(code))
        elif isinstance(event, wsframes.Message):
            if self.registration is None:
                frame = wsframes.text_frame if event.text else wsframes.binary_frame
                self.transport.write(frame(event.data))
                return
            ids = inbound.parse_acks(event.data, text=event.text)
            self._server.ack(self, ids)

    # pushes, heartbeats, closes

    def deliver(self, out: Outgoing) -> None:
        """Write a push now, or hold it back while the inbox is being replayed."""
        if self.state is State.OPEN:
            assert self.transport is not None and self.wire is not None
            self.transport.write(self.wire.push(out))
            self._server.wrote(self, out)
        elif self.state is State.REPLAYING:
            replay = self._replay
            assert replay is not None
            if replay.held is None:
                replay.held = [out]
            elif len(replay.held) >= HELD_MAX:
                self._slow_consumer()
            else:
                replay.held.append(out)

    @property
    def resume_after(self) -> str | None:
        return None if self._replay is None else self._replay.last_id

    def replayed(self, replay: list[Outgoing]) -> None:
        """Send the replay (inbox entries and missed broadcasts, in id order), then the pushes
        held back meanwhile that it did not cover, in id order and once each, as fast as the
        peer reads; then the connection is OPEN."""
        if self.state is not State.REPLAYING:
            return
        assert self._replay is not None
        self._replay.queue = deque(replay)
        self._pump()

    def _pump(self) -> None:
        """Write queued replay messages until the transport pauses us or all are out."""
        replay = self._replay
        assert self.transport is not None and self.wire is not None
        assert replay is not None and replay.queue is not None
        queue = replay.queue
        while True:
            if queue and replay.sent is None:
                replay.sent = set()
            while queue:
                if replay.paused:
                    return
                out = queue.popleft()
                sent = replay.sent
                assert sent is not None
                if out.id in sent:
                    continue
                sent.add(out.id)
                self.transport.write(self.wire.push(out))
                if self.state is not State.REPLAYING:  # closed meanwhile
                    return
                self._server.wrote(self, out)
            if replay.paused:
                return  # OPEN only once the buffer drains: pause_writing will not fire again
            if not replay.held:
                break
            queue.extend(sorted(replay.held, key=lambda out: out.id))
            replay.held = None
        self._replay = None
        self.state = next_state(self.state, Event.REPLAYED)

    def tick(self) -> None:
        """A visit from the timer wheel, once per heartbeat interval: heartbeats, and deadlines
        for closes we started and replays the peer stopped reading."""
        if self.state is State.CLOSING:
            self.abort()  # a close we started did not finish within one interval
        elif self.state is State.REPLAYING:
            self._check_replay_progress()
        elif self.state is not State.OPEN or self.wire is None:
            return
        elif self.pong_due:
            self._server.stats.heartbeat_timeouts += 1
            self.abort()
        else:
            assert self.transport is not None
            self.transport.write(self.wire.heartbeat())
            self.pong_due = self.wire.expects_pong and self.registration is not None

    def _check_replay_progress(self) -> None:
        # `pong_due` marks "paused at the last visit too": then the peer read nothing for a whole
        # interval (resume_writing clears it).
        if self._replay is None or not self._replay.paused:
            self.pong_due = False
        elif self.pong_due:
            self._slow_consumer()
        else:
            self.pong_due = True

    def _slow_consumer(self) -> None:
        self._server.stats.slow_consumers += 1
        self.goaway(Close.SLOW_CONSUMER, "slow consumer")

    def goaway(self, code: int, reason: str, base_delay_ms: int = 1000) -> None:
        """Close with a jittered reconnect hint (WebSocket 4xxx close, SSE `reconnect` event)."""
        if self.state in (State.CLOSING, State.CLOSED) or self.transport is None:
            return
        if self.wire is None:
            self.abort()
            return
        self._close_transport(self.wire.goaway(code, reason, jittered_ms(base_delay_ms)),
                              linger=self.wire is WEBSOCKET)

    def close(self, code: int, reason: str) -> None:
        """Close without a reconnect hint (protocol violations, replaced connections)."""
        if self.state in (State.CLOSING, State.CLOSED) or self.transport is None:
            return
        self._close_transport(b"" if self.wire is None else self.wire.close(code, reason),
                              linger=self.wire is WEBSOCKET)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close_transport(self, last: bytes = b"", *, linger: bool = False) -> None:
        """Write `last` and close. CLOSING comes first: the write may call `pause_writing`
        synchronously (asyncio and uvloop do), which must then find nothing left to close.

        With `linger`, only our side is shut (FIN after `last`) and we keep reading, discarding,
        until the peer closes too: closing a socket while the peer is still sending makes the
        kernel answer with a reset, which can destroy our close frame or error response before
        the peer reads it. A peer that lingers too long is aborted: by the heartbeat wheel after
        a whole interval (`tick`), or at the handshake deadline before an upgrade.

        TLS has no half-close (`can_write_eof()` is False): there `close()` itself lingers, as it
        writes `last`, sends close_notify and reads, discarding, until the peer's; every close
        then waits in the wheel the same way, so no visit aborts it before that is done."""
        transport = self.transport
        assert transport is not None
        self.state = next_state(self.state, Event.CLOSING)
        self._parser = self._replay = None
        if last:
            transport.write(last)
        half_close = transport.can_write_eof()
        if linger or not half_close:
            self._server.linger(self)
        if linger and half_close:
            transport.write_eof()
        else:
            transport.close()
