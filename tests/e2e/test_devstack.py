"""`make run`'s supervisor starts a working NATS with JetStream and stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from avatar_shared.bus import Bus, events_stream
from avatar_shared.config import NatsSettings
from avatar_shared.events import PlayoutStarted, SpeechCreated
from tests.support.nats_server import free_port

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.timeout(90)


async def _read_until(proc: asyncio.subprocess.Process, marker: str, out: list[str]) -> None:
    assert proc.stdout is not None
    if any(marker in line for line in out):
        return
    async with asyncio.timeout(60):
        while line := (await proc.stdout.readline()).decode():
            out.append(line)
            if marker in line:
                return
    raise AssertionError(f"{marker!r} never printed:\n{''.join(out)}")


async def test_stack_starts_nats_and_services_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, monitor = free_port(), free_port()
    token_port = free_port()  # ephemeral ports lie above the documented ones
    offset = token_port - 8100
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "devstack.py"),
        f"--nats-port={port}",
        f"--monitor-port={monitor}",
        f"--data-dir={tmp_path}",
        f"--port-offset={offset}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out: list[str] = []
    try:
        await _read_until(proc, "stack ready", out)
        admin = NatsSettings(
            url=f"nats://127.0.0.1:{port}",
            nkey_seed_file=str(tmp_path / "nats-keys" / "admin.nk"),
        )
        bus = await Bus.connect(admin, name="e2e")
        await bus.ensure_stream(events_stream())
        ack = await bus.publish(PlayoutStarted(room="devstack", speech_id="s", seq=0))
        assert ack.stream == "AVATAR_EVENTS"
        await bus.close()
        assert (tmp_path / "nats" / "jetstream").is_dir()

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{token_port}") as http:
            response = await http.get("/api/livekit/token", params={"avatar_id": "demo-avatar"})
        assert response.status_code == 200, response.text
        assert response.json()["room"].startswith("avatar-demo-avatar-")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{8200 + offset}") as http:
            bundle = await http.get("/api/avatars/bundle/demo-avatar")
        assert bundle.status_code == 200, bundle.text
        assert "payload" in bundle.json()

        # The actions service runs as a dry run: an agent's reply shows up as logged packets.
        bus = await Bus.connect(admin, name="e2e-agent")
        for event in [
            SpeechCreated(
                room="demo", speech_id="s1", seq=0, source_kind="say", user_initiated=False
            ),
            PlayoutStarted(room="demo", speech_id="s1", seq=1),
        ]:
            await bus.publish(event)
        await bus.close()
        await _read_until(proc, '"room": "demo"', out)
        entry = json.loads(out[-1].split("| ", 1)[1])
        assert entry["room"] == "demo"
        assert entry["payload"] == '{"type": "AVATAR_UPDATE", "action": "speaking"}'

        # The agent's scripted conversation (demo providers, no keys) reaches the actions
        # service: its greeting's wave is released once the reply is done.
        await _read_until(proc, "agent: Hi there, I am the demo avatar.", out)
        await _read_until(proc, 'AVATAR_UPDATE\\", \\"action\\": \\"wave_hand', out)
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest = await proc.stdout.read() if proc.stdout else b""
            code = await proc.wait()
    log = "".join(out) + rest.decode()
    assert code == 0, log
    # reverse start order: agent, actions, bundles, token, then NATS
    names = ("agent", "actions", "bundles", "token", "nats")
    stops = [log.index(f"stopping {name}") for name in names]
    assert stops == sorted(stops)
    assert "stack stopped" in log
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_asking_for_a_service_that_does_not_exist_is_a_clear_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "devstack.py"),
        "--only=nonexistent",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 2
    assert "no service named 'nonexistent' exists" in out.decode()


async def test_agent_delivery_mode_shows_what_the_agent_would_publish(tmp_path: Path) -> None:
    """`ACTIONS_DELIVERY=agent make run`: packets go through the agent, whose log says
    what it would publish from its participant (the local run has no room)."""
    offset = free_port() - 8100
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "devstack.py"),
        f"--nats-port={free_port()}",
        f"--monitor-port={free_port()}",
        f"--data-dir={tmp_path}",
        f"--port-offset={offset}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "ACTIONS_DELIVERY": "agent"},
    )
    out: list[str] = []
    try:
        await _read_until(proc, "would publish_data", out)
        entry = json.loads(out[-1].split("| ", 1)[1])
        assert entry["payload"] == '{"type": "AVATAR_UPDATE", "action": "speaking"}'
        assert entry["reliable"] is True
        assert not any("dry-run packet" in line for line in out)  # nothing sent by actions
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await proc.communicate()
