"""Object stores through avatar_shared.bus.Objects, on a real NATS: reads bounded in size,
checked against their digest, and leaving nothing behind when they time out."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js.api import ObjectInfo
from nats.js.object_store import ObjectStore

from avatar_shared.bus import Bus, ObjectCorrupt, Objects, ObjectTooLarge

MIB = 1024 * 1024


@pytest.fixture
async def objects(bus: Bus) -> AsyncIterator[Objects]:
    bucket = f"objects_{uuid.uuid4().hex[:8]}"
    yield await bus.ensure_object_store(bucket, ttl_seconds=600, max_bytes=256 * MIB)
    await bus.delete_object_store(bucket)


def subscriptions(bus: Bus) -> int:
    """The connection's subscriptions (what a read left behind would be among)."""
    return len(bus._nc._subs)  # nats-py has no public count


async def test_an_object_of_many_chunks_reads_back_whole_with_its_headers(
    objects: Objects,
) -> None:
    data = os.urandom(3 * MIB + 17)  # 25 chunks of 128 KiB, the last one short
    await objects.put("big", data, headers={"Fetched-At": ["12.5"]})
    await objects.put("empty", b"", headers={})
    found = await objects.get("big", max_bytes=4 * MIB)
    assert found is not None
    assert found.data == data
    assert found.headers["Fetched-At"] == ["12.5"]
    empty = await objects.get("empty", max_bytes=1)
    assert empty is not None
    assert empty.data == b""
    assert await objects.get("absent", max_bytes=1) is None
    await objects.delete("big")
    await objects.delete("big")  # absent already: fine
    assert await objects.get("big", max_bytes=4 * MIB) is None


async def test_an_object_over_the_limit_is_refused_before_it_is_read(
    bus: Bus, objects: Objects
) -> None:
    await objects.put("big", os.urandom(2 * MIB), headers={})
    before = subscriptions(bus)
    with pytest.raises(ObjectTooLarge):
        await objects.get("big", max_bytes=2 * MIB - 1)
    assert subscriptions(bus) == before


async def test_a_read_that_times_out_leaves_no_subscription_behind(
    bus: Bus, objects: Objects
) -> None:
    await objects.put("big", os.urandom(16 * MIB), headers={})
    before = subscriptions(bus)
    timed_out = 0
    for _ in range(5):
        try:
            async with asyncio.timeout(0.005):
                await objects.get("big", max_bytes=32 * MIB)
        except TimeoutError:
            timed_out += 1
    # (nats-py's request for the description can swallow a timeout on Python 3.11, and
    # the read then runs to its end: at least one of the five must have timed out)
    assert timed_out >= 1
    assert subscriptions(bus) == before
    found = await objects.get("big", max_bytes=32 * MIB)  # and the next read is whole
    assert found is not None
    assert len(found.data) == 16 * MIB


class LyingStore:
    """An object store whose description of an object says something else than its
    chunks (a digest or size that does not match them)."""

    def __init__(self, store: ObjectStore, **lie: object) -> None:
        self._store = store
        self._lie = lie

    async def get_info(self, name: str) -> ObjectInfo:
        return dataclasses.replace(await self._store.get_info(name), **self._lie)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "lie",
    [
        {"digest": "SHA-256=" + "A" * 43 + "="},  # another content's digest
        {"size": MIB - 1},  # fewer bytes than the chunks hold
        {"size": MIB + 1},  # more bytes than the chunks hold
    ],
)
async def test_chunks_that_do_not_match_their_description_are_refused(
    objects: Objects, lie: dict[str, object]
) -> None:
    await objects.put("obj", os.urandom(MIB), headers={})
    store = LyingStore(objects._store, **lie)
    lying = Objects(objects._js, objects._bucket, store)  # type: ignore[arg-type]
    with pytest.raises(ObjectCorrupt):
        await lying.get("obj", max_bytes=2 * MIB)
