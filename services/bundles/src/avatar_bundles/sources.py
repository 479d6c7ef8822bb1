"""Where bundles come from, and the one way their content is checked.

A source answers ``fetch(avatar_id) -> payload`` or raises a :class:`SourceError` whose
status the API passes on: 404 unknown avatar, 403 not ours to fetch, 502 the source is
broken (its answer, or the file, is not a bundle, or is larger than the limit), 503 the
source is rate-limited or resting after failures (with the seconds to wait).
:class:`DirectorySource` is the folder backend; the ZeroWeight backend is in
:mod:`avatar_bundles.zeroweight`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
AVATAR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class SourceError(Exception):
    def __init__(self, status: int, error: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Worth serving a stale copy for (the avatar may well still exist)."""
        return self.status >= 500


def not_found() -> SourceError:
    return SourceError(404, "not_found", "no bundle for this avatar")


def too_large(limit: int) -> SourceError:
    return SourceError(502, "bundle_too_large", f"the bundle is larger than {limit} bytes")


class BundleSource(Protocol):
    async def fetch(self, avatar_id: str) -> str: ...


def payload_of(body: bytes) -> str:
    """The payload of a bundle document ``{"payload": "<string>", ...}``, or ValueError."""
    try:
        document = json.loads(body)
    except RecursionError:  # nested thousands deep: not a bundle
        raise ValueError("bundle is nested too deeply") from None
    payload = document.get("payload") if isinstance(document, dict) else None
    if not isinstance(payload, str):
        raise ValueError("bundle is not a JSON object with a string 'payload'")
    return payload


class DirectorySource:
    """``<root>/<avatar_id>.json`` holding ``{"payload": "..."}``; nothing outside ``root``,
    nothing but regular files, nothing over ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self._root = root.resolve()
        self._max = max_bytes
        if not self._root.is_dir():
            raise ValueError(f"BUNDLES_DIRECTORY: {root} is not a directory")

    async def fetch(self, avatar_id: str) -> str:
        # The API validated the id; this class does not rely on it.
        if not AVATAR_ID.fullmatch(avatar_id):
            raise not_found()
        name = f"{avatar_id}.json"
        raw = await asyncio.to_thread(self._read, name)  # resolving reads links: disk too
        try:
            return payload_of(raw)
        except ValueError as exc:
            log.error("bundle file %s is invalid: %s", name, exc)
            raise SourceError(502, "bad_bundle", "the stored bundle is invalid") from None

    def _read(self, name: str) -> bytes:
        try:
            path = (self._root / name).resolve()
            if path.parent != self._root or not path.is_file():  # outside, absent, a folder...
                raise not_found()
            with path.open("rb") as file:
                raw = file.read(self._max + 1)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
            log.error("bundle file %s cannot be read: %s", name, type(exc).__name__)
            raise SourceError(502, "bad_bundle", "the stored bundle cannot be read") from None
        if len(raw) > self._max:
            log.error("bundle file %s is larger than %d bytes", name, self._max)
            raise too_large(self._max)
        return raw
