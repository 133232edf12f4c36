"""JSON log lines: one object per record, with the context, extras and tracebacks."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from zuulpush import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("info", "json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    logs.add_context(node_id="node-7")
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_object_with_context_and_extras(captured: io.StringIO) -> None:
    logging.getLogger("zuulpush.edge").info("hello %s", "there", extra={"client_id": "c1"})
    logging.getLogger("zuulpush").debug("not at info")
    [line] = lines(captured)
    assert line["message"] == "hello there" and line["level"] == "info"
    assert (line["logger"], line["node_id"], line["client_id"]) == ("zuulpush.edge", "node-7",
                                                                    "c1")
    assert str(line["ts"]).endswith("Z") and "T" in str(line["ts"])


def test_a_traceback_and_odd_values_stay_on_one_line(captured: io.StringIO) -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        logging.getLogger("x").exception("failed", extra={"thing": object()})
    [line] = lines(captured)
    assert "ValueError: boom" in str(line["exc"]) and str(line["thing"]).startswith("<object")


def test_text_is_the_default() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("warning")
        assert not isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
