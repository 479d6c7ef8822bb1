"""Each service's Dockerfile, read statically: pinned bases, non-root, no secrets, only itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ("token", "bundles", "actions", "agent")
PINNED = re.compile(r"^[\w./-]+:\d+\.\d+(\.\d+)?[\w.-]*(@sha256:[0-9a-f]{64})?$")
SECRETISH = re.compile(r"(SECRET|PASSWORD|API_KEY|TOKEN)", re.IGNORECASE)


def instructions(service: str) -> list[tuple[str, str]]:
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stages(service: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(service):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


@pytest.mark.parametrize("service", SERVICES)
def test_bases_are_pinned_and_the_build_is_multi_stage(service: str) -> None:
    froms = [rest.split()[0] for keyword, rest in instructions(service) if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: the build tools stay out of the image"
    for image in froms:
        assert PINNED.match(image), f"{image} is not pinned to a version"
        assert not image.endswith(":latest")


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_runs_as_a_non_root_user_and_drains_on_sigterm(service: str) -> None:
    final = stages(service)[-1]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert ("STOPSIGNAL", "SIGTERM") in final
    entry = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entry
    assert entry[-1].startswith(f'["python", "-m", "avatar_{service}"')


@pytest.mark.parametrize("service", SERVICES)
def test_no_secret_is_baked_in(service: str) -> None:
    for keyword, rest in instructions(service):
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not SECRETISH.search(rest), f"{keyword} {rest}"
        if keyword in ("COPY", "ADD"):
            assert ".env" not in rest
            assert "creds" not in rest


@pytest.mark.parametrize("service", SERVICES)
def test_only_this_service_is_installed(service: str) -> None:
    runs = [
        rest for keyword, rest in instructions(service) if keyword == "RUN" and "uv sync" in rest
    ]
    assert len(runs) == 1
    assert "--frozen" in runs[0]
    assert "--no-dev" in runs[0]
    assert re.findall(r"--package (\S+)", runs[0]) == [f"avatar-{service}"]
    sources = [
        rest for keyword, rest in instructions(service) if keyword == "COPY" and "/src/" in rest
    ]
    assert sources == [f"services/{service}/src/ services/{service}/src/"]


def dockerignore_includes() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


@pytest.mark.parametrize("service", SERVICES)
def test_every_copied_path_is_named_in_the_dockerignore(service: str) -> None:
    """Docker's classic builder drops a directory excluded by ``**`` unless a ``!``
    pattern starts with its path literally (``!services/*/pyproject.toml`` lets no
    ``services/bundles/`` in): each COPY source must be under a glob-free ``!`` pattern."""
    literal = [p for p in dockerignore_includes() if not any(c in p for c in "*?[")]
    for keyword, args in instructions(service):
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            path = source.rstrip("/")
            assert any(path == p or path.startswith(p + "/") for p in literal), (
                f"{service}: COPY {source} is not named in .dockerignore"
            )
