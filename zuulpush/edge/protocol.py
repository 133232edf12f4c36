"""One device connection: an `asyncio.Protocol` that only moves bytes.

Parsing and decisions live in sans-I/O modules (`head`, `request`, `wsframes`, `inbound`, `sse`,
`wire`); every state and transition in `state`; what the connection needs of its node in
`host.ConnectionHost`, the only thing it is handed. Nothing but this module writes a
connection's fields (the parts call its methods). What an idle open connection holds is what
the `__slots__` below name: no h11 or wsproto object, no task, no timer handle. Shedding,
lingering closes and paced replays: docs/edge.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, cast

import h11

from core.auth_throttle import source_of
from core.errors import ZuulpushError
from registry.base import Registration, new_version
from zuulpush.edge import inbound, sse, wsframes
from zuulpush.edge.answers import CORS, http_error, shed_answer
from zuulpush.edge.head import read_head
from zuulpush.edge.host import ConnectionHost
from zuulpush.edge.request import ONE_SHOT, Accept, Headers, Route, check_head_size
from zuulpush.edge.shedding import Shed
from zuulpush.edge.state import (
    EXPIRING,
    FINISHED,
    SHEDDING,
    VISIT_TABLE,
    State,
    Transition,
    Visit,
    Watch,
    next_state,
)
from zuulpush.edge.wire import SSE, WEBSOCKET, Outgoing, Wire, jittered_ms
from zuulpush.edge.wsframes import Close, FrameEvent, FrameReader
from zuulpush.errors import FrameViolation, HandshakeRejected, InboundRateExceeded

_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"

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

    __slots__ = ("_host", "_parser", "_rate", "_replay", "age", "hw", "registration", "slot",
                 "state", "transport", "watch", "wire")

    def __init__(self, host: ConnectionHost[EdgeConnection]) -> None:
        self._host = host
        self.transport: asyncio.Transport | None = None
        self.state = State.HANDSHAKE
        # What reads the bytes now: h11 while the request head comes (HANDSHAKE, made only if
        # `fasthead` cannot parse it), then a WebSocket FrameReader while a frame is part-read.
        self._parser: h11.Connection | FrameReader | None = None
        self._replay: _Replay | None = None
        self._rate = 0
        self.wire: Wire | None = None
        self.registration: Registration | None = None
        self.slot = -1  # its bucket in the heartbeat wheel (-1: not in it)
        self.watch = Watch.NONE  # what the wheel's next visit checks (`state.VISITS`)
        self.age = 0  # the wheel's visits so far, for its lifetime (or `state.EXPIRING`)
        self.hw = ""  # the highest id written, from the resume point on (`given`)

    @property
    def client_id(self) -> str:
        assert self.registration is not None
        return self.registration.client_id

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = transport = cast(asyncio.Transport, transport)
        host = self._host
        shed = host.admit()
        if shed is not None:
            self._shed(shed)
            return
        limit = host.config.write_limit_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        host.handshake_started(self)

    def data_received(self, data: bytes) -> None:
        _ON_DATA[self.state](self, data)

    def pause_writing(self) -> None:
        if self.state is State.REPLAYING and self._replay is not None:
            self._replay.paused = True  # wait for resume_writing; a visit bounds the wait
        elif self.state is State.OPEN or self.state is State.ECHO:
            # The peer reads slower than we push: close with a hint; its messages wait in the
            # inbox.
            self._slow_consumer()

    def resume_writing(self) -> None:
        replay = self._replay
        if self.state is State.REPLAYING and replay is not None and replay.paused:
            replay.paused = False
            self.watch = Watch.NONE
            if replay.queue is not None:
                self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        shed = self.state in SHEDDING
        self.state = next_state(self.state, Transition.LOST)
        self._parser = self._replay = None
        # A closed connection may stay referenced a while (the handshake-deadline deque, the
        # lifetime heap): it should not keep its transport alive meanwhile.
        self.transport = None
        if shed:
            self._host.shed_lost()
        else:
            self._host.lost(self)

    # what each state does with bytes from the peer (`_ON_DATA`)

    def _request_bytes(self, data: bytes) -> None:
        """HANDSHAKE: the request head, unless the loop runs too late to take it on now."""
        if self._host.shed_late():
            self._parser = None
            self._answer_shed(Shed.LOOP_LAG)
            return
        self._handshake(data)

    def _shed_request_came(self, data: bytes) -> None:
        """SHED_UNREAD: its request is coming (and is discarded): now our side can be shut."""
        self.state = next_state(self.state, Transition.REQUEST_CAME)
        assert self.transport is not None
        self.transport.write_eof()

    def _discard(self, data: bytes) -> None:
        """CLOSING, SHED, CLOSED: what the peer still sends is read and dropped."""

    # handshake

    def _handshake(self, data: bytes) -> None:
        try:
            self._parser, head = read_head(cast(h11.Connection | None, self._parser), data,
                                           self._host.config.max_header_bytes)
        except HandshakeRejected as exc:
            self.reject(exc)
            return
        if head is not None:
            self._request(*head)

    def _request(self, method: bytes, target: bytes, headers: Headers, trailing: bytes) -> None:
        host = self._host
        try:
            check_head_size(method, target, headers, host.config.max_header_bytes)
            accept = host.decide(method, target, headers, self._source)
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
        if reason is Shed.HARD_LIMIT:
            self.state = next_state(self.state, Transition.SHED)
            self.transport.abort()  # before any read: uvloop and asyncio then never read
            return
        self._host.handshake_started(self)  # its deadline bounds the linger
        self._answer_shed(reason, request_read=False)

    def _answer_shed(self, reason: Shed, *, request_read: bool = True) -> None:
        assert self.transport is not None
        answer = shed_answer(reason, self._host.retry_after_s())
        if request_read or not self.transport.can_write_eof():
            self._close_transport(answer, linger=True, transition=Transition.SHED)
            return
        self.state = next_state(self.state, Transition.SHED_BEFORE_REQUEST)
        self.transport.write(answer)  # our side is shut when the request comes

    def _accept(self, accept: Accept, trailing: bytes) -> None:
        assert self.transport is not None
        if accept.route in ONE_SHOT:  # health, metrics, admin: answered, then closed
            self._parser = None
            self._close_transport(self._host.answer(accept), linger=True)
            return
        if accept.route is Route.SSE:
            conn = self._parser
            assert isinstance(conn, h11.Connection)
            headers = sse.HEADERS if accept.origin is None else sse.headers_for(accept.origin)
            self.transport.write(conn.send(h11.Response(status_code=200, headers=headers))
                                 + sse.retry(self._host.config.sse_retry_ms))
            self.wire = SSE
        else:
            assert accept.ws_accept is not None
            self.transport.write(_SWITCHING + b"Sec-WebSocket-Accept: " + accept.ws_accept
                                 + b"\r\n\r\n")
            self.wire = WEBSOCKET
        self._parser = None
        identity = accept.identity
        if identity is None:  # echo: nothing to register or replay
            self.state = next_state(self.state, Transition.ECHOED)
        else:
            self.state = next_state(self.state, Transition.ACCEPTED)
            self.registration = Registration(identity.client_id, identity.user_id,
                                             identity.device_type, self._host.node_id,
                                             new_version())
            self._replay = _Replay(accept.last_id)
            self.hw = accept.last_id or ""
        self._host.accepted(self)
        if trailing and self.wire is WEBSOCKET:
            self._frames(trailing)

    def reject(self, error: ZuulpushError, *, linger: bool = True) -> None:
        """Answer the request with the error's status and JSON body, then close (lingering, as a
        client may still be sending its request; the handshake deadline bounds the linger)."""
        assert self.transport is not None
        self._host.stats.count_reject(error)
        headers = (*error.headers, *CORS)
        self._close_transport(http_error(error.http_status, error.body(), headers), linger=linger)

    def handshake_due(self) -> None:
        """The handshake deadline came: a request still incomplete is answered 408; one
        answered or shed before an upgrade and still lingering is aborted."""
        if self.state is State.HANDSHAKE:
            self.reject(HandshakeRejected(408, "handshake not completed in time",
                                          code="request_timeout"), linger=False)
        elif self.state in SHEDDING or (self.state is State.CLOSING and self.wire is None):
            self.abort()

    # WebSocket frames (REPLAYING, OPEN and ECHO read here: `_ON_DATA`)

    def _frames(self, data: bytes) -> None:
        if self.wire is not WEBSOCKET:
            return  # SSE: what a device sends after its request is read and dropped
        host = self._host
        reader = cast(FrameReader | None, self._parser)
        if reader is None:
            reader = FrameReader(host.config.echo_max_message_bytes if self.state is State.ECHO
                                 else host.config.ws_max_message_bytes)
        try:
            events = reader.feed(data)
            if events:
                self.watch = Watch.NONE  # the peer is alive, and reads: no pong is owed
            for event in events:
                self._on_frame(event)
                if self.state is State.CLOSING:
                    return
        except FrameViolation as exc:
            if isinstance(exc, InboundRateExceeded):
                host.stats.rate_limited += 1
            else:
                host.stats.violations += 1
            self.close(exc.close_code, str(exc))
            return
        self._parser = None if reader.idle else reader

    def _on_frame(self, event: FrameEvent) -> None:
        assert self.transport is not None
        echo = self.state is State.ECHO
        if not echo and not isinstance(event, wsframes.CloseReceived):
            # Pings and pongs count too: each ping costs a pong, so a flood is closed as well.
            config = self._host.config
            self._rate = inbound.rate_step(self._rate, self._host.clock(),
                                           rate_per_s=config.ws_inbound_rate_per_s,
                                           burst=config.ws_inbound_burst)
        if isinstance(event, wsframes.Ping):
            self.transport.write(wsframes.pong_frame(event.payload))
        elif isinstance(event, wsframes.CloseReceived):
            code = None if event.code == 1005 else event.code
            self._close_transport(wsframes.close_frame(code))
        elif isinstance(event, wsframes.Message):
            if echo:
                frame = wsframes.text_frame if event.text else wsframes.binary_frame
                self.transport.write(frame(event.data))
                return
            ids = inbound.parse_acks(event.data, text=event.text)
            self._host.ack(self, ids)

    # pushes and replays

    def deliver(self, out: Outgoing) -> None:
        """Write a push now, or hold it back while the inbox is being replayed."""
        if self.state is State.OPEN:
            assert self.transport is not None and self.wire is not None
            self.transport.write(self.wire.push(out))
            self._host.wrote(self, out.id, stored=out.stored)
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
                self._host.wrote(self, out.id, stored=out.stored)
            if replay.paused:
                return  # OPEN only once the buffer drains: pause_writing will not fire again
            if not replay.held:
                break
            queue.extend(sorted(replay.held, key=lambda out: out.id))
            replay.held = None
        self._replay = None
        self.state = next_state(self.state, Transition.REPLAYED)

    # timers: the heartbeat wheel's visits and the lifetime

    def placed(self, slot: int) -> None:
        """The heartbeat wheel holds this connection in bucket `slot` now."""
        self.slot = slot

    def tick(self) -> bool:
        """A visit from the heartbeat wheel, once per interval: what it does is `state.VISITS`'s
        (heartbeats, and deadlines for closes we started and replays the peer stopped
        reading). True if the visit counts toward the connection's lifetime (`age`)."""
        visit = VISIT_TABLE[self.state][self.watch]
        if visit is Visit.PING:  # most visits: a ping, or an SSE keepalive
            assert self.transport is not None and self.wire is not None
            self.transport.write(self.wire.heartbeat())
            if self.wire.expects_pong:
                self.watch = Watch.PONG
        elif visit is not None:
            self._visit(visit)
        if self.age >= 0 and (self.state is State.OPEN or self.state is State.REPLAYING):
            self.age += 1
            return True
        return False

    def _visit(self, visit: Visit) -> None:
        if visit is Visit.KEEPALIVE:
            assert self.transport is not None and self.wire is not None
            self.transport.write(self.wire.heartbeat())
        elif visit is Visit.TIMEOUT:
            self._host.stats.heartbeat_timeouts += 1
            self.abort()
        elif visit is Visit.STALL_CHECK:
            if self._replay is not None and self._replay.paused:
                self.watch = Watch.STALLED  # still paused at the next visit: a slow consumer
        elif visit is Visit.SLOW_CONSUMER:
            self._slow_consumer()
        else:
            self.abort()  # a close we started did not finish within one interval

    def expiring(self) -> None:
        """Its lifetime ends within this interval: its close is scheduled, visits stop counting."""
        self.age = EXPIRING

    # closes

    def _slow_consumer(self) -> None:
        self._host.stats.slow_consumers += 1
        self.goaway(Close.SLOW_CONSUMER, "slow consumer")

    def goaway(self, code: int, reason: str, base_delay_ms: int = 1000) -> None:
        """Close with a jittered reconnect hint (WebSocket 4xxx close, SSE `reconnect` event)."""
        if self.state in FINISHED or self.transport is None:
            return
        if self.wire is None:
            self.abort()
            return
        self._close_transport(self.wire.goaway(code, reason, jittered_ms(base_delay_ms)),
                              linger=self.wire is WEBSOCKET)

    def close(self, code: int, reason: str) -> None:
        """Close without a reconnect hint (protocol violations, replaced connections)."""
        if self.state in FINISHED or self.transport is None:
            return
        self._close_transport(b"" if self.wire is None else self.wire.close(code, reason),
                              linger=self.wire is WEBSOCKET)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close_transport(self, last: bytes = b"", *, linger: bool = False,
                         transition: Transition = Transition.CLOSING) -> None:
        """Write `last` and close (docs/edge.md, Closing). CLOSING (or SHED) comes first: the
        write may call `pause_writing` synchronously (asyncio and uvloop do), which must then
        find nothing left to close. With `linger`, only our side is shut (FIN after `last`)
        and what the peer still sends is read and dropped until it closes too or a deadline
        aborts it. TLS has no half-close: there `close()` itself lingers, so every close waits
        in the wheel the same way."""
        transport = self.transport
        assert transport is not None
        self.state = next_state(self.state, transition)
        self._parser = self._replay = None
        if last:
            transport.write(last)
        half_close = transport.can_write_eof()
        if linger or not half_close:
            self._host.linger(self)
        if linger and half_close:
            transport.write_eof()
        else:
            transport.close()


_Reader = Callable[[EdgeConnection, bytes], None]
_ON_DATA: tuple[_Reader, ...] = tuple({
    State.HANDSHAKE: EdgeConnection._request_bytes,
    State.REPLAYING: EdgeConnection._frames,
    State.OPEN: EdgeConnection._frames,
    State.ECHO: EdgeConnection._frames,
    State.SHED_UNREAD: EdgeConnection._shed_request_came,
    State.CLOSING: EdgeConnection._discard,
    State.SHED: EdgeConnection._discard,
    State.CLOSED: EdgeConnection._discard,
}[state] for state in sorted(State))
"""What `data_received` does in each state, indexed by the state's value."""


class Wrote(Protocol):
    """`GivenLedger.wrote`, as `fan_out` calls it."""

    def __call__(self, conn: EdgeConnection, message_id: str, *, stored: bool) -> None: ...


def fan_out(conns: Iterable[EdgeConnection], out: Outgoing, wrote: Wrote) -> None:
    """Write `out` to each of `conns`: the same bytes to every open WebSocket with no call per
    socket but the write; SSE and connections still replaying take `deliver`. Each write
    raises the connection's high-water id and, for an inbox entry, records its mark (`wrote`):
    inline for a broadcast's many sockets."""
    mid, stored = out.id, out.stored
    frame, open_, ws = out.ws_frame(), State.OPEN, WEBSOCKET
    for conn in conns:
        if conn.state is open_ and conn.wire is ws:
            conn.transport.write(frame)  # type: ignore[union-attr]
            if stored:
                wrote(conn, mid, stored=True)
            elif mid > conn.hw:
                conn.hw = mid
        else:
            conn.deliver(out)
