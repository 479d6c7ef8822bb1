"""`make k8s-validate`: the overlays pass, and each kind of mistake is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"


def validate(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.k8s_validate", str(tree)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_overlay_renders_validates_and_meets_the_policy() -> None:
    done = validate(K8S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dev: ok" in done.stdout
    assert "prod: ok" in done.stdout


def _replace(path: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(tree: Path) -> None:
        file = tree / path
        text = file.read_text()
        assert old in text, f"{old!r} not in {path}"
        file.write_text(text.replace(old, new, 1))

    return edit


def _add_secret(tree: Path) -> None:
    (tree / "base" / "secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: avatar-livekit\n"
        "stringData:\n  api-secret: hunter2\n"
    )
    _replace("base/kustomization.yaml", "  - shared.yaml\n", "  - shared.yaml\n  - secret.yaml\n")(
        tree
    )


PDB = "kind: PodDisruptionBudget\nmetadata:\n  name: avatar-agent\nspec:\n  maxUnavailable: 1\n"
BREAKAGES = {
    "unknown field": (
        _replace(
            "base/token.yaml",
            "  revisionHistoryLimit: 5",
            "  revisionHistoryLimit: 5\n  replicaz: 3",
        ),
        "Additional properties are not allowed ('replicaz' was unexpected)",
    ),
    "no memory limit": (
        _replace("base/bundles.yaml", "              memory: 256Mi\n", ""),
        "resources.limits.memory is missing",
    ),
    "no readiness probe": (
        _replace("base/actions.yaml", "          readinessProbe:", "          startupProbe:"),
        "readinessProbe is missing",
    ),
    "latest tag": (
        _replace("overlays/prod/kustomization.yaml", "newTag: 0.1.0", "newTag: latest"),
        "needs an explicit version tag (not latest)",
    ),
    "root allowed": (
        _replace("base/agent.yaml", "        runAsNonRoot: true", "        runAsNonRoot: false"),
        "runAsNonRoot must be true",
    ),
    "writable root filesystem": (
        _replace(
            "base/token.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"
        ),
        "readOnlyRootFilesystem must be true",
    ),
    "no PDB": (
        _replace(
            "base/agent.yaml",
            PDB + "  selector:\n    matchLabels:\n      app.kubernetes.io/name: avatar-agent",
            PDB + "  selector:\n    matchLabels:\n      app.kubernetes.io/name: someone-else",
        ),
        "Deployment/avatar-agent: no PodDisruptionBudget selects its pods",
    ),
    "inlined secret": (
        _replace(
            "base/token.yaml",
            "            - name: LIVEKIT_API_SECRET\n              valueFrom:\n"
            "                secretKeyRef:\n"
            "                  name: avatar-livekit\n                  key: api-secret",
            "            - name: LIVEKIT_API_SECRET\n              value: hunter2",
        ),
        "LIVEKIT_API_SECRET is inlined",
    ),
    "shipped secret": (_add_secret, "Secret/avatar-livekit: secrets are created by the operator"),
    "no default deny": (
        _replace(
            "base/network-policies.yaml",
            'podSelector: {}\n  policyTypes: ["Ingress", "Egress"]\n---',
            'podSelector: {}\n  policyTypes: ["Ingress"]\n---',
        ),
        "no default-deny NetworkPolicy",
    ),
    "actions beyond partitions": (
        _replace("base/actions.yaml", "  maxReplicaCount: 16", "  maxReplicaCount: 20"),
        "maxReplicaCount 20 exceeds the partition count 16",
    ),
    "partitions out of step": (
        _replace("base/actions.yaml", '  ACTIONS_PARTITIONS: "16"', '  ACTIONS_PARTITIONS: "32"'),
        "avatar-backend/partitions 16 differs from ACTIONS_PARTITIONS",
    ),
    "ingress to metrics": (
        _replace(
            "base/ingress.yaml",
            "                name: avatar-token\n                port: {name: http}",
            "                name: avatar-token\n                port: {name: metrics}",
        ),
        "routes the public to a metrics port",
    ),
    "ingress to nowhere": (
        _replace(
            "base/ingress.yaml",
            "                name: avatar-bundles\n",
            "                name: avatar-bundlez\n",
        ),
        "which is not a Service here",
    ),
    "actions memory under its bound": (
        _replace(
            "base/actions.yaml", '  ACTIONS_MAX_ROOMS: "20000"', '  ACTIONS_MAX_ROOMS: "60000"'
        ),
        "is below the replica's memory bound",
    ),
    "broken kustomization": (
        _replace(
            "base/kustomization.yaml", "  - agent.yaml\n", "  - agent.yaml\n  - missing.yaml\n"
        ),
        "kustomize failed",
    ),
    "no NATS seed": (
        _replace("base/actions.yaml", "  NATS_NKEY_SEED_FILE: /etc/avatar/nats/seed.nk\n", ""),
        "avatar-actions: NATS_NKEY_SEED_FILE is not set",
    ),
    "seed from another service's secret": (
        _replace("base/agent.yaml", "name: avatar-nats-agent", "name: avatar-nats-actions"),
        "is not mounted read-only from its Secret avatar-nats-agent",
    ),
    "wider NATS permissions": (
        _replace("dependencies/nats-values.yaml", '"_INBOX.agent.>"', '"_INBOX.>"'),
        "agent's permissions differ from avatar_shared.bus.identities",
    ),
    "no client TLS": (
        _replace(
            "dependencies/nats-values.yaml",
            "    tls:\n      enabled: true\n      secretName: nats-server-tls",
            "    tls:\n      enabled: false\n      secretName: nats-server-tls",
        ),
        "client TLS is off",
    ),
    "dev NATS without permissions": (
        _replace("overlays/dev/nats.yaml", '            - "--config=/etc/nats/nats.conf"\n', ""),
        "nats: runs without the services' permissions",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_manifest_fails_validation(breakage: str, tmp_path: Path) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    edit, message = BREAKAGES[breakage]
    edit(tree)
    done = validate(tree)
    assert done.returncode == 1, done.stdout
    assert message in done.stdout, done.stdout


def test_the_dev_overlay_serves_the_same_sample_bundle_as_make_run() -> None:
    sample = ROOT / "services" / "bundles" / "samples" / "demo-avatar.json"
    assert (K8S / "overlays" / "dev" / "bundles" / "demo-avatar.json").read_bytes() == (
        sample.read_bytes()
    )


def test_the_base_avatars_match_the_local_ones() -> None:
    local = ROOT / "deploy" / "local" / "avatars.toml"
    assert (K8S / "base" / "config" / "avatars.toml").read_bytes() == local.read_bytes()
