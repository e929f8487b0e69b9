"""Clients that are slow, silent, too many, or gone: deadlines, the cap, and what is counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import redis

from stocksync.api.protocol import TESTED_AIOHTTP, ApiProtocol, _check_aiohttp
from tests.api.helpers import Client, eventually, make_settings, run, serving
from tests.api.wire import Answer, exchange, parse_answers, read_answers, wait_closed

GET = b"GET /v1/availability/A?channel=web HTTP/1.1\r\nHost: x\r\n\r\n"


def _port(client: Client) -> int:
    assert client.port is not None
    return client.port


async def _metric(client: Client, name: str) -> float:
    async with client.get("/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def test_slow_headers_get_408_and_the_connection_closes(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url, header_timeout_s=0.6)) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(client))
            started = time.monotonic()
            writer.write(b"GET /v1/availability/A HTTP/1.1\r\nHost: x\r\n")
            raw = b""
            for _ in range(30):  # a header byte every 0.1 s: slowloris
                with contextlib.suppress(TimeoutError):
                    raw += await asyncio.wait_for(reader.read(65536), 0.1)
                if reader.at_eof():
                    break
                writer.write(b"X")
            writer.close()
            (answer,) = parse_answers(raw)
            assert answer.status == 408
            assert answer.code() == "request_timeout"
            assert 0.5 < time.monotonic() - started < 3.0
            assert (
                await _metric(client, 'stocksync_api_client_timeouts_total{phase="headers"}') == 1
            )

    run(scenario())


def test_a_silent_connection_is_closed_after_the_header_timeout(
    redis_url: str, store: redis.Redis
) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url, header_timeout_s=0.5)) as client:
            answers, took = await exchange(_port(client), b"")
            assert [a.status for a in answers] == [408]
            assert 0.4 < took < 3.0

    run(scenario())


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    redis_url: str, store: redis.Redis
) -> None:
    settings = make_settings(redis_url, header_timeout_s=0.3, idle_timeout_s=1.5)

    async def scenario() -> None:
        async with serving(settings) as client:
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(client))
            writer.write(GET)
            (answer,) = await read_answers(reader, 1)
            assert answer.status == 200
            answered = time.monotonic()
            await asyncio.sleep(0.8)  # past the header timeout: idle is not slow headers
            writer.write(GET)
            (answer,) = await read_answers(reader, 1)
            assert answer.status == 200
            answered = time.monotonic()
            assert await wait_closed(reader, 5) == b""
            assert 1.2 < time.monotonic() - answered < 4.0
            writer.close()

    run(scenario())


def test_a_hanging_upload_gets_408_within_the_body_timeout(
    redis_url: str, store: redis.Redis
) -> None:
    settings = make_settings(redis_url, body_timeout_s=0.6)

    async def scenario() -> None:
        async with serving(settings) as client:
            for path in (b"/v1/availability/query", b"/v1/availability/A?channel=web"):
                reader, writer = await asyncio.open_connection("127.0.0.1", _port(client))
                started = time.monotonic()
                writer.write(
                    b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b'4\r\n{"sk\r\n'
                )
                raw = await wait_closed(reader, 5)
                took = time.monotonic() - started
                writer.close()
                answers = parse_answers(raw)
                if path == b"/v1/availability/query":  # it reads the body: 408
                    assert [a.status for a in answers] == [408]
                    assert answers[0].code() == "request_timeout"
                    assert answers[0].headers["connection"] == "close"
                else:  # answered without reading it (405), then closed at the deadline
                    assert [a.status for a in answers] == [405]
                assert 0.5 < took < 3.0, path

    run(scenario())


def test_uploads_over_the_memory_budget_are_refused(redis_url: str, store: redis.Redis) -> None:
    """Four 180 KB uploads held at once against a 200 KB budget (64 KiB of each free): the
    server reads them all, so exactly one fits and three are refused with 503, each followed
    at once by the end of the connection (not left half read); the one that fits is served."""
    settings = make_settings(redis_url, max_buffered_body_bytes=200_000, body_timeout_s=60)
    head = (
        b"POST /v1/availability/query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    query = b'{"skus":["A"],"channel":"web"}'
    chunk = query + b" " * (60_000 - len(query))  # JSON, then whitespace: a valid body
    piece = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    blank = b"%x\r\n" % 60_000 + b" " * 60_000 + b"\r\n"

    async def scenario() -> None:
        async with serving(settings) as client:
            port = _port(client)
            connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            for _, writer in connections:
                # Not drained: a refused upload's rest may stay unread in its buffers.
                writer.write(head + piece + blank * 2)  # 180 KB: 115 KB over the allowance
            waiting = {
                asyncio.ensure_future(read_answers(reader, 1, timeout=60)): n
                for n, (reader, _) in enumerate(connections)
            }
            refused: dict[int, Answer] = {}
            while len(refused) < 3:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    (answer,) = task.result()
                    refused[waiting.pop(task)] = answer
            for n, answer in refused.items():
                assert answer.status == 503, answer
                assert answer.code() == "overloaded"
                assert answer.headers["retry-after"] == "1"
                assert answer.headers["connection"] == "close"
                answered = time.monotonic()
                # The server ends the connection after its answer; nothing else comes.
                assert await wait_closed(connections[n][0], 30) == b""
                assert time.monotonic() - answered < 6.0  # not aiohttp's 10 s of lingering
            # The one that fits is still being read: its end makes it a query like any other.
            ((task, n),) = waiting.items()
            assert not task.done()
            connections[n][1].write(b"0\r\n\r\n")
            (answer,) = await task
            assert answer.status == 200, answer
            assert [item["sku"] for item in answer.json()["items"]] == ["A"]  # type: ignore[index]
            for _, writer in connections:
                writer.close()
            # Every refused connection is gone from the server, and the budget is given back.
            async def only_the_clients_own() -> bool:
                return await _metric(client, "stocksync_api_connections_open") <= 1

            await eventually(only_the_clients_own, timeout=30)
            async with client.post(
                "/v1/availability/query", json={"skus": ["A"], "channel": "web"}
            ) as resp:
                assert resp.status == 200

    run(scenario())


def test_connections_past_the_cap_are_refused_clearly(redis_url: str, store: redis.Redis) -> None:
    settings = make_settings(redis_url, max_connections=3, header_timeout_s=30)

    async def scenario() -> None:
        async with serving(settings) as client:
            port = _port(client)
            await client.session.close()  # its pooled connection would take a place
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            answers, took = await exchange(port, b"")
            assert [a.status for a in answers] == [503]
            assert answers[0].code() == "overloaded"
            assert answers[0].headers["retry-after"] == "1"
            assert took < 4.0
            # The ones in place are served; once one goes, a newcomer is too.
            reader, writer = held[0]
            writer.write(GET)
            assert [a.status for a in await read_answers(reader, 1)] == [200]
            writer.close()
            await asyncio.sleep(0.2)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert [a.status for a in parse_answers(await wait_closed(reader, 5))] == [200]
            for _, w in [*held[1:], (reader, writer)]:
                w.close()

    run(scenario())


def test_a_valid_request_before_a_malformed_one_gets_its_answer(
    redis_url: str, store: redis.Redis
) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            answers, _ = await exchange(_port(client), GET + GET + b"GARBAGE / HTTP/1.1\r\n\r\n")
            assert [a.status for a in answers] == [200, 200, 400]
            assert answers[2].code() == "bad_request"
            body = b'{"skus":["A"],"channel":"web"}'
            post = (
                b"POST /v1/availability/query HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            answers, _ = await exchange(_port(client), post + b"GET /\x01 HTTP/1.1\r\n\r\n")
            assert [a.status for a in answers] == [200, 400]

    run(scenario())


def test_a_client_hanging_up_during_the_body_is_not_a_server_error(
    redis_url: str, store: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            for _ in range(3):
                _, writer = await asyncio.open_connection("127.0.0.1", _port(client))
                writer.write(
                    b"POST /v1/availability/query HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"{" * 1000
                )
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.close()

            async def counted() -> bool:
                return await _metric(client, "stocksync_api_client_disconnects_total") == 3

            deadline = time.monotonic() + 5
            while not await counted():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with client.get("/metrics") as resp:
                text = await resp.text()
            assert 'status="500"' not in text

    with caplog.at_level(logging.DEBUG, logger="stocksync.api"):
        run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    gone = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert len(gone) == 3 and {r.levelno for r in gone} == {logging.DEBUG}


def test_the_aiohttp_internals_relied_on_are_there() -> None:
    """Canary: fails when aiohttp changes what ApiProtocol overrides."""
    import aiohttp

    _check_aiohttp()  # raises if a slot is gone
    assert tuple(int(p) for p in aiohttp.__version__.split(".")[:2]) == TESTED_AIOHTTP
    for method in ("connection_made", "connection_lost", "data_received", "handle_error"):
        assert method in vars(ApiProtocol)
