"""How `router.stores.redis_queue` lays a message out in its stream entries, and reads back what its
scripts answer: pure, no I/O.

An entry is two fields: `m`, every field of the message but its payload as compact JSON
(`encode_meta`), and `p`, the payload bytes as sent. A receipt is `<priority>:<entry id>`. A
dedup key holds the id of the message put under it; one written by a version before that holds
`LEGACY_DEDUP_VALUE` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from router.base import Message, Priority, PutResult, Taken, Target

LEGACY_DEDUP_VALUE = b"1"
"""What a dedup key written before keys held the original's id holds."""


def encode_meta(message: Message) -> bytes:
    """Every field of `message` but its payload, as compact JSON. `forwarded_from` is written
    only when set, so what one region's API enqueues reads the same as before regions."""
    target = message.target
    fields = [
        message.id, message.topic, message.ts_ms, int(message.priority), message.ttl_s,
        target.clients, target.users, sorted(target.device_types), target.broadcast,
        message.dedup_key]
    if message.forwarded_from is not None:
        fields.append(message.forwarded_from)
    return orjson.dumps(fields)


def decode_message(meta: bytes, payload: bytes) -> Message:
    """The message `encode_meta` and its payload were made from."""
    fields = orjson.loads(meta)
    (id_, topic, ts_ms, priority, ttl_s, clients, users, device_types, broadcast,
     dedup_key) = fields[:10]
    forwarded_from = fields[10] if len(fields) > 10 else None
    target = Target(tuple(clients), tuple(users), frozenset(device_types), broadcast)
    return Message(id_, topic, payload, ts_ms, Priority(priority), ttl_s, target, dedup_key,
                   forwarded_from)


def put_result(message: Message, answer: int | bytes) -> PutResult:
    """A PUT script's answer for `message`: 1 enqueued, else the original's id (module
    docstring: a key from an older version holds no id; then the repeat's own)."""
    if isinstance(answer, int):
        return PutResult(message.id)
    original = message.id if answer == LEGACY_DEDUP_VALUE else answer.decode()
    return PutResult(original, duplicate=True)


def done_pairs(receipts: Sequence[str]) -> list[str]:
    """(stream index, entry id) pairs of the DONE and TAKE scripts, flat."""
    pairs: list[str] = []
    for receipt in receipts:
        priority, _, entry_id = receipt.partition(":")
        pairs += (str(int(priority) + 1), entry_id)
    return pairs


def taken(fields: list[bytes]) -> Taken:
    stream, entry_id, meta, payload = fields
    priority = int(stream) - 1
    return Taken(decode_message(meta, payload), f"{priority}:{entry_id.decode()}")
