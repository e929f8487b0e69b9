"""JSON-lines logging: one object per line with ts, level, logger, msg and the extras."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from stocksync.daemon.logs import JsonFormatter, setup_logging


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own writing through JsonFormatter into a buffer (root untouched)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("stocksync.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buffer
    logger.removeHandler(handler)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_fields_and_extras(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = logged
    logger.info("applied %d effects", 3, extra={"correlation_id": "c-42", "sku": "A-1"})
    (line,) = lines(buffer)
    assert list(line)[:4] == ["ts", "level", "logger", "msg"]
    assert line["level"] == "info"
    assert line["logger"] == "stocksync.test.logs"
    assert line["msg"] == "applied 3 effects"
    assert line["correlation_id"] == "c-42"
    assert line["sku"] == "A-1"
    assert isinstance(line["ts"], str)
    assert line["ts"].endswith("Z")
    assert datetime.fromisoformat(line["ts"]).utcoffset() is not None


def test_exception_stays_on_one_line(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = logged
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("failed")
    assert buffer.getvalue().count("\n") == 1
    (line,) = lines(buffer)
    assert line["level"] == "error"
    assert "ValueError: bad\nthing" in str(line["exc"])


def test_values_json_cannot_carry_are_kept(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = logged
    logger.warning("odd", extra={"big": 2**70, "obj": object(), "keys": {1: "one"}})
    (line,) = lines(buffer)
    assert line["big"] == str(2**70)
    assert "object" in str(line["obj"])
    assert line["msg"] == "odd"


def test_setup_logging_writes_json_lines_to_stderr() -> None:
    code = (
        "import logging; from stocksync.daemon.logs import setup_logging;"
        "setup_logging('warning'); setup_logging('warning');"  # idempotent: one handler
        "log = logging.getLogger('stocksync.x');"
        "log.info('hidden'); log.warning('shown', extra={'correlation_id': 'c1'})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == ""
    (line,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert (line["level"], line["msg"], line["correlation_id"]) == ("warning", "shown", "c1")


def test_setup_logging_refuses_unknown_level() -> None:
    with pytest.raises(ValueError, match="verbose"):
        setup_logging("verbose")


def test_text_format_carries_the_same_facts() -> None:
    from stocksync.daemon.logs import TextFormatter

    record = logging.LogRecord("stocksync.worker", logging.WARNING, "", 0, "lost %s", ("it",), None)
    record.correlation_id = "c 1"
    record.count = 3
    text = TextFormatter().format(record)
    assert text.split(" ", 1)[1] == 'warning stocksync.worker: lost it correlation_id="c 1" count=3'


@pytest.mark.parametrize(("option", "json_lines"), [("--log-format=json", True),
                                                    ("--log-format=text", False), (None, True)])
def test_log_format_option(option: str | None, json_lines: bool) -> None:
    """Not a terminal here: JSON unless told otherwise."""
    args = [sys.executable, "-m", "stocksync", "--config", "/nonexistent/x.toml", "check-config"]
    if option:
        args.insert(3, option)
    code = (
        "import logging, sys; from stocksync.cli import main as cli;"
        f"sys.argv = {args[2:]!r};"
        "args = cli.build_parser().parse_args(sys.argv[1:]);"
        "cli.setup_logging(args.log_level, args.log_format);"
        "logging.getLogger('stocksync.x').warning('hello')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = done.stderr.strip()
    assert line.startswith("{") is json_lines
    assert "hello" in line
