"""Key names and record values of the Redis registry: pure functions, no I/O.

The layout itself (which key holds what, under which hash tag) is described in
`registry.redis`. This module only spells it:

- A *tag* is the part of a key between the first `{` and the next `}`; Redis Cluster hashes only
  that part, so keys with equal tags share a slot. An id becomes a tag by percent-escaping `%` as
  `%25` and `}` as `%7D` (nothing else changes, so tags of ordinary ids stay readable), and the
  empty id becomes `%`, which no escaped id can be. A tag therefore never contains `}`, is never
  empty, and maps back to exactly one id (`untag`). A `{` inside a tag is harmless: Redis ends
  the tag at the first `}`, wherever the `{`s are.
- A *record* (a registration, and the device record written with it) is one byte string:

      VERSION \\xff NODE \\xff USER \\xff DEVICE_TYPE

  VERSION is the version in 20 zero-padded decimal digits, so that Lua compares versions beyond
  2**53 exactly, as strings of equal length. The ids are UTF-8, which never contains the byte
  0xFF, so the separator cannot occur inside them whatever they hold. NODE starts at byte 22.
"""

from __future__ import annotations

import orjson

from registry.base import Device, NodeInfo, NodeState, Registration

SEP = b"\xff"
VERSION_DIGITS = 20
MAX_VERSION = 10**VERSION_DIGITS - 1


def tag(id_: str) -> str:
    """The hash-tag body for an opaque id (see the module docstring)."""
    if not id_:
        return "%"
    if "%" in id_ or "}" in id_:
        return id_.replace("%", "%25").replace("}", "%7D")
    return id_


def untag(tag_: str) -> str:
    """The id a tag was made from: `untag(tag(x)) == x` for every string."""
    if tag_ == "%":
        return ""
    return tag_.replace("%7D", "}").replace("%25", "%")


class Keys:
    """Every key name of one registry, under `prefix` (no braces: they would move the tag)."""

    __slots__ = ("node_set", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
        self.prefix = prefix
        self.node_set = f"{{{prefix}:nodes}}"

    def registration(self, client_id: str) -> str:
        return f"{self.prefix}:c:{{{tag(client_id)}}}"

    def device(self, client_id: str) -> str:
        return f"{self.prefix}:d:{{{tag(client_id)}}}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:u:{{{tag(user_id)}}}"

    def node(self, node_id: str) -> str:
        return f"{self.node_set}:{node_id}"


def encode_record(reg: Registration) -> bytes:
    """The stored form of a registration (and of the device record written with it)."""
    if not 0 <= reg.version <= MAX_VERSION:
        raise ValueError(f"version must be in [0, 10**20), got {reg.version}")
    return b"%020d\xff%b\xff%b\xff%b" % (
        reg.version, reg.node_id.encode(), reg.user_id.encode(), reg.device_type.encode())


def decode_registration(client_id: str, raw: bytes) -> Registration:
    version, node, user, device_type = raw.split(SEP)
    return Registration(client_id, user.decode(), device_type.decode(), node.decode(), int(version))


def decode_device(client_id: str, raw: bytes) -> Device:
    return Device(client_id, raw.rsplit(SEP, 1)[1].decode())


def user_of(raw: bytes) -> bytes:
    """The user id (UTF-8) a stored record names."""
    return raw.split(SEP)[2]


def version_mark(version: int, node_id: str) -> bytes:
    """The first bytes of every record written by `node_id` at `version`."""
    return b"%020d\xff%b\xff" % (version, node_id.encode())


def node_mark(node_id: str) -> bytes:
    """What follows the version in every record that names `node_id` (from byte 21 on)."""
    return SEP + node_id.encode() + SEP


def encode_node(node: NodeInfo) -> bytes:
    return orjson.dumps([node.node_id, node.address, node.region, node.state.value,
                         node.connections, node.by_device_type])


def decode_node(raw: bytes) -> NodeInfo:
    node_id, address, region, state, connections, by_type = orjson.loads(raw)
    return NodeInfo(node_id, address, region, NodeState(state), connections,
                    tuple((device_type, count) for device_type, count in by_type))
