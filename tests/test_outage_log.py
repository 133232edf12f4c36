"""`core.outage.OutageLog`: one line when an outage starts, one when it ends."""

from __future__ import annotations

import logging

import pytest

from core.outage import OutageLog


def test_warns_once_per_outage_and_says_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger("test.outage"))
    with caplog.at_level(logging.DEBUG, "test.outage"):
        assert log.failed("down: %s", "a") is True
        assert log.failed("down: %s", "b") is False
        assert log.down
        assert log.recovered("back") is True
        assert log.recovered("back") is False
        assert log.failed("down: %s", "c") is True
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels == [(logging.WARNING, "down: a"), (logging.DEBUG, "down: b"),
                      (logging.WARNING, "back"), (logging.WARNING, "down: c")]


def test_recovered_without_a_message_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger("test.outage"))
    with caplog.at_level(logging.DEBUG, "test.outage"):
        log.failed("down")
        caplog.clear()
        assert log.recovered() is True
    assert caplog.records == []


def test_both_lines_at_the_level_given(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger("test.outage"), level=logging.ERROR)
    with caplog.at_level(logging.DEBUG, "test.outage"):
        log.failed("down")
        log.failed("still down")
        log.recovered("back")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "down"), (logging.DEBUG, "still down"), (logging.ERROR, "back")]
