"""One of our services as a real process, with its memory in view.

:func:`running_service` starts ``python -m <module>`` with the given environment, waits
(asynchronously, so doubles served by the test's event loop keep answering) until its
readiness path answers 200, and stops it with SIGTERM at the end. :class:`ServiceProcess`
reads the process's resident memory from ``/proc``: :meth:`ServiceProcess.reset_peak`
clears the kernel's high-water mark (``clear_refs``), so :meth:`ServiceProcess.peak_mib`
is the peak since then.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.nats_server import NatsServer, free_port

#: The LiveKit secret the token service processes of the tests sign with.
LIVEKIT_SECRET = "a-long-and-entirely-fake-livekit-secret-0123"


def token_env(nats: NatsServer, port: int, policy: Path, **extra: str) -> dict[str, str]:
    """The token service as a process on loopback: its own NATS identity, a LiveKit it
    never calls, a per-IP limit high enough not to refuse, no telemetry; ``extra`` adds
    or overrides variables."""
    return {
        "NATS_URL": nats.url,
        "NATS_NKEY_SEED_FILE": str(nats.settings("token").nkey_seed_file),
        "TOKEN_HOST": "127.0.0.1",
        "TOKEN_PORT": str(port),
        "TOKEN_METRICS_PORT": str(free_port()),
        "TOKEN_RATE_PER_IP": "100000/minute",
        "LIVEKIT_URL": "ws://127.0.0.1:7880",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": LIVEKIT_SECRET,
        "AUTH_POLICY_FILE": str(policy),
        "OTEL_SDK_DISABLED": "true",
    } | extra


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    env: dict[str, str]

    @property
    def metrics_url(self) -> str:
        """Its Prometheus port (the ``*_METRICS_PORT`` it was started with)."""
        port = next(v for k, v in self.env.items() if k.endswith("_METRICS_PORT"))
        return f"http://127.0.0.1:{port}"

    def threads(self) -> int:
        return int(self._status("Threads"))

    def _status(self, field: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                value = int(line.split()[1])
                return value / 1024 if line.endswith("kB") else value  # kB -> MiB
        raise RuntimeError(f"no {field} for process {self.proc.pid}")

    def rss_mib(self) -> float:
        return self._status("VmRSS")

    def peak_mib(self) -> float:
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _start(module: str, env: dict[str, str], url: str) -> ServiceProcess:
    log = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=dict(os.environ) | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(proc, url, log, env)


@asynccontextmanager
async def running_service(
    module: str, env: dict[str, str], url: str, ready_path: str = "/readyz"
) -> AsyncIterator[ServiceProcess]:
    service = _start(module, env, url)
    proc = service.proc
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{module} exited at start:\n{service.log()}")
                try:
                    if (await client.get(url + ready_path, timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        await asyncio.to_thread(service.log_path.unlink, missing_ok=True)
