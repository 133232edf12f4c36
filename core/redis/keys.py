"""Redis key names: hash tags for opaque ids, and the prefixes every store's keys start with.

A *tag* is the part of a key between the first `{` and the next `}`; Redis Cluster hashes only
that part, so keys with equal tags share a slot. An id becomes a tag by percent-escaping `%` as
`%25` and `}` as `%7D` (nothing else changes, so tags of ordinary ids stay readable), and the
empty id becomes `%`, which no escaped id can be. A tag therefore never contains `}`, is never
empty, and maps back to exactly one id (`untag`). A `{` inside a tag is harmless: Redis ends the
tag at the first `}`, wherever the `{`s are.
"""

from __future__ import annotations


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


def check_prefix(prefix: str) -> str:
    """`prefix` if it can start Redis key names: non-empty and without braces (a brace in a
    prefix would move the hash tag, and with it a key's Cluster slot); ValueError otherwise."""
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be non-empty and without braces, got {prefix!r}")
    return prefix
