"""Structured logging: one JSON object per line on stderr, set up once by the CLI.

Each line has ``ts`` (RFC 3339 UTC, milliseconds), ``level``, ``logger`` and
``msg``, then every field passed with ``extra=`` (``correlation_id``, ``sku``,
...), and ``exc`` with the formatted traceback when there is one::

    log.warning("event dead-lettered", extra={"correlation_id": cid, "reason": "invalid"})
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = ["LEVELS", "JsonFormatter", "setup_logging"]

#: Level names the CLI accepts, lowest first.
LEVELS: Final = ("debug", "info", "warning", "error", "critical")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line (orjson)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line: ts, level, logger, msg, extras, exc."""
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(line, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        except (
            TypeError,
            orjson.JSONEncodeError,
        ):  # e.g. an int beyond 64 bits: never lose the line
            return orjson.dumps({key: str(value) for key, value in line.items()}).decode()


def setup_logging(level: str | int = "info") -> None:
    """Send every log record to stderr as JSON lines at ``level`` and above; idempotent."""
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
        level = logging.getLevelNamesMapping()[level.upper()]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
