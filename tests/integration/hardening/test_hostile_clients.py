"""Both HTTP services as processes against hostile clients, on raw sockets: huge bodies,
bodies and headers that never finish, requests that are not HTTP, too many at once. Each
gets a bounded JSON answer in bounded time and memory, and the service answers normally
afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.hardening.conftest import CALLER_KEY, MAX_GROWTH_MIB, ROOT, bundles_env
from tests.support.nats_server import NatsServer, free_port
from tests.support.service_process import ServiceProcess, running_service, token_env
from tests.support.zeroweight import ZeroWeightDouble

TOKEN_PATH = "/api/livekit/token?avatar_id=demo-avatar"
AUTH = {"X-API-Key": CALLER_KEY}
MIB = 1024 * 1024


async def connect(
    service: ServiceProcess, url: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(url or service.url)
    return await asyncio.open_connection(address.hostname, address.port)


async def post_huge(service: ServiceProcess, total: int, *, declare: bool) -> bytes:
    """POST ``total`` bytes of body (declared, or chunked) while reading the answer; the
    answer as soon as the service gives one."""
    reader, writer = await connect(service)
    framing = f"Content-Length: {total}" if declare else "Transfer-Encoding: chunked"
    writer.write(
        f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n".encode()
    )

    async def send_body() -> None:
        piece = b"x" * MIB
        for _ in range(total // MIB):
            writer.write(piece if declare else b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()

    sending = asyncio.create_task(send_body())
    try:
        async with asyncio.timeout(10):
            answer = await reader.readuntil(b"\r\n\r\n")
            length = int(answer.split(b"content-length: ")[1].split(b"\r\n")[0])
            return answer + await reader.readexactly(length)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sending
        writer.close()


def assert_413(answer: bytes) -> None:
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error":"body_too_large"' in answer
    assert b"content-type: application/json" in answer


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "chunked"])
async def test_a_200_mb_body_is_413_without_being_read(
    token: ServiceProcess, declare: bool
) -> None:
    token.reset_peak()
    before = token.rss_mib()
    started = time.monotonic()
    assert_413(await post_huge(token, 200 * MIB, declare=declare))
    assert time.monotonic() - started < 5
    assert token.peak_mib() - before < MAX_GROWTH_MIB


async def test_four_concurrent_100_mb_bodies_stay_small(token: ServiceProcess) -> None:
    token.reset_peak()
    before = token.rss_mib()
    answers = await asyncio.gather(
        *(post_huge(token, 100 * MIB, declare=i % 2 == 0) for i in range(4))
    )
    for answer in answers:
        assert_413(answer)
    assert token.peak_mib() - before < MAX_GROWTH_MIB
    async with httpx.AsyncClient(base_url=token.url) as client:
        assert (await client.get(TOKEN_PATH)).status_code == 200


@pytest.fixture(params=["token", "bundles"])
def service(request: pytest.FixtureRequest) -> ServiceProcess:
    found: ServiceProcess = request.getfixturevalue(request.param)
    return found


@pytest.mark.parametrize("port", ["api", "metrics"])
async def test_connections_with_unfinished_headers_are_closed(
    service: ServiceProcess, port: str
) -> None:
    """On the API's port and on the metrics port alike (which once had a thread per
    connection, with no deadline)."""
    url = service.metrics_url if port == "metrics" else service.url
    threads = service.threads()
    connections = [await connect(service, url) for _ in range(50)]
    started = time.monotonic()
    for _, writer in connections:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")

    async def drip_until_closed(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> float:
        while True:
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Slow: 1\r\n")
            try:
                if await asyncio.wait_for(reader.read(1024), 0.3) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic() - started

    try:
        async with asyncio.timeout(10):
            await asyncio.sleep(0.5)
            assert service.threads() <= threads  # none per connection
            closed_after = await asyncio.gather(*(drip_until_closed(r, w) for r, w in connections))
    finally:
        for _, writer in connections:
            writer.close()
    assert max(closed_after) < 3.0  # *_HEADER_TIMEOUT_SECONDS=1
    async with httpx.AsyncClient() as client:
        assert (await client.get(service.url + "/healthz")).status_code == 200
        scrape = await client.get(service.metrics_url + "/metrics")
        assert scrape.status_code == 200
        assert "server" not in scrape.headers


async def test_answers_advertise_no_server_and_forbid_sniffing(service: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        for path in ("/healthz", "/nope", "/metrics", "/docs"):
            response = await client.get(path)
            assert "server" not in response.headers
            assert response.headers["x-content-type-options"] == "nosniff"
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/docs")).status_code == 404


async def exchange(service: ServiceProcess, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the service sends until it closes."""
    reader, writer = await connect(service)
    writer.write(request)
    try:
        async with asyncio.timeout(5):
            return await reader.read()  # to EOF: the service must close
    finally:
        writer.close()


def json_answer(answer: bytes, status: int) -> dict[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    lines = head.lower().split(b"\r\n")
    assert b"content-type: application/json" in lines
    assert b"x-content-type-options: nosniff" in lines
    found: dict[str, str] = json.loads(body)
    return found


NOT_HTTP = {
    "headers that pass 16 KiB unfinished": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: "
    + b"a" * 20_000,
    "no Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "a malformed request line": b"GET\r\n\r\n",
    "a header without a colon": b"GET /healthz HTTP/1.1\r\nHost: t\r\nnonsense\r\n\r\n",
    "a Content-Length of 5,000 digits": b"POST /api/livekit/token HTTP/1.1\r\nHost: t\r\n"
    b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n{}",
    "a broken chunked body": b"POST /api/livekit/token HTTP/1.1\r\nHost: t\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nZZ\r\n\r\n',
    # A proxy reading Content-Length sends all 40 bytes as the body; read as chunked,
    # the request after "0" would be a second one on the connection (smuggled).
    "both Content-Length and Transfer-Encoding": b"POST /api/livekit/token HTTP/1.1\r\n"
    b"Host: t\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", NOT_HTTP.values(), ids=NOT_HTTP.keys())
async def test_what_is_not_http_is_a_json_400_and_a_closed_connection(
    service: ServiceProcess, request_bytes: bytes
) -> None:
    body = json_answer(await exchange(service, request_bytes), 400)
    assert body["error"] == "bad_request"
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2's preface, spoken to HTTP/1.1
        b"GET /healthz HTTP/3.0\r\nHost: t\r\n\r\n",
    ],
    ids=["http2 preface", "http3"],
)
async def test_another_http_version_is_a_json_505_and_a_closed_connection(
    service: ServiceProcess, request_bytes: bytes
) -> None:
    body = json_answer(await exchange(service, request_bytes), 505)
    assert body["error"] == "http_version_not_supported"
    answer = await exchange(service, b"GET /healthz HTTP/1.0\r\n\r\n")  # still served
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


async def refused_counts(service: ServiceProcess) -> dict[str, float]:
    """``avatar.http.server.refused`` so far, by reason, from the service's metrics port."""
    async with httpx.AsyncClient() as client:
        scrape = (await client.get(service.metrics_url + "/metrics")).text
    found = re.findall(
        r'^avatar_http_server_refused_total\{avatar_reason="(\w+)"[^}]*\} (\S+)$', scrape, re.M
    )
    return {reason: float(value) for reason, value in found}


@pytest.fixture(scope="module")
async def counted(nats_server: NatsServer) -> AsyncIterator[ServiceProcess]:
    """The token service with its metrics on (the other fixtures run without the SDK)."""
    port = free_port()
    env = token_env(
        nats_server,
        port,
        ROOT / "deploy" / "local" / "policy.toml",
        TOKEN_HEADER_TIMEOUT_SECONDS="1",
        OTEL_SDK_DISABLED="false",
    )
    async with running_service("avatar_token", env, f"http://127.0.0.1:{port}") as service:
        yield service


async def test_a_flood_of_malformed_requests_is_counted_and_logged_once(
    counted: ServiceProcess,
) -> None:
    service = counted
    before, lines_before = (
        await refused_counts(service),
        service.log().count("Invalid HTTP request"),
    )
    for _ in range(20):
        json_answer(await exchange(service, NOT_HTTP["a header without a colon"]), 400)
    json_answer(await exchange(service, b"GET /healthz HTTP/3.0\r\nHost: t\r\n\r\n"), 505)
    after = await refused_counts(service)
    assert after["bad_request"] - before.get("bad_request", 0) == 20
    assert after["http_version_not_supported"] - before.get("http_version_not_supported", 0) == 1
    # uvicorn's warning per malformed request: at most one line a minute
    assert service.log().count("Invalid HTTP request") - lines_before <= 1


async def test_a_connection_left_mid_headers_is_counted_an_idle_one_is_not(
    counted: ServiceProcess,
) -> None:
    token = counted
    before = (await refused_counts(token)).get("header_timeout", 0)
    _, idle = await connect(token)
    _, partial = await connect(token)
    partial.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # never finished
    await asyncio.sleep(2.5)  # TOKEN_HEADER_TIMEOUT_SECONDS=1: both closed by now
    idle.close()
    partial.close()
    assert (await refused_counts(token)).get("header_timeout", 0) - before == 1


async def test_an_upgrade_it_does_not_speak_is_ignored_and_served(service: ServiceProcess) -> None:
    """``curl --http2`` on plain HTTP asks for h2c: served over HTTP/1.1, not logged."""
    headers = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": ""}
    async with httpx.AsyncClient(base_url=service.url) as client:
        for _ in range(3):
            assert (await client.get("/healthz", headers=headers)).status_code == 200
        websocket = {"Connection": "Upgrade", "Upgrade": "websocket"}
        assert (await client.get("/healthz", headers=websocket)).status_code == 200
    log = service.log()
    assert "Unsupported upgrade" not in log
    assert "WebSocket library" not in log


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"http://elsewhere.example/healthz", 200),  # as a client sends it to a proxy
        (b"HTTPS://elsewhere.example:8443/healthz", 200),
        (b"http://elsewhere.example", 404),  # the path "/"
        (b"ftp://elsewhere.example/healthz", 404),  # not an HTTP URL: a path
    ],
)
async def test_an_absolute_form_target_is_routed_by_its_path(
    service: ServiceProcess, target: bytes, status: int
) -> None:
    answer = await exchange(
        service, b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % target
    )
    json_answer(answer, status)


async def test_a_trailing_slash_is_404_not_a_redirect_to_the_callers_host(
    service: ServiceProcess,
) -> None:
    async with httpx.AsyncClient(base_url=service.url) as client:
        for path in ("/api/livekit/token/", "/api/avatars/bundle/x/"):  # one route each
            response = await client.get(path, headers={"Host": "evil.example"})
            assert response.status_code == 404
            assert "location" not in response.headers
            assert response.json()["error"] == "not_found"


async def test_a_body_dripping_past_its_deadline_is_408(token: ServiceProcess) -> None:
    reader, writer = await connect(token)
    writer.write(
        f"POST {TOKEN_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )

    async def drip() -> None:  # a byte every 0.2 s: each read is quick, the body never ends
        while True:
            writer.write(b"1\r\n \r\n")
            await asyncio.sleep(0.2)

    dripping = asyncio.create_task(drip())
    started = time.monotonic()
    try:
        async with asyncio.timeout(5):
            answer = await reader.readuntil(b"\r\n\r\n")
            length = int(answer.split(b"content-length: ")[1].split(b"\r\n")[0])
            answer += await reader.readexactly(length)
    finally:
        dripping.cancel()
        writer.close()
    assert time.monotonic() - started < 3  # TOKEN_BODY_TIMEOUT_SECONDS=1
    assert json_answer(answer, 408)["error"] == "body_timeout"


async def test_past_max_connections_a_request_is_a_json_503(nats_server: NatsServer) -> None:
    port = free_port()
    env = token_env(
        nats_server,
        port,
        ROOT / "deploy" / "local" / "policy.toml",
        TOKEN_MAX_CONNECTIONS="2",
        AUTH_ANONYMOUS="true",
        OTEL_SDK_DISABLED="false",  # the refusal is counted
    )
    async with running_service("avatar_token", env, f"http://127.0.0.1:{port}") as token:
        request = f"GET {TOKEN_PATH} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        idle = [await connect(token)]
        await asyncio.sleep(0.1)
        allowed = await exchange(token, request.encode())  # this one and one idle: 2
        assert allowed.startswith(b"HTTP/1.1 200"), allowed[:200]
        idle.append(await connect(token))
        await asyncio.sleep(0.1)
        refused = await exchange(token, request.encode())  # 3 connections
        body = json_answer(refused, 503)
        assert body["error"] == "overloaded"
        assert b"retry-after: 1" in refused.lower()
        assert (await refused_counts(token))["overloaded"] == 1
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=token.url) as client:
            assert (await client.get(TOKEN_PATH)).status_code == 200


async def test_clients_that_stop_reading_are_cut_off_holding_little(
    zeroweight: ZeroWeightDouble, nats_server: NatsServer, policy_file: Path
) -> None:
    """A bundle larger than the kernel's socket buffers, asked for by 20 clients that
    then read nothing: each holds a slice of the process's memory, not a copy of the
    bundle (600 MB for 30 MiB before), and is cut off once its writing has waited
    BUNDLES_SEND_TIMEOUT_SECONDS."""
    zeroweight.bundles["big-1"] = "x" * (24 * MIB)
    port = free_port()
    env = bundles_env(zeroweight, nats_server, port, policy_file) | {
        "BUNDLES_MAX_BUNDLE_BYTES": str(32 * MIB),
        "BUNDLES_SEND_TIMEOUT_SECONDS": "1",
        "OTEL_SDK_DISABLED": "false",  # the cut-offs are counted
    }
    request = b"GET /api/avatars/bundle/big-1 HTTP/1.1\r\nHost: t\r\nX-API-Key: %s\r\n\r\n"
    request %= CALLER_KEY.encode()
    async with running_service("avatar_bundles", env, f"http://127.0.0.1:{port}") as bundles:
        async with httpx.AsyncClient(base_url=bundles.url, timeout=30) as client:
            whole = await client.get("/api/avatars/bundle/big-1", headers=AUTH)  # cached now
        assert whole.status_code == 200
        bundles.reset_peak()
        before = bundles.rss_mib()
        readers = [await connect(bundles) for _ in range(20)]
        for _, writer in readers:
            writer.write(request)
        await asyncio.sleep(3)  # past the send deadline
        assert bundles.peak_mib() - before < MAX_GROWTH_MIB

        async def received(reader: asyncio.StreamReader) -> int:
            got = 0
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(1 << 20):
                    got += len(chunk)
            return got

        try:
            async with asyncio.timeout(20):
                sizes = await asyncio.gather(*(received(reader) for reader, _ in readers))
        finally:
            for _, writer in readers:
                writer.close()
        assert max(sizes) < len(whole.content)  # cut off, not served whole once read
        assert (await refused_counts(bundles))["send_timeout"] == len(readers)
        async with httpx.AsyncClient(base_url=bundles.url, timeout=30) as client:
            again = await client.get("/api/avatars/bundle/big-1", headers=AUTH)
        assert again.content == whole.content
