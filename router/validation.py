"""Validate a push request body into a `Message`: pure, no I/O, time and ids passed in.

The body is one JSON object:

    {"to": {"clients": [...], "users": [...], "device_types": [...], "broadcast": false},
     "topic": "...", "data": <any JSON>, "priority": "high|normal|low", "ttl": <seconds>,
     "dedup_key": "..."}

- `to` is required and must name somebody: at least one client or user, or `broadcast: true`
  (which excludes clients and users). `device_types` narrows either kind; alone it names nobody
  (the error says to add `broadcast`, as `zuulpush send` and the dashboard's form do). Repeated
  ids are collapsed, first occurrence kept. At most `max_targets` clients and users together.
- `data` is required and may be any JSON value, `null` included (a bare "something changed"
  signal); requiring the key catches a misspelt one rather than sending nothing. Arrays and
  objects in it nest at most `MAX_DATA_DEPTH` levels (`[]` is one level, `{"a": []}` two): well
  below what the JSON encoder of the device payload (orjson, about 254 levels) can write, so a
  deeper one is an `InvalidRequest` naming `data`, never an encoder error.
- `topic` defaults to `"default"`, `priority` to `"normal"` (lower-case labels only), `ttl` to the
  configured default (a whole number of seconds, 1 to `max_ttl_s`; `true` is not a number).
- `dedup_key` is optional; `null` means none.

Every rejection is an `InvalidRequest` whose `field` names the culprit, dotted for nested ones
(`to.clients[3]`); a body over `max_payload_bytes` is a `PayloadTooLarge`.

A batch (`parse_batch`) is `{"messages": [<push body>, ...]}`: 1 to `max_batch` of them, the whole
body at most `max_batch_payload_bytes`, and each message's device-facing payload (`id`, `topic`,
`ts`, `data`) at most `max_payload_bytes` (else `PayloadTooLarge` naming `messages[i].data`).
Every item is validated before any is accepted: the first bad one rejects the whole batch, its
field prefixed with the item (`messages[3].to.clients[0]`), so nothing is half-enqueued.

A device's inbox pull (`parse_inbox_query`) takes `after` (an id; absent: from the oldest) and
`limit` (1 to `max_inbox_page`, default `DEFAULT_INBOX_PAGE`); its ack (`parse_inbox_ack`) is
`{"ids": [...]}` (1 to `max_inbox_page` ids) or `{"through": "<id>"}` (everything up to and
including it), exactly one of the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from core.errors import InvalidRequest, PayloadTooLarge, TooManyMessages
from core.ids import ID_FORMAT, IdGenerator, is_message_id
from router.base import Message, Priority, Target
from router.config import ApiConfig

MAX_ID_CHARS = 256
MAX_DATA_DEPTH = 128
"""Levels of arrays and objects `data` may nest (module docstring)."""
DEFAULT_TOPIC = "default"
DEFAULT_INBOX_PAGE = 100
_TOP_LEVEL = frozenset({"to", "topic", "data", "priority", "ttl", "dedup_key"})
_BATCH_KEYS = frozenset({"messages"})
_ACK_KEYS = frozenset({"ids", "through"})
_TO_KEYS = frozenset({"clients", "users", "device_types", "broadcast"})
_PRIORITIES = {p.label: p for p in Priority}


def parse_push(body: bytes, *, config: ApiConfig, ids: IdGenerator, now_ms: int) -> Message:
    """The message `body` asks for, stamped `now_ms` with a fresh id; raises `InvalidRequest`."""
    return _message(_decode(body, config.max_payload_bytes), config, ids, now_ms,
                    deep=_may_nest_deep(body))


def parse_batch(
    body: bytes, *, config: ApiConfig, ids: IdGenerator, now_ms: int
) -> list[Message]:
    """The messages of a batch body, in order, each stamped `now_ms` with a fresh id (ids
    increase along the batch); raises `InvalidRequest` for the first bad item, naming it."""
    request = _decode(body, config.max_batch_payload_bytes)
    _reject_unknown(request, _BATCH_KEYS, prefix="")
    items = request.get("messages")
    if not isinstance(items, list) or not items:
        raise InvalidRequest("'messages' must be a non-empty list", field="messages")
    if len(items) > config.max_batch:
        raise TooManyMessages(f"at most {config.max_batch} messages in a batch",
                              field="messages")
    deep = _may_nest_deep(body)
    return [_batch_item(raw, f"messages[{i}]", config, ids, now_ms, deep)
            for i, raw in enumerate(items)]


def _batch_item(raw: Any, field: str, config: ApiConfig, ids: IdGenerator, now_ms: int,
                deep: bool) -> Message:
    if not isinstance(raw, dict):
        raise InvalidRequest("each message must be a JSON object", field=field)
    try:
        message = _message(raw, config, ids, now_ms, deep=deep)
    except InvalidRequest as exc:
        raise type(exc)(exc.message, field=f"{field}.{exc.field}") from None
    if len(message.payload) > config.max_payload_bytes:
        raise PayloadTooLarge(
            f"message exceeds the limit of {config.max_payload_bytes} bytes", field=f"{field}.data"
        )
    return message


def _message(request: dict[str, Any], config: ApiConfig, ids: IdGenerator, now_ms: int, *,
             deep: bool) -> Message:
    """The message of one push object; `deep`: its `data` may nest past MAX_DATA_DEPTH."""
    _reject_unknown(request, _TOP_LEVEL, prefix="")
    if "to" not in request:
        raise InvalidRequest("'to' is required", field="to")
    if "data" not in request:
        raise InvalidRequest("'data' is required (it may be null)", field="data")
    if deep:
        _check_depth(request["data"])
    return Message.create(
        id=ids.new(now_ms),
        topic=_topic(request.get("topic", DEFAULT_TOPIC)),
        data=request["data"],
        ts_ms=now_ms,
        priority=_priority(request.get("priority", Priority.NORMAL.label)),
        ttl_s=_ttl(request.get("ttl", config.default_ttl_s), config.max_ttl_s),
        target=_target(request["to"], config.max_targets),
        dedup_key=_dedup_key(request.get("dedup_key")),
    )


def _decode(body: bytes, max_bytes: int) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes",
                              field="body")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", field="body") from None
    if not isinstance(request, dict):
        raise InvalidRequest("request body must be a JSON object", field="body")
    return request


def _may_nest_deep(body: bytes) -> bool:
    """False when no value in `body` can nest past MAX_DATA_DEPTH: it opens too few arrays and
    objects (counted in C, brackets in strings too), which spares most bodies the walk."""
    return body.count(b"[") + body.count(b"{") > MAX_DATA_DEPTH


def _check_depth(data: Any) -> None:
    """InvalidRequest naming `data` when it nests deeper than MAX_DATA_DEPTH; a walk one level
    at a time (no recursion), over arrays and objects only, stopping as soon as it is too deep."""
    level = [data] if isinstance(data, list | dict) else []
    for _ in range(MAX_DATA_DEPTH):
        if not level:
            return
        level = [child for value in level
                 for child in (value.values() if isinstance(value, dict) else value)
                 if isinstance(child, list | dict)]
    if level:
        raise InvalidRequest(f"'data' nests arrays and objects deeper than {MAX_DATA_DEPTH} "
                             "levels", field="data")


def _reject_unknown(obj: dict[str, Any], known: frozenset[str], *, prefix: str) -> None:
    for key in obj:
        if key not in known:
            raise InvalidRequest(f"unknown field {key!r}", field=prefix + key)


def _target(raw: Any, max_targets: int) -> Target:
    if not isinstance(raw, dict):
        raise InvalidRequest("'to' must be an object", field="to")
    _reject_unknown(raw, _TO_KEYS, prefix="to.")
    clients = raw.get("clients", [])
    users = raw.get("users", [])
    _check_list(clients, "to.clients")
    _check_list(users, "to.users")
    if len(clients) + len(users) > max_targets:
        raise InvalidRequest(f"at most {max_targets} clients and users together", field="to")
    broadcast = raw.get("broadcast", False)
    if not isinstance(broadcast, bool):
        raise InvalidRequest("'broadcast' must be true or false", field="to.broadcast")
    target = Target(
        clients=_ids(clients, "to.clients"),
        users=_ids(users, "to.users"),
        device_types=frozenset(_ids(raw.get("device_types", []), "to.device_types")),
        broadcast=broadcast,
    )
    _check_addressees(target)
    return target


def _check_addressees(target: Target) -> None:
    named = bool(target.clients or target.users)
    if target.broadcast and named:
        raise InvalidRequest("a broadcast names no clients or users", field="to.broadcast")
    if not target.broadcast and not named and target.device_types:
        raise InvalidRequest("'device_types' alone names nobody: add \"broadcast\": true to send "
                             "to every device of these types, or name clients or users",
                             field="to")
    if not target.broadcast and not named:
        raise InvalidRequest("name clients or users, or set broadcast", field="to")


def _check_list(raw: Any, field: str) -> None:
    if not isinstance(raw, list):
        raise InvalidRequest("must be a list of strings", field=field)


def _ids(raw: Any, field: str) -> tuple[str, ...]:
    """Non-empty strings of at most MAX_ID_CHARS, repeats collapsed, first occurrence kept."""
    _check_list(raw, field)
    for index, value in enumerate(raw):
        if not _is_short_string(value):
            raise InvalidRequest(
                f"must be a non-empty string of at most {MAX_ID_CHARS} characters",
                field=f"{field}[{index}]",
            )
    return tuple(dict.fromkeys(raw))


def _is_short_string(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def _topic(raw: Any) -> str:
    if not _is_short_string(raw):
        raise InvalidRequest(
            f"'topic' must be a non-empty string of at most {MAX_ID_CHARS} characters",
            field="topic",
        )
    return str(raw)


def _priority(raw: Any) -> Priority:
    if not isinstance(raw, str) or raw not in _PRIORITIES:
        raise InvalidRequest("'priority' must be \"high\", \"normal\" or \"low\"", field="priority")
    return _PRIORITIES[raw]


def _ttl(raw: Any, max_ttl_s: int) -> int:
    # bool is an int subclass: `"ttl": true` must not mean one second.
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 < raw <= max_ttl_s:
        raise InvalidRequest(
            f"'ttl' must be a whole number of seconds from 1 to {max_ttl_s}", field="ttl"
        )
    return raw


def _dedup_key(raw: Any) -> str | None:
    if raw is None:
        return None
    if not _is_short_string(raw):
        raise InvalidRequest(
            f"'dedup_key' must be a non-empty string of at most {MAX_ID_CHARS} characters",
            field="dedup_key",
        )
    return str(raw)


@dataclass(frozen=True, slots=True)
class InboxAck:
    """What a device acknowledges: these `ids`, or everything `through` an id (then `ids` is
    empty)."""

    ids: tuple[str, ...] = ()
    through: str | None = None


def parse_inbox_query(query: Mapping[str, str], *, max_page: int) -> tuple[str | None, int]:
    """`(after, limit)` of `GET /v1/inbox`; raises `InvalidRequest` naming the parameter."""
    after = query.get("after")
    if after is not None and not is_message_id(after):
        raise InvalidRequest(f"'after' must be a message id: {ID_FORMAT}", field="after")
    raw = query.get("limit")
    if raw is None:
        return after, min(DEFAULT_INBOX_PAGE, max_page)
    # Leading zeros cut and the length bounded before int(), which raises ValueError on a
    # string of over 4300 digits.
    digits = raw.lstrip("0") or "0"
    if not raw.isascii() or not raw.isdigit() or len(digits) > len(str(max_page)) \
            or not 0 < int(digits) <= max_page:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {max_page}",
                             field="limit")
    return after, int(digits)


def parse_inbox_ack(body: bytes, *, max_ids: int, max_bytes: int) -> InboxAck:
    """The ack `body` asks for; raises `InvalidRequest` naming the field."""
    request = _decode(body, max_bytes)
    _reject_unknown(request, _ACK_KEYS, prefix="")
    if ("ids" in request) == ("through" in request):
        raise InvalidRequest("send exactly one of 'ids' and 'through'", field="ids")
    if "through" in request:
        through = request["through"]
        if not isinstance(through, str) or not is_message_id(through):
            raise InvalidRequest(f"'through' must be a message id: {ID_FORMAT}",
                                 field="through")
        return InboxAck(through=through)
    raw = request["ids"]
    # Counted as sent, repeats included: the limit bounds the request, as the document says.
    if isinstance(raw, list) and not 0 < len(raw) <= max_ids:
        raise InvalidRequest(f"'ids' must hold 1 to {max_ids} ids", field="ids")
    return InboxAck(ids=_ids(raw, "ids"))
