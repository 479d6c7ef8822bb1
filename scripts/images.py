"""Base images for the service images, where no registry can provide them.

``python -m scripts.images base`` makes sure the two images every Dockerfile starts
from exist locally, under the exact names the Dockerfiles use. Each is used as it is
when present, pulled when a registry answers, and otherwise built here as a stand-in,
for tests only and never pushed:

- ``python:<version>-slim-bookworm``: a Debian bookworm root filesystem
  (``debootstrap --variant=minbase`` from the Debian mirror apt uses, with ``python3``,
  ``python-is-python3`` and ``ca-certificates``), imported with ``docker import`` and
  the ``PATH`` and ``LANG`` the official image sets. It differs from the official image:
  its Python is Debian's 3.11 in ``/usr/bin`` (3.11.2 on bookworm), not a build in
  ``/usr/local``; it trusts the certificate authorities this host adds to Debian's
  (``/usr/local/share/ca-certificates``, such as an HTTPS proxy's), and says so to uv
  and Python through ``SSL_CERT_FILE``.
- ``ghcr.io/astral-sh/uv:<version>``: ``FROM scratch`` with ``/uv`` and ``/uvx`` from the
  uv wheel of the same version on PyPI (sha256 checked against PyPI's simple index).

``python -m scripts.images sizes`` prints each service image's size.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("token", "bundles", "actions", "agent")
MIRROR = "http://deb.debian.org/debian"
HOST_CAS = Path("/usr/local/share/ca-certificates")
PULL_TIMEOUT = 60


def base_images() -> list[str]:
    """Every ``FROM`` of the service Dockerfiles that is not a build stage of its own."""
    images: set[str] = set()
    for service in SERVICES:
        text = (ROOT / "services" / service / "Dockerfile").read_text()
        stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE))
        for image in re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE | re.IGNORECASE):
            if image not in stages:
                images.add(image)
    return sorted(images)


def docker(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", *args], check=False, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def present(image: str) -> bool:
    return docker("image", "inspect", image).returncode == 0


def pulled(image: str) -> bool:
    try:
        return docker("pull", image, timeout=PULL_TIMEOUT).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure(image: str) -> str:
    """How ``image`` came to be here: present, pulled, or built as a stand-in."""
    if present(image):
        return "present"
    if pulled(image):
        return "pulled"
    name, _, tag = image.partition(":")
    if name == "python":
        build_python(image, tag)
    elif name.endswith("astral-sh/uv"):
        build_uv(image, tag)
    else:
        raise SystemExit(f"error: no stand-in known for {image}; provide it or a registry")
    return "built (stand-in)"


def build_python(image: str, tag: str) -> None:
    suite = tag.rsplit("-", 1)[-1]  # 3.11.14-slim-bookworm -> bookworm
    if shutil.which("debootstrap") is None:
        raise SystemExit("error: debootstrap is needed to build a stand-in for " + image)
    with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python-is-python3,ca-certificates",
            suite,
            str(rootfs),
            MIRROR,
        )
        extra = sorted(HOST_CAS.glob("*.crt")) if HOST_CAS.is_dir() else []
        if extra:
            target = rootfs / "usr/local/share/ca-certificates"
            target.mkdir(parents=True, exist_ok=True)
            for cert in extra:
                shutil.copy(cert, target / cert.name)
            run("chroot", str(rootfs), "update-ca-certificates")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        run(
            "sh",
            "-c",
            f"tar -C {rootfs} -c . | docker import"
            " --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'"
            " --change 'ENV LANG=C.UTF-8'"
            " --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'"
            " --change 'CMD [\"python3\"]'"
            f" - {image}",
        )


def build_uv(image: str, version: str) -> None:
    arch = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine()]
    index = urllib.request.Request(
        "https://pypi.org/simple/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(index, timeout=30) as r:  # noqa: S310  (https, PEP 691)
        files = json.load(r)["files"]
    wheel = next(
        f
        for f in files
        if f["filename"].startswith(f"uv-{version}-")
        and f["filename"].endswith(".whl")
        and "manylinux" in f["filename"]
        and f"_{arch}" in f["filename"]
    )
    if not wheel["url"].startswith("https://"):
        raise SystemExit(f"error: unexpected wheel URL {wheel['url']}")
    with urllib.request.urlopen(wheel["url"], timeout=120) as r:  # noqa: S310
        data = r.read()
    if hashlib.sha256(data).hexdigest() != wheel["hashes"]["sha256"]:
        raise SystemExit(f"error: {wheel['filename']} does not match PyPI's sha256")
    with tempfile.TemporaryDirectory(prefix="uv-") as tmp, zipfile.ZipFile(io.BytesIO(data)) as z:
        for member in z.namelist():
            if re.search(r"\.data/scripts/uvx?$", member):
                target = Path(tmp) / Path(member).name
                target.write_bytes(z.read(member))
                target.chmod(0o755)
        (Path(tmp) / "Dockerfile").write_text("FROM scratch\nCOPY uv uvx /\n")
        run("docker", "build", "--network", "host", "-t", image, tmp)


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def sizes(tag: str) -> None:
    for service in SERVICES:
        image = f"avatar-backend/{service}:{tag}"
        out = docker("image", "inspect", "--format", "{{.Size}}", image)
        size = f"{int(out.stdout) / 1e6:.0f} MB" if out.returncode == 0 else "not built"
        print(f"{image}: {size}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("base", help="make sure the base images exist (stand-ins if need be)")
    sizes_cmd = sub.add_parser("sizes", help="print each service image's size")
    sizes_cmd.add_argument("--tag", required=True)
    args = parser.parse_args()
    if shutil.which("docker") is None or docker("info").returncode != 0:
        print("error: no Docker engine answers (docker info)", file=sys.stderr)
        return 1
    if args.command == "base":
        for image in base_images():
            print(f"{image}: {ensure(image)}", flush=True)
    else:
        sizes(args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
