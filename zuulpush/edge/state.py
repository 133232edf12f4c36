"""The lifecycle of one edge connection, in one place.

    HANDSHAKE --accepted--> REPLAYING --replayed--> OPEN
        |                       |                     |
        +--------rejected-------+------closing--------+--> CLOSING --lost--> CLOSED
        (any state) --lost--> CLOSED

- HANDSHAKE: h11 is reading the request; the handshake deadline applies.
- REPLAYING: upgraded and authenticated; the connection is being registered and its inbox read.
  Live deliveries that arrive meanwhile are held back and sent after the replay, in id order.
- OPEN: pushes flow; heartbeats run.
- CLOSING: a close frame, go-away or error answer has been written; nothing more is sent. A
  connection the node sheds goes here straight from HANDSHAKE, its `503` written (or its socket
  closed at accept).
- CLOSED: the transport is gone.
"""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    HANDSHAKE = 0
    REPLAYING = 1
    OPEN = 2
    CLOSING = 3
    CLOSED = 4


class Event(IntEnum):
    ACCEPTED = 0
    REPLAYED = 1
    CLOSING = 2
    LOST = 3


class InvalidTransition(RuntimeError):
    """A bug: the edge tried a transition the table does not allow."""


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.HANDSHAKE, Event.ACCEPTED): State.REPLAYING,
    (State.HANDSHAKE, Event.CLOSING): State.CLOSING,
    (State.REPLAYING, Event.REPLAYED): State.OPEN,
    (State.REPLAYING, Event.CLOSING): State.CLOSING,
    (State.OPEN, Event.CLOSING): State.CLOSING,
    (State.HANDSHAKE, Event.LOST): State.CLOSED,
    (State.REPLAYING, Event.LOST): State.CLOSED,
    (State.OPEN, Event.LOST): State.CLOSED,
    (State.CLOSING, Event.LOST): State.CLOSED,
}


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise InvalidTransition(f"{event.name} in {state.name}") from None
