"""`make run` (scripts/devstack.py) as a process for end-to-end tests, on free ports."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.nats_server import free_port

ROOT = Path(__file__).parents[2]


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
    so the default offset puts every service on a free one."""
    nats_port = nats_port or free_port()
    offset = offset if offset is not None else free_port() - 8100
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "devstack.py"),
        f"--nats-port={nats_port}",
        f"--monitor-port={free_port()}",
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
