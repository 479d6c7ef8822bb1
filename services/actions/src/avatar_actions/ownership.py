"""Which replica consumes which partition: leases in JetStream KV, rendezvous hashing.

Bucket ``ACTIONS_LEASES`` keeps one value per key and forgets a key ``ttl`` seconds after
its last write:

- ``member.<replica>``: written by each replica every heartbeat (``ttl / 4``); it
  vanishes ``ttl`` after its replica stops or dies;
- ``partition.<n>``: the id of the replica consuming partition ``n``. Created only if
  absent (``create``), refreshed by compare-and-set on its revision (``update``), and
  deleted by its owner when it hands the partition over.

Each heartbeat a replica computes the same assignment from the live members
(:func:`assignment`: rendezvous hashing, capped so that every replica gets its share).
A replica releases what it should no longer own (its worker finishes the batch in hand
and saves, then the lease is deleted) and claims what it should own once the lease is
free. A dead replica's leases
expire after ``ttl``; the survivors take its partitions then.

A partition is consumed only while its lease is valid: ``holds`` is false from
``ttl - heartbeat`` after the last successful refresh, before the server can expire the
lease and hand it to someone else, so two replicas never consume one partition at once
(unless a process stalls for longer than that between checking and fetching).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors

from avatar_actions.ports import Leases

log = logging.getLogger(__name__)

LEASE_BUCKET = "ACTIONS_LEASES"
PartitionCallback = Callable[[int], Awaitable[None]]


def replica_id() -> str:
    """This process's name among the replicas: the pod name and a random suffix."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:48]
    return f"{host}-{uuid.uuid4().hex[:6]}"


def assignment(partitions: int, members: list[str]) -> dict[int, str]:
    """Which member should own each partition: rendezvous hashing with a cap.

    Each partition goes to the member ranked highest by ``sha256(partition, member)``
    among those not yet holding ``ceil(partitions / members)``: every member gets its
    share (plain rendezvous hashing may give one member everything when partitions are
    few), and a member joining or leaving moves few partitions.
    """
    if not members:
        return {}
    cap = -(-partitions // len(members))
    held = dict.fromkeys(members, 0)
    owners = {}
    for partition in range(partitions):
        ranked = sorted(
            members,
            key=lambda m: hashlib.sha256(f"{partition}:{m}".encode()).digest(),
            reverse=True,
        )
        chosen = next(m for m in ranked if held[m] < cap)
        held[chosen] += 1
        owners[partition] = chosen
    return owners


@dataclass
class _Lease:
    revision: int
    valid_until: float


class Ownership:
    def __init__(
        self,
        kv: Leases,
        me: str,
        partitions: int,
        *,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self._kv = kv
        self._partitions = partitions
        self._ttl = ttl
        self.heartbeat = ttl / 4
        self._clock = clock
        self._leases: dict[int, _Lease] = {}
        self._handing_back: dict[int, asyncio.Task[None]] = {}

    @property
    def owned(self) -> list[int]:
        """The partitions this replica may consume now (their leases are valid)."""
        return [p for p in sorted(self._leases) if self.holds(p)]

    def holds(self, partition: int) -> bool:
        lease = self._leases.get(partition)
        return lease is not None and lease.valid_until > self._clock()

    async def run(
        self, stop: asyncio.Event, acquired: PartitionCallback, released: PartitionCallback
    ) -> None:
        """Heartbeat until ``stop``, then hand every partition back. Cancelled, it lets
        go of nothing: like a crashed process, its leases expire after ``ttl``."""
        while not stop.is_set():
            began = self._clock()
            try:
                await self.step(acquired, released)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("lease heartbeat failed (%s); retrying", type(exc).__name__)
            # every `heartbeat` from the last one's start, however long that one took
            pause = max(0.0, began + self.heartbeat - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
        await self.release_all(released)

    async def step(self, acquired: PartitionCallback, released: PartitionCallback) -> None:
        """One heartbeat. The leases held are refreshed first, all at once (with the
        membership write): on a saturated replica every round trip waits its turn, so
        one round, not one per lease, keeps them valid; the members are read after, for
        at most half a heartbeat. It never waits for a worker: a partition handed back
        stops in the background while its lease keeps being refreshed, so a long batch
        cannot starve the other leases."""
        started = self._clock()
        held = sorted(self._leases)
        membership, *revisions = await asyncio.gather(
            self._kv.put(f"member.{self.me}", b"1"),
            *(
                self._kv.update(_key(p), self.me.encode(), last=self._leases[p].revision)
                for p in held
            ),
            return_exceptions=True,
        )
        failure: BaseException | None = None
        if isinstance(membership, BaseException):
            failure = membership
        for partition, revision in zip(held, revisions, strict=True):
            if partition not in self._leases:
                continue  # handed back meanwhile: not ours to keep
            if isinstance(revision, BaseException):
                failure = failure or revision  # the others' new revisions are kept
            elif revision is None:
                log.error("lease of partition %d lost; stopping its consumer", partition)
                del self._leases[partition]  # not held from now: its batch is abandoned
                self._hand_back(partition, released)
            else:
                self._leases[partition] = _Lease(revision, started + self._ttl - self.heartbeat)
        if failure is not None:
            raise failure
        try:
            async with asyncio.timeout(self.heartbeat / 2):
                members = await self._members()
        except TimeoutError:
            # Refreshed, but the members cannot be read in time (a saturated replica or
            # server): keep what is held and rebalance on a later heartbeat, so that the
            # next refresh is not late.
            log.warning("lease heartbeat: members not read in time; not rebalancing now")
            return
        owners = assignment(self._partitions, members)
        wanted = {p for p, member in owners.items() if member == self.me}
        for partition in sorted(set(self._leases) - wanted):
            self._hand_back(partition, released)
        for partition in sorted(wanted - set(self._leases) - set(self._handing_back)):
            revision = await self._kv.create(_key(partition), self.me.encode())
            if revision is None:
                continue  # its previous owner has not let go yet: next heartbeat
            self._leases[partition] = _Lease(revision, started + self._ttl - self.heartbeat)
            log.info("partition %d acquired", partition, extra={"replica": self.me})
            await acquired(partition)

    async def release_all(self, released: PartitionCallback) -> None:
        """Hand every partition back at once: their workers finish their batches
        together, within the leases' validity (one after the other they might not)."""
        for partition in sorted(self._leases):
            self._hand_back(partition, released)
        await self.handed_back()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._kv.delete(f"member.{self.me}")

    async def handed_back(self) -> None:
        """Wait until the partitions being handed back are."""
        await asyncio.gather(*self._handing_back.values())

    def _hand_back(self, partition: int, released: PartitionCallback) -> None:
        if partition not in self._handing_back:
            task = asyncio.create_task(self._release(partition, released))
            self._handing_back[partition] = task
            task.add_done_callback(lambda _: self._handing_back.pop(partition, None))

    async def _release(self, partition: int, released: PartitionCallback) -> None:
        """Stop the partition's worker (it finishes its batch: written and acked), then
        delete the lease if it is still ours, so the next owner need not wait for it."""
        await released(partition)
        lease = self._leases.pop(partition, None)
        if lease is None:
            return  # lost meanwhile: nothing of ours to delete
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._kv.delete(_key(partition), last=lease.revision)
        log.info("partition %d released", partition, extra={"replica": self.me})

    async def _members(self) -> list[str]:
        keys = await self._kv.keys("member.*")
        members = {key.split(".", 1)[1] for key in keys}
        return sorted(members | {self.me})


def _key(partition: int) -> str:
    return f"partition.{partition}"
