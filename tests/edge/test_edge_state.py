"""Unit tests of `zuulpush.edge.state`: the connection lifecycle table."""

from __future__ import annotations

import itertools

import pytest

from zuulpush.edge.state import (
    TRANSITIONS,
    VISITS,
    InvalidTransition,
    State,
    Transition,
    Visit,
    Watch,
    next_state,
)

ALLOWED = [
    (State.HANDSHAKE, Transition.ACCEPTED, State.REPLAYING),
    (State.HANDSHAKE, Transition.CLOSING, State.CLOSING),
    (State.HANDSHAKE, Transition.LOST, State.CLOSED),
    (State.REPLAYING, Transition.REPLAYED, State.OPEN),
    (State.REPLAYING, Transition.CLOSING, State.CLOSING),
    (State.REPLAYING, Transition.LOST, State.CLOSED),
    (State.OPEN, Transition.CLOSING, State.CLOSING),
    (State.OPEN, Transition.LOST, State.CLOSED),
    (State.CLOSING, Transition.LOST, State.CLOSED),
    # echo, and shedding (once `slot` sentinels outside the table)
    (State.HANDSHAKE, Transition.ECHOED, State.ECHO),
    (State.ECHO, Transition.CLOSING, State.CLOSING),
    (State.ECHO, Transition.LOST, State.CLOSED),
    (State.HANDSHAKE, Transition.SHED, State.SHED),
    (State.HANDSHAKE, Transition.SHED_BEFORE_REQUEST, State.SHED_UNREAD),
    (State.SHED_UNREAD, Transition.REQUEST_CAME, State.SHED),
    (State.SHED_UNREAD, Transition.LOST, State.CLOSED),
    (State.SHED, Transition.LOST, State.CLOSED),
]
DISALLOWED = sorted(set(itertools.product(State, Transition)) - {(s, e) for s, e, _ in ALLOWED})


@pytest.mark.parametrize("state, transition, after", ALLOWED)
def test_allowed_transition(state: State, transition: Transition, after: State) -> None:
    assert next_state(state, transition) is after


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    assert {(s, e): after for s, e, after in ALLOWED} == TRANSITIONS


@pytest.mark.parametrize("state, transition", DISALLOWED)
def test_disallowed_transition_raises(state: State, transition: Transition) -> None:
    with pytest.raises(InvalidTransition, match=f"{transition.name} in {state.name}"):
        next_state(state, transition)


def test_closed_is_terminal_and_lost_always_leads_there() -> None:
    assert all(state is State.CLOSED for (_, transition), state in TRANSITIONS.items()
               if transition is Transition.LOST)
    assert not any(state is State.CLOSED for state, _ in TRANSITIONS)


def test_every_state_but_closed_can_reach_closed() -> None:
    for state in State:
        if state is not State.CLOSED:
            assert next_state(state, Transition.LOST) is State.CLOSED


def test_the_wheel_visits_only_upgraded_connections() -> None:
    visited = {state for state, _ in VISITS}
    assert visited == {State.REPLAYING, State.OPEN, State.ECHO, State.CLOSING}


def test_a_missed_pong_times_out_and_a_stalled_replay_is_a_slow_consumer() -> None:
    assert VISITS[State.OPEN, Watch.NONE] is Visit.PING
    assert VISITS[State.OPEN, Watch.PONG] is Visit.TIMEOUT
    assert VISITS[State.ECHO, Watch.NONE] is Visit.KEEPALIVE  # never held to pongs
    assert VISITS[State.REPLAYING, Watch.NONE] is Visit.STALL_CHECK
    assert VISITS[State.REPLAYING, Watch.STALLED] is Visit.SLOW_CONSUMER
    assert all(VISITS[State.CLOSING, watch] is Visit.ABORT for watch in Watch)
