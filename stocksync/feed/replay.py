"""``stocksync feed replay``: send dead-lettered webhook deliveries again.

Reads ``{prefix}.feed.dlq`` from the start, keeps the letters of ``--webhook``
(default: every configured webhook) that failed at or after ``--since``, and
POSTs their messages to the webhook again, signed as the feed signs them,
under a new delivery id, trying each up to three times. The messages carry
their versions: a consumer that keeps the highest version per (sku, channel)
drops what it already has newer. ``--dry-run`` only lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import datetime
from typing import Final

import aiohttp
import msgspec

from stocksync.codecs.feed import FeedDeadLetter, dead_letter_decoder, encode
from stocksync.config.settings import Settings
from stocksync.feed.service import dlq_topic
from stocksync.feed.webhooks import MAX_BATCH, post
from stocksync.ops.access import OperateError, audit, read_topics

__all__ = ["replay", "run"]

_ATTEMPTS: Final = 3


async def replay(
    settings: Settings,
    *,
    webhook: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
) -> tuple[int, int]:
    """Replay matching letters; returns (messages delivered or listed, messages failed)."""
    hooks = {h.name: h for h in settings.feed.webhooks}
    if webhook is not None and webhook not in hooks:
        known = ", ".join(hooks) or "none configured"
        raise OperateError(f"--webhook {webhook!r} is not a configured webhook ({known})")
    letters: list[FeedDeadLetter] = []
    async for records, _progress in read_topics(settings, [dlq_topic(settings)]):
        for record in records:
            try:
                letter = dead_letter_decoder.decode(record.value or b"")
            except msgspec.DecodeError:
                print(f"skipping an unreadable letter at offset {record.offset}", file=sys.stderr)
                continue
            if webhook is not None and letter.webhook != webhook:
                continue
            if since is not None and datetime.fromisoformat(letter.failed_at) < since:
                continue
            letters.append(letter)
    done = failed = 0
    async with aiohttp.ClientSession() as session:
        for letter in letters:
            hook = hooks.get(letter.webhook)
            what = (f"{letter.failed_at} {letter.webhook} delivery {letter.delivery_id}:"
                    f" {len(letter.messages)} messages ({letter.reason})")
            if dry_run:
                print(f"would replay {what}")
                done += len(letter.messages)
                continue
            if hook is None:
                print(f"skipped {what}: no such webhook is configured now", file=sys.stderr)
                failed += len(letter.messages)
                continue
            for start in range(0, len(letter.messages), MAX_BATCH):
                chunk = letter.messages[start : start + MAX_BATCH]
                body = encode(chunk)
                delivery = uuid.uuid4().hex
                for attempt in range(1, _ATTEMPTS + 1):
                    outcome = await post(session, hook, delivery, body)
                    if outcome.ok:
                        done += len(chunk)
                        break
                    if attempt < _ATTEMPTS:
                        await asyncio.sleep(attempt)
                else:
                    failed += len(chunk)
                    print(f"failed {what}: {outcome.reason}", file=sys.stderr)
                    continue
                print(f"replayed {what}")
    if not dry_run:
        audit("feed replay", "replayed webhook deliveries", done, failed=failed,
              webhook=webhook or "*")
    return done, failed


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The command's handler: 0 when everything matched was delivered (or listed)."""
    try:
        done, failed = asyncio.run(replay(
            settings, webhook=args.webhook, since=args.since, dry_run=args.dry_run,
        ))
    except OperateError as exc:
        print(f"stocksync feed replay: {exc}", file=sys.stderr)
        return 1
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {done} messages" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0
