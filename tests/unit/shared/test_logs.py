import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from avatar_shared.logs import JsonFormatter, Repeats, configure_logging


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": message, **extra})
    return record


def test_log_lines_carry_the_current_trace() -> None:
    tracer = TracerProvider().get_tracer("test")
    formatter = JsonFormatter("svc")
    with tracer.start_as_current_span("work") as span:
        line = json.loads(formatter.format(_record("hello %s", args=("world",), room="r1")))
    ctx = span.get_span_context()
    assert line["msg"] == "hello world"
    assert line["service"] == "svc"
    assert line["room"] == "r1"
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")


def test_log_lines_outside_a_span_have_empty_ids() -> None:
    line = json.loads(JsonFormatter("svc").format(_record("x")))
    assert line["trace_id"] == ""
    assert line["span_id"] == ""


def test_exceptions_are_kept() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed", exc_info=sys.exc_info())
    line = json.loads(JsonFormatter("svc").format(record))
    assert "ValueError: boom" in line["exception"]


@pytest.mark.parametrize("value", [object(), b"bytes", {1, 2}])
def test_unserialisable_extras_do_not_break_logging(value: object) -> None:
    line = json.loads(JsonFormatter("svc").format(_record("x", thing=value)))
    assert "thing" in line


def test_logs_carry_the_service_name_traces_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("avatar-token")
        assert root.handlers[0].formatter._service == "avatar-token"  # type: ignore[union-attr]
        monkeypatch.setenv("OTEL_SERVICE_NAME", "token-eu-1")  # as build_resource takes it
        configure_logging("avatar-token")
        assert root.handlers[0].formatter._service == "token-eu-1"  # type: ignore[union-attr]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_a_repeated_warning_passes_once_a_minute_with_the_count_held_back() -> None:
    now = [0.0]
    repeats = Repeats(interval=60.0, clock=lambda: now[0])

    def passes(message: str, level: int = logging.WARNING) -> logging.LogRecord | None:
        record = logging.makeLogRecord({"msg": message, "levelno": level})
        return record if repeats.filter(record) else None

    assert passes("Invalid HTTP request received.") is not None
    for _ in range(5):
        now[0] += 1
        assert passes("Invalid HTTP request received.") is None
    assert passes("another warning") is not None  # each message on its own
    assert passes("progress", logging.INFO) is not None  # below WARNING: never held
    assert passes("progress", logging.INFO) is not None
    now[0] = 60.0
    again = passes("Invalid HTTP request received.")
    assert again is not None
    assert again.repeated == 5  # type: ignore[attr-defined]
    now[0] = 200.0
    quiet = passes("Invalid HTTP request received.")
    assert quiet is not None
    assert not hasattr(quiet, "repeated")  # nothing held back since


def test_the_messages_remembered_are_bounded() -> None:
    repeats = Repeats(max_messages=3, clock=lambda: 0.0)
    for n in range(10):
        assert repeats.filter(logging.makeLogRecord({"msg": f"m{n}", "levelno": logging.ERROR}))
    assert len(repeats._seen) <= 3
