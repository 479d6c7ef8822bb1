"""Replies a provider failed: which kind of failure, per speech, counted and logged.

The agent's ``llm_node`` and ``tts_node`` run inside the speech they produce; when the
provider's stream raises there (retries exhausted, a stream cut after text was sent, a
stall past the per-attempt timeout), or when the LLM's stream ends as if complete but
the provider cut the reply short (``finish_reason`` ``length`` or ``content_filter``,
:class:`~avatar_agent.provider_http.FinishReasons`) or gave no word at all (``empty``),
:meth:`ReplyFailures.record` keeps the first failure of that speech, and the
conversation reports it in the speech's ``speech_done`` (``failure``:
``<stage>_<kind>``).
"""

from __future__ import annotations

import logging

import openai
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError
from opentelemetry import metrics

from avatar_shared import semconv
from avatar_shared.telemetry import tally

log = logging.getLogger(__name__)

#: Failed speeches remembered until their ``speech_done``; a session has one or two.
_MAX_PENDING = 64


def failure_kind(exc: BaseException) -> str:
    """``rate_limited``, ``server_error``, ``client_error``, ``timeout``, ``connection``,
    ``bad_response`` or ``error``, from the provider's own error under any wrapping (livekit-agents
    wraps the last attempt's error when retries run out)."""
    while isinstance(exc.__cause__, APIError):
        exc = exc.__cause__
    if type(exc) is APIError and exc.body is not None:
        return _realtime_kind(exc.body)
    if isinstance(exc, APIStatusError):
        if exc.status_code == 429:
            return "rate_limited"
        return "server_error" if exc.status_code >= 500 or exc.status_code < 0 else "client_error"
    if isinstance(exc, APITimeoutError):  # before its base class, APIConnectionError
        return "timeout"
    if isinstance(exc, APIConnectionError):
        # livekit-agents calls whatever broke a stream a connection error: an error the
        # provider streamed ({"error": ...}, the OpenAI SDK's APIError) or a line that
        # was not JSON are the provider's answers, not the connection's.
        cause = exc.__cause__
        if isinstance(cause, openai.APIError) and not isinstance(cause, openai.APIConnectionError):
            return _realtime_kind(cause.body)
        if isinstance(cause, ValueError):
            return "bad_response"
        return "connection"
    return "error"


def _realtime_kind(error: object) -> str:
    """The kind of a Realtime API ``error`` (an event's, or a failed response's
    ``status_details.error``): its ``type`` and ``code``, as OpenAI names them."""

    def field(name: str) -> str:
        value = error.get(name) if isinstance(error, dict) else getattr(error, name, None)
        return str(value or "")

    kind, code = field("type"), field("code")
    if "rate_limit" in kind or "rate_limit" in code:
        return "rate_limited"
    if kind == "server_error":
        return "server_error"
    if kind == "invalid_request_error":
        return "client_error"
    return "error"


class ReplyFailures:
    def __init__(self) -> None:
        self._pending: dict[str, str] = {}
        self.counter = tally(
            metrics.get_meter(semconv.INSTRUMENTATION_NAME),
            semconv.METRIC_AGENT_REPLIES_FAILED,
            "Replies a provider failed, by provider, stage and kind",
        )

    def record(self, speech_id: str | None, stage: str, provider: str, exc: BaseException) -> None:
        self.record_kind(speech_id, stage, provider, failure_kind(exc), str(exc))

    def record_kind(
        self, speech_id: str | None, stage: str, provider: str, kind: str, error: str = ""
    ) -> None:
        """A failure known by its kind: a reply the provider ended early (``length``,
        ``content_filter``) or ended without a word (``empty``)."""
        self.counter.add(1, {semconv.PROVIDER: provider, semconv.STAGE: stage, "kind": kind})
        log.warning(
            "reply failed",
            extra={
                "speech_id": speech_id,
                "stage": stage,
                "provider": provider,
                "kind": kind,
                "error": error[:200],
            },
        )
        if speech_id is None or speech_id in self._pending:
            return  # the first failure of a speech is the one reported
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[speech_id] = f"{stage}_{kind}"

    def pop(self, speech_id: str) -> str | None:
        """The speech's failure, once, when it is done."""
        return self._pending.pop(speech_id, None)
