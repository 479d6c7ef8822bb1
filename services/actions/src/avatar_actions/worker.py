"""Consumption: one worker per owned partition, each running its engine's batch cycle.

:func:`run` keeps this replica's leases (:mod:`avatar_actions.ownership`) and starts a
:func:`consume_partition` task for each partition it acquires, stopping it when the
partition is released. A partition's worker recreates its consumer (so whatever the
previous owner did not ack comes back first, in stream order), resumes its engine from
the stored state, and then, while it holds the lease, takes what has arrived (waiting
at most until the engine's next timer) and runs :meth:`Engine.cycle` on it. Stopping,
it settles the batch in hand: written and acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors

from avatar_actions.engine import Engine
from avatar_actions.ownership import Ownership
from avatar_actions.ports import WorkFeed

log = logging.getLogger(__name__)
_MAX_WAIT = 1.0
_MIN_WAIT = 0.001
_PAUSE = 0.1  # between checks of a lease that was not refreshed lately


async def consume_partition(
    engine: Engine,
    feed: WorkFeed,
    holds: Callable[[], bool],
    stop: asyncio.Event,
) -> None:
    await feed.start()
    try:
        await engine.resume()
        while not stop.is_set():
            if not holds():  # lease not refreshed lately: pause, never overlap
                await asyncio.sleep(_PAUSE)
                continue
            try:
                deadline = engine.next_deadline()
                wait = _MAX_WAIT if deadline is None else deadline - time.time()
                # A gesture due in 200 ms is released on time however quiet the stream is.
                await engine.cycle(await feed.take(min(_MAX_WAIT, max(_MIN_WAIT, wait))))
            except (nats.errors.Error, TimeoutError) as exc:
                # NATS restarting or unreachable: nothing unacked is lost.
                log.warning("partition %d cycle failed (%s)", engine.partition, type(exc).__name__)
                await asyncio.sleep(_MAX_WAIT)
        await engine.settle()  # stopping: the last batch is written and acked
    finally:
        await feed.stop()


#: Starts a partition's worker; returns once its consumer exists (the task runs on).
PartitionStarter = Callable[[int, asyncio.Event], Awaitable[asyncio.Task[None]]]


async def run(ownership: Ownership, start: PartitionStarter, stop: asyncio.Event) -> None:
    """Consume the partitions this replica owns until ``stop``; then hand them back."""
    workers: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def watch(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not failed.done():
            failed.set_exception(task.exception())  # type: ignore[arg-type]

    async def acquired(partition: int) -> None:
        stopping = asyncio.Event()
        task = await start(partition, stopping)
        task.add_done_callback(watch)
        workers[partition] = (stopping, task)

    async def released(partition: int) -> None:
        stopping, task = workers.pop(partition)
        stopping.set()  # finishes the batch in hand: written and acked
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
