"""Logging on stderr, set up once by the CLI: JSON lines, or text for a person at a terminal.

``--log-format json`` (the default when stderr is not a terminal): each line
has ``ts`` (RFC 3339 UTC, milliseconds), ``level``, ``logger`` and ``msg``,
then every field passed with ``extra=`` (``correlation_id``, ``sku``, ...), and
``exc`` with the formatted traceback when there is one::

    log.warning("event dead-lettered", extra={"correlation_id": cid, "reason": "invalid"})

``--log-format text`` (the default on a terminal) writes the same facts as
``09:00:03.120 warning stocksync.worker: event dead-lettered correlation_id=c-1 reason=invalid``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "setup_logging"]

#: Level names the CLI accepts, lowest first.
LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: Log formats the CLI accepts.
FORMATS: Final = ("text", "json")

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


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class TextFormatter(logging.Formatter):
    """Format a record as one line for a person: local time, level, logger, msg, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """``HH:MM:SS.mmm level logger: msg key=value ...`` and the traceback, if any."""
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(f"{key}={_text(value)}" for key, value in _extras(record).items())
        line = f"{moment} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text(value: object) -> str:
    shown = value if isinstance(value, str) else repr(value)
    return orjson.dumps(shown).decode() if (" " in shown or not shown) else shown


def setup_logging(level: str | int = "info", fmt: str | None = None) -> None:
    """Send log records at ``level`` and above to stderr as ``fmt``; idempotent.

    ``fmt`` is ``"json"`` or ``"text"``; ``None`` picks text on a terminal, JSON otherwise.
    """
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
        level = logging.getLevelNamesMapping()[level.upper()]
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
