"""Run the local stack: a JetStream-enabled nats-server and every service that exists.

Each process's output is prefixed with its name. Ctrl-C (or SIGTERM) stops the services
in reverse start order with SIGTERM, so they drain as they would in Kubernetes, then
NATS. If any process exits on its own, during start-up or later, that is reported at
once with its exit status and its last lines, the whole stack is stopped and the exit
status is non-zero. ``--only NAME`` starts one service and what it depends on.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from avatar_shared.bus import identities

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 40.0
LAST_LINES = 15  # of a process that exits, shown again


#: Local-only LiveKit credentials; start a LiveKit dev server with the same pair
#: (`livekit-server --dev --keys "devkey: <secret>"`) to join rooms for real.
LOCAL_LIVEKIT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "avatar-backend-local-development-only-secret",
}


@dataclass(frozen=True)
class Service:
    name: str
    module: str
    port: int
    health_path: str = "/healthz"
    needs_nats: bool = True
    #: Its other ports, by setting (``METRICS_PORT``: Prometheus; ``PROBE_PORT``: probes).
    side_ports: dict[str, int] = field(default_factory=dict)
    #: Defaults for a local run; variables already set in the environment win.
    defaults: dict[str, str] = field(default_factory=dict)


#: Every service of the system, with its documented default port. Only those whose
#: package is installed are started: a service that does not exist yet is not faked.
LOCAL_AUTH = {
    "AUTH_POLICY_FILE": str(ROOT / "deploy" / "local" / "policy.toml"),
    "AUTH_ANONYMOUS": "true",
}
LOCAL_ORIGINS = '["http://localhost:3000", "http://localhost:5173"]'

SERVICES = (
    Service(
        "token",
        "avatar_token",
        8100,
        side_ports={"METRICS_PORT": 8101},
        defaults={**LOCAL_LIVEKIT, **LOCAL_AUTH, "TOKEN_CORS_ORIGINS": LOCAL_ORIGINS},
    ),
    Service(
        "bundles",
        "avatar_bundles",
        8200,
        side_ports={"METRICS_PORT": 8201},
        defaults={
            **LOCAL_AUTH,
            "BUNDLES_BACKEND": "directory",
            "BUNDLES_DIRECTORY": str(ROOT / "services" / "bundles" / "samples"),
            "BUNDLES_CORS_ORIGINS": LOCAL_ORIGINS,
        },
    ),
    # No LIVEKIT_URL locally: the actions service runs as a dry run and logs each packet.
    # The room inspector at :8300/inspector, without a key on this machine only.
    Service(
        "actions",
        "avatar_actions",
        8300,
        defaults={
            **LOCAL_AUTH,
            "ACTIONS_INSPECTOR": "true",
            "ACTIONS_INSPECTOR_ANONYMOUS": "true",
            "AVATAR_DEV_MODE": "true",
        },
    ),
    # No LiveKit and no keys locally: one scripted conversation with the demo providers,
    # in-process (`python -m avatar_agent local`); its events reach the actions service.
    Service(
        "agent",
        "avatar_agent",
        8400,
        health_path="/",
        side_ports={"PROBE_PORT": 8401},
        defaults={
            "AGENT_AVATARS_FILE": str(ROOT / "deploy" / "local" / "avatars.toml"),
            "AGENT_LLM": "demo",
            "AGENT_TTS": "demo",
            # the scripted user falls silent after its turns: the session ends as inactive
            "AGENT_INACTIVITY_TIMEOUT_SECONDS": "15",
        },
    ),
)


def available(services: tuple[Service, ...]) -> list[Service]:
    """Services that can run: their package has a process entry point (``__main__``)."""
    found = []
    for service in services:
        if importlib.util.find_spec(service.module) is None:
            continue
        if importlib.util.find_spec(f"{service.module}.__main__") is not None:
            found.append(service)
    return found


def answers(url: str) -> bool:
    """One probe: ``url`` answers 200 (blocking; run in a thread)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:  # not ready yet (e.g. 503)
        exc.close()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        pass
    return False


async def wait_http(url: str) -> None:
    """Poll ``url`` until it answers 200."""
    while not await asyncio.to_thread(answers, url):
        await asyncio.sleep(0.1)


async def pipe(name: str, stream: asyncio.StreamReader, last: deque[str]) -> None:
    width = max(len(s.name) for s in SERVICES)
    while line := await stream.readline():
        text = line.decode(errors="replace")
        last.append(text)
        sys.stdout.write(f"{name:<{width}} | {text}")
        sys.stdout.flush()


class Stack:
    def __init__(self) -> None:
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self.pipes: dict[str, asyncio.Task[None]] = {}
        self.last: dict[str, deque[str]] = {}

    async def start(
        self, name: str, argv: list[str], env: dict[str, str], defaults: dict[str, str]
    ) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=defaults | dict(os.environ) | env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        assert proc.stdout is not None
        self.procs.append((name, proc))
        self.last[name] = deque(maxlen=LAST_LINES)
        self.pipes[name] = asyncio.create_task(pipe(name, proc.stdout, self.last[name]))

    async def ready(self, name: str, url: str, wait: float, stopping: asyncio.Event) -> bool:
        """Wait until ``name`` answers at ``url``; False (reported) if it exits first, does
        not answer within ``wait`` seconds, or the stack is being stopped."""
        proc = dict(self.procs)[name]
        waits = {
            asyncio.create_task(wait_http(url)): "answered",
            asyncio.create_task(proc.wait()): "exited",
            asyncio.create_task(stopping.wait()): "stopping",
        }
        done, pending = await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        first = waits[done.pop()] if done else "timed out"
        if first == "exited":
            await self.report_exit(name, "during start-up")
        elif first == "timed out":
            print(f"error: {name} did not become healthy at {url} in {wait:.0f}s", flush=True)
        return first == "answered"

    async def report_exit(self, name: str, when: str) -> None:
        """Say that ``name`` exited, with its status and its last lines."""
        proc = dict(self.procs)[name]
        await asyncio.gather(self.pipes[name], return_exceptions=True)  # its output, all read
        print(f"error: {name} exited with status {proc.returncode} {when}", flush=True)
        if self.last[name]:
            print(f"its last lines:\n{''.join(self.last[name])}", end="", flush=True)

    async def first_exit(self) -> str:
        waits = {asyncio.create_task(p.wait()): n for n, p in self.procs}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        return waits[done.pop()]

    async def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.returncode is not None:
                continue
            print(f"stopping {name}", flush=True)
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                print(f"{name} did not stop in {STOP_TIMEOUT:.0f}s; killing it", flush=True)
                proc.kill()
                await proc.wait()
        await asyncio.gather(*self.pipes.values(), return_exceptions=True)


async def run(args: argparse.Namespace) -> int:
    services = available(SERVICES)
    if args.only and args.only != "nats":
        services = [s for s in services if s.name == args.only]
        if not services:
            names = ", ".join(s.name for s in available(SERVICES)) or "none yet"
            print(f"error: no service named {args.only!r} exists (available: {names})")
            return 2
    needs_nats = args.only in (None, "nats") or any(s.needs_nats for s in services)
    if args.only == "nats":
        services = []

    stack = Stack()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    nats_url = f"nats://127.0.0.1:{args.nats_port}"
    keys = Path(args.data_dir) / "nats-keys"
    try:
        if needs_nats:
            binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
            store = Path(args.data_dir) / "nats"
            store.mkdir(parents=True, exist_ok=True)
            # each service's identity, as in production; admin.nk is yours (nats CLI)
            config = identities.server_config(keys)
            argv = [binary, "-c", str(config), "-js", "-a", "127.0.0.1"]
            argv += ["-p", str(args.nats_port), "-m", str(args.monitor_port), "-sd", str(store)]
            await stack.start("nats", argv, {}, {})
            health = f"http://127.0.0.1:{args.monitor_port}/healthz?js-enabled-only=true"
            if not await stack.ready("nats", health, 30, stopping):
                return 0 if stopping.is_set() else 1
            print(f"nats ready at {nats_url} (JetStream data in {store})", flush=True)
        for service in services:
            port = service.port + args.port_offset
            prefix = service.name.upper()
            # Loopback only: the local stack allows things no network should reach.
            env = {"NATS_URL": nats_url, f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port)}
            if service.name in identities.IDENTITIES:  # its own NATS identity
                env["NATS_NKEY_SEED_FILE"] = str(keys / f"{service.name}.nk")
            for setting, side_port in service.side_ports.items():
                env[f"{prefix}_{setting}"] = str(side_port + args.port_offset)
            argv = [sys.executable, "-m", service.module]
            await stack.start(service.name, argv, env, service.defaults)
            url = f"http://127.0.0.1:{port}{service.health_path}"
            if not await stack.ready(service.name, url, 60, stopping):
                return 0 if stopping.is_set() else 1
            print(f"{service.name} ready on http://127.0.0.1:{port}", flush=True)
        missing = [s.name for s in SERVICES if s not in available(SERVICES)]
        if missing and not args.only:
            print(f"not started (not built yet): {', '.join(missing)}", flush=True)
        if any(s.name == "actions" for s in services):
            inspector = f"http://127.0.0.1:{8300 + args.port_offset}/inspector"
            print(f"room inspector: {inspector}", flush=True)
        print("stack ready; Ctrl-C to stop", flush=True)

        exited = asyncio.create_task(stack.first_exit())
        stop = asyncio.create_task(stopping.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            await stack.report_exit(exited.result(), "unexpectedly; stopping the stack")
            return 1
        exited.cancel()
        return 0
    finally:
        await stack.stop()
        print("stack stopped", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="start one service (and NATS if it needs it), or 'nats'")
    parser.add_argument("--nats-port", type=int, default=4222)
    parser.add_argument("--monitor-port", type=int, default=8222)
    parser.add_argument("--data-dir", default=str(ROOT / ".data"))
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to every service port (tests)"
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
