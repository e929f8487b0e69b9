"""The publisher against a real redis-server: notify modes, coalescing, crashes, fencing, holds.

The model is driven by hand (served forms applied as the change stream would);
the broker is a list that records what was sent, or fails on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from stocksync.api.model import AvailabilityModel, ModelSync, now_ms
from stocksync.codecs.feed import AvailabilityChanged, changed_decoder
from stocksync.codecs.holds import HeldLine, HeldSnapshot
from stocksync.codecs.projections import ChannelAvailability, Served, ServedChannel
from stocksync.config.settings import ChannelSettings, Settings
from stocksync.feed.metrics import FeedMetrics
from stocksync.feed.publisher import Publisher
from stocksync.readmodel.core import status_of
from stocksync.store import RedisStore
from stocksync.store.feed import FeedStore, LeaseLost, Published
from stocksync.store.layout import Keys
from stocksync.store.served import encode_detail

__all__: list[str] = []

_json = msgspec.json.Encoder()


class Broker:
    """Records what was sent; ``crash_after_send`` stops every send right after it went."""

    def __init__(self) -> None:
        self.sent: list[AvailabilityChanged] = []
        self.raw: list[bytes] = []
        self.crash_after_send = False

    async def send_all(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for _sku, raw in messages:
            self.sent.append(changed_decoder.decode(raw))
            self.raw.append(raw)
        if self.crash_after_send:
            # The process "dies" here, between the send and the record: the test cancels it.
            await asyncio.Event().wait()


def settings(**channel: Any) -> Settings:
    options = {"notify": "quantity", "notify_min_interval_ms": 0, **channel}
    return Settings(channels=[
        ChannelSettings(name="web", nodes=["a"], low_stock_threshold=5, **options),
        ChannelSettings(name="store", nodes=["a"], low_stock_threshold=2, notify="status",
                        notify_min_interval_ms=0),
    ])


def served(sku: str, version: int, available: int, store: int | None = None) -> Served:
    channels = []
    for name, figure, threshold in (("web", available, 5), ("store", store, 2)):
        value = available if figure is None else figure
        doc = ChannelAvailability(
            sku=sku, channel=name, available=value, status=status_of(value, threshold),
            version=version, updated_at="2026-11-27T09:00:00.000Z",
        )
        channels.append(ServedChannel(name, value, _json.encode(doc)))
    return Served(sku, version, channels, encode_detail([[], []]))


class Rig:
    """A model, a publisher on a real Redis, and a broker list."""

    def __init__(self, url: str, config: Settings, token: str = "me") -> None:
        self.config = config
        self.client = aioredis.Redis.from_url(url)
        self.model = AvailabilityModel(["web", "store"], [5, 2])
        self.sync = ModelSync(self.model, RedisStore(self.client, Keys("t")))
        self.store = FeedStore(self.client, Keys("t"), token)
        self.broker = Broker()
        self.publisher = Publisher(
            config, self.model, self.sync, self.store, self.broker, FeedMetrics()
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert await self.store.acquire(30)
        await self.publisher.activate()
        self.task = asyncio.create_task(self.publisher.run())

    async def settle(self, seconds: float = 0.15) -> None:
        await asyncio.sleep(seconds)
        assert self.task is not None
        if self.task.done():
            self.task.result()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.client.aclose()


def run(url: str, config: Settings, body: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        rig = Rig(url, config)
        try:
            await body(rig)
        finally:
            await rig.stop()

    asyncio.run(main())


def figures(sent: Sequence[AvailabilityChanged]) -> list[tuple[str, str, int, str, int]]:
    return [(m.sku, m.channel, m.available, m.status, m.version) for m in sent]


def test_first_figures_then_only_what_each_channel_is_notified_on(redis_url: str) -> None:
    async def body(rig: Rig) -> None:
        rig.model.apply(served("S1", 1, 10))
        await rig.start()
        await rig.settle()
        first = rig.broker.sent
        assert figures(first) == [("S1", "web", 10, "in_stock", 1),
                                  ("S1", "store", 10, "in_stock", 1)]
        assert first[0].event_id == "av-S1-web-1"
        assert first[0].previous_status is msgspec.UNSET
        assert b"previous_status" not in rig.broker.raw[0]
        assert rig.broker.raw[0].startswith(
            b'{"type":"availability.changed","schema":1,"event_id":"av-S1-web-1",'
        )
        # web notifies on quantity, store on status: 10 -> 8 is news for web only.
        rig.model.apply(served("S1", 2, 8))
        await rig.settle()
        # 8 -> 2: web low_stock... and store (threshold 2) out of its in_stock band.
        rig.model.apply(served("S1", 3, 2))
        await rig.settle()
        # The same figures at a new version (another channel's change): nothing.
        rig.model.apply(served("S1", 4, 2))
        await rig.settle()
        assert figures(rig.broker.sent[2:]) == [
            ("S1", "web", 8, "in_stock", 2),
            ("S1", "web", 2, "low_stock", 3),
            ("S1", "store", 2, "low_stock", 3),
        ]
        assert [m.previous_status for m in rig.broker.sent[2:]] == [
            "in_stock", "in_stock", "in_stock"
        ]

    run(redis_url, settings(), body)


def test_the_probe_sku_is_never_fed(redis_url: str) -> None:
    async def body(rig: Rig) -> None:
        probe = rig.config.probe.sku
        rig.model.apply(served(probe, 1, 10))
        await rig.start()
        rig.model.apply(served(probe, 2, 3))
        rig.model.apply(served("S1", 1, 3))
        await rig.settle()
        assert {m.sku for m in rig.broker.sent} == {"S1"}

    run(redis_url, settings(), body)


def test_off_sends_nothing(redis_url: str) -> None:
    async def body(rig: Rig) -> None:
        rig.model.apply(served("S1", 1, 10))
        await rig.start()
        await rig.settle()
        assert {m.channel for m in rig.broker.sent} == {"store"}

    run(redis_url, settings(notify="off"), body)


def test_changes_inside_the_interval_are_one_message_and_a_flap_is_none(redis_url: str) -> None:
    async def body(rig: Rig) -> None:
        rig.model.apply(served("S1", 1, 10))
        await rig.start()
        await rig.settle(0.5)
        # store (no interval) at once, web once its interval has passed
        assert figures(rig.broker.sent) == [("S1", "store", 10, "in_stock", 1),
                                            ("S1", "web", 10, "in_stock", 1)]
        rig.broker.sent.clear()
        for version, available in ((2, 9), (3, 8), (4, 7)):
            rig.model.apply(served("S1", version, available))
            await asyncio.sleep(0.05)
        await rig.settle(0.1)
        assert rig.broker.sent == []  # still inside the interval
        await rig.settle(0.4)
        assert figures(rig.broker.sent) == [("S1", "web", 7, "in_stock", 4)]
        rig.broker.sent.clear()
        # 7 -> 3 -> 7 inside one interval: the value came back, nothing goes out.
        await asyncio.sleep(0.45)
        rig.model.apply(served("S1", 5, 3))
        await asyncio.sleep(0.1)
        rig.model.apply(served("S1", 6, 7))
        await rig.settle(0.6)
        assert rig.broker.sent == []

    run(redis_url, settings(notify_min_interval_ms=300), body)


def test_a_crash_after_sending_repeats_the_message_even_when_the_figure_came_back(
    redis_url: str,
) -> None:
    config = settings()

    async def main() -> None:
        first = Rig(redis_url, config)
        first.model.apply(served("S1", 1, 10))
        await first.start()
        await first.settle()
        assert figures(first.broker.sent)[0] == ("S1", "web", 10, "in_stock", 1)
        first.broker.crash_after_send = True
        first.model.apply(served("S1", 2, 3))
        first.model.apply(served("S2", 1, 4))
        await first.settle()
        # store (status, threshold 2) is still in_stock at 3: only web's message went.
        went = sorted(first.broker.raw[2:])
        assert sorted(figures(first.broker.sent[2:])) == [
            ("S1", "web", 3, "low_stock", 2),
            ("S2", "store", 4, "in_stock", 1),
            ("S2", "web", 4, "low_stock", 1),
        ]
        await first.stop()

        # Restarted where S1's figure is back to what was recorded as published: the
        # consumer saw 3, so it must hear 10 again; S2 did not move: the same bytes again.
        second = Rig(redis_url, config)
        second.model.apply(served("S1", 3, 10))
        second.model.apply(served("S2", 1, 4))
        await second.start()
        await second.settle()
        assert sorted(figures(second.broker.sent)) == [
            ("S1", "web", 10, "in_stock", 3),
            ("S2", "store", 4, "in_stock", 1),
            ("S2", "web", 4, "low_stock", 1),
        ]
        again = [raw for raw in went if b'"S2"' in raw]
        assert sorted(raw for raw in second.broker.raw if b'"S2"' in raw) == again
        (s1,) = [m for m in second.broker.sent if m.sku == "S1"]
        assert s1.previous_status == "low_stock"
        await second.stop()

        # Once recorded, nothing is in flight any more.
        third = Rig(redis_url, config)
        third.model.apply(served("S1", 3, 10))
        third.model.apply(served("S2", 1, 4))
        await third.start()
        await third.settle()
        assert third.broker.sent == []
        await third.stop()

    asyncio.run(main())


def test_published_state_survives_a_restart(redis_url: str) -> None:
    config = settings()

    async def main() -> None:
        first = Rig(redis_url, config)
        first.model.apply(served("S1", 1, 10))
        await first.start()
        await first.settle()
        await first.stop()
        second = Rig(redis_url, config)
        second.model.apply(served("S1", 1, 10))
        await second.start()
        await second.settle()
        assert second.broker.sent == []
        await second.stop()

    asyncio.run(main())


def test_a_process_that_lost_the_lease_cannot_record(redis_url: str) -> None:
    async def body(rig: Rig) -> None:
        rig.model.apply(served("S1", 1, 10))
        await rig.start()
        await rig.settle()
        await rig.client.set("t:feed-lease", "someone-else")
        rig.model.apply(served("S1", 2, 4))
        await asyncio.sleep(0.15)
        assert rig.task is not None and rig.task.done()
        with pytest.raises(LeaseLost):
            rig.task.result()
        other = FeedStore(rig.client, Keys("t"), "me")
        assert not await other.acquire(5)

    run(redis_url, settings(), body)


def test_holds_are_part_of_the_figure_and_their_expiry_is_news(redis_url: str) -> None:
    async def body(rig: Rig) -> None:
        rig.model.apply(served("S1", 1, 10))
        await rig.start()
        await rig.settle()
        rig.broker.sent.clear()
        expires = now_ms() + 300
        rig.model.apply_held("S1", HeldSnapshot(1, [HeldLine("h1", "web", 4, expires)]))
        await rig.settle()
        assert figures(rig.broker.sent) == [("S1", "web", 6, "in_stock", 2)]
        await asyncio.sleep(0.35)
        rig.model.expire(now_ms())
        await rig.settle()
        assert figures(rig.broker.sent)[1:] == [("S1", "web", 10, "in_stock", 3)]

    run(redis_url, settings(), body)


def test_the_lease_says_whether_it_was_renewed_or_taken_afresh(redis_url: str) -> None:
    """A lease found gone while held (Redis restarted empty) is ``taken``, not ``renewed``."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            me = FeedStore(client, Keys("lease-test"), "me")
            other = FeedStore(client, Keys("lease-test"), "other")
            assert await me.acquire(5) == "taken"
            assert await me.acquire(5) == "renewed"
            assert await other.acquire(5) is None
            await client.delete("lease-test:feed-lease")  # what an empty restart leaves
            assert await me.acquire(5) == "taken"
        finally:
            await client.aclose()

    asyncio.run(main())


def test_recorded_messages_of_any_length_read_back_the_same(redis_url: str) -> None:
    """The fenced write packs its values for Lua: short, 8-, 16- and 32-bit lengths."""

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            store = FeedStore(client, Keys("len-test"), "me")
            assert await store.acquire(5)
            values = {f"c{n}": bytes(range(256)) * (n // 256) + b"\xff" * (n % 256)
                      for n in (0, 5, 31, 32, 255, 256, 65535, 65536, 70000)}
            await store.sending({"S1": list(values.items())})
            pages = [page async for page in store.load(100)]
            assert pages[0]["S1"].sending == values
        finally:
            await client.aclose()

    asyncio.run(main())


def test_on_a_redis_cluster_the_state_spreads_over_the_shards_each_fenced(
    redis_cluster_url: str,
) -> None:
    """Each shard's records are fenced by that shard's copy of the lease: a new holder holds
    the lease only once the old copies expired, and the old holder's writes are refused."""
    from redis.asyncio.cluster import RedisCluster

    from stocksync.store.layout import CLUSTER_SHARDS

    async def main() -> None:
        client = RedisCluster.from_url(redis_cluster_url)
        try:
            first = FeedStore(client, Keys("fc"), "first")
            second = FeedStore(client, Keys("fc"), "second")
            assert first.keys.shards == CLUSTER_SHARDS
            skus = [f"S{i}" for i in range(200)]
            assert len({first.keys.shard_of(s) for s in skus}) == CLUSTER_SHARDS
            assert await first.acquire(30) == "taken"
            assert await first.acquire(30) == "renewed"
            await first.sending({s: [("web", s.encode())] for s in skus})
            record = Published(3, 7, "in_stock", 1)
            await first.published({s: [("web", record)] for s in skus})
            await first.save_positions("market", {0: 5})
            loaded = {sku: page[sku] for page in [p async for p in first.load(50)] for sku in page}
            assert sorted(loaded) == sorted(skus)
            assert all(v.published == {"web": record} and v.sending == {} for v in loaded.values())
            assert await first.positions("market") == {0: 5}

            # The main lease expired, its copies not yet: the next holder waits for them.
            await client.delete(first.keys.feed_lease())
            assert await second.acquire(30) is None
            for shard in range(CLUSTER_SHARDS):
                await client.delete(first.keys.feed_fence(shard))
            assert await second.acquire(30) == "taken"
            with pytest.raises(LeaseLost):
                await first.published({"S1": [("web", record)]})
            with pytest.raises(LeaseLost):
                await first.save_positions("market", {0: 9})
            assert await first.acquire(30) is None
            # One shard lost its data (failed over to an empty replica): the holder hears of it.
            await client.delete(second.keys.feed_fence(3))
            assert await second.acquire(30) == "taken"
            await second.release()
            assert await second.holder() is None
        finally:
            await client.aclose()

    asyncio.run(main())
