"""`make run` (scripts/devstack.py) as a process for end-to-end tests, on free ports."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.devstack import SERVICES
from tests.support.nats_server import free_port

ROOT = Path(__file__).parents[2]


#: The block of documented service ports, before the offset.
_PORTS = [p for s in SERVICES for p in (s.port, *s.side_ports.values())]
SERVICE_PORTS = range(min(_PORTS), max(_PORTS) + 1)


def _free_port_outside(taken: range) -> int:
    while (port := free_port()) in taken:
        pass
    return port


@dataclass(frozen=True)
class Devstack:
    proc: asyncio.subprocess.Process
    nats_port: int
    offset: int  # added to every documented service port


async def start_devstack(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    nats_port: int | None = None,
    offset: int | None = None,
) -> Devstack:
    """The stack with its output piped; ephemeral ports lie above the documented ones,
    so the default offset puts every service on a free one. NATS's ports are drawn
    outside the services' shifted block, which a free port may otherwise fall into."""
    offset = offset if offset is not None else free_port() - SERVICE_PORTS.start
    taken = range(SERVICE_PORTS.start + offset, SERVICE_PORTS.stop + offset)
    nats_port = nats_port or _free_port_outside(taken)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "devstack.py"),
        f"--nats-port={nats_port}",
        f"--monitor-port={_free_port_outside(taken)}",
        f"--data-dir={data_dir}",
        f"--port-offset={offset}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return Devstack(proc, nats_port, offset)


async def read_until(
    proc: asyncio.subprocess.Process, marker: str, out: list[str], *, within: float = 60.0
) -> str:
    """Collect output lines into ``out`` until one holds ``marker`` (an earlier one
    counts); that line."""
    assert proc.stdout is not None
    if seen := next((line for line in out if marker in line), None):
        return seen
    async with asyncio.timeout(within):
        while line := (await proc.stdout.readline()).decode():
            out.append(line)
            if marker in line:
                return line
    raise AssertionError(f"{marker!r} never printed:\n{''.join(out)}")
