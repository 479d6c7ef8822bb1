"""`make run`'s supervisor starts a working NATS with JetStream and stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from avatar_shared.bus import Bus, events_stream
from avatar_shared.config import NatsSettings
from avatar_shared.events import PlayoutStarted, SpeechCreated
from tests.support import cartesia
from tests.support.devstack import ROOT, read_until, start_devstack
from tests.support.nats_server import free_port

pytestmark = pytest.mark.timeout(90)


async def test_stack_starts_nats_and_services_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    stack = await start_devstack(tmp_path)
    proc, port, token_port = stack.proc, stack.nats_port, 8100 + stack.offset
    out: list[str] = []
    try:
        await read_until(proc, "stack ready", out)
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

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{8200 + stack.offset}") as http:
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
        await read_until(proc, '"room": "demo"', out)
        entry = json.loads(out[-1].split("| ", 1)[1])
        assert entry["room"] == "demo"
        assert entry["payload"] == '{"type": "AVATAR_UPDATE", "action": "speaking"}'

        # The agent's scripted conversation (demo providers, no keys) reaches the actions
        # service: its greeting's wave is released once the reply is done.
        await read_until(proc, "agent: Hi there, I am the demo avatar.", out)
        await read_until(proc, 'AVATAR_UPDATE\\", \\"action\\": \\"wave_hand', out)
        # the scripted user falls silent: the session ends as inactive, after a goodbye
        await read_until(proc, "session ended", out)
        assert json.loads(out[-1].split("| ", 1)[1])["reason"] == "inactive"
        assert any("I have to end our conversation here" in line for line in out)
        await read_until(proc, "would delete the room", out)

        # `make audit`: the token asked for above, and how the scripted session ended
        async with asyncio.timeout(30):
            trail = _audit(tmp_path, port)
            while not any(e["type"] == "session_ended" for e in trail):
                await asyncio.sleep(0.5)
                trail = _audit(tmp_path, port)
        issued = [e for e in trail if e["type"] == "token_issued"]
        assert [(e["principal"], e["avatar_id"]) for e in issued] == [("anonymous", "demo-avatar")]
        ended = [e for e in trail if e["type"] == "session_ended"]
        assert [e["reason"] for e in ended] == ["inactive"]
        assert ended[0]["duration_seconds"] > 0
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
    # the demo runs clean: nothing the agent logs asks for attention
    running = log[: log.index("stopping agent")]
    noisy = [
        line
        for line in running.splitlines()
        if line.startswith("agent") and ('"level": "WARNING"' in line or '"level": "ERROR"' in line)
    ]
    assert noisy == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _audit(data_dir: Path, nats_port: int) -> list[dict[str, object]]:
    env = {
        **os.environ,
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "NATS_NKEY_SEED_FILE": str(data_dir / "nats-keys" / "admin.nk"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "avatar_shared.audit", "--since", "10m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


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
    proc = (await start_devstack(tmp_path, env={"ACTIONS_DELIVERY": "agent"})).proc
    out: list[str] = []
    try:
        await read_until(proc, "would publish_data", out)
        entry = json.loads(out[-1].split("| ", 1)[1])
        assert entry["payload"] == '{"type": "AVATAR_UPDATE", "action": "speaking"}'
        assert entry["reliable"] is True
        assert not any("dry-run packet" in line for line in out)  # nothing sent by actions
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await proc.communicate()


async def test_a_service_that_exits_during_start_up_is_reported_at_once(tmp_path: Path) -> None:
    """A setting missing for the chosen providers: the agent exits with status 2 and the
    runner says so with its last lines, without waiting for a health check."""
    env = {
        "AGENT_LLM": "openai-compatible",
        "AGENT_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "AGENT_TTS": "demo",
    }
    proc = (await start_devstack(tmp_path, "--only=agent", env=env)).proc
    async with asyncio.timeout(30):  # the health check alone would wait 60 s
        out, _ = await proc.communicate()
    log = out.decode()
    assert proc.returncode == 1, log
    assert "error: agent exited with status 2 during start-up" in log
    tail = log[log.index("its last lines:") :]
    assert "AGENT_LLM_MODEL (the model your server at AGENT_LLM_BASE_URL serves" in tail
    assert "stopping nats" in log
    assert "stack stopped" in log


async def test_make_run_with_your_own_llm_and_cartesia(tmp_path: Path) -> None:
    """docs/agent.md, "Bring your own model": the local run against an OpenAI-compatible
    server (the double, as a process, as the docs start it) and a Cartesia double: the
    reply is streamed from the one, spoken through the other, and its gesture reaches
    the actions service; no error is logged."""
    llm_port = free_port()
    llm = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.openai_compatible",
        f"--port={llm_port}",
        "--model=local-model",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert llm.stdout is not None
    async with asyncio.timeout(30):
        await llm.stdout.readline()  # "OpenAI-compatible double on ..."
    async with cartesia.running(cartesia.CartesiaDouble()) as voice:
        env = {
            "AGENT_LLM": "openai-compatible",
            "AGENT_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "AGENT_LLM_MODEL": "local-model",
            "AGENT_TTS": "cartesia",
            "AGENT_TTS_BASE_URL": voice.base_url,
            "CARTESIA_API_KEY": voice.api_key,
        }
        proc = (await start_devstack(tmp_path, env=env)).proc
        out: list[str] = []
        try:
            await read_until(proc, "agent: Hello from your own model!", out)
            await read_until(proc, 'AVATAR_UPDATE\\", \\"action\\": \\"wave_hand', out)
        finally:
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(60):
                rest, _ = await proc.communicate()
            llm.terminate()
            await llm.wait()
    log = "".join(out) + rest.decode()
    assert proc.returncode == 0, log
    assert any("Hello from your own model!" in said for said in voice.spoken())
    assert voice.audio_bytes > 0
    errors = [line for line in log.splitlines() if '"level": "ERROR"' in line]
    assert errors == [], "\n".join(errors)
    assert "outside of a job context" not in log
    assert "Traceback" not in log
