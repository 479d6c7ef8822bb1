"""Token service throughput and latency against the usual hand-written token server.

Both run as real uvicorn processes (one worker each) on loopback and are driven in turn
by the same closed-loop load generator. The token service runs as deployed: API-key
authentication, the policy, rate limiting (limits set high enough not to refuse), and
tracing exported over OTLP/HTTP to a local sink (its own process, standing in for the
collector).
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
from pathlib import Path

from avatar_shared.web.auth import hash_api_key
from scripts.bench import loadgen
from scripts.bench.report import write_section

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


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def _start(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, env=os.environ | env, cwd=ROOT)
    _wait(port)
    return proc


async def _measure(port: int, headers: dict[str, str], args: argparse.Namespace) -> loadgen.Result:
    await loadgen.run(
        "127.0.0.1", port, PATH, headers=headers, concurrency=args.concurrency, seconds=2
    )  # warm-up
    return await loadgen.run(
        "127.0.0.1", port, PATH, headers=headers, concurrency=args.concurrency, seconds=args.seconds
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

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
            "TOKEN_HOST": "127.0.0.1",
            "AUTH_POLICY_FILE": str(policy),
            "TOKEN_RATE_PER_IP": "1000000/second",
            "TOKEN_RATE_PER_PRINCIPAL": "1000000/second",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "LOG_LEVEL": "WARNING",
        },
        ours_port,
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
        base_port,
    )
    try:
        rows = []
        for round_ in range(1, args.rounds + 1):
            for name, port, headers in (
                ("token service (auth + policy + tracing)", ours_port, {"X-API-Key": API_KEY}),
                ("baseline (AccessToken only)", base_port, {}),
            ):
                result = asyncio.run(_measure(port, headers, args))
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} non-2xx answers")
                rows.append((round_, name, result))
                print(
                    f"round {round_} {name}: {result.rps:.0f} req/s, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                )
    finally:
        for proc in (ours, base):
            proc.terminate()
            proc.wait(timeout=30)
        sink.terminate()
        sink.wait()

    ours_rps = sum(r.rps for _, n, r in rows if n.startswith("token")) / args.rounds
    base_rps = sum(r.rps for _, n, r in rows if n.startswith("baseline")) / args.rounds
    ratio = ours_rps / base_rps
    table = [
        "| Round | Server | Requests/s | p50 (ms) | p99 (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    table += [
        f"| {rnd} | {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"
        for rnd, name, r in rows
    ]
    verdict = "met" if ratio >= 0.70 else "NOT met"
    body = (
        f"`GET {PATH.split('?')[0]}` with an API key, {args.concurrency} keep-alive connections, "
        f"{args.seconds:.0f} s per measurement after a 2 s warm-up, servers alternated "
        f"{args.rounds} times. One uvicorn worker each, both on asyncio and h11 (the token "
        "image has neither uvloop nor httptools); the load generator shares the machine.\n\n"
        + "\n".join(table)
        + f"\n\nToken service throughput: {ratio:.0%} of the baseline "
        f"(target >= 70%: {verdict}).\n"
    )
    write_section("token", "make bench-token", body)
    print(f"token service / baseline = {ratio:.0%} ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
