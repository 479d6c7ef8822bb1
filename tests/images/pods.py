"""Run a service image as the Kubernetes manifests run it, with Docker on one machine.

:class:`Manifests` renders an overlay of ``deploy/k8s`` with ``kubectl kustomize`` and
reads a Deployment's pod: :func:`docker_run_args` turns its first container into
``docker run`` options that keep what the kubelet would enforce and a single machine can:
the user and groups (``runAsUser``, ``runAsGroup``, ``fsGroup``), a read-only root
filesystem, no capabilities, no privilege escalation, Docker's default seccomp profile
(``RuntimeDefault``), ``emptyDir`` volumes as size-limited tmpfs, ConfigMap and projected
volumes as read-only files owned by the pod's group (Secrets' contents supplied by the
caller), and the environment of its ``envFrom`` ConfigMaps and ``env`` entries (secret
values supplied by the caller). What it cannot keep: the pod network (containers use
host networking on loopback), Services and DNS, resource limits' scheduling, network
policies and autoscaling.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


class Manifests:
    def __init__(self, overlay: str) -> None:
        rendered = subprocess.run(
            ["kubectl", "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.docs = [d for d in yaml.safe_load_all(rendered) if d]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                found: dict[str, Any] = doc
                return found
        raise KeyError(f"{kind}/{name} not in the rendered manifests")

    def pod(self, deployment: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.get("Deployment", deployment)["spec"]["template"]["spec"]
        return spec


@dataclass
class Pod:
    """What a test needs to know of one Deployment's container to run and probe it."""

    image: str
    args: list[str]
    ports: dict[str, int]
    readiness: str  # path of the readiness probe
    readiness_port: int
    liveness: str
    grace: int  # terminationGracePeriodSeconds
    env: dict[str, str] = field(default_factory=dict)


def docker_run_args(
    manifests: Manifests,
    deployment: str,
    *,
    secrets: dict[str, str],
    overrides: dict[str, str],
    files_dir: Path,
    secrets_files: dict[str, dict[str, bytes]] | None = None,
) -> Pod:
    pod = manifests.pod(deployment)
    container = pod["containers"][0]
    pod_security = pod.get("securityContext", {})
    security = {**pod_security, **container.get("securityContext", {})}
    args = ["--network", "host"]
    args += ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    if "fsGroup" in pod_security:
        args += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if "ALL" in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", "ALL"]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            size = _bytes(volume["emptyDir"].get("sizeLimit", "64Mi"))
            group = pod_security.get("fsGroup", security["runAsGroup"])
            args += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1770,gid={group}"]
        elif "configMap" in volume or "projected" in volume:
            source = files_dir / deployment / mount["name"]
            source.mkdir(parents=True, exist_ok=True)
            group = pod_security.get("fsGroup", security["runAsGroup"])
            _project(manifests, volume, secrets_files, source, group)
            args += ["-v", f"{source}:{mount['mountPath']}:ro"]
        else:
            raise ValueError(f"{deployment}: volume {mount['name']} of a kind not handled")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(manifests.get("ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif entry["name"] in secrets:
            env[entry["name"]] = secrets[entry["name"]]
        elif not entry.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
            raise ValueError(f"{deployment}: no value for the secret {entry['name']}")
    unknown = set(overrides) - set(env)
    assert not unknown, f"overrides of keys the manifests do not set: {unknown}"
    env.update(overrides)
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    return Pod(
        image=container["image"],
        args=args,
        ports=ports,
        readiness=container["readinessProbe"]["httpGet"]["path"],
        readiness_port=_port(container["readinessProbe"]["httpGet"]["port"], ports),
        liveness=container["livenessProbe"]["httpGet"]["path"],
        grace=int(pod.get("terminationGracePeriodSeconds", 30)),
        env=env,
    )


def _project(
    manifests: Manifests,
    volume: dict[str, Any],
    secrets_files: dict[str, dict[str, bytes]] | None,
    into: Path,
    group: int,
) -> None:
    """Write a ConfigMap or projected volume's files as the kubelet would: owned by the
    pod's fsGroup, with the volume's mode (the Secrets' contents come from the caller)."""
    if "configMap" in volume:
        sources, mode = [{"configMap": volume["configMap"]}], 0o644
    else:
        sources = volume["projected"]["sources"]
        mode = volume["projected"].get("defaultMode", 0o644)
    for source in sources:
        kind = "secret" if "secret" in source else "configMap"
        spec = source[kind]
        if kind == "secret":
            data = (secrets_files or {}).get(spec["name"])
        else:
            try:
                data = {
                    k: v.encode()
                    for k, v in manifests.get("ConfigMap", spec["name"])["data"].items()
                }
            except KeyError:
                data = None
        if data is None:
            if spec.get("optional"):
                continue
            raise ValueError(f"no {kind} {spec['name']} to mount")
        items = spec.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            path = into / item["path"]
            path.write_bytes(data[item["key"]])
            os.chown(path, 0, group)
            path.chmod(mode)


def _port(port: int | str, named: dict[str, int]) -> int:
    return named[port] if isinstance(port, str) else port


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


class Container:
    """One ``docker run -d``; :meth:`stop` sends SIGTERM and times the exit."""

    def __init__(self, pod: Pod, *command: str, entrypoint: str | None = None) -> None:
        self.name = f"avatar-image-test-{uuid.uuid4().hex[:8]}"
        run = ["docker", "run", "-d", "--name", self.name, *pod.args]
        if entrypoint:
            run += ["--entrypoint", entrypoint]
        subprocess.run([*run, pod.image, *command], check=True, capture_output=True)
        self.pod = pod

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def inspect(self, template: str) -> str:
        out = subprocess.run(
            ["docker", "inspect", "--format", template, self.name],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def logs(self) -> str:
        out = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        return out.stdout + out.stderr

    def stop(self) -> tuple[int, float]:
        """SIGTERM (the image's STOPSIGNAL), killed after the pod's grace period:
        (exit code, seconds it took)."""
        start = time.monotonic()
        subprocess.run(
            ["docker", "stop", "-t", str(self.pod.grace), self.name],
            check=True,
            capture_output=True,
        )
        return int(self.inspect("{{.State.ExitCode}}")), time.monotonic() - start

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
