"""The directory backend: bundles from files, nothing from outside the folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from avatar_bundles.app import create_app
from avatar_bundles.config import BundlesSettings
from avatar_bundles.sources import DirectorySource, SourceError
from avatar_shared.web.auth import AuthSettings
from avatar_shared.web.policy import Policy

ROOT = Path(__file__).parents[3]
MAX = 1024 * 1024
POLICY = Policy.model_validate({"rules": [{"principals": ["anonymous"], "avatars": ["*"]}]})


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    store = tmp_path / "bundles"
    store.mkdir()
    (store / "ava-1.json").write_text('{"payload": "from-disk"}')
    (store / "broken.json").write_text("{not json")
    (store / "wrong-shape.json").write_text('{"payload": 42}')
    (tmp_path / "secret.json").write_text('{"payload": "outside the folder"}')
    return store


async def test_the_committed_sample_bundle_is_served() -> None:
    app = create_app(
        BundlesSettings(directory=str(ROOT / "services/bundles/samples")),
        AuthSettings(policy_file="unused", anonymous=True),
        POLICY,
        None,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        response = await c.get("/api/avatars/bundle/demo-avatar")
    assert response.status_code == 200
    assert response.json()["payload"].startswith("demo-avatar-offline-sample-bundle")


async def test_files_in_the_folder_are_bundles(folder: Path) -> None:
    assert await DirectorySource(folder, MAX).fetch("ava-1") == "from-disk"


@pytest.mark.parametrize(
    "avatar_id", ["missing", "../secret", "..", "/etc/passwd", "ava-1\x00", "a/b"]
)
async def test_unknown_or_escaping_ids_are_not_found(folder: Path, avatar_id: str) -> None:
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch(avatar_id)
    assert refused.value.status == 404


async def test_a_symlink_loop_in_the_folder_is_a_502_not_a_500(folder: Path) -> None:
    (folder / "loop.json").symlink_to(folder / "loop.json")
    with pytest.raises(SourceError) as failed:
        await DirectorySource(folder, MAX).fetch("loop")
    assert (failed.value.status, failed.value.error) == (502, "bad_bundle")


async def test_an_id_with_a_trailing_newline_is_not_a_file_name(folder: Path) -> None:
    (folder / "ava-1\n.json").write_text('{"payload": "not for this id"}')
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch("ava-1\n")
    assert refused.value.status == 404


@pytest.mark.parametrize("avatar_id", ["broken", "wrong-shape"])
async def test_invalid_files_are_502_not_500(folder: Path, avatar_id: str) -> None:
    with pytest.raises(SourceError) as failed:
        await DirectorySource(folder, MAX).fetch(avatar_id)
    assert failed.value.status == 502


async def test_symlinks_out_of_the_folder_are_not_followed(folder: Path) -> None:
    (folder / "link.json").symlink_to(folder.parent / "secret.json")
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch("link")
    assert refused.value.status == 404


def test_a_missing_folder_stops_the_service(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BUNDLES_DIRECTORY"):
        DirectorySource(tmp_path / "absent", MAX)


async def test_a_folder_named_like_a_bundle_is_not_found(folder: Path) -> None:
    (folder / "x.json").mkdir()
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch("x")
    assert refused.value.status == 404


async def test_a_file_over_the_limit_is_502_too_large(folder: Path) -> None:
    (folder / "huge.json").write_text('{"payload": "' + "x" * MAX + '"}')
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch("huge")
    assert (refused.value.status, refused.value.error) == (502, "bundle_too_large")


async def test_a_deeply_nested_file_is_502_bad_bundle(folder: Path) -> None:
    (folder / "deep.json").write_text("[" * 100_000)
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch("deep")
    assert (refused.value.status, refused.value.error) == (502, "bad_bundle")


async def test_an_unreadable_file_is_502_bad_bundle(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)  # as a file the service may not read
    with pytest.raises(SourceError) as refused:
        await DirectorySource(folder, MAX).fetch("ava-1")
    assert (refused.value.status, refused.value.error) == (502, "bad_bundle")
