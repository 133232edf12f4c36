"""The common WebSocket upgrade request, parsed without h11: a strict subset, sans I/O.

Almost every connect is one read holding a whole, plain `GET /ws... HTTP/1.1` head. For that
case `parse()` returns what h11 would make of it (method, target, lower-cased header names with
their values, the bytes after the head) in about a quarter of h11's time, without building an
`h11.Connection`. Anything else returns None and the caller hands the same bytes to h11, which
decides, answers errors and handles what this does not: a head split over reads, other paths
(SSE needs h11 to frame its response), other versions, obsolete line folding, bare LF line
ends, a missing or repeated Host, a body (Content-Length, Transfer-Encoding), or any byte h11's
grammar would refuse. So the edge accepts and refuses exactly what it did with h11 alone; the
tests compare the two on well-formed and malformed heads.
"""

from __future__ import annotations

import re

# RFC 9110/9112's grammar as h11 writes it (`h11._abnf`; the tests check they are the same), so
# that this accepts nothing h11 would refuse.
TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
METHOD = FIELD_NAME = TOKEN
REQUEST_TARGET = r"[\x21-\x7e]+"
FIELD_VALUE = r"([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"

END = b"\r\n\r\n"
_REQUEST_LINE = re.compile(
    rf"(?P<method>{METHOD}) (?P<target>/ws(?:\?{REQUEST_TARGET})?) HTTP/1\.1".encode())
_HEADER = re.compile(rf"(?P<name>{FIELD_NAME}):[ \t]*(?P<value>{FIELD_VALUE})[ \t]*".encode())
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

Head = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]


def parse(data: bytes, max_bytes: int) -> Head | None:
    """`(method, target, headers, trailing)` of a complete, plain `/ws` request head at the
    start of `data` of at most `max_bytes`; None for anything else (module docstring)."""
    end = data.find(END, 0, max_bytes + len(END))
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            return None
        name = header["name"].lower()
        if name == b"host":
            hosts += 1
        elif name in _BODY_HEADERS:
            return None
        headers.append((name, header["value"]))
    if hosts != 1:
        return None
    return request["method"], request["target"], headers, data[end + len(END):]
