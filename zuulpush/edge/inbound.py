"""What devices may send over their WebSocket, sans I/O.

Protocol v1, device to server, one JSON object per text frame:

    {"type": "ack", "id": "<message id>"}
    {"type": "ack", "ids": ["<message id>", ...]}      (at most MAX_ACK_IDS)

Anything else closes the connection: binary frames with 1003, text that is not such an object with
1008 (invalid UTF-8 is caught earlier, by the frame parser, with 1007). Devices are also held to a
frame rate: `burst` frames (data, ping or pong) per window of `burst / rate_per_s` seconds; past
it, 1008.
"""

from __future__ import annotations

import orjson

from zuulpush.edge.wsframes import Close
from zuulpush.errors import FrameViolation, InboundRateExceeded

MAX_ACK_IDS = 1000
MAX_ID_LENGTH = 64


def parse_acks(data: bytes, *, text: bool) -> list[str]:
    """The message ids a device frame acknowledges; FrameViolation if the frame is not allowed."""
    if not text:
        raise FrameViolation(Close.UNSUPPORTED_DATA, "binary frames are not accepted")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameViolation(Close.POLICY_VIOLATION, "frame is not JSON") from None
    if not isinstance(message, dict) or message.get("type") != "ack":
        raise FrameViolation(Close.POLICY_VIOLATION, "expected {\"type\": \"ack\", ...}")
    ids = message.get("ids", [message["id"]] if "id" in message else None)
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_ACK_IDS:
        raise FrameViolation(Close.POLICY_VIOLATION,
                             f"ack needs 'id' or 1..{MAX_ACK_IDS} 'ids'")
    for item in ids:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ID_LENGTH:
            raise FrameViolation(Close.POLICY_VIOLATION, "ack ids must be short strings")
    return ids


_COUNT_BITS = 20
_COUNT_MASK = (1 << _COUNT_BITS) - 1


def rate_step(state: int, now: float, *, rate_per_s: float, burst: int) -> int:
    """Count one inbound message. `state` packs (window index, count) in one int, so an idle
    connection stores a single small number; returns the new state or raises
    `InboundRateExceeded` (1008)."""
    window = int(now * rate_per_s / burst)
    if state >> _COUNT_BITS != window:
        return (window << _COUNT_BITS) | 1
    count = (state & _COUNT_MASK) + 1
    if count > burst:
        raise InboundRateExceeded()
    return (window << _COUNT_BITS) | count
