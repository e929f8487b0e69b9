"""Raw HTTP/1.1 over a socket, for tests that need what a client library will not send."""

from __future__ import annotations

import asyncio
import time

import msgspec

__all__ = ["Answer", "exchange", "parse_answers", "read_answers", "wait_closed"]


class Answer(msgspec.Struct, frozen=True):
    """One HTTP response as read off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The body, decoded."""
        return msgspec.json.decode(self.body)

    def code(self) -> str:
        """The contract error code of the body."""
        decoded = msgspec.json.decode(self.body)
        assert set(decoded) == {"error"}, decoded
        assert set(decoded["error"]) == {"code", "message"}, decoded
        assert isinstance(decoded["error"]["message"], str) and decoded["error"]["message"]
        code: str = decoded["error"]["code"]
        return code


def parse_answers(raw: bytes) -> list[Answer]:
    """The responses in ``raw`` (each with a Content-Length; no body after a 304 or HEAD)."""
    answers = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"an incomplete response: {raw[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if status == 304 else int(headers.get("content-length", "0"))
        answers.append(Answer(status, headers, rest[:length]))
        raw = rest[length:]
    return answers


async def read_answers(
    reader: asyncio.StreamReader, count: int, timeout: float = 5.0
) -> list[Answer]:
    """Read until ``count`` whole responses have arrived."""
    raw = b""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answers = parse_answers(raw)
            if len(answers) >= count:
                return answers
        except (AssertionError, ValueError, IndexError):
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{count} responses not received within {timeout} s: {raw!r}")
        chunk = await asyncio.wait_for(reader.read(65536), left)
        if not chunk:
            return parse_answers(raw)
        raw += chunk


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[list[Answer], float]:
    """Send ``data``, read until the server closes; the responses and the seconds it took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
        return parse_answers(raw), time.monotonic() - started
    finally:
        writer.close()


async def wait_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fail after ``timeout``)."""
    return await asyncio.wait_for(reader.read(), timeout)
