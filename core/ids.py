"""Message ids: 26-character, time-ordered, unique (ULID layout, Crockford base32).

Within one process ids are strictly increasing, so "every message after id X" is a string compare;
across processes they order by millisecond and are unique by their random part.
"""

from __future__ import annotations

import base64
import os
import re

from core.clock import ClockMs, wall_ms

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_TO_BASE32 = bytes.maketrans(_ALPHABET.encode(), b"0123456789ABCDEFGHIJKLMNOPQRSTUV")
"""Crockford digits to the ones `int(text, 32)` reads (a bytes table: a C lookup per byte)."""
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
"""RFC 4648 base32 digits to Crockford's: 80 random bits are 10 bytes, exactly 16 digits."""


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


class IdGenerator:
    """Monotonic ULID-style ids, stamped by `clock_ms` (wall-clock ms) unless `new` is given
    the time. Not thread-safe; one per event loop."""

    __slots__ = ("_clock_ms", "_last_ms", "_last_random", "_prefix")

    def __init__(self, clock_ms: ClockMs = wall_ms) -> None:
        self._clock_ms = clock_ms
        self._last_ms = -1
        self._last_random = 0
        self._prefix = ""

    def new(self, now_ms: int | None = None) -> str:
        ms = self._clock_ms() if now_ms is None else now_ms
        if ms <= self._last_ms:
            ms = self._last_ms
            self._last_random += 1
        else:
            self._last_ms = ms
            self._last_random = int.from_bytes(os.urandom(10), "big") >> 1
            self._prefix = _encode(ms, 10)
        # The random part as 16 base32 digits, in C; the time prefix is made once per ms.
        random = base64.b32encode(self._last_random.to_bytes(10, "big"))
        return self._prefix + random.translate(_FROM_RFC4648).decode()


ID_FORMAT = "26 characters of Crockford base32 in upper case (0-9, A-Z but I, L, O, U)"
"""How a message id is written, for error messages."""

_WELL_FORMED = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def is_message_id(text: str) -> bool:
    """Whether `text` is written as the ids this module makes are (`ID_FORMAT`; the first digit
    at most 7, as 48 bits of milliseconds allow). A resume point or an ack "through" that is not
    must be refused, never compared: "zzz" sorts after every id, so it would mean "everything
    received"."""
    return _WELL_FORMED.fullmatch(text) is not None


def id_time_ms(message_id: str) -> int | None:
    """The millisecond an id was made at (its first 10 characters), or None if it is not
    shaped like ours. The API stamps a message's id and its `ts` from the same clock reading,
    so this is the message's `ts` (later by the few ms the generator may run ahead in a burst)."""
    try:
        if len(message_id) != 26:
            return None
        return int(message_id[:10].encode().translate(_TO_BASE32), 32)
    except (ValueError, UnicodeEncodeError):
        return None
