"""Process lifecycle: turn SIGTERM/SIGINT into an event a service awaits before draining.

Kubernetes sends SIGTERM and waits ``terminationGracePeriodSeconds``; a service stops
taking new work when :func:`stop_on_signals` fires, drains (NATS, HTTP), then exits.
"""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals(
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> asyncio.Event:
    """An event set by the first of ``signals``; call from within the running loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    return stop
