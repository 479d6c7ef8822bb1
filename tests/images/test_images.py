"""The four service images, run as the development overlay of ``deploy/k8s`` runs them
(``tests/images/pods.py``): each answers its smoke test and stops cleanly on SIGTERM.

Run by ``make test-images``, which builds the images first; not part of ``make test``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from livekit import api

from avatar_shared.bus import Bus, events_stream, identities
from tests.images.pods import Container, Manifests, Pod, docker_run_args
from tests.integration.actions.test_engine import Turns
from tests.support.livekit_server import LiveKitDouble, running_livekit
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.timeout(300)

KEY, SECRET = "APIimages", "images-test-secret-that-is-long-enough-0123456789"
SECRETS = {"LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}
# Nothing listens there: the services' telemetry export fails quietly, as without a collector.
NO_COLLECTOR = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return Manifests("dev")


Run = Callable[..., Container]  # deployment, command..., entrypoint=, env overrides


@pytest.fixture
def pod_for(manifests: Manifests, nats_server: NatsServer, tmp_path: Path) -> Iterator[Run]:
    started: list[Container] = []

    # Each service's NATS seed, from the test server's identities.
    seeds = {
        f"avatar-nats-{name}": {"seed.nk": (nats_server.keys / f"{name}.nk").read_bytes()}
        for name in identities.IDENTITIES
    }

    def pod(deployment: str, **overrides: str) -> Pod:
        return docker_run_args(
            manifests,
            deployment,
            secrets=SECRETS,
            overrides={
                "NATS_URL": nats_server.url,
                "OTEL_EXPORTER_OTLP_ENDPOINT": NO_COLLECTOR,
                **overrides,
            },
            files_dir=tmp_path,
            secrets_files=seeds,
        )

    def run(deployment: str, *command: str, entrypoint: str | None = None, **env: str) -> Container:
        container = Container(pod(deployment, **env), *command, entrypoint=entrypoint)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()


async def ready(container: Container, within: float = 90) -> str:
    """Polls the readiness probe until it answers 200; returns the base URL of ``http``."""
    probe = f"http://127.0.0.1:{container.pod.readiness_port}{container.pod.readiness}"
    async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(within):
        while True:
            assert container.running(), f"the container exited:\n{container.logs()}"
            try:
                if (await http.get(probe)).status_code == 200:
                    return f"http://127.0.0.1:{container.pod.ports['http']}"
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


def stops_cleanly(container: Container) -> None:
    code, took = container.stop()
    logs = container.logs()
    assert code == 0, f"exit code {code} on SIGTERM:\n{logs}"
    assert took < container.pod.grace, f"{took:.1f}s to stop, grace {container.pod.grace}s"
    assert "Traceback" not in logs, logs


async def test_token_image_mints_a_token(pod_for: Run) -> None:
    token = pod_for("avatar-token")
    base = await ready(token)
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get(token.pod.liveness)).status_code == 200
        response = await http.get("/api/livekit/token", params={"avatar_id": "demo-avatar"})
    assert response.status_code == 200, response.text
    claims = api.TokenVerifier(KEY, SECRET).verify(response.json()["token"])
    assert claims.video is not None
    assert claims.video.room == response.json()["room"]
    stops_cleanly(token)


async def test_bundles_image_serves_the_sample(pod_for: Run) -> None:
    bundles = pod_for("avatar-bundles")
    base = await ready(bundles)
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/api/avatars/bundle/demo-avatar")
    assert response.status_code == 200, response.text
    assert "payload" in response.json()
    stops_cleanly(bundles)


@pytest.fixture
async def livekit() -> AsyncIterator[LiveKitDouble]:
    async with running_livekit(LiveKitDouble(keys={KEY: SECRET})) as double:
        yield double


def actions_in(double: LiveKitDouble, room_prefix: str) -> list[str]:
    return [
        json.loads(r.request.data)["action"]
        for r in double.received
        if r.request.room.startswith(room_prefix)
    ]


async def until(condition: Callable[[], bool], within: float = 60) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.1)


async def test_actions_and_agent_images_deliver_a_conversation(
    pod_for: Run, nats_server: NatsServer, livekit: LiveKitDouble
) -> None:
    actions = pod_for("avatar-actions", LIVEKIT_URL=livekit.url)
    await ready(actions)
    # A scripted room, as an agent would report it: its packets reach LiveKit.
    bus = await Bus.connect(nats_server.admin, name="images-test")
    await bus.ensure_stream(events_stream())
    turn = Turns("images-scripted").reply("s1", "wave_hand")
    for event in turn[:-2]:
        await bus.publish(event)
    await until(lambda: actions_in(livekit, "images-scripted") == ["speaking"])
    for event in turn[-2:]:
        await bus.publish(event)
    await until(lambda: actions_in(livekit, "images-scripted") == ["speaking", "wave_hand"])
    await bus.close()
    # The agent's local scripted conversation (demo providers) in its own image: its
    # greeting's wave reaches LiveKit through the actions container.
    agent = pod_for("avatar-agent", "-m", "avatar_agent", "local", entrypoint="python")
    await ready(agent)
    await until(lambda: "wave_hand" in actions_in(livekit, "local-"), within=90)
    stops_cleanly(agent)
    stops_cleanly(actions)
