"""The publisher: compare what readers are served with what was published, and send the news.

It watches an :class:`~stocksync.api.model.AvailabilityModel` kept by a
:class:`~stocksync.api.model.ModelSync`, exactly as an API replica keeps it
(the change stream, hold grants and releases, hold expiries by timer), so it
reports what a reader sees. Each SKU the model changes is marked; for each
notified channel of a marked SKU whose figure differs from the last message
(:mod:`stocksync.feed.notify`) a deadline opens; when it passes, the latest
figure is compared again and, if it still differs, sent.

Order of a round, per batch: the messages are recorded as in flight
(:meth:`~stocksync.store.feed.FeedStore.sending`), sent and acknowledged by the
broker, then recorded as published. A crash in between repeats a message (same
``event_id``) or, when the figure moved on, sends the newer one; it never
leaves a consumer on a figure the API no longer serves. Failures of Redis or
the broker are retried with backoff, the batch unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Protocol

import msgspec

from stocksync.api.model import FIRST_CHANNEL_SLOT, AvailabilityModel, ModelSync, now_ms
from stocksync.codecs.feed import AvailabilityChanged, changed_decoder, encode, event_id
from stocksync.codecs.projections import Status
from stocksync.config.settings import Settings, is_probe_sku
from stocksync.feed.metrics import FeedMetrics
from stocksync.feed.notify import Figure, Notify, changed, due_at
from stocksync.readmodel.core import format_millis
from stocksync.store.feed import FeedStore, LeaseLost, Published
from stocksync.store.protocol import StoreUnavailable

__all__ = ["FeedSender", "Publisher", "feed_topic"]

log = logging.getLogger("stocksync.feed")

#: Messages sent per round at most (a round records them twice in Redis).
_BATCH: Final = 2000
_LOAD_PAGE: Final = 2000
_figure_decoder: Final = msgspec.json.Decoder(Figure)


def feed_topic(settings: Settings) -> str:
    """``{prefix}.availability.v1``."""
    return f"{settings.topic_prefix}.availability.v1"


class FeedSender(Protocol):
    """Sends feed messages and returns once the broker acknowledged every one."""

    async def send_all(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send ``(sku, JSON)`` pairs keyed by SKU, in order; raise if any failed."""


class _Channel:
    __slots__ = ("interval", "mode", "name", "slot")

    def __init__(self, name: str, slot: int, mode: Notify, interval: int) -> None:
        self.name = name
        self.slot = slot
        self.mode = mode
        self.interval = interval


class Publisher:
    """Decides and sends the feed's messages while this process holds the lease."""

    def __init__(
        self,
        settings: Settings,
        model: AvailabilityModel,
        sync: ModelSync,
        store: FeedStore,
        sender: FeedSender,
        metrics: FeedMetrics,
        *,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
    ) -> None:
        self.model = model
        self.sync = sync
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.settings = settings
        self.channels = [
            _Channel(c.name, FIRST_CHANNEL_SLOT + i, c.notify, c.notify_min_interval_ms)
            for i, c in enumerate(settings.channels)
            if c.notify != "off"
        ]
        #: (sku, channel index) -> the last message the broker acknowledged.
        self.published: dict[tuple[str, int], Published] = {}
        #: (sku, channel index) -> a message that may have been sent (found in flight).
        self.uncertain: dict[tuple[str, int], AvailabilityChanged] = {}
        #: SKUs changed since their channels were last looked at -> when (ms) the first of
        #: those changes reached the read model: a deadline counts from the change, not
        #: from when this process saw it.
        self.dirty: dict[str, int] = {}
        #: SKU -> (ms the latest change reached the read model, its correlation id).
        self.stamps: dict[str, tuple[int, str | None]] = {}
        self._deadlines: list[tuple[int, str, int]] = []
        self._scheduled: dict[tuple[str, int], int] = {}
        self._wake = asyncio.Event()
        self.active = False
        model.changed = self._changed

    # --- watching the model ---

    def _changed(self, sku: str) -> None:
        if not self.active or is_probe_sku(self.settings, sku):  # not business stock
            return
        at, cid = self.sync.applying
        at = at or now_ms()
        self.stamps[sku] = (at, cid)
        self.dirty.setdefault(sku, at)
        self._wake.set()

    # --- activation ---

    async def activate(self) -> None:
        """Load what was published, then look at every SKU of the model."""
        self.published.clear()
        self.uncertain.clear()
        self.dirty.clear()
        self._deadlines.clear()
        self._scheduled.clear()
        names = {c.name: i for i, c in enumerate(self.channels)}
        count = 0
        async for page in self.store.load(_LOAD_PAGE):
            for sku, stored in page.items():
                for name, record in stored.published.items():
                    index = names.get(name)
                    if index is not None:
                        self.published[(sku, index)] = record
                for name, raw in stored.sending.items():
                    index = names.get(name)
                    if index is None:
                        continue
                    try:
                        self.uncertain[(sku, index)] = changed_decoder.decode(raw)
                    except msgspec.DecodeError:
                        log.error("an unreadable in-flight feed message of %r; sending anew", sku)
                count += 1
            await asyncio.sleep(0)
        self.active = True
        now = now_ms()
        settings = self.settings
        for sku in self.model.entries:
            if not is_probe_sku(settings, sku):
                self.stamps.setdefault(sku, (now, None))
                self.dirty.setdefault(sku, now)
        for sku, _index in self.uncertain:
            self.dirty.setdefault(sku, now)
            self.stamps.setdefault(sku, (now, None))
        log.info(
            "feed state loaded: %d SKUs published before, %d messages possibly in flight",
            count, len(self.uncertain),
        )
        self._wake.set()

    def deactivate(self) -> None:
        """Stop deciding (the lease is gone); the state is loaded again on activation."""
        self.active = False

    # --- the loop ---

    async def run(self) -> None:
        """Publish until cancelled; raises :class:`LeaseLost` when fenced out."""
        backoff = self.backoff_min
        while True:
            upcoming = self._deadlines[0][0] if self._deadlines else None
            timeout = None if upcoming is None else max(0.0, (upcoming - now_ms()) / 1000)
            if not self.dirty and (timeout is None or timeout > 0):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._mark(now_ms())
            while True:
                batch = self._due(now_ms())
                if not batch:
                    break
                while True:
                    try:
                        await self._publish(batch)
                        backoff = self.backoff_min
                        break
                    except StoreUnavailable as exc:
                        log.warning("Redis failed while publishing (%s); retrying", exc)
                    except LeaseLost:
                        raise
                    except Exception as exc:  # the broker: aiokafka raises many kinds
                        log.warning("sending feed messages failed (%r); retrying", exc)
                    self.metrics.errors.inc()
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, self.backoff_max)
                await asyncio.sleep(0)

    def _figure(self, sku: str, channel: _Channel) -> Figure | None:
        entry = self.model.entries.get(sku)
        if entry is None:
            return None
        doc = entry[channel.slot]
        return None if doc is None else _figure_decoder.decode(doc)

    def _behind(self, key: tuple[str, int], last: Published | None, figure: Figure) -> bool:
        """Whether this model has not yet seen what was published (it follows it soon)."""
        sending = self.uncertain.get(key)
        newest = max(
            -1 if last is None else last.version, -1 if sending is None else sending.version
        )
        return figure.version < newest

    def _mark(self, now: int) -> None:
        """Open a deadline for each changed (sku, channel) that has none."""
        dirty, self.dirty = self.dirty, {}
        for sku, changed_at in dirty.items():
            pending = False
            for index, channel in enumerate(self.channels):
                key = (sku, index)
                if key in self._scheduled:
                    pending = True
                    continue  # its deadline looks at the latest figure
                figure = self._figure(sku, channel)
                if figure is None:
                    continue
                last = self.published.get(key)
                if self._behind(key, last, figure):
                    continue
                if key not in self.uncertain and not changed(channel.mode, last, figure):
                    continue
                due = now if key in self.uncertain else due_at(
                    changed_at, channel.interval, None if last is None else last.sent_ms
                )
                self._scheduled[key] = due
                heapq.heappush(self._deadlines, (due, sku, index))
                pending = True
            if not pending:
                self.stamps.pop(sku, None)

    def _due(self, now: int) -> list[AvailabilityChanged]:
        """The messages whose deadline passed and whose figure still differs."""
        batch: list[AvailabilityChanged] = []
        seen: set[str] = set()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now and len(batch) < _BATCH:
            _, sku, index = heapq.heappop(deadlines)
            key = (sku, index)
            self._scheduled.pop(key, None)
            channel = self.channels[index]
            figure = self._figure(sku, channel)
            if figure is None:
                continue
            last = self.published.get(key)
            sending = self.uncertain.get(key)
            if self._behind(key, last, figure):
                continue
            if sending is None and not changed(channel.mode, last, figure):
                continue  # it came back within the interval
            if sending is not None and sending.version == figure.version:
                batch.append(sending)  # the very message that may have gone: the same bytes
            else:
                at, cid = self.stamps.get(sku, (now, None))
                previous: Status | msgspec.UnsetType = (
                    sending.status if sending is not None
                    else msgspec.UNSET if last is None else last.status
                )
                batch.append(AvailabilityChanged(
                    event_id=event_id(sku, channel.name, figure.version),
                    occurred_at=format_millis(at),
                    sku=sku,
                    channel=channel.name,
                    available=figure.available,
                    status=figure.status,
                    previous_status=previous,
                    version=figure.version,
                    correlation_id=msgspec.UNSET if cid is None else cid,
                ))
            seen.add(sku)
        for sku in seen:
            # Nothing else pending for it: the next change stamps it afresh.
            if not any((sku, i) in self._scheduled for i in range(len(self.channels))):
                self.stamps.pop(sku, None)
        # Per SKU in version order (all channels of a SKU share its version).
        batch.sort(key=lambda m: m.version)
        return batch

    async def _publish(self, batch: list[AvailabilityChanged]) -> None:
        encoded = [(m.sku, encode(m)) for m in batch]
        in_flight: dict[str, list[tuple[str, bytes]]] = {}
        for message, (sku, raw) in zip(batch, encoded, strict=True):
            in_flight.setdefault(sku, []).append((message.channel, raw))
        await self.store.sending(in_flight)
        # The interval is kept between sends (the records' timestamps), not between acks:
        # waiting for the broker must not push the next message of a SKU further out.
        sent = now_ms()
        await self.sender.send_all(encoded)
        acked = now_ms()
        records: dict[str, list[tuple[str, Published]]] = {}
        index_of = {c.name: i for i, c in enumerate(self.channels)}
        published = [
            Published(message.version, message.available, message.status, sent)
            for message in batch
        ]
        for message, record in zip(batch, published, strict=True):
            records.setdefault(message.sku, []).append((message.channel, record))
        await self.store.published(records)
        counts = dict.fromkeys(index_of, 0)
        observe = self.metrics.delay.observe
        for message, record in zip(batch, published, strict=True):
            key = (message.sku, index_of[message.channel])
            self.published[key] = record
            self.uncertain.pop(key, None)
            counts[message.channel] += 1
            observe(max(0.0, (acked - _millis(message.occurred_at)) / 1000))
        for name, count in counts.items():
            if count:
                self.metrics.messages.labels(channel=name).inc(count)

    def lag_seconds(self) -> float:
        """How long the oldest change not yet published has waited (0 when none)."""
        if not self.active or not self._deadlines:
            return 0.0
        oldest = min((at for at, _ in self.stamps.values()), default=None)
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)


def _millis(text: str) -> int:
    """RFC 3339 with ms (as :func:`format_millis` writes it) -> ms since the epoch."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)
