"""Render every kustomize overlay, validate it offline, and apply our own policy checks.

``python scripts/k8s_validate.py [DIR]`` (``make k8s-validate``; DIR defaults to
``deploy/k8s``). Each overlay under ``DIR/overlays`` is rendered with ``kubectl kustomize``,
every object is validated against the Kubernetes OpenAPI schemas shipped with
``kubernetes-validate`` (strict: unknown fields are errors), custom resources we use
(KEDA's ScaledObject) against the fields we rely on, and then the policy below. Prints
every problem and exits 1 if there is any.

Policy, for every Deployment/StatefulSet:
- each container has CPU and memory requests and limits, readiness and liveness probes,
  a preStop hook, an image with an explicit tag that is not ``latest``;
- the pod runs as non-root with RuntimeDefault seccomp, no container may escalate
  privileges, all capabilities are dropped, the root filesystem is read-only and ``/tmp``
  is an emptyDir; ``terminationGracePeriodSeconds`` is set;
- it is selected by a Service and a PodDisruptionBudget in the same namespace;
- no secret value is inlined: ``Secret`` objects are not part of the manifests, and an
  env variable named like a secret comes from a ``secretKeyRef``;
- the namespace has a default-deny NetworkPolicy (ingress and egress);
- autoscalers target existing Deployments, and a ScaledObject never allows more replicas
  than its ``avatar-backend/partitions`` annotation, which equals ``ACTIONS_PARTITIONS``;
- an Ingress routes only to Services of the namespace, by a port they have, and never to
  a port named ``metrics`` (Prometheus scrapes those; the public must not);
- the actions service's memory limit holds its memory bound, derived from
  ``ACTIONS_MAX_ROOMS`` (``avatar_actions.config.memory_bound_mib``);
- the bus's security: identities, seeds, permissions and TLS (``scripts/k8s_nats.py``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from scripts import k8s_nats

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_VERSION = "1.32.0"
WORKLOADS = ("Deployment", "StatefulSet")
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|API_KEY|TOKEN)$")
Obj = dict[str, Any]


def render(overlay: Path) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit("error: kubectl (with kustomize) is needed to render the overlays")
    done = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


class RenderError(Exception):
    pass


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def schema_problems(obj: Obj) -> Iterator[str]:
    if obj.get("kind") == "ScaledObject":
        yield from scaled_object_problems(obj)
        return
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        yield f"{name_of(obj)}: {path or 'object'}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError:
        yield f"{name_of(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')}"


def scaled_object_problems(obj: Obj) -> Iterator[str]:
    spec = obj.get("spec") or {}
    if obj.get("apiVersion") != "keda.sh/v1alpha1":
        yield f"{name_of(obj)}: apiVersion must be keda.sh/v1alpha1"
    if not (spec.get("scaleTargetRef") or {}).get("name"):
        yield f"{name_of(obj)}: spec.scaleTargetRef.name is required"
    triggers = spec.get("triggers") or []
    if not triggers or not all(t.get("type") and t.get("metadata") for t in triggers):
        yield f"{name_of(obj)}: spec.triggers needs at least one trigger with type and metadata"
    for field in ("minReplicaCount", "maxReplicaCount"):
        if not isinstance(spec.get(field), int):
            yield f"{name_of(obj)}: spec.{field} must be an integer"


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def workload_problems(obj: Obj, objects: list[Obj]) -> Iterator[str]:
    where = name_of(obj)
    pod = obj["spec"]["template"]
    labels = pod.get("metadata", {}).get("labels", {})
    spec = pod["spec"]
    context = spec.get("securityContext") or {}
    if context.get("runAsNonRoot") is not True:
        yield f"{where}: pod securityContext.runAsNonRoot must be true"
    if (context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        yield f"{where}: pod seccompProfile must be RuntimeDefault"
    if "terminationGracePeriodSeconds" not in spec:
        yield f"{where}: terminationGracePeriodSeconds must be set to the service's drain time"
    tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in spec.get("containers", []):
        yield from container_problems(
            f"{where} container {container['name']}", container, tmp_volumes
        )
    namespace = obj.get("metadata", {}).get("namespace")
    for kind in ("Service", "PodDisruptionBudget"):
        if not any(
            other.get("kind") == kind
            and other.get("metadata", {}).get("namespace") == namespace
            and matches(selector_of(other), labels)
            for other in objects
        ):
            yield f"{where}: no {kind} selects its pods"


def selector_of(obj: Obj) -> dict[str, str]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Service":
        return dict(spec.get("selector") or {})
    return dict((spec.get("selector") or {}).get("matchLabels") or {})


def container_problems(where: str, container: Obj, tmp_volumes: set[str]) -> Iterator[str]:
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
    if not tag or tag == "latest":
        yield f"{where}: image {image!r} needs an explicit version tag (not latest)"
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(part) or {}):
                yield f"{where}: resources.{part}.{resource} is missing"
    for probe in ("readinessProbe", "livenessProbe"):
        if probe not in container:
            yield f"{where}: {probe} is missing"
    if "preStop" not in (container.get("lifecycle") or {}):
        yield f"{where}: lifecycle.preStop is missing (graceful shutdown)"
    security = container.get("securityContext") or {}
    if security.get("allowPrivilegeEscalation") is not False:
        yield f"{where}: securityContext.allowPrivilegeEscalation must be false"
    if security.get("readOnlyRootFilesystem") is not True:
        yield f"{where}: securityContext.readOnlyRootFilesystem must be true"
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        yield f"{where}: securityContext.capabilities.drop must include ALL"
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    if mounts.get("/tmp") not in tmp_volumes:  # noqa: S108 (a mount path, not a file)
        yield f"{where}: /tmp must be an emptyDir volume (the root filesystem is read-only)"
    for env in container.get("env", []):
        if SECRET_NAME.search(env["name"]) and "value" in env:
            yield f"{where}: {env['name']} is inlined; reference a Secret (secretKeyRef)"


def autoscaler_problems(obj: Obj, objects: list[Obj]) -> Iterator[str]:
    target = (obj.get("spec") or {}).get("scaleTargetRef") or {}
    namespace = obj.get("metadata", {}).get("namespace")
    if not any(
        other.get("kind") == "Deployment"
        and other["metadata"]["name"] == target.get("name")
        and other.get("metadata", {}).get("namespace") == namespace
        for other in objects
    ):
        yield f"{name_of(obj)}: scales {target.get('name')!r}, which is not a Deployment here"
    if obj.get("kind") == "ScaledObject":
        annotations = obj.get("metadata", {}).get("annotations") or {}
        partitions = annotations.get("avatar-backend/partitions")
        maximum = (obj.get("spec") or {}).get("maxReplicaCount")
        configured = {
            str(o["data"]["ACTIONS_PARTITIONS"])
            for o in objects
            if o.get("kind") == "ConfigMap" and "ACTIONS_PARTITIONS" in (o.get("data") or {})
        }
        if partitions is None:
            yield f"{name_of(obj)}: needs the avatar-backend/partitions annotation"
        elif configured and configured != {partitions}:
            yield (
                f"{name_of(obj)}: avatar-backend/partitions {partitions} differs from "
                f"ACTIONS_PARTITIONS {sorted(configured)}"
            )
        elif isinstance(maximum, int) and maximum > int(partitions):
            yield (
                f"{name_of(obj)}: maxReplicaCount {maximum} exceeds the partition count "
                f"{partitions}: replicas beyond it would break per-room order"
            )


def ingress_problems(obj: Obj, objects: list[Obj]) -> Iterator[str]:
    namespace = obj.get("metadata", {}).get("namespace")
    services = {
        o["metadata"]["name"]: o
        for o in objects
        if o.get("kind") == "Service" and o.get("metadata", {}).get("namespace") == namespace
    }
    for rule in (obj.get("spec") or {}).get("rules") or []:
        for path in (rule.get("http") or {}).get("paths") or []:
            backend = (path.get("backend") or {}).get("service") or {}
            port = backend.get("port") or {}
            service = services.get(backend.get("name", ""))
            where = f"{name_of(obj)} path {path.get('path')}"
            if service is None:
                yield f"{where}: routes to {backend.get('name')!r}, which is not a Service here"
                continue
            ports = service.get("spec", {}).get("ports") or []
            if not any(
                p.get("name") == port.get("name") or p.get("port") == port.get("number")
                for p in ports
            ):
                yield f"{where}: {backend.get('name')} has no port {port}"
            if port.get("name") == "metrics" or any(
                p.get("name") == "metrics" and p.get("port") == port.get("number") for p in ports
            ):
                yield f"{where}: routes the public to a metrics port"


_UNITS = {
    "Ki": 1 / 1024,
    "Mi": 1.0,
    "Gi": 1024.0,
    "K": 1e3 / 2**20,
    "M": 1e6 / 2**20,
    "G": 1e9 / 2**20,
}


def mebibytes(quantity: str) -> float:
    for suffix, factor in sorted(_UNITS.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def actions_memory_problems(objects: list[Obj]) -> Iterator[str]:
    from avatar_actions.config import ActionsSettings, memory_bound_mib

    default = ActionsSettings.model_fields["max_rooms"].default
    for obj in objects:
        if obj.get("kind") != "Deployment" or obj["metadata"]["name"] != "avatar-actions":
            continue
        configured = [
            int(o["data"]["ACTIONS_MAX_ROOMS"])
            for o in objects
            if o.get("kind") == "ConfigMap" and "ACTIONS_MAX_ROOMS" in (o.get("data") or {})
        ]
        bound = memory_bound_mib(max(configured, default=default))
        for container in obj["spec"]["template"]["spec"]["containers"]:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            if limit is not None and mebibytes(str(limit)) < bound:
                yield (
                    f"{name_of(obj)}: memory limit {limit} is below the replica's memory "
                    f"bound of {bound:.0f} MiB for ACTIONS_MAX_ROOMS (docs/actions.md)"
                )


def policy_problems(objects: list[Obj]) -> Iterator[str]:
    for obj in objects:
        kind = obj.get("kind")
        if kind == "Secret":
            yield f"{name_of(obj)}: secrets are created by the operator, never shipped in manifests"
        elif kind in WORKLOADS:
            yield from workload_problems(obj, objects)
        elif kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            yield from autoscaler_problems(obj, objects)
        elif kind == "Ingress":
            yield from ingress_problems(obj, objects)
    yield from actions_memory_problems(objects)
    namespaces = {
        o.get("metadata", {}).get("namespace") for o in objects if o.get("kind") in WORKLOADS
    }
    for namespace in namespaces:
        if not any(
            o.get("kind") == "NetworkPolicy"
            and o.get("metadata", {}).get("namespace") == namespace
            and o.get("spec", {}).get("podSelector") == {}
            and set(o.get("spec", {}).get("policyTypes", [])) == {"Ingress", "Egress"}
            and not o.get("spec", {}).get("ingress")
            and not o.get("spec", {}).get("egress")
            for o in objects
        ):
            yield f"namespace {namespace}: no default-deny NetworkPolicy (ingress and egress)"


def check_overlay(overlay: Path) -> list[str]:
    try:
        objects = render(overlay)
    except RenderError as exc:
        return [f"kustomize failed: {exc}"]
    problems = [p for obj in objects for p in schema_problems(obj)]
    return problems + list(policy_problems(objects)) + list(k8s_nats.overlay_problems(objects))


def main(argv: list[str]) -> int:
    base = Path(argv[1]) if len(argv) > 1 else ROOT / "deploy" / "k8s"
    overlays = sorted(p for p in (base / "overlays").iterdir() if p.is_dir())
    if not overlays:
        print(f"error: no overlays under {base / 'overlays'}")
        return 1
    values = list(k8s_nats.values_problems(base / "dependencies" / "nats-values.yaml"))
    print(f"nats-values: {'ok' if not values else f'{len(values)} problem(s)'}")
    for problem in values:
        print(f"  - {problem}")
    failed = bool(values)
    for overlay in overlays:
        problems = check_overlay(overlay)
        print(f"{overlay.name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
