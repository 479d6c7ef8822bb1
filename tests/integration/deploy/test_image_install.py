"""Each Dockerfile's install step, run for real (without Docker): only that service lands.

The build stage's COPY lines are replayed into a scratch folder and its `uv sync` runs
there with the lock file, as `docker build` would, into a fresh environment. What gets
installed is then read from the environment's metadata.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.deploy.test_dockerfiles import SERVICES, stages

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(300)


def uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".bootstrap" / "bin" / "uv")
    assert Path(found).exists(), "uv is installed by `make install`"
    return found


def installed(venv: Path) -> set[str]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {
        re.sub(r"-[^-]+\.dist-info$", "", p.name).lower().replace("_", "-")
        for p in site.glob("*.dist-info")
    }


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_installs_its_service_and_no_other(service: str, tmp_path: Path) -> None:
    build = stages(service)[1]  # stage 0 only provides uv
    context = tmp_path / "context"
    for keyword, rest in build:
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, dest = rest.split()
            for source in sources:  # Docker's rules: a folder's contents go into dest
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(
                        origin, context / dest, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    target = context / dest / (origin.name if dest.endswith("/") else "")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, target)
    (command,) = [rest for keyword, rest in build if keyword == "RUN"]
    venv = tmp_path / "venv"
    env = os.environ | {
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
        "VIRTUAL_ENV": "",
    }
    argv = [uv(), *command.split()[1:]]
    done = subprocess.run(argv, cwd=context, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    packages = installed(venv)
    ours = {p for p in packages if p.startswith("avatar-")}
    assert ours == {"avatar-shared", f"avatar-{service}"}
    assert "pytest" not in packages
    assert "mypy" not in packages
    if service != "agent":
        assert "livekit-agents" not in packages  # the heavy voice stack stays in its image
