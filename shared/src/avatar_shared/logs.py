"""JSON logs, one object per line, correlated with the active trace.

Every record carries ``trace_id`` and ``span_id`` of the span that was current when it was
logged (empty outside a span), so a log line can be found from a trace and back. Values
passed with ``extra=`` become fields of the object; messages themselves must not contain
personal data (see :mod:`avatar_shared.semconv`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else "",
            "span_id": format(ctx.span_id, "016x") if ctx.is_valid else "",
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route the root logger to stderr, as JSON (default) or plain text. ``service`` is
    the name traces carry too (``avatar-token``, ...; ``OTEL_SERVICE_NAME`` wins), so a
    log line and a trace of one service can be joined on it."""
    service = os.environ.get("OTEL_SERVICE_NAME", "").strip() or service
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Repeats(logging.Filter):
    """Lets a warning through at most once per ``interval`` seconds per message; the next
    that passes carries how many were held back (``repeated``). For loggers a client can
    drive: uvicorn writes a warning per malformed request, so a flood of them would be a
    flood of lines (and of log storage) where one a minute says the same."""

    def __init__(
        self,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_messages: int = 256,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._max_messages = max_messages
        self._seen: dict[str, tuple[float, int]] = {}  # message -> (last passed, held back)

    def allow(self, key: str) -> int | None:
        """Whether a line of kind ``key`` may be written now: None if not, else how many
        were held back since the last one (for code that logs through it directly)."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return None
        if seen is None and len(self._seen) >= self._max_messages:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return seen[1] if seen is not None else 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        held = self.allow(str(record.msg))
        if held:
            record.repeated = held
        return held is not None
