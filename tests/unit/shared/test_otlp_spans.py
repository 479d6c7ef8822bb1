"""The span encoder writes the message the OTLP exporter's own encoder builds.

Each case ends real SDK spans and compares our bytes, parsed, with
``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`` for the same
spans (both re-serialised deterministically, so a NaN compares equal to itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from avatar_shared import otlp_spans
from avatar_shared.otlp_spans import encode_spans


class Capture(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def provider(
    resource: dict[str, Any] | None = None, limits: SpanLimits | None = None
) -> tuple[TracerProvider, Capture]:
    capture = Capture()
    tracer_provider = TracerProvider(
        resource=Resource.create(resource or {"service.name": "test"}), span_limits=limits
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(capture))
    return tracer_provider, capture


def assert_same(spans: Sequence[ReadableSpan], *, fast: bool = True) -> None:
    """``fast``: every span is written here, none handed to the exporter's encoder."""
    with (
        mock.patch.object(otlp_spans, "_encode_span", side_effect=AssertionError)
        if fast
        else (contextlib.nullcontext())
    ):
        ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    theirs = reference(spans)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )


REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "a1"), ("other", "b=2")]),
)

scalars = st.one_of(
    st.text(max_size=200),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=20), max_size=5),
    st.lists(st.booleans(), max_size=5),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=5),
    st.lists(st.floats(), max_size=5),
    st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=5),
)
attributes = st.dictionaries(st.text(min_size=1, max_size=40), values, max_size=12)


@given(
    name=st.text(max_size=80),
    kind=st.sampled_from(list(SpanKind)),
    attrs=attributes,
    events=st.lists(st.tuples(st.text(max_size=20), attributes), max_size=3),
    links=st.lists(attributes, max_size=2),
    status=st.sampled_from(
        [None, Status(StatusCode.OK), Status(StatusCode.ERROR), Status(StatusCode.ERROR, "boom")]
    ),
    parent=st.sampled_from(["none", "remote", "local"]),
)
def test_every_shape_of_span_encodes_as_the_exporter_does(
    name: str,
    kind: SpanKind,
    attrs: dict[str, Any],
    events: list[tuple[str, dict[str, Any]]],
    links: list[dict[str, Any]],
    status: Status | None,
    parent: str,
) -> None:
    tracer_provider, capture = provider(limits=SpanLimits(max_span_attributes=8))
    tracer = tracer_provider.get_tracer("generated", "1.2.3", schema_url="https://x/1")
    context = None
    if parent == "remote":
        context = trace.set_span_in_context(trace.NonRecordingSpan(REMOTE_PARENT))
    elif parent == "local":
        context = trace.set_span_in_context(tracer.start_span("parent"))
    span = tracer.start_span(
        name,
        context=context,
        kind=kind,
        attributes=attrs,
        links=[Link(REMOTE_PARENT, link) for link in links],
    )
    for event_name, event_attributes in events:
        span.add_event(event_name, event_attributes)
    if status is not None:
        span.set_status(status)
    span.end()
    assert_same(capture.spans)


def test_a_batch_groups_spans_by_resource_and_scope() -> None:
    first, first_capture = provider({"service.name": "one", "k8s.pod.name": "pod-a"})
    second, second_capture = provider({"service.name": "two"})
    for tracer_provider in (first, second):
        for scope in ("a", "b"):
            tracer = tracer_provider.get_tracer(scope)
            for i in range(3):
                tracer.start_span(f"{scope}{i}").end()
    spans = [*first_capture.spans, *second_capture.spans]
    assert_same(spans)
    request = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert [len(r.scope_spans) for r in request.resource_spans] == [2, 2]


def test_dropped_counts_and_an_exception_event() -> None:
    tracer_provider, capture = provider(
        limits=SpanLimits(max_span_attributes=2, max_events=2, max_links=1, max_event_attributes=1)
    )
    tracer = tracer_provider.get_tracer("t")
    span = tracer.start_span(
        "s",
        attributes={"a": 1, "b": 2, "c": 3},
        links=[Link(REMOTE_PARENT), Link(REMOTE_PARENT)],
    )
    span.record_exception(ValueError("no"))  # the oldest event, dropped
    span.add_event("many", {"a": 1, "b": 2, "c": 3})  # one attribute kept
    span.add_event("last")
    span.end()
    (ended,) = capture.spans
    assert (ended.dropped_attributes, ended.dropped_events, ended.dropped_links) == (1, 1, 1)
    assert ended.events[0].dropped_attributes == 2
    assert_same(capture.spans)


OUT_OF_REACH: list[tuple[str, Callable[[], Any]]] = [
    ("bytes", lambda: b"\x00\xff"),
    ("an int past int64", lambda: 2**64),
    ("a lone surrogate", lambda: "a\udc80"),
    ("a mapping", lambda: {"nested": 1}),
]


@pytest.mark.parametrize(("label", "make"), OUT_OF_REACH, ids=[c[0] for c in OUT_OF_REACH])
def test_values_this_encoder_does_not_write_go_to_the_exporters_encoder(
    label: str, make: Callable[[], Any]
) -> None:
    tracer_provider, capture = provider()
    span = tracer_provider.get_tracer("t").start_span("s", attributes={"ok": "yes"})
    span._attributes._dict["odd"] = make()  # type: ignore[attr-defined]  # past the SDK's checks
    span.end()
    assert_same(capture.spans, fast=False)
    (encoded,) = ExportTraceServiceRequest.FromString(encode_spans(capture.spans)).resource_spans
    keys = [kv.key for kv in encoded.scope_spans[0].spans[0].attributes]
    assert "ok" in keys, label


def test_remembered_attributes_stay_bounded_and_exact() -> None:
    tracer_provider, capture = provider()
    tracer = tracer_provider.get_tracer("t")
    for i in range(otlp_spans.MEMO_SIZE + 10):
        tracer.start_span("s", attributes={"id": f"room-{i}", "n": i, "flag": True}).end()
    assert_same(capture.spans)
    assert len(otlp_spans._memo) <= otlp_spans.MEMO_SIZE
    # True, 1 and 1.0 are equal keys in Python and different values in OTLP.
    tracer.start_span("x", attributes={"v": True}).end()
    tracer.start_span("x", attributes={"v": 1}).end()
    tracer.start_span("x", attributes={"v": 1.0}).end()
    assert_same(capture.spans[-3:])
    # Long texts (an exception's stack trace) are written, not remembered.
    tracer.start_span("x", attributes={"long": "y" * 1000}).end()
    assert_same(capture.spans[-1:])
    assert all(key != "long" for key, _, _ in otlp_spans._memo)
