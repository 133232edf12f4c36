"""The few WebSocket frames the benchmarks' bare clients need: read a server frame, answer pings.

The density and storm benchmarks hold thousands of connections per client process, too many for
a full client library's per-connection cost; they speak just enough RFC 6455 by hand (server
frames are unmasked; a client's pong is masked, here with a zero key).
"""

from __future__ import annotations

import asyncio

PING, CLOSE = 0x9, 0x8


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame's opcode and payload."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    payload = await reader.readexactly(length) if length else b""
    return head[0] & 0x0F, payload


def pong(payload: bytes) -> bytes:
    """A masked pong (zero key) carrying `payload` (a ping's payload is at most 125 bytes)."""
    return bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def answer_pings(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer pings until the server's close frame; a dropped connection raises
    `asyncio.IncompleteReadError` or `ConnectionError`."""
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == PING:
            writer.write(pong(payload))
        elif opcode == CLOSE:
            return
