"""`make run` (scripts/devstack.py) as a process for end-to-end tests, on free ports."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.devstack import SERVICES
from tests.support.nats_server import free_port

ROOT = Path(__file__).parents[2]


#: The documented service ports (scripts/devstack.py), which the offset shifts.
_PORTS = sorted(p for s in SERVICES for p in (s.port, *s.side_ports.values()))


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral ports begin (bind(0), outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_offset() -> int:
    """An offset that puts every service on a free port below the ephemeral range, where
    no free port drawn for NATS or a double, and no outgoing connection, can land."""
    highest = _ephemeral_start() - (_PORTS[-1] - _PORTS[0]) - 1
    while True:
        offset = random.randrange(10_000, highest) - _PORTS[0]  # noqa: S311 (not secret)
        if all(_bindable(port + offset) for port in _PORTS):
            return offset


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
    """The stack with its output piped, its services on free ports below the ephemeral
    range (:func:`free_offset`), NATS on ephemeral ones."""
    offset = offset if offset is not None else free_offset()
    nats_port = nats_port or free_port()
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
