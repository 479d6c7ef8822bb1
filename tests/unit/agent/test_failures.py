"""What kind of failure a provider error is, and when the next request may go."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from email.utils import formatdate

import httpx2 as httpx
import openai
import pytest
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

from avatar_agent.failures import ReplyFailures, failure_kind
from avatar_agent.provider_http import FinishReasons, RetryAfterGate, data_deadline


def wrapped(cause: Exception) -> Exception:
    """How livekit-agents reports an exhausted retry loop."""
    try:
        raise APIConnectionError("failed after 3 attempts") from cause
    except APIConnectionError as exc:
        return exc


REQUEST = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
#: How the OpenAI SDK raises an ``{"error": ...}`` event of a stream.
STREAMED_ERROR = openai.APIError(
    "The server had an error", REQUEST, body={"type": "server_error", "code": None}
)


@dataclass
class Body:
    type: str
    code: str


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (APIStatusError("x", status_code=429), "rate_limited"),
        (APIStatusError("x", status_code=500), "server_error"),
        (APIStatusError("x", status_code=503), "server_error"),
        (APIStatusError("x", status_code=-1), "server_error"),  # a websocket closed on us
        (APIStatusError("x", status_code=404), "client_error"),
        (APIStatusError("x", status_code=401), "client_error"),
        (APITimeoutError(), "timeout"),
        (APIConnectionError(), "connection"),
        (APIError("x"), "error"),
        (RuntimeError("x"), "error"),
        # the Realtime API's errors: an error event's, a failed response's (dict or model)
        (APIError("x", body={"type": "server_error", "code": "server_error"}), "server_error"),
        (APIError("x", body=Body("invalid_request_error", "rate_limit_exceeded")), "rate_limited"),
        (APIError("x", body=Body("tokens", "inference_rate_limit_exceeded")), "rate_limited"),
        (APIError("x", body={"type": "invalid_request_error", "code": "bad"}), "client_error"),
        (APIError("x", body={"type": "tokens", "code": None}), "error"),
        (wrapped(APIStatusError("x", status_code=500)), "server_error"),
        (wrapped(APIStatusError("x", status_code=429)), "rate_limited"),
        (wrapped(APITimeoutError()), "timeout"),
        (wrapped(RuntimeError("not an API error")), "connection"),
        # what broke the stream was the provider's answer, not the connection
        (wrapped(STREAMED_ERROR), "server_error"),
        (wrapped(json.JSONDecodeError("Expecting value", "{not json", 1)), "bad_response"),
        (wrapped(openai.APIConnectionError(request=REQUEST)), "connection"),
    ],
)
def test_the_kind_is_the_providers_own_error_under_any_wrapping(
    error: Exception, kind: str
) -> None:
    assert failure_kind(error) == kind


def test_the_first_failure_of_a_speech_is_reported_once_and_all_are_counted() -> None:
    failures = ReplyFailures()
    failures.record("s1", "tts", "Cartesia", APITimeoutError())
    failures.record("s1", "llm", "openai", APIConnectionError())
    failures.record(None, "llm", "openai", APIConnectionError())
    assert failures.pop("s1") == "tts_timeout"
    assert failures.pop("s1") is None
    counted = failures.counter.totals()
    assert sum(counted.values()) == 3
    assert (("avatar.provider", "Cartesia"), ("avatar.stage", "tts"), ("kind", "timeout")) in {
        tuple(sorted(key)) for key in counted
    }


def test_pending_failures_are_bounded() -> None:
    failures = ReplyFailures()
    for n in range(1000):
        failures.record(f"s{n}", "llm", "openai", APIConnectionError())
    assert failures.pop("s0") is None
    assert failures.pop("s999") == "llm_connection"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


@pytest.mark.parametrize(
    ("status", "headers", "wait"),
    [
        (429, {"Retry-After": "3"}, 3.0),
        (503, {"Retry-After": "3"}, 3.0),
        (429, {"Retry-After": "3", "retry-after-ms": "1500"}, 1.5),  # OpenAI's, finer
        (429, {"Retry-After": "600"}, 10.0),  # capped
        (429, {"retry-after-ms": "inf"}, 0.0),
        (429, {"Retry-After": "-5"}, 0.0),
        (429, {"Retry-After": "soon"}, 0.0),
        (429, {}, 0.0),
        (500, {"Retry-After": "3"}, 0.0),  # only 429 and 503 ask to wait
        (200, {"Retry-After": "3"}, 0.0),
    ],
)
def test_the_gate_honours_retry_after_within_its_cap(
    status: int, headers: dict[str, str], wait: float
) -> None:
    clock = Clock()
    gate = RetryAfterGate(10.0, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    asyncio.run(gate.note(response(status, **headers)))
    assert gate.wait_seconds() == pytest.approx(wait)
    clock.now += wait
    assert gate.wait_seconds() == 0


def test_an_http_date_is_read_against_the_wall_clock() -> None:
    wall = 1_700_000_000.0
    gate = RetryAfterGate(10.0, clock=Clock(), wall_clock=lambda: wall)
    asyncio.run(gate.note(response(429, **{"Retry-After": formatdate(wall + 4, usegmt=True)})))
    assert gate.wait_seconds() == pytest.approx(4.0)


def test_a_shorter_retry_after_never_shortens_the_wait() -> None:
    gate = RetryAfterGate(10.0, clock=Clock())
    asyncio.run(gate.note(response(429, **{"Retry-After": "5"})))
    asyncio.run(gate.note(response(429, **{"Retry-After": "1"})))
    assert gate.wait_seconds() == pytest.approx(5.0)


def completion(*finishes: str | None) -> bytes:
    """A streamed completion whose chunks end with these finish_reasons, then [DONE]."""
    chunks = [
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": f}]}
        for f in finishes
    ]
    lines = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    return "".join(lines).encode()


async def read_through(finishes: FinishReasons, body: bytes, *, step: int, path: str) -> bytes:
    """The body as the client reads it, through the tap, ``step`` bytes a network read."""
    request = httpx.Request("POST", f"http://127.0.0.1/v1{path}")
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    response = httpx.Response(200, request=request, stream=httpx.ByteStream(b""))
    response.stream = Pieces(pieces)
    await finishes.watch(response)
    return b"".join([chunk async for chunk in response.stream])


class Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for piece in self.pieces:
            yield piece


@pytest.mark.parametrize("step", [1, 7, 10_000])
@pytest.mark.parametrize(
    ("ends", "cut"),
    [
        ((None, None, "stop"), None),
        ((None, "length"), "length"),
        ((None, "content_filter"), "content_filter"),
        ((None, None), None),  # no finish_reason at all: the stream's own business
    ],
)
async def test_a_reply_the_provider_cut_short_is_known_by_its_speech(
    ends: tuple[str | None, ...], cut: str | None, step: int
) -> None:
    finishes = FinishReasons(lambda: "speech-1")
    body = completion(*ends)
    assert await read_through(finishes, body, step=step, path="/chat/completions") == body
    assert finishes.pop("speech-1") == cut
    assert finishes.pop("speech-1") is None  # once


async def test_only_completions_of_a_speech_are_read() -> None:
    body = completion(None, "length")
    outside = FinishReasons(lambda: None)
    await read_through(outside, body, step=10, path="/chat/completions")
    models = FinishReasons(lambda: "speech-1")
    await read_through(models, body, step=10, path="/models")
    assert outside.pop("speech-1") is None
    assert models.pop("speech-1") is None


async def test_an_endless_line_is_not_kept() -> None:
    finishes = FinishReasons(lambda: "speech-1")
    body = b"data: " + b"x" * 300_000 + b"\n\n" + completion(None, "length")
    assert await read_through(finishes, body, step=4096, path="/chat/completions") == body
    assert finishes.pop("speech-1") == "length"


class Timed(httpx.AsyncByteStream):
    """Pieces of a body, each after its pause (seconds), as a slow server sends them."""

    def __init__(self, pieces: list[tuple[float, bytes]]) -> None:
        self.pieces = pieces

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for pause, piece in self.pieces:
            await asyncio.sleep(pause)
            yield piece


async def read_timed(
    pieces: list[tuple[float, bytes]],
    *,
    read_timeout: float | None = 0.6,
    content_type: str = "text/event-stream",
) -> bytes:
    extensions = {"timeout": httpx.Timeout(read_timeout).as_dict()} if read_timeout else {}
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions", extensions=extensions)
    response = httpx.Response(
        200, request=request, headers={"content-type": content_type}, stream=Timed(pieces)
    )
    await data_deadline(response)
    return b"".join([chunk async for chunk in response.stream])


async def test_a_stream_of_comments_without_words_times_out() -> None:
    pieces = [(0.0, b'data: {"id": "c"}\n\n')] + [(0.05, b": keep-alive\n\n")] * 100
    started = asyncio.get_running_loop().time()
    with pytest.raises(httpx.ReadTimeout, match="no data line"):
        await read_timed(pieces)
    assert asyncio.get_running_loop().time() - started < 1.5  # 0.6 s after the last line


async def test_data_lines_in_time_pass_unchanged_however_they_are_cut() -> None:
    line = b'data: {"id": "c"}\n\n'
    pieces = [(0.15, line[:2]), (0.15, line[2:9]), (0.0, line[9:])] * 4  # a line each 0.3 s
    assert await read_timed(pieces) == line * 4


async def test_a_line_that_never_ends_times_out_and_a_long_one_that_does_counts() -> None:
    # 70 KB in one line, ended 0.4 s later: only its end keeps the next line in time.
    long_line = [(0.0, b"data: ")] + [(0.0, b"x" * 10_000)] * 7 + [(0.4, b"\n\n")]
    later = [(0.4, b'data: {"id": "c"}\n\n')]
    body = await read_timed(later + long_line + later + long_line + later)
    assert body.count(b"data: ") == 5
    dripping = [(0.0, b"data: ")] + [(0.05, b"x")] * 30
    with pytest.raises(httpx.ReadTimeout):
        await read_timed(dripping)


@pytest.mark.parametrize(
    ("content_type", "read_timeout"), [("application/json", 0.3), ("text/event-stream", None)]
)
async def test_only_event_streams_with_a_read_timeout_have_a_deadline(
    content_type: str, read_timeout: float | None
) -> None:
    pieces = [(0.0, b"{"), (0.8, b"}")]
    assert await read_timed(pieces, content_type=content_type, read_timeout=read_timeout) == b"{}"
