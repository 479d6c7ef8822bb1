"""Bundle service: cache-hit latency at a fixed rate, peak throughput, upstream calls.

Real processes on loopback: a nats-server with JetStream (the shared cache), the
ZeroWeight API double serving a 100 KB bundle, and the bundle service (one uvicorn
worker) with the zeroweight backend, anonymous access, tracing on (spans not exported),
request limits raised out of the way (one load generator is one address).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from scripts.bench import loadgen
from scripts.bench.report import write_section
from tests.support.nats_server import free_port, start_nats_process
from tests.support.zeroweight import API_KEY

ROOT = Path(__file__).resolve().parents[2]
PATH = "/api/avatars/bundle/hot-avatar"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        return bytes(response.read())


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    policy = tmp / "policy.toml"
    policy.write_text('[[rules]]\nprincipals = ["anonymous"]\navatars = ["hot-avatar"]\n')
    zw_port, port = free_port(), free_port()
    nats = start_nats_process()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.zeroweight", str(zw_port)], cwd=ROOT
        ),
    ]
    try:
        _wait_http(f"http://127.0.0.1:{zw_port}/_double/stats")
        env = os.environ | {
            "NATS_URL": nats.url,
            "NATS_NKEY_SEED_FILE": str(nats.settings("bundles").nkey_seed_file),
            "BUNDLES_PORT": str(port),
            "BUNDLES_METRICS_PORT": str(free_port()),
            "BUNDLES_HOST": "127.0.0.1",
            # One load generator on one address: its budget must not be what is measured.
            "BUNDLES_RATE_PER_IP": "1000000/second",
            "BUNDLES_BACKEND": "zeroweight",
            "BUNDLES_ZEROWEIGHT_URL": f"http://127.0.0.1:{zw_port}",
            "BUNDLES_ZEROWEIGHT_API_KEY": API_KEY,
            "AUTH_POLICY_FILE": str(policy),
            "AUTH_ANONYMOUS": "true",
            "LOG_LEVEL": "WARNING",
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "avatar_bundles"], env=env, cwd=ROOT))
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        _get(f"http://127.0.0.1:{port}{PATH}")  # the one miss

        paced = asyncio.run(
            loadgen.run_rate(
                "127.0.0.1", port, PATH, headers={}, rate=args.rate, seconds=args.seconds
            )
        )
        peak = asyncio.run(
            loadgen.run("127.0.0.1", port, PATH, headers={}, concurrency=16, seconds=args.seconds)
        )
        calls = json.loads(_get(f"http://127.0.0.1:{zw_port}/_double/stats"))["calls"]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
        nats.stop()

    if paced.errors or peak.errors:
        raise RuntimeError(f"non-2xx answers: {paced.errors + peak.errors}")
    served = 1 + paced.requests + peak.requests
    per_thousand = calls / served * 1000
    verdict = "met" if paced.p99_ms <= 5.0 else "NOT met"

    def row(label: str, r: loadgen.Result) -> str:
        return f"| {label} | {r.requests} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rps:.0f} |"

    body = "\n".join(
        [
            "Hot avatar (one 100 KB bundle, cached after the first request), anonymous access,",
            "tracing on (spans not exported), one uvicorn worker; the load generator shares",
            "the machine. Open-loop latencies count from when each request was due, so",
            "queueing is included.",
            "",
            "| Load | Requests | p50 (ms) | p99 (ms) | Requests/s |",
            "| --- | --- | --- | --- | --- |",
            row(f"open loop at {args.rate:.0f} req/s, {args.seconds:.0f} s", paced),
            row(f"closed loop, 16 connections, {args.seconds:.0f} s", peak),
            "",
            f"Upstream (ZeroWeight double) calls: {calls} for {served} requests "
            f"= {per_thousand:.2f} per 1,000 requests.",
            f"Cache-hit p99 at {args.rate:.0f} req/s: {paced.p99_ms:.2f} ms "
            f"(target <= 5 ms: {verdict}).",
        ]
    )
    write_section("bundles", "make bench-bundles", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
