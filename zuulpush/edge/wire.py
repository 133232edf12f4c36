"""Per-transport strategies: how a push, a heartbeat, a go-away and a close look on the wire.

The connection code never asks "WebSocket or SSE?"; it holds one of these shared, stateless
objects (Zuul's PushProtocol). `Outgoing` caches each encoding of one message, so a fan-out
encodes a message once per transport, not once per socket.
"""

from __future__ import annotations

import random

import orjson

from zuulpush.edge import sse, wsframes


class Outgoing:
    """One message on its way to local connections, with its wire encodings made on first use.
    `stored`: it is an inbox entry (not a broadcast), so writing it records a mark
    (`zuulpush.edge.given`)."""

    __slots__ = ("_sse", "_ws", "id", "payload", "stored")

    def __init__(self, id: str, payload: bytes, stored: bool = True) -> None:
        self.id = id
        self.payload = payload
        self.stored = stored
        self._ws: bytes | None = None
        self._sse: bytes | None = None

    def ws_frame(self) -> bytes:
        if self._ws is None:
            self._ws = wsframes.text_frame(self.payload)
        return self._ws

    def sse_event(self) -> bytes:
        if self._sse is None:
            self._sse = sse.message(self.id, self.payload)
        return self._sse


def jittered_ms(base_ms: int, rng: random.Random | None = None) -> int:
    """A reconnect delay: uniformly random in [base/2, base * 3/2], so clients spread out."""
    r = (rng or random).random()
    return int(base_ms * (0.5 + r))


class WebSocketWire:
    """Device WebSocket: text frames, ping/pong heartbeats, 4xxx close with a JSON hint."""

    name = "ws"
    expects_pong = True

    def push(self, out: Outgoing) -> bytes:
        return out.ws_frame()

    def heartbeat(self) -> bytes:
        return wsframes.PING

    def goaway(self, code: int, reason: str, reconnect_after_ms: int) -> bytes:
        hint = orjson.dumps({"reason": reason, "reconnect_after_ms": reconnect_after_ms})
        return wsframes.close_frame(code, hint.decode())

    def close(self, code: int, reason: str) -> bytes:
        return wsframes.close_frame(code, reason)


class SseWire:
    """Device Server-Sent Events: one chunk per event, comment keepalives, `reconnect` event."""

    name = "sse"
    expects_pong = False

    def push(self, out: Outgoing) -> bytes:
        return out.sse_event()

    def heartbeat(self) -> bytes:
        return sse.KEEPALIVE

    def goaway(self, code: int, reason: str, reconnect_after_ms: int) -> bytes:
        hint = orjson.dumps({"code": code, "reason": reason,
                             "reconnect_after_ms": reconnect_after_ms})
        return sse.event(hint, name="reconnect") + sse.retry(reconnect_after_ms) + sse.END

    def close(self, code: int, reason: str) -> bytes:
        """The stream's end, after a `reconnect` event naming the code with no hint: a device
        can tell 4003 (replaced by its newer connection: do not come back) from a drop."""
        return sse.event(orjson.dumps({"code": code, "reason": reason}), name="reconnect") + \
            sse.END


WEBSOCKET = WebSocketWire()
SSE = SseWire()
Wire = WebSocketWire | SseWire
