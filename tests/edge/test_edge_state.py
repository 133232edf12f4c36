"""Unit tests of `zuulpush.edge.state`: the connection lifecycle table."""

from __future__ import annotations

import itertools

import pytest

from zuulpush.edge.state import TRANSITIONS, Event, InvalidTransition, State, next_state

ALLOWED = [
    (State.HANDSHAKE, Event.ACCEPTED, State.REPLAYING),
    (State.HANDSHAKE, Event.CLOSING, State.CLOSING),
    (State.HANDSHAKE, Event.LOST, State.CLOSED),
    (State.REPLAYING, Event.REPLAYED, State.OPEN),
    (State.REPLAYING, Event.CLOSING, State.CLOSING),
    (State.REPLAYING, Event.LOST, State.CLOSED),
    (State.OPEN, Event.CLOSING, State.CLOSING),
    (State.OPEN, Event.LOST, State.CLOSED),
    (State.CLOSING, Event.LOST, State.CLOSED),
]
DISALLOWED = sorted(set(itertools.product(State, Event)) - {(s, e) for s, e, _ in ALLOWED})


@pytest.mark.parametrize("state, event, after", ALLOWED)
def test_allowed_transition(state: State, event: Event, after: State) -> None:
    assert next_state(state, event) is after


def test_the_table_is_exactly_the_documented_lifecycle() -> None:
    assert {(s, e): after for s, e, after in ALLOWED} == TRANSITIONS


@pytest.mark.parametrize("state, event", DISALLOWED)
def test_disallowed_transition_raises(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition, match=f"{event.name} in {state.name}"):
        next_state(state, event)


def test_closed_is_terminal_and_lost_always_leads_there() -> None:
    assert all(state is State.CLOSED for (_, event), state in TRANSITIONS.items()
               if event is Event.LOST)
    assert not any(state is State.CLOSED for state, _ in TRANSITIONS)


def test_every_state_but_closed_can_reach_closed() -> None:
    for state in State:
        if state is not State.CLOSED:
            assert next_state(state, Event.LOST) is State.CLOSED
