"""Key names and record values of the Redis registry: pure functions, no I/O.

The layout itself (which key holds what, under which hash tag) is described in
`registry.redis`. This module only spells it:

- Ids become hash tags as `core.redis.keys.tag` spells them.
- A *record* (a client's registration and device, in one key) is one byte string:

      VERSION \\xff DEVICE_UNTIL \\xff LIVE_UNTIL \\xff NODE \\xff USER \\xff DEVICE_TYPE

  VERSION is the version in 20 zero-padded decimal digits, so that Lua compares versions beyond
  2**53 exactly, as strings of equal length. DEVICE_UNTIL and LIVE_UNTIL are wall-clock
  milliseconds in 15 zero-padded digits (compared the same way): the registration is live while
  LIVE_UNTIL is later than now (all zeros once unregistered), the device known while either is.
  Fixed widths put every field up to NODE at a fixed offset (NODE starts at byte 54), so the
  scripts find them without searching. The ids are UTF-8, which never contains the byte 0xFF, so
  the separator cannot occur inside them whatever they hold. A registration sends only its
  *head*, `VERSION \\xff NODE \\xff USER \\xff DEVICE_TYPE`; the scripts add the times.
"""

from __future__ import annotations

import orjson

from core.redis.keys import check_prefix, tag
from registry.base import Device, NodeInfo, NodeState, Registration

SEP = b"\xff"
VERSION_DIGITS = 20
MAX_VERSION = 10**VERSION_DIGITS - 1
TIME_DIGITS = 15


class Keys:
    """Every key name of one registry, under `prefix` (no braces: they would move the tag)."""

    __slots__ = ("node_set", "prefix")

    def __init__(self, prefix: str) -> None:
        check_prefix(prefix)
        self.prefix = prefix
        self.node_set = f"{{{prefix}:nodes}}"

    def client(self, client_id: str) -> str:
        return f"{self.prefix}:c:{{{tag(client_id)}}}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:u:{{{tag(user_id)}}}"

    def node(self, node_id: str) -> str:
        return f"{self.node_set}:{node_id}"

    def drain(self, node_id: str) -> str:
        return f"{self.node_set}!drain:{node_id}"  # `!`: never a node record's name


def encode_head(reg: Registration) -> bytes:
    """The first four fields of a registration's record: what `register` sends."""
    if not 0 <= reg.version <= MAX_VERSION:
        raise ValueError(f"version must be in [0, 10**20), got {reg.version}")
    return b"%020d\xff%b\xff%b\xff%b" % (
        reg.version, reg.node_id.encode(), reg.user_id.encode(), reg.device_type.encode())


class Decoder:
    """Decodes records, caching the few distinct node ids and device types a fleet has (each
    cache is dropped when it grows past `CACHE_MAX`, so odd ids cannot make it unbounded)."""

    CACHE_MAX = 4096
    __slots__ = ("_device_types", "_nodes")

    def __init__(self) -> None:
        self._nodes: dict[bytes, str] = {}
        self._device_types: dict[bytes, str] = {}

    def registration(self, client_id: str, raw: bytes, now: bytes) -> Registration | None:
        """The registration in `raw` if it is live at `now` (`ms_field(now_ms)`), else None."""
        version, _, live_until, node, user, device_type = raw.split(SEP)
        if live_until <= now:
            return None
        # Cache hits inline (this runs once per looked-up client); misses take the slow path.
        node_id = self._nodes.get(node) or self._node(node)
        type_name = self._device_types.get(device_type) or self._device_type(device_type)
        return _registration(client_id, user.decode(), type_name, node_id, int(version))

    def device(self, client_id: str, raw: bytes, now: bytes,
               user: bytes | None = None) -> Device | None:
        """The device in `raw` if it is known at `now` (and belongs to `user`, if given)."""
        _, device_until, live_until, _, owner, device_type = raw.split(SEP)
        if (user is not None and owner != user) or (device_until <= now and live_until <= now):
            return None
        return Device(client_id, self._device_type(device_type))

    def _node(self, raw: bytes) -> str:
        return _cached(self._nodes, raw)

    def _device_type(self, raw: bytes) -> str:
        return _cached(self._device_types, raw)


def _cached(cache: dict[bytes, str], raw: bytes) -> str:
    """`raw` decoded, from `cache` when seen before; the cache is dropped past `CACHE_MAX`."""
    name = cache.get(raw)
    if name is None:
        if len(cache) >= Decoder.CACHE_MAX:
            cache.clear()
        name = cache[raw] = raw.decode()
    return name


_new = object.__new__
_set = object.__setattr__


def _registration(client_id: str, user_id: str, device_type: str, node_id: str,
                  version: int) -> Registration:
    """`Registration(...)` at half the cost: the frozen dataclass's generated `__init__` takes
    ~0.9 µs, and lookups of many clients are bound by decoding in Python. Registration has no
    `__post_init__`, so setting its slots directly builds exactly the same value."""
    reg = _new(Registration)
    _set(reg, "client_id", client_id)
    _set(reg, "user_id", user_id)
    _set(reg, "device_type", device_type)
    _set(reg, "node_id", node_id)
    _set(reg, "version", version)
    return reg


def ms_field(ms: float) -> bytes:
    """A time as the scripts and records hold it: whole ms in `TIME_DIGITS` digits."""
    return b"%015d" % ms


def version_field(version: int) -> bytes:
    return b"%020d" % version


def node_mark(node_id: str) -> bytes:
    """NODE with its separators, as in every record that names `node_id` (from byte 53 on)."""
    return SEP + node_id.encode() + SEP


def encode_node(node: NodeInfo) -> bytes:
    """A node record: a JSON array, new fields appended at its end (`decode_node`)."""
    return orjson.dumps([node.node_id, node.address, node.region, node.state.value,
                         node.connections, node.by_device_type, node.by_transport,
                         node.totals])


def decode_node(raw: bytes) -> NodeInfo:
    """A node record, of this version or an older one (six fields: no transports nor totals)."""
    node_id, address, region, state, connections, by_type, *more = orjson.loads(raw)
    by_transport, totals = [*more, [], []][:2]
    return NodeInfo(node_id, address, region, NodeState(state), connections, _pairs(by_type),
                    _pairs(by_transport), _pairs(totals))


def _pairs(raw: list[list[str | int]]) -> tuple[tuple[str, int], ...]:
    return tuple((str(name), int(count)) for name, count in raw)
