"""Least privilege on the bus: each service's NATS identity can do its job (the service
tests run with them) and is refused everything else; bad credentials stop a service at
start with the setting to fix."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from avatar_shared.bus import Bus, BusAuthError, identities
from avatar_shared.config import NatsSettings
from tests.support.nats_server import NatsServer, free_port, nats_server_binary, wait_ready

ROOT = Path(__file__).resolve().parents[3]


class Connection:
    """A raw connection as one identity, recording the server's refusals."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    async def open(self, server: NatsServer, identity: str) -> Connection:
        async def error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        self.nc = await nats.connect(
            server.url,
            nkeys_seed=server.settings(identity).nkey_seed_file,
            inbox_prefix=identities.inbox(identity),
            error_cb=error,
        )
        return self

    async def refused(self, action: Callable[[NatsClient], Awaitable[object]]) -> bool:
        """Whether the server refuses ``action`` (a permissions violation within 2 s)."""
        assert self.nc is not None
        self.errors.clear()
        try:
            async with asyncio.timeout(2):
                await action(self.nc)
                await self.nc.flush()
                while not any("permissions violation" in e for e in self.errors):
                    await asyncio.sleep(0.02)
        except (TimeoutError, nats.errors.Error):
            pass
        return any("permissions violation" in e for e in self.errors)


@pytest.fixture
async def as_identity(
    nats_server: NatsServer,
) -> AsyncIterator[Callable[[str], Awaitable[Connection]]]:
    opened: list[Connection] = []

    async def connect(identity: str) -> Connection:
        connection = await Connection().open(nats_server, identity)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        if connection.nc is not None:
            await connection.nc.close()


def publish(subject: str) -> Callable[[NatsClient], Awaitable[object]]:
    return lambda nc: nc.publish(subject, b"{}")


def request(subject: str) -> Callable[[NatsClient], Awaitable[object]]:
    return lambda nc: nc.request(subject, b"{}", timeout=1)


def subscribe(subject: str) -> Callable[[NatsClient], Awaitable[object]]:
    return lambda nc: nc.subscribe(subject)


@pytest.mark.parametrize(
    ("identity", "action", "what"),
    [
        ("bundles", publish("avatars.v1.agent.tag_parsed.room"), "publish an agent event"),
        ("bundles", subscribe("avatars.v1.>"), "read conversations"),
        ("agent", publish("avatars.v1.actions.action_decision.room"), "forge a decision"),
        ("agent", publish("$KV.ACTIONS_ROOMS.room"), "rewrite the actions' room state"),
        ("agent", request("$JS.API.DIRECT.GET.KV_ACTIONS_ROOMS"), "read the actions' state"),
        ("agent", publish("$KV.ACTIONS_LEASES.p0"), "take a partition lease"),
        ("agent", subscribe("avatars.v1.agent.>"), "read every conversation"),
        ("agent", subscribe("_INBOX.actions.>"), "read the actions' replies"),
        (
            "agent",
            request("$JS.API.CONSUMER.CREATE.AVATAR_EVENTS.spy.avatars.v1.agent.>"),
            "open a consumer on everyone's events",
        ),
        ("agent", request("$JS.API.STREAM.UPDATE.AVATAR_EVENTS"), "reconfigure the events"),
        (
            "agent",
            request("$JS.API.DIRECT.GET.AVATAR_EVENTS.avatars.v1.agent.tag_parsed.room"),
            "read a conversation's stored events",
        ),
        ("agent", request("$JS.API.DIRECT.GET.AVATAR_EVENTS"), "read stored events by number"),
        ("actions", publish("avatars.v1.agent.playout_started.room"), "forge an agent event"),
        ("actions", request("$JS.API.STREAM.DELETE.AVATAR_EVENTS"), "delete the events"),
        ("actions", request("$JS.API.STREAM.PURGE.AVATAR_EVENTS"), "purge the events"),
        ("actions", request("$JS.API.STREAM.DELETE.KV_ACTIONS_ROOMS"), "delete its own state"),
        ("actions", publish("$O.AVATAR_BUNDLES.C.x"), "write the bundle cache"),
        ("bundles", publish("$KV.ACTIONS_LEASES.p0"), "take a partition lease"),
        ("bundles", request("$JS.API.STREAM.DELETE.OBJ_AVATAR_BUNDLES"), "delete its cache"),
    ],
)
async def test_each_identity_is_refused_what_is_not_its_job(
    as_identity: Callable[[str], Awaitable[Connection]], identity: str, action: object, what: str
) -> None:
    connection = await as_identity(identity)
    assert await connection.refused(action), f"{identity} may {what}"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("identity", "action"),
    [
        ("agent", publish("avatars.v1.agent.playout_started.room")),
        ("agent", request("$JS.API.STREAM.INFO.AVATAR_EVENTS")),
        ("agent", request("$JS.API.DIRECT.GET.AVATAR_EVENTS.avatars.v1.agent.session_ended.r")),
        ("actions", publish("avatars.v1.actions.action_decision.room")),
        ("actions", subscribe("avatars.v1.agent.delivery_done.*")),
        ("bundles", request("$JS.API.STREAM.INFO.OBJ_AVATAR_BUNDLES")),
    ],
)
async def test_what_each_identity_needs_is_not_refused(
    as_identity: Callable[[str], Awaitable[Connection]], identity: str, action: object
) -> None:
    connection = await as_identity(identity)
    assert not await connection.refused(action)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", ["none", "unknown"])
async def test_bad_credentials_fail_at_once_naming_the_setting(
    nats_server: NatsServer, tmp_path: Path, seed: str
) -> None:
    settings = NatsSettings(url=nats_server.url)
    if seed == "unknown":  # a well-formed seed the server does not know
        path = tmp_path / "stranger.nk"
        path.write_bytes(identities.new_seed())
        settings = NatsSettings(url=nats_server.url, nkey_seed_file=str(path))
    with pytest.raises(BusAuthError, match="NATS_NKEY_SEED_FILE"):
        async with asyncio.timeout(10):
            await Bus.connect(settings, name="stranger", identity="actions")


@pytest.mark.parametrize("module", ["avatar_actions", "avatar_agent", "avatar_bundles"])
def test_a_service_without_credentials_stops_at_start_naming_the_setting(
    nats_server: NatsServer, module: str
) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "LIVEKIT_", "ACTIONS_"))
    } | {
        "NATS_URL": nats_server.url,
        "ACTIONS_HOST": "127.0.0.1",
        "BUNDLES_HOST": "127.0.0.1",
        "AUTH_POLICY_FILE": str(ROOT / "deploy" / "local" / "policy.toml"),
        "AVATAR_DEV_MODE": "true",
        "AGENT_AVATARS_FILE": str(ROOT / "deploy" / "local" / "avatars.toml"),
        "AGENT_LLM": "demo",
        "AGENT_TTS": "demo",
        "OTEL_SDK_DISABLED": "true",
    }
    args = [sys.executable, "-m", module] + (["local"] if module == "avatar_agent" else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "NATS_NKEY_SEED_FILE" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_deployed_configuration_takes_its_keys_from_the_environment(tmp_path: Path) -> None:
    """What deploy/k8s runs: the generated block, public keys from the environment that the
    ConfigMap ``avatar-nats-identities`` (``scripts.nats_keys env``) fills."""
    keys = tmp_path / "keys"
    run = [sys.executable, "-m", "scripts.nats_keys"]
    subprocess.run([*run, "keys", str(keys)], cwd=ROOT, check=True, capture_output=True)
    printed = subprocess.run(
        [*run, "env", str(keys)], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    environment = dict(line.split("=", 1) for line in printed.splitlines())
    config = ROOT / "deploy" / "k8s" / "overlays" / "dev" / "nats.conf"
    port, monitor = free_port(), free_port()
    server = subprocess.Popen(
        [
            *(str(nats_server_binary()), "-c", str(config), "-a", "127.0.0.1", "-p", str(port)),
            *("-m", str(monitor), "-js", "-sd", str(tmp_path / "store")),
        ],
        env={"PATH": os.environ.get("PATH", "")} | environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deployed = NatsServer(port, monitor, "deployed config", keys, server.terminate, None)
    try:
        wait_ready(monitor)

        async def check() -> None:
            agent = await Connection().open(deployed, "agent")
            stranger = NatsSettings(url=deployed.url, nkey_seed_file=str(tmp_path / "x.nk"))
            (tmp_path / "x.nk").write_bytes(identities.new_seed())
            try:
                assert not await agent.refused(publish("avatars.v1.agent.tag_parsed.room"))
                assert await agent.refused(publish("avatars.v1.actions.action_decision.room"))
                with pytest.raises(BusAuthError):
                    await Bus.connect(stranger, name="stranger", identity="agent")
            finally:
                assert agent.nc is not None
                await agent.nc.close()

        asyncio.run(check())
    finally:
        server.terminate()
        server.wait(timeout=10)
