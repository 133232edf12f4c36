"""Property tests (hypothesis) of the push API's input validation (`router.validation`).

On any JSON (and any bytes), `parse_push`, `parse_batch`, `parse_inbox_ack` and
`parse_inbox_query` return a value or raise `InvalidRequest` (or its `PayloadTooLarge`) naming a
`field`, never another exception (which the API would answer with a 500). Bodies are built from
recursive JSON strategies biased towards the documented keys, so that validation gets deep.
Bounded and derandomized (`FUZZ`).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequest
from core.ids import IdGenerator
from router.config import ApiConfig
from router.validation import parse_batch, parse_inbox_ack, parse_inbox_query, parse_push

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
CONFIG = ApiConfig(max_payload_bytes=2048, max_batch_payload_bytes=8192, default_ttl_s=300,
                   max_ttl_s=3600, max_targets=5, max_batch=4)
NOW_MS = 1_700_000_000_000
KEYS = ["to", "data", "topic", "priority", "ttl", "dedup_key", "clients", "users",
        "device_types", "broadcast", "messages", "ids", "through", "x"]

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["high", "normal", "low", "", "c1", "x" * 300]),
)
_keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6))
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(_keys, inner, max_size=6)),
    max_leaves=30,
)
_push = st.fixed_dictionaries(
    {"to": st.one_of(_json, st.fixed_dictionaries({}, optional={
        "clients": st.one_of(_json, st.lists(_scalars, max_size=7)),
        "users": st.one_of(_json, st.lists(_scalars, max_size=3)),
        "device_types": st.one_of(_json, st.lists(_scalars, max_size=3)),
        "broadcast": _scalars}))},
    optional={"data": _json, "topic": _scalars, "priority": _scalars, "ttl": _scalars,
              "dedup_key": _scalars, "x": _json},
)


def _checked(call: Any) -> None:
    try:
        call()
    except InvalidRequest as exc:
        assert exc.field is not None, exc
        assert exc.body()["error"]["field"] == exc.field


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


@FUZZ
@given(body=st.one_of(_push, _json))
def test_parse_push_raises_only_invalid_request_with_a_field(body: Any) -> None:
    _checked(lambda: parse_push(_dumps(body), config=CONFIG, ids=IdGenerator(), now_ms=NOW_MS))


@FUZZ
@given(raw=st.binary(max_size=100))
def test_parse_push_on_any_bytes(raw: bytes) -> None:
    _checked(lambda: parse_push(raw, config=CONFIG, ids=IdGenerator(), now_ms=NOW_MS))


@FUZZ
@given(body=st.one_of(
    st.fixed_dictionaries({"messages": st.lists(st.one_of(_push, _json), max_size=6)},
                          optional={"x": _json}),
    _json))
def test_parse_batch_raises_only_invalid_request_with_a_field(body: Any) -> None:
    _checked(lambda: parse_batch(_dumps(body), config=CONFIG, ids=IdGenerator(), now_ms=NOW_MS))


@FUZZ
@given(body=st.one_of(
    st.fixed_dictionaries({}, optional={"ids": st.one_of(_json, st.lists(_scalars, max_size=8)),
                                        "through": _scalars, "x": _json}),
    _json), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_parse_inbox_ack_raises_only_invalid_request_with_a_field(
        body: Any, raw: bytes | None) -> None:
    data = _dumps(body) if raw is None else raw
    _checked(lambda: parse_inbox_ack(data, max_ids=5, max_bytes=2048))


_digits = st.text(alphabet="0123456789", min_size=1, max_size=6000)


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["after", "limit", "token", "x"]),
                             st.one_of(st.text(max_size=20), _digits), max_size=4))
def test_parse_inbox_query_raises_only_invalid_request_with_a_field(
        query: dict[str, str]) -> None:
    _checked(lambda: parse_inbox_query(query, max_page=100))


def test_a_limit_of_thousands_of_digits_is_400_not_500() -> None:
    """Regression: `int()` refuses strings of more than 4300 digits with a ValueError, which the
    API answered with a 500."""
    for limit in ("9" * 5000, "0" * 5000 + "7"):
        try:
            after, got = parse_inbox_query({"limit": limit}, max_page=100)
        except InvalidRequest as exc:
            assert exc.field == "limit" and limit.startswith("9")
        else:
            assert (after, got) == (None, 7)
