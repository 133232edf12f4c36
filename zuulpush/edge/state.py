"""The lifecycle of one edge connection, in one place (h11's `_state.py` rule): every state, every
transition, and the two small values beside the state that decide what a timer visit does.

    HANDSHAKE --accepted--> REPLAYING --replayed--> OPEN
        |--echoed--> ECHO
        |--shed--> SHED
        |--shed_before_request--> SHED_UNREAD --request_came--> SHED
        +--closing--> CLOSING   (also from REPLAYING, OPEN and ECHO)
    (any state but CLOSED) --lost--> CLOSED

- HANDSHAKE: the request head is being read; the handshake deadline applies.
- REPLAYING: a device's upgrade (or SSE answer) is written; the connection is being registered
  and its inbox read and replayed. Live pushes that arrive meanwhile are held back and sent
  after the replay, in id order.
- OPEN: a device's pushes flow; heartbeats run.
- ECHO: the diagnostic echo WebSocket (`echo`): frames are echoed back; nothing is registered
  or replayed; no inbound rate, no pong deadline, no lifetime; its own message size limit.
- SHED_UNREAD: shed at accept before its request came: its `503` is written, and our side is
  shut only when the request's first bytes arrive (docs/edge.md says why).
- SHED: not served: its `503` written and our side shut (lingering until the peer closes or the
  handshake deadline), or its socket closed at accept. Counted apart from served sockets.
- CLOSING: a close frame, go-away or error answer is written; nothing more is sent. Before an
  upgrade the handshake deadline bounds the linger; after it, the heartbeat wheel.
- CLOSED: the transport is gone.

Beside the state, an upgraded connection keeps its `watch` (what the heartbeat wheel's next
visit checks, `VISITS`) and its `age` (the wheel's visits so far, for its lifetime, or
`EXPIRING` once its lifetime close is scheduled).
"""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    HANDSHAKE = 0
    REPLAYING = 1
    OPEN = 2
    CLOSING = 3
    CLOSED = 4
    ECHO = 5
    SHED_UNREAD = 6
    SHED = 7


class Transition(IntEnum):
    ACCEPTED = 0  # a device's upgrade or SSE answer is written
    REPLAYED = 1  # its replay is all written
    CLOSING = 2  # a close frame, go-away or error answer is written
    LOST = 3  # the transport is gone
    ECHOED = 4  # an echo WebSocket's upgrade is written
    SHED = 5  # a shed request's 503 is written and our side shut, or its socket closed
    SHED_BEFORE_REQUEST = 6  # shed at accept: its 503 written before its request came
    REQUEST_CAME = 7  # the shed request's first bytes came: our side is shut now


class InvalidTransition(RuntimeError):
    """A bug: the edge tried a transition the table does not allow."""


TRANSITIONS: dict[tuple[State, Transition], State] = {
    (State.HANDSHAKE, Transition.ACCEPTED): State.REPLAYING,
    (State.HANDSHAKE, Transition.ECHOED): State.ECHO,
    (State.HANDSHAKE, Transition.CLOSING): State.CLOSING,
    (State.HANDSHAKE, Transition.SHED): State.SHED,
    (State.HANDSHAKE, Transition.SHED_BEFORE_REQUEST): State.SHED_UNREAD,
    (State.SHED_UNREAD, Transition.REQUEST_CAME): State.SHED,
    (State.REPLAYING, Transition.REPLAYED): State.OPEN,
    (State.REPLAYING, Transition.CLOSING): State.CLOSING,
    (State.OPEN, Transition.CLOSING): State.CLOSING,
    (State.ECHO, Transition.CLOSING): State.CLOSING,
    (State.HANDSHAKE, Transition.LOST): State.CLOSED,
    (State.REPLAYING, Transition.LOST): State.CLOSED,
    (State.OPEN, Transition.LOST): State.CLOSED,
    (State.ECHO, Transition.LOST): State.CLOSED,
    (State.SHED_UNREAD, Transition.LOST): State.CLOSED,
    (State.SHED, Transition.LOST): State.CLOSED,
    (State.CLOSING, Transition.LOST): State.CLOSED,
}


def next_state(state: State, transition: Transition) -> State:
    try:
        return TRANSITIONS[state, transition]
    except KeyError:
        raise InvalidTransition(f"{transition.name} in {state.name}") from None


FINISHED = (State.CLOSING, State.CLOSED, State.SHED_UNREAD, State.SHED)
"""States in which nothing more is written (a close or go-away asked for then does nothing)."""

SHEDDING = (State.SHED_UNREAD, State.SHED)
"""States of a socket that was never served."""

LIVE = (State.REPLAYING, State.OPEN)
"""States of a device connection whose lifetime runs (the wheel's visits count in its `age`)."""

EXPIRING = -1
"""`age` of a connection whose lifetime close is scheduled (it waits in the lifetime heap): its
visits no longer count."""


class Watch(IntEnum):
    """What the heartbeat wheel's next visit checks, set by the visits (`VISITS`) and cleared
    (NONE) by any frame from the peer and by the peer reading a paused replay again."""

    NONE = 0
    PONG = 1  # OPEN: a ping went out at the last visit and nothing came back since
    STALLED = 2  # REPLAYING: the peer's reading had paused the replay at the last visit


class Visit(IntEnum):
    """What one visit of the heartbeat wheel does to a connection."""

    PING = 0  # write the wire's heartbeat; a WebSocket then owes a pong (Watch.PONG)
    KEEPALIVE = 1  # write the heartbeat; nothing is owed (echo)
    TIMEOUT = 2  # no pong since the last ping: abort (a heartbeat timeout)
    STALL_CHECK = 3  # a replay the peer's reading has paused is STALLED from now on
    SLOW_CONSUMER = 4  # still paused a whole interval later: close (4002)
    ABORT = 5  # a close we started did not finish within an interval


VISITS: dict[tuple[State, Watch], Visit] = {
    (State.OPEN, Watch.NONE): Visit.PING,
    (State.OPEN, Watch.STALLED): Visit.PING,  # (does not occur: a replay ends unpaused)
    (State.OPEN, Watch.PONG): Visit.TIMEOUT,
    (State.ECHO, Watch.NONE): Visit.KEEPALIVE,
    (State.REPLAYING, Watch.NONE): Visit.STALL_CHECK,
    (State.REPLAYING, Watch.STALLED): Visit.SLOW_CONSUMER,
    (State.CLOSING, Watch.NONE): Visit.ABORT,
    (State.CLOSING, Watch.PONG): Visit.ABORT,
    (State.CLOSING, Watch.STALLED): Visit.ABORT,
}
"""A visit in any other state or watch does nothing (HANDSHAKE, SHED_UNREAD, SHED and CLOSED
connections are not in the wheel)."""

VISIT_TABLE: tuple[tuple[Visit | None, ...], ...] = tuple(
    tuple(VISITS.get((state, watch)) for watch in sorted(Watch)) for state in sorted(State))
"""`VISITS` indexed by the state's and the watch's values (`VISIT_TABLE[state][watch]`), for
the wheel's visits of every connection."""
