"""Consumption: one worker per owned partition, in batches, acked once durable.

:func:`run` keeps this replica's leases (:mod:`avatar_actions.ownership`) and starts a
:class:`PartitionWorker` for each partition it acquires, stopping it when the partition
is released. A worker takes what has arrived (up to ``batch`` messages, from a
:class:`~avatar_actions.feed.PullFeed`; when nothing has, it waits for the first one, at
most until its engine's next deadline), applies the
messages in stream order, releases what the timers make due, and sends. Then it waits
for the previous batch's writes, acks that batch, and starts this batch's writes: the
next batch is taken and applied while they are in flight, and a batch is acked only
once its effect is durable. A
message whose handler fails is nacked with the rest of its batch, so the partition's
order holds on redelivery. Taking a partition over recreates its consumer, so the
previous owner's unacked messages come back first, in order; the new engine starts
from stored state and checks the sent record for everything its first batches send.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

import nats.errors
import nats.js
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from avatar_actions import partitions
from avatar_actions.engine import Engine, Persisting
from avatar_actions.feed import PullFeed
from avatar_actions.ownership import Ownership
from avatar_shared.bus import NAK_DELAY_SECONDS, Bus

log = logging.getLogger(__name__)
_MAX_WAIT = 1.0
_MIN_WAIT = 0.001
_PAUSE = 0.1  # between checks of a lease that was not refreshed lately

EngineFactory = Callable[[int], Engine]


class PartitionWorker:
    def __init__(
        self,
        bus: Bus,
        engine: Engine,
        *,
        consumer: str,
        stream: str,
        holds: Callable[[], bool],
        batch: int = 256,
    ) -> None:
        self.engine = engine
        self._bus = bus
        self._consumer = consumer
        self._stream = stream
        self._holds = holds
        self._batch = batch
        self._writing: tuple[Persisting, list[Msg]] | None = None
        self.stop = asyncio.Event()

    async def run(self) -> None:
        prefix = self._consumer
        partition = self.engine.partition
        name = partitions.consumer_name(prefix, partition)
        # A fresh consumer on a work queue starts at the oldest message still there: what
        # the previous owner did not ack comes first, in stream order, before anything
        # newer (an old consumer would hold those back until their ack wait ran out).
        with contextlib.suppress(NotFoundError):
            await self._bus.js.delete_consumer(self._stream, name)
        await self._bus.ensure_consumer(self._stream, partitions.consumer_config(prefix, partition))
        feed = PullFeed(self._bus.nc, self._stream, name, batch=self._batch)
        await feed.start()
        try:
            await self.engine.resume()
            while not self.stop.is_set():
                if not self._holds():  # lease not refreshed lately: pause, never overlap
                    await asyncio.sleep(_PAUSE)
                    continue
                try:
                    await self._step(feed, name)
                except (nats.errors.Error, TimeoutError) as exc:
                    # NATS restarting or unreachable: nothing unacked is lost.
                    log.warning("partition %d step failed (%s)", partition, type(exc).__name__)
                    await asyncio.sleep(_MAX_WAIT)
            await self._settle()  # stopping: the last batch is written and acked
        finally:
            await feed.stop()

    async def _step(self, feed: PullFeed, name: str) -> None:
        deadline = self.engine.next_deadline()
        wait = _MAX_WAIT if deadline is None else deadline - time.time()
        # A gesture due in 200 ms is released on time however quiet the stream is.
        messages = await feed.take(min(_MAX_WAIT, max(_MIN_WAIT, wait)))
        handled: list[Msg] = []
        for index, msg in enumerate(messages):
            redelivered = msg.metadata.num_delivered > 1
            outcome = await self._bus.process(
                msg,
                functools.partial(self.engine.apply, redelivered=redelivered),
                consumer=name,
                subject=partitions.event_subject(msg.subject),
                ack=False,
            )
            if outcome == "ok":
                handled.append(msg)
            elif outcome == "error":  # later events of its rooms must not overtake it
                for later in messages[index + 1 :]:
                    await later.nak(delay=NAK_DELAY_SECONDS)
                break
        await self.engine.release_due()
        changed = await self.engine.send()  # packets go out before anything is written
        await self._settle()  # the previous batch's writes, then its acks
        self._writing = (self.engine.persist(changed), handled)

    async def _settle(self) -> None:
        """Wait for the batch being written; ack its messages once it is durable."""
        if self._writing is None:
            return
        (persisting, handled), self._writing = self._writing, None
        await persisting.wait()  # raises: its messages stay unacked and come back
        for msg in handled:
            await msg.ack()


async def run(
    bus: Bus,
    ownership: Ownership,
    engines: EngineFactory,
    stop: asyncio.Event,
    *,
    consumer: str,
    stream: str = partitions.WORK_STREAM,
    batch: int = 256,
) -> None:
    """Consume the partitions this replica owns until ``stop``; then hand them back."""
    workers: dict[int, tuple[PartitionWorker, asyncio.Task[None]]] = {}
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def watch(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not failed.done():
            failed.set_exception(task.exception())  # type: ignore[arg-type]

    async def acquired(partition: int) -> None:
        worker = PartitionWorker(
            bus,
            engines(partition),
            consumer=consumer,
            stream=stream,
            holds=lambda: ownership.holds(partition),
            batch=batch,
        )
        task = asyncio.create_task(worker.run(), name=f"partition-{partition}")
        task.add_done_callback(watch)
        workers[partition] = (worker, task)

    async def released(partition: int) -> None:
        worker, task = workers.pop(partition)
        worker.stop.set()  # finishes the batch in hand: committed and acked
        await task

    log.info("consuming agent events as replica %s", ownership.me)
    leases = asyncio.create_task(ownership.run(stop, acquired, released))
    try:
        done, _ = await asyncio.wait({leases, failed}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # abrupt, like a crash: nothing released or acked
        leases.cancel()
        for _, task in workers.values():
            task.cancel()
        raise
    if failed in done:  # a worker died: stop the others, then re-raise (the process ends)
        stop.set()
        await leases
        failed.result()
    leases.result()
