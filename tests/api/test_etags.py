"""ETags differ whenever answers differ: per channel, per detail, across generations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis

from stocksync.api.app import MODEL
from stocksync.api.etags import etag
from stocksync.store.generation import effective_namespace
from stocksync.store.layout import Keys, reload_fields
from tests.api.helpers import (
    NAMESPACE,
    Client,
    eventually,
    make_settings,
    projection,
    run,
    serving,
    write,
)

PATH = "/v1/availability/A?channel=web"


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        write(client, projection("A", 3, available=10))
        yield client


async def _get(
    client: Client, path: str, if_none_match: str | None = None
) -> tuple[int, str, bytes]:
    headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
    async with client.get(path, headers=headers) as resp:
        return resp.status, resp.headers.get("ETag", ""), await resp.read()


def test_the_tag_depends_on_every_part() -> None:
    base = etag("ns", 3, "web", False)
    assert base.startswith('"') and base.endswith('"') and " " not in base
    others = {
        etag("ns:g20261127T090003123Z", 3, "web", False),
        etag("ns", 4, "web", False),
        etag("ns", 3, "store", False),
        etag("ns", 3, "web", True),
        etag("ns", 3, "web.n", False),  # a channel name cannot run into the detail mark
    }
    assert base not in others and len(others) == 5
    assert etag("ns", 3, "web", False) == base  # the same in every process


def test_channels_and_detail_have_their_own_tags(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            paths = [PATH, PATH + "&detail=nodes", "/v1/availability/A?channel=store"]
            tags = []
            for path in paths:
                status, tag, _ = await _get(client, path)
                assert status == 200 and tag
                tags.append(tag)
                assert (await _get(client, path, tag))[0] == 304
            assert len(set(tags)) == 3
            # The summary's tag does not spare the client the detail, or the other channel.
            for path in paths[1:]:
                status, _, body = await _get(client, path, tags[0])
                assert status == 200 and body

    run(scenario())


def test_a_rebuilt_model_never_gets_a_304_for_a_changed_body(
    redis_url: str, store: redis.Redis
) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            status, old_tag, old_body = await _get(client, PATH)
            assert status == 200
            # A rebuild: a new generation whose versions start again, to the same number.
            generation = "g20261127T090003123Z"
            new_ns = effective_namespace(NAMESPACE, generation)
            write(store, projection("A", 3, available=7), namespace=new_ns, generation=generation)
            store.set(Keys(NAMESPACE).generation(), generation)
            fields = reload_fields(new_ns, generation)
            store.xadd(Keys(NAMESPACE).changes(), fields)  # type: ignore[arg-type]

            async def rebuilt() -> bool:
                return (await _get(client, PATH))[2] != old_body

            await eventually(rebuilt)
            status, new_tag, body = await _get(client, PATH, old_tag)
            assert status == 200 and body != old_body
            assert new_tag != old_tag
            assert (await _get(client, PATH, new_tag))[0] == 304

    run(scenario())


def test_replicas_of_one_generation_agree_on_tags(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        settings = make_settings(redis_url)
        async with serving(settings) as first, serving(settings) as second:
            _, tag, _ = await _get(first, PATH)
            assert (await _get(second, PATH, tag))[0] == 304

    run(scenario())


def test_no_tag_while_generations_switch(redis_url: str, store: redis.Redis) -> None:
    async def scenario() -> None:
        async with serving(make_settings(redis_url)) as client:
            _, tag, _ = await _get(client, PATH)
            client.server.app[MODEL].generation = None  # as during a generation switch
            status, no_tag, body = await _get(client, PATH, tag)
            assert (status, no_tag) == (200, "") and body

    run(scenario())
