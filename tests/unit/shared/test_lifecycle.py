import asyncio
import os
import signal

from avatar_shared.lifecycle import stop_on_signals


async def test_sigterm_sets_the_stop_event() -> None:
    loop = asyncio.get_running_loop()
    stop = stop_on_signals((signal.SIGUSR1,))
    try:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGUSR1)
        async with asyncio.timeout(5):
            await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
