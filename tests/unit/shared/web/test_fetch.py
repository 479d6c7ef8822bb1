"""Reading upstream bodies within a limit on decoded bytes, and Retry-After."""

from __future__ import annotations

import gzip
import zlib

import pytest

from avatar_shared.retry_after import retry_after_seconds
from avatar_shared.web.fetch import UpstreamBodyError, read_limited
from tests.support.oidc import streamed


async def read(body: bytes, limit: int, encoding: str = "") -> bytes:
    headers = {"Content-Encoding": encoding} if encoding else {}
    return await read_limited(streamed(200, body, headers, piece=65536), limit)


async def test_identity_bodies_are_read_up_to_the_limit() -> None:
    assert await read(b"x" * 1000, 1000) == b"x" * 1000
    with pytest.raises(UpstreamBodyError) as over:
        await read(b"x" * 1001, 1000)
    assert over.value.kind == "too_large"


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "GZIP"])
async def test_compressed_bodies_are_decoded(encoding: str) -> None:
    body = b'{"payload": "' + b"a" * 50_000 + b'"}'
    packed = zlib.compress(body) if encoding == "deflate" else gzip.compress(body)
    assert await read(packed, 100_000, encoding) == body


async def test_a_gzip_bomb_is_refused_after_the_limit_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 300 * 1024
    with pytest.raises(UpstreamBodyError) as over:
        await read(bomb, 1024 * 1024, "gzip")
    assert over.value.kind == "too_large"


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"definitely not gzip", "gzip"),
        (gzip.compress(b"x" * 10_000)[:-20], "gzip"),  # cut short
        (b"anything", "br"),
        (b"anything", "gzip, gzip"),
    ],
)
async def test_undecodable_bodies_are_refused(body: bytes, encoding: str) -> None:
    with pytest.raises(UpstreamBodyError) as bad:
        await read(body, 1_000_000, encoding)
    assert bad.value.kind == "undecodable"


NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30),
        ("100000", 300),
        ("9" * 500, 300),
        ("Tue, 14 Nov 2023 22:14:20 GMT", 60),
        ("Tue, 14 Nov 2023 22:12:20 GMT", 0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 300),
    ],
)
def test_retry_after_in_seconds_and_http_dates_within_the_cap(value: str, seconds: float) -> None:
    assert retry_after_seconds(value, now=NOW, cap=300) == seconds


@pytest.mark.parametrize("value", [None, "", "inf", "-inf", "nan", "-3", "3.5", "soon", "٣"])
def test_retry_after_that_means_nothing_is_none(value: str | None) -> None:
    assert retry_after_seconds(value, now=NOW, cap=300) is None
