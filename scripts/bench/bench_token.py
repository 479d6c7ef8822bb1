"""Token service throughput and latency against the usual hand-written token server.

Both run as real uvicorn processes (one worker each) on loopback and are driven in turn
by the same load generator, alternating, in the same run: first closed loop (capacity),
then open loop at half the baseline's measured capacity (latency under ordinary load).
The token service runs as deployed: API-key authentication, the policy, rate limiting
(limits set high enough not to refuse), the hardening (body limit, header deadline,
response guard) and tracing exported over OTLP/HTTP to a local sink (its own process,
standing in for the collector). Targets are same-run ratios: throughput >= 0.6x the
baseline's, and open-loop p99 <= 2x the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from avatar_shared.web.auth import hash_api_key
from scripts.bench import loadgen
from scripts.bench.report import write_section
from tests.support.nats_server import start_nats_process

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "bench-key-0123456789abcdef"
LIVEKIT = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "benchkey",
    "LIVEKIT_API_SECRET": "bench-secret-that-is-long-enough-for-hs256-0123456789",
}
POLICY = f"""
[[api_keys]]
name = "bench"
sha256 = "{hash_api_key(API_KEY)}"

[[rules]]
principals = ["api_key:bench"]
avatars = ["*"]
"""
PATH = "/api/livekit/token?avatar_id=demo-avatar&name=Bench"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _start(argv: list[str], env: dict[str, str], ready: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, env=os.environ | env, cwd=ROOT)
    _wait(ready)
    return proc


async def _capacity(port: int, headers: dict[str, str], args: argparse.Namespace) -> loadgen.Result:
    await loadgen.run(
        "127.0.0.1", port, PATH, headers=headers, concurrency=args.concurrency, seconds=2
    )  # warm-up
    return await loadgen.run(
        "127.0.0.1", port, PATH, headers=headers, concurrency=args.concurrency, seconds=args.seconds
    )


async def _paced(
    port: int, headers: dict[str, str], rate: float, args: argparse.Namespace
) -> loadgen.Result:
    return await loadgen.run_rate(
        "127.0.0.1", port, PATH, headers=headers, rate=rate, seconds=args.seconds
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    nats = start_nats_process()  # the token service's quotas and audit trail live on NATS
    sink_port = _free_port()
    sink = subprocess.Popen(
        [sys.executable, "-m", "scripts.bench.otlp_sink", str(sink_port)], cwd=ROOT
    )
    policy = Path(tempfile.mkdtemp()) / "policy.toml"
    policy.write_text(POLICY, encoding="utf-8")

    ours_port, base_port = _free_port(), _free_port()
    ours = _start(
        [sys.executable, "-m", "avatar_token"],
        LIVEKIT
        | {
            "TOKEN_PORT": str(ours_port),
            "TOKEN_METRICS_PORT": str(_free_port()),
            "TOKEN_HOST": "127.0.0.1",
            "AUTH_POLICY_FILE": str(policy),
            "TOKEN_RATE_PER_IP": "1000000/second",
            "TOKEN_RATE_PER_PRINCIPAL": "1000000/second",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "LOG_LEVEL": "WARNING",
            "NATS_URL": nats.url,
            "NATS_NKEY_SEED_FILE": str(nats.settings("token").nkey_seed_file),
        },
        f"http://127.0.0.1:{ours_port}/healthz",
    )
    base = _start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "scripts.bench.baseline_token_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(base_port),
            # The token service's own server stack: asyncio and h11 (its image has
            # neither uvloop nor httptools, which uvicorn would otherwise pick up here).
            "--loop",
            "asyncio",
            "--http",
            "h11",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        LIVEKIT,
        f"http://127.0.0.1:{base_port}/docs",
    )
    servers: tuple[tuple[str, int, dict[str, str]], ...] = (
        ("token service (auth + policy + tracing)", ours_port, {"X-API-Key": API_KEY}),
        ("baseline (AccessToken only)", base_port, {}),
    )
    try:
        capacity: list[tuple[int, str, loadgen.Result]] = []
        for round_ in range(1, args.rounds + 1):
            for name, port, headers in servers:
                result = asyncio.run(_capacity(port, headers, args))
                _report(round_, "closed loop", name, result)
                capacity.append((round_, name, result))
        base_rps = _mean(r.rps for _, n, r in capacity if n.startswith("baseline"))
        rate = base_rps / 2
        paced: list[tuple[int, str, loadgen.Result]] = []
        for round_ in range(1, args.rounds + 1):
            for name, port, headers in servers:
                result = asyncio.run(_paced(port, headers, rate, args))
                _report(round_, f"open loop at {rate:.0f}/s", name, result)
                paced.append((round_, name, result))
    finally:
        for proc in (ours, base):
            proc.terminate()
            proc.wait(timeout=30)
        sink.terminate()
        sink.wait()
        nats.stop()

    ours_rps = _mean(r.rps for _, n, r in capacity if n.startswith("token"))
    throughput = ours_rps / base_rps
    ours_p99 = _mean(r.p99_ms for _, n, r in paced if n.startswith("token"))
    base_p99 = _mean(r.p99_ms for _, n, r in paced if n.startswith("baseline"))
    latency = ours_p99 / base_p99

    def rows(label: str, results: list[tuple[int, str, loadgen.Result]]) -> list[str]:
        return [
            f"| {rnd} | {label} | {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
            for rnd, name, r in results
        ]

    table = [
        "| Round | Load | Server | Requests/s | p50 (ms) | p99 (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
        *rows(f"closed loop, {args.concurrency} connections", capacity),
        *rows(f"open loop, {rate:.0f} req/s", paced),
    ]
    throughput_verdict = "met" if throughput >= 0.6 else "NOT met"
    latency_verdict = "met" if latency <= 2.0 else "NOT met"
    body = (
        f"`GET {PATH.split('?')[0]}` with an API key. Closed loop: {args.concurrency} "
        f"keep-alive connections, {args.seconds:.0f} s per measurement after a 2 s warm-up. "
        f"Open loop: half the baseline's closed-loop rate ({rate:.0f} req/s) over 16 "
        f"connections for {args.seconds:.0f} s, latency counted from when each request was "
        f"due. Servers alternated {args.rounds} times per load. One uvicorn worker each, both "
        "on asyncio and h11 (the token image has neither uvloop nor httptools); the load "
        "generator shares the machine.\n\n"
        + "\n".join(table)
        + f"\n\nThroughput: {throughput:.2f}x the baseline's (target >= 0.6x: "
        f"{throughput_verdict}). Open-loop p99: {ours_p99:.2f} ms against {base_p99:.2f} ms, "
        f"{latency:.2f}x (target <= 2x: {latency_verdict}).\n"
    )
    write_section("token", "make bench-token", body)
    print(
        f"throughput {throughput:.2f}x ({throughput_verdict}), "
        f"open-loop p99 {latency:.2f}x ({latency_verdict})"
    )
    return 0


def _mean(values: Iterable[float]) -> float:
    found = list(values)
    return sum(found) / len(found)


def _report(round_: int, load: str, name: str, result: loadgen.Result) -> None:
    if result.errors:
        raise RuntimeError(f"{name}: {result.errors} non-2xx answers")
    print(
        f"round {round_} {load} {name}: {result.rps:.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
    )


if __name__ == "__main__":
    raise SystemExit(main())
