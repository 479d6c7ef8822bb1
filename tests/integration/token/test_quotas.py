"""Session quotas hold across token replicas, and everything lands in the audit trail.

Two token services run as processes on the session's real NATS (each with the token
identity's permissions). The count is the deployment's: the third concurrent session of
a caller limited to two is refused whichever replica it asks; a slot is freed by the
agent's ``session_ended`` and by expiry (a token whose session never starts); the
agent's ``session_started`` keeps it. ``python -m avatar_shared.audit`` then lists what
happened, and nothing secret is in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from avatar_shared.bus import Bus
from avatar_shared.bus.identities import TOKEN_CONSUMERS
from avatar_shared.events import SessionEnded, SessionStarted
from avatar_shared.subjects import EVENTS_STREAM
from avatar_shared.web.auth import hash_api_key
from tests.support.nats_server import NatsServer, free_port
from tests.support.service_process import (
    LIVEKIT_SECRET,
    ServiceProcess,
    running_service,
    token_env,
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
KEY = "quota-suite-key-93b1c0ffee"
START_WINDOW = 3.0  # TOKEN_SESSION_START_SECONDS
(ENDED_CONSUMER,) = [name for name, kind in TOKEN_CONSUMERS.items() if kind == "session_ended"]


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quota-policy") / "policy.toml"
    path.write_text(
        f"""
[[api_keys]]
name = "suite"
sha256 = "{hash_api_key(KEY)}"

[[rules]]
principals = ["api_key:suite"]
avatars = ["*"]
max_sessions_per_principal = 2
max_session_seconds = 60
"""
    )
    return path


def quota_env(nats: NatsServer, policy: Path, port: int) -> dict[str, str]:
    return token_env(
        nats,
        port,
        policy,
        TOKEN_RATE_PER_PRINCIPAL="100000/minute",
        TOKEN_SESSION_START_SECONDS=str(START_WINDOW),
        AUDIT_RECORD_ADDRESSES="true",
    )


@pytest.fixture
async def replicas(
    nats_server: NatsServer, policy_file: Path, bus: Bus
) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    with contextlib.suppress(NotFoundError):  # slots of earlier tests
        await bus.purge_stream("AVATAR_SESSIONS")
    ports = free_port(), free_port()
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    async with (
        running_service(
            "avatar_token", quota_env(nats_server, policy_file, ports[0]), urls[0]
        ) as first,
        running_service(
            "avatar_token", quota_env(nats_server, policy_file, ports[1]), urls[1]
        ) as second,
    ):
        yield first, second


async def ask(replica: ServiceProcess, avatar: str = "demo-avatar") -> httpx.Response:
    async with httpx.AsyncClient(base_url=replica.url) as http:
        return await http.get(
            "/api/livekit/token", params={"avatar_id": avatar}, headers={"X-API-Key": KEY}
        )


async def until_admitted(replica: ServiceProcess, within: float) -> httpx.Response:
    async with asyncio.timeout(within):
        while (response := await ask(replica)).status_code == 429:
            await asyncio.sleep(0.2)
    return response


async def test_quotas_hold_across_replicas_and_slots_free_by_end_and_by_expiry(
    replicas: tuple[ServiceProcess, ServiceProcess],
    bus: Bus,
    nats_server: NatsServer,
    js: JetStreamContext,
) -> None:
    a, b = replicas
    first, second = await ask(a), await ask(b)
    assert (first.status_code, second.status_code) == (200, 200), first.text + second.text
    refused = await ask(a)
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_sessions"
    assert "per principal" in refused.json()["message"]
    assert int(refused.headers["Retry-After"]) > 0
    assert (await ask(b)).status_code == 429  # the other replica counts the same slots

    # The first session starts (its slot now lasts its length) and the second's token is
    # never used (its slot expires after the start window).
    room = first.json()["room"]
    await bus.publish(SessionStarted(room=room, seq=0, agent_name="avatar-agent"))
    third = await until_admitted(b, within=START_WINDOW + 5)
    assert third.status_code == 200
    assert (await ask(a)).status_code == 429  # the started session still holds its slot

    # A message that is not an event, on the session_ended subject: dropped, and the
    # session events after it are applied as usual.
    ended_event = SessionEnded(room=room, seq=1, reason="inactive")
    await js.publish(ended_event.subject, b'{"type": "session_ended", "seq": ' + b"9" * 5000)
    await bus.publish(ended_event)
    fourth = await until_admitted(a, within=5)
    assert fourth.status_code == 200
    async with asyncio.timeout(10):  # the bad one was terminated, not left to redeliver
        while (await js.consumer_info(EVENTS_STREAM, ENDED_CONSUMER)).num_ack_pending:
            await asyncio.sleep(0.05)

    trail = audit_lines(nats_server, "--principal", "api_key:suite")
    kinds = [(e["type"], e.get("reason")) for e in trail]
    assert kinds.count(("token_issued", None)) == 4
    assert ("token_refused", "too_many_sessions") in kinds
    ended = [e for e in trail if e["type"] == "session_ended"]
    assert [(e["room"], e["reason"]) for e in ended] == [(room, "inactive")]
    assert ended[0]["duration_seconds"] >= 0
    assert all(e["client_ip"] == "127.0.0.1" for e in trail if "client_ip" in e)
    text = json.dumps(trail)
    for secret in (KEY, LIVEKIT_SECRET, first.json()["token"], hash_api_key(KEY)):
        assert secret not in text


def audit_lines(nats: NatsServer, *args: str) -> list[dict[str, object]]:
    env = dict(os.environ) | {
        "NATS_URL": nats.url,
        "NATS_NKEY_SEED_FILE": str(nats.admin.nkey_seed_file),
    }
    done = subprocess.run(
        [sys.executable, "-m", "avatar_shared.audit", "--since", "10m", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]
