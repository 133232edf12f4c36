"""Log lines of the long-running commands: text for a terminal, or JSON for a log pipeline.

`--log-format json` (or `log_format = "json"`) writes one JSON object per line to stderr:
`ts` (UTC, ISO 8601, milliseconds), `level` (lower case), `logger`, `message` (formatted), the
process's context (`node_id`, once the process has one: `add_context`), any `extra={...}`
fields the call passed, and `exc` (the traceback) when there is one. Values JSON cannot hold
are written as their `str()`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message",
                                                                             "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class _Context(logging.Filter):
    """Adds fixed fields (the node id) to every record that passes the handler."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure(level: str, log_format: str = "text") -> None:
    """Log records of `level` and above to stderr, as text or JSON lines; replaces the root
    logger's handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def add_context(**fields: str) -> None:
    """Fields every later line carries (JSON lines show them; text lines do not)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Context(dict(fields)))
