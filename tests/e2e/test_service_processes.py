"""Services as processes: bad configuration stops them with the variable's name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.nats_server import NatsServer, free_port

ROOT = Path(__file__).parents[2]
GOOD = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "a-long-and-entirely-fake-livekit-secret-0123",
    "AUTH_POLICY_FILE": str(ROOT / "deploy" / "local" / "policy.toml"),
    "TOKEN_PORT": "1",  # never reached: every case stops before serving
}


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "AUTH_", "TOKEN_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "avatar_token"],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"LIVEKIT_API_SECRET": None}, "LIVEKIT_API_SECRET: Field required"),
        (
            {"LIVEKIT_API_SECRET": "changeme"},
            "LIVEKIT_API_SECRET: Value error, is empty or a placeholder",
        ),
        ({"LIVEKIT_URL": "livekit.example.com"}, "LIVEKIT_URL: String should match pattern"),
        ({"TOKEN_RATE_PER_IP": "lots"}, "TOKEN_RATE_PER_IP: Value error, rate limit 'lots'"),
        ({"TOKEN_PORT": "http"}, "TOKEN_PORT: Input should be a valid integer"),
        ({"AUTH_POLICY_FILE": "/nonexistent/policy.toml"}, "policy file /nonexistent/policy.toml"),
        ({"AUTH_OIDC_ISSUER": "https://issuer.test"}, "OIDC needs AUTH_OIDC_ISSUER"),
        (
            {"LIVEKIT_API_SECRET": "short-but-not-a-placeholder"},
            "unsafe for production: LIVEKIT_API_SECRET is shorter than 32 characters",
        ),
        ({"TOKEN_CORS_ORIGINS": '["*"]'}, "TOKEN_CORS_ORIGINS allows every origin"),
        ({"TOKEN_TRUSTED_PROXIES": '["0.0.0.0/0"]'}, "TOKEN_TRUSTED_PROXIES trusts 0.0.0.0/0"),
        (
            {"TOKEN_PUBLIC_LIVEKIT_URL": "ws://livekit.example.com"},
            "TOKEN_PUBLIC_LIVEKIT_URL (ws://livekit.example.com) is not encrypted",
        ),
        (
            {
                "AUTH_OIDC_ISSUER": "https://issuer.test",
                "AUTH_OIDC_AUDIENCE": "a",
                "AUTH_OIDC_JWKS_URL": "http://issuer.test/jwks",
            },
            "AUTH_OIDC_JWKS_URL (http://issuer.test) is not encrypted",
        ),
    ],
)
def test_bad_configuration_stops_the_process_naming_the_variable(
    change: dict[str, str | None], message: str
) -> None:
    env = {k: v for k, v in (GOOD | change).items() if v is not None}
    done = run(env)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_development_mode_lets_unsafe_settings_through_with_a_warning(
    nats_server: NatsServer,
) -> None:
    port, metrics_port = free_port(), free_port()
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "AUTH_", "TOKEN_"))
    }
    env = (
        clean
        | GOOD
        | {
            "TOKEN_HOST": "127.0.0.1",
            "TOKEN_PORT": str(port),
            "TOKEN_METRICS_PORT": str(metrics_port),
            "TOKEN_CORS_ORIGINS": '["*"]',
            "AVATAR_DEV_MODE": "true",
            "NATS_URL": nats_server.url,
            "NATS_NKEY_SEED_FILE": str(nats_server.settings("token").nkey_seed_file),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "avatar_token"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "token service never served"
                time.sleep(0.2)
        assert health.status_code == 200
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
        assert "avatar_token_minted" in scrape.text or "python_info" in scrape.text
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert b"unsafe outside development: TOKEN_CORS_ORIGINS allows every origin" in out


def test_bundle_service_needs_the_zeroweight_key_for_the_zeroweight_backend() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "BUNDLES_"))}
    done = subprocess.run(
        [sys.executable, "-m", "avatar_bundles"],
        env=clean | {"AUTH_POLICY_FILE": GOOD["AUTH_POLICY_FILE"], "BUNDLES_BACKEND": "zeroweight"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "BUNDLES_ZEROWEIGHT_API_KEY is required when BUNDLES_BACKEND=zeroweight" in done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "AGENT_AVATARS_FILE: Field required"),
        (
            {"AGENT_AVATARS_FILE": str(ROOT / "deploy" / "local" / "avatars.toml")},
            "missing OPENAI_API_KEY (AGENT_LLM=realtime runs on OpenAI); CARTESIA_API_KEY",
        ),
        (
            {
                "AGENT_AVATARS_FILE": "/nonexistent/avatars.toml",
                "AGENT_LLM": "demo",
                "AGENT_TTS": "demo",
            },
            "/nonexistent/avatars.toml: cannot read the avatars file",
        ),
    ],
)
def test_the_agent_stops_at_start_on_missing_keys_or_avatars(
    env: dict[str, str], message: str
) -> None:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_", "LIVEKIT_", "OPENAI_", "CARTESIA_"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "avatar_agent"],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_the_agent_worker_serves_health_and_drains_on_sigterm() -> None:
    """LiveKit is unreachable here: the worker keeps retrying, healthy, and stops cleanly."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "LIVEKIT_"))}
    env = clean | {
        "LIVEKIT_URL": "ws://127.0.0.1:9",  # discard port: nothing answers
        "NATS_URL": "nats://127.0.0.1:9",  # nor here: not a NATS of the machine's
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": GOOD["LIVEKIT_API_SECRET"],
        "AGENT_AVATARS_FILE": str(ROOT / "deploy" / "local" / "avatars.toml"),
        "AGENT_LLM": "demo",
        "AGENT_TTS": "demo",
        "AGENT_NAME": "concierge",
        "AGENT_PORT": str(port),
        "AGENT_PROBE_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "avatar_agent"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "worker never served its health endpoint"
                time.sleep(0.2)
        assert health.status_code == 200
        info = httpx.get(f"http://127.0.0.1:{port}/worker", timeout=2).json()
        assert info["agent_name"] == "concierge"  # explicit dispatch under this name
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert b"draining worker" in out


def test_the_bundle_service_refuses_to_send_its_key_in_clear() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "BUNDLES_"))}
    done = subprocess.run(
        [sys.executable, "-m", "avatar_bundles"],
        env=clean
        | {
            "AUTH_POLICY_FILE": GOOD["AUTH_POLICY_FILE"],
            "BUNDLES_BACKEND": "zeroweight",
            "BUNDLES_ZEROWEIGHT_API_KEY": "zw-real-looking-key-123",
            "BUNDLES_ZEROWEIGHT_URL": "http://api.zeroweight.example",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "BUNDLES_ZEROWEIGHT_URL (http://api.zeroweight.example) is not encrypted" in done.stderr
