"""``python -m avatar_agent [start|local]``.

``start`` runs the LiveKit worker (needs ``LIVEKIT_URL``/``_API_KEY``/``_API_SECRET``);
``local`` runs one scripted conversation in-process without LiveKit. With no argument:
``start`` when ``LIVEKIT_URL`` is set, else ``local``. Configuration errors stop the
process at once with the variable's name.
"""

from __future__ import annotations

import asyncio
import os
import sys

from avatar_shared.config import ConfigError, LogSettings, load_or_exit
from avatar_shared.logs import configure_logging


def main() -> None:
    mode = (
        sys.argv[1]
        if len(sys.argv) > 1
        else ("start" if os.environ.get("LIVEKIT_URL") else "local")
    )
    if mode not in ("start", "local"):
        raise SystemExit(f"usage: python -m avatar_agent [start|local] (got {mode!r})")
    logs = load_or_exit(LogSettings)
    if mode == "local":  # the worker's runner installs its own JSON logging
        configure_logging("avatar-agent", logs.level, logs.format)

    from avatar_agent import local, worker
    from avatar_agent.runtime import AGENT_IDENTITY, runtime
    from avatar_shared.bus import check_credentials

    try:
        rt = runtime()  # fail fast in the parent, before any job process starts
        rt.settings.check(hears_user=mode == "start")  # the local run types the user's turns
        asyncio.run(check_credentials(rt.nats, identity=AGENT_IDENTITY))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if mode == "local":
        asyncio.run(local.run())
        return
    sys.argv = [sys.argv[0], "start", "--log-level", logs.level]
    worker.run()


if __name__ == "__main__":
    main()
