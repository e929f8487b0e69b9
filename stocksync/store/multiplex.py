"""One Redis connection per process for many concurrent calls: commands pipelined.

A checkout hold is one script call in the request's round trip. Sent the usual
way (a pooled connection per call, redis-py's command path, a timeout per
call) the call costs the API about as much CPU as the rest of the request, and
Redis a read and a write system call per command. Here every caller writes its
packed command to one shared connection: what is written in one event-loop
turn goes out in one write, Redis runs the commands one after the other as
always and answers in order, and one read completes as many calls as it
brings answers for. Atomicity is the script's, not the connection's, so
sharing changes nothing a caller can see.

A write that replicas must acknowledge (:meth:`Multiplexed.call_then`) is
followed by one command sent after every command of its turn, say ``WAIT``:
``WAIT`` counts every write the connection sent before it, so one covers the
turn's writes, and a burst of holds waits for the replicas once, not once each.

The socket is set up by redis-py (TCP or TLS, ``AUTH``, ``SELECT``, ``HELLO``)
and then taken over (:func:`stocksync.compat.redis.detach_streams`); with a
redis-py release that adjustment was not written for, each call takes a pooled
connection instead.

A call that gets no answer within ``timeout`` seconds fails the connection
(Redis answers in order: everything behind it is stuck too): every waiting
call fails as :class:`~stocksync.store.protocol.StoreUnavailable`, and the next
call connects again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from stocksync.compat import redis as compat_redis
from stocksync.store.protocol import StoreError, StoreUnavailable

__all__ = ["Multiplexed", "NoScript"]

_NOSCRIPT: Final = "NOSCRIPT"
_INCOMPLETE: Final = object()
#: Connections the pooled way (compat stood down) uses at most; more calls wait.
_POOLED_CONNECTIONS: Final = 32


class NoScript(StoreError):
    """Redis does not have the script (``NOSCRIPT``): load it, then call again."""


def _reply_error(error: hiredis.ReplyError) -> StoreError:
    text = str(error)
    if text.startswith(_NOSCRIPT):
        return NoScript(text)
    return StoreError(f"Redis answered an error: {text}")


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Link(asyncio.Protocol):
    """The taken-over connection: writes commands, matches answers to callers in order."""

    def __init__(self, connection: Any, writer: asyncio.StreamWriter, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        #: Kept so that neither is collected while the socket is in use (a collected
        #: StreamWriter closes its transport).
        self._connection = connection
        self._writer = writer
        self._timeout = timeout
        # A sentinel, not False, for "no whole answer yet": RESP3 answers False.
        self._parser = hiredis.Reader(notEnoughData=_INCOMPLETE)
        # (future, when sent) per call not yet answered, oldest first.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        #: The command sent after this turn's commands, and the future of its answer.
        self._after: tuple[bytes, asyncio.Future[Any]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Why the link is unusable, once it is.
        self.failed: StoreUnavailable | None = None
        self._transport = writer.transport
        self._transport.set_protocol(self)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Queue ``packed`` for this turn's write; the future of its answer."""
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(packed)
        self._waiting.append((future, loop.time()))
        if self._timer is None:
            self._timer = loop.call_later(self._timeout, self._check)
        return future

    def send_then(
        self, packed: bytes, after: bytes
    ) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
        """Queue ``packed``, and ``after`` once behind every command of this turn: the
        futures of both answers (the second shared by the turn's callers)."""
        future = self.send(packed)
        if self._after is None:
            shared: asyncio.Future[Any] = self._loop.create_future()
            # Its failure is the link's, raised to each caller by its own call already.
            shared.add_done_callback(_retrieved)
            self._after = (after, shared)
        return future, self._after[1]

    def _flush(self) -> None:
        out = self._out
        if self._after is not None:
            after, future = self._after
            self._after = None
            out.append(after)
            self._waiting.append((future, self._loop.time()))
        if out and self.failed is None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _check(self) -> None:
        """Fail the link if its oldest call is unanswered for ``timeout``; else look again."""
        self._timer = None
        if not self._waiting or self.failed is not None:
            return
        due = self._waiting[0][1] + self._timeout
        if due <= self._loop.time():
            self.fail(StoreUnavailable(f"Redis did not answer within {self._timeout:g} s"))
        else:
            self._timer = self._loop.call_at(due, self._check)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        try:
            while (reply := parser.gets()) is not _INCOMPLETE:
                if not waiting:
                    raise StoreUnavailable("Redis sent an answer nobody asked for")
                future = waiting.popleft()[0]
                if not future.done():  # else its caller gave up (cancelled)
                    future.set_result(reply)
        except (hiredis.ProtocolError, StoreUnavailable) as exc:
            self.fail(StoreUnavailable(f"cannot read Redis's answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreUnavailable(f"the connection to Redis closed: {exc or 'EOF'}"))

    def fail(self, error: StoreUnavailable) -> None:
        """Fail every waiting call with ``error`` and close the socket."""
        if self.failed is None:
            self.failed = error
        waiting, self._waiting = self._waiting, collections.deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)
        if self._after is not None:
            self._after[1].set_exception(error)
            self._after = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()


class Multiplexed:
    """Commands of one process to one Redis (not a cluster), pipelined on one connection."""

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        # The pooled way only: a burst waits for one of these instead of failing
        # (redis-py's pool raises past its limit).
        self._slots = asyncio.Semaphore(_POOLED_CONNECTIONS)

    async def call(self, packed: bytes) -> Any:
        """Send one packed command (``hiredis.pack_command``); its answer.

        Raises :class:`NoScript` when Redis lacks the script, ``StoreError`` for
        any other error answer, ``StoreUnavailable`` when Redis cannot be reached
        or does not answer in time.
        """
        link = self._link
        if link is None or link.failed is not None:
            link = await self._connect()
            if link is None:
                return await self._call_pooled(packed)
        reply = await link.send(packed)
        if isinstance(reply, hiredis.ReplyError):
            raise _reply_error(reply)
        return reply

    async def call_then(self, packed: bytes, after: bytes) -> tuple[Any, Any]:
        """Send ``packed``, then ``after`` behind every command of this event-loop turn
        (one ``after`` for the turn's calls); both answers.

        ``packed``'s error answer is raised as :meth:`call` raises it, once ``after``
        was answered; ``after``'s is returned as a ``hiredis.ReplyError``.
        """
        link = self._link
        if link is None or link.failed is not None:
            link = await self._connect()
            if link is None:
                return await self._call_pooled_then(packed, after)
        first, second = link.send_then(packed, after)
        reply = await first
        following = await second
        if isinstance(reply, hiredis.ReplyError):
            raise _reply_error(reply)
        return reply, following

    async def _call_pooled_then(self, packed: bytes, after: bytes) -> tuple[Any, Any]:
        async with self._pooled() as connection:
            await connection.send_packed_command(packed + after)
            failed: ResponseError | None = None
            reply: Any = None
            try:
                reply = await connection.read_response()
            except ResponseError as exc:  # a whole error answer: ``after``'s follows
                failed = exc
            try:
                following = await connection.read_response()
            except ResponseError as exc:
                following = hiredis.ReplyError(str(exc))
            if failed is not None:  # now that ``after``'s answer is read
                raise failed
            return reply, following

    async def _connect(self) -> _Link | None:
        async with self._connecting:
            link = self._link
            if link is not None and link.failed is None:
                return link
            if not compat_redis.ACTIVE:
                return None
            connection = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.connect()
            except (RedisError, OSError, TimeoutError) as exc:
                await connection.disconnect(nowait=True)
                raise StoreUnavailable(f"cannot connect to Redis: {exc}") from exc
            streams = compat_redis.detach_streams(connection)
            if streams is None:
                await connection.disconnect(nowait=True)
                return None
            self._link = _Link(connection, streams[1], self._timeout)
            return self._link

    async def _call_pooled(self, packed: bytes) -> Any:
        """The same call on a pooled connection of redis-py's (compat stood down)."""
        async with self._pooled() as connection:
            await connection.send_packed_command(packed)
            return await connection.read_response()

    @contextlib.asynccontextmanager
    async def _pooled(self) -> AsyncIterator[Any]:
        """A pooled connection of redis-py's for one exchange, within ``timeout``; redis-py's
        errors raised in the block come out as the store's, as :meth:`call` raises them.

        A connection the block failed on other than by an error answer is disconnected,
        not reused.
        """
        pool = self._client.connection_pool
        try:
            async with self._slots, asyncio.timeout(self._timeout):
                connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    yield connection
                except NoScriptError as exc:
                    raise NoScript(str(exc)) from exc
                except ResponseError as exc:
                    raise StoreError(f"Redis answered an error: {exc}") from exc
                except BaseException:
                    await connection.disconnect(nowait=True)
                    raise
                finally:
                    await pool.release(connection)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"a call to Redis failed: {exc}") from exc
        except TimeoutError:
            raise StoreUnavailable(f"Redis did not answer within {self._timeout:g} s") from None

    async def close(self) -> None:
        """Close the connection; waiting calls fail as unavailable."""
        link, self._link = self._link, None
        if link is not None:
            link.fail(StoreUnavailable("the connection was closed"))
