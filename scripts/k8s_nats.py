"""``make k8s-validate``'s checks of the bus's security (docs/bus-security.md).

- The NATS Helm values (``deploy/k8s/dependencies/nats-values.yaml``) enable TLS for
  clients and cluster routes, and declare exactly the identities of
  ``avatar_shared.bus.identities`` with exactly their permissions, public keys from the
  server's environment (``<< $AVATAR_NKEY_<IDENTITY> >>``), each of which the values
  take from the ConfigMap ``avatar-nats-identities``.
- In every overlay, each service with a NATS identity sets ``NATS_NKEY_SEED_FILE`` and
  mounts it from its own Secret ``avatar-nats-<service>``; the token service, which does
  not use NATS, has none; a NATS server the overlay runs itself loads the generated
  permissions (``--config``) and the public keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from avatar_shared.bus import identities

Obj = dict[str, Any]


def values_problems(path: Path) -> Iterator[str]:
    values = yaml.safe_load(path.read_text())
    config = values.get("config", {})
    where = path.name
    if not config.get("nats", {}).get("tls", {}).get("enabled"):
        yield f"{where}: client TLS is off (config.nats.tls.enabled)"
    if not config.get("cluster", {}).get("tls", {}).get("enabled"):
        yield f"{where}: cluster route TLS is off (config.cluster.tls.enabled)"
    users = config.get("merge", {}).get("authorization", {}).get("users", [])
    declared = {user.get("nkey"): user.get("permissions") for user in users}
    env = values.get("container", {}).get("env", {})
    for name in (*identities.IDENTITIES, identities.ADMIN):
        variable = identities.key_variable(name)
        reference = f"<< ${variable} >>"
        if reference not in declared:
            yield f"{where}: no user {reference} ({name})"
        elif name != identities.ADMIN and declared[reference] != identities.permissions(name):
            yield f"{where}: {name}'s permissions differ from avatar_shared.bus.identities"
        source = env.get(variable, {}).get("valueFrom", {}).get("configMapKeyRef", {})
        if source.get("name") != "avatar-nats-identities" or source.get("key") != variable:
            yield f"{where}: {variable} does not come from ConfigMap avatar-nats-identities"
    extra = set(declared) - {
        f"<< ${identities.key_variable(n)} >>" for n in (*identities.IDENTITIES, identities.ADMIN)
    }
    if extra:
        yield f"{where}: users that are no identity of ours: {sorted(extra)}"


def _config_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        for obj in objects:
            if obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == name:
                env.update(obj.get("data") or {})
    env.update({e["name"]: e.get("value", "") for e in container.get("env", []) if "value" in e})
    return env


def overlay_problems(objects: list[Obj]) -> Iterator[str]:
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        name = obj["metadata"]["name"]
        pod = obj["spec"]["template"]["spec"]
        if name == "nats":
            yield from _server_problems(pod)
            continue
        service = name.removeprefix("avatar-")
        container = pod["containers"][0]
        seed = _config_env(objects, container).get("NATS_NKEY_SEED_FILE")
        if service not in identities.IDENTITIES:
            if seed:
                yield f"{name}: has a NATS seed but no NATS identity"
            continue
        if not seed:
            yield f"{name}: NATS_NKEY_SEED_FILE is not set (its NATS identity)"
            continue
        yield from _seed_mount_problems(name, service, pod, container, seed)


def _seed_mount_problems(
    name: str, service: str, pod: Obj, container: Obj, seed: str
) -> Iterator[str]:
    secret = f"avatar-nats-{service}"
    directory, file = str(Path(seed).parent), Path(seed).name
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    for volume in pod.get("volumes", []):
        sources = volume.get("projected", {}).get("sources", [])
        if "secret" in volume:
            sources = [{"secret": volume["secret"] | {"name": volume["secret"]["secretName"]}}]
        for source in sources:
            found = source.get("secret", {})
            paths = {item["path"] for item in found.get("items", [])} or {file}
            if found.get("name") == secret and file in paths:
                mount = mounts.get(volume["name"])
                if mount and mount["mountPath"] == directory and mount.get("readOnly"):
                    return
    yield f"{name}: {seed} is not mounted read-only from its Secret {secret}"


def _server_problems(pod: Obj) -> Iterator[str]:
    container = pod["containers"][0]
    if not any(str(a).startswith("--config=") for a in container.get("args", [])):
        yield "nats: runs without the services' permissions (--config)"
    refs = {s.get("configMapRef", {}).get("name") for s in container.get("envFrom", [])}
    if "avatar-nats-identities" not in refs:
        yield "nats: does not read the public keys (ConfigMap avatar-nats-identities)"
