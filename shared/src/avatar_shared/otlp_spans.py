"""OTLP span encoding written straight to protobuf's wire format.

:func:`encode_spans` returns the bytes of an ``ExportTraceServiceRequest`` holding
``spans``: the message the exporter's own encoder
(``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans``) builds, field for
field. That encoder builds a protobuf object per span, attribute and value, and hashes
each span's resource (a JSON dump of its attributes) to group them: ~24 µs a span, paid
on the event loop of every service (:mod:`avatar_shared.span_export`). Writing the bytes
directly costs 9 µs for that span, 17 µs where the exporter takes 37 µs for an actions
CONSUMER span with ten attributes (docs/telemetry.md).

Only the span messages are written here, for the attribute values spans carry: strings,
booleans, integers, floats and sequences of them. A span holding anything else (bytes,
mappings, an integer past 64 bits, text that is not valid Unicode) is encoded by the
exporter's encoder, which logs and leaves out such attributes; so are the resource and
the instrumentation scope, once each per batch. Spans are grouped by resource and scope
object (the SDK gives every span of a provider the same ones). Encoded attributes of
scalar values are remembered (:data:`MEMO_SIZE`), as spans repeat most of theirs
(method, route, status, event type).

The exporter's helpers are private API; the version is locked in ``uv.lock``, and
``tests/unit/shared/test_otlp_spans.py`` parses what this writes and compares it with
the exporter's message for the same spans, over generated spans of every shape, so an
upgrade that changes the message fails there.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from opentelemetry.trace.span import SpanContext

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_TWO_FIXED64 = struct.Struct("<BQBQ").pack  # start and end time with their tags

# Field tags: (field number << 3) | wire type, where 0 is a varint, 1 and 5 fixed 64 and
# 32 bits, 2 length-delimited; one byte for fields 1-15. The messages' field numbers are
# those of opentelemetry/proto (trace/v1/trace.proto, common/v1/common.proto).
_REQUEST_RESOURCE_SPANS = b"\x0a"
_RESOURCE = b"\x0a"
_SCOPE_SPANS = b"\x12"
_RESOURCE_SCHEMA_URL = b"\x1a"
_SCOPE = b"\x0a"
_SPAN = b"\x12"
_SCOPE_SCHEMA_URL = b"\x1a"
_KIND = {  # the span's kind as field 6, a varint (the proto enum is the SDK's plus one)
    kind: bytes((0x30, kind.value + 1)) for kind in SpanKind
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


#: Encoded attributes remembered: scalars, strings up to _MEMO_TEXT characters. Cleared
#: when full, so ids that never repeat cost at most this many entries (~2 MB).
MEMO_SIZE = 4096
_MEMO_TEXT = 128
_SCALARS = frozenset((str, bool, int, float))
_memo: dict[tuple[str, type, object], bytes] = {}


class _Unsupported(Exception):
    """A value this module does not write: the span goes to the exporter's encoder."""


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the payload's length, the payload."""
    size = len(payload)
    if size < 0x80:
        return tag + bytes((size,)) + payload
    return tag + _varint(size) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode())


def _any_value(value: Any) -> bytes:
    """An ``AnyValue``: the payload of a ``KeyValue.value`` or an array element."""
    kind = type(value)
    if kind is str:
        return _string(b"\x0a", value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _Unsupported
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # two's complement, as int64
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if kind is tuple or kind is list:
        values = b"".join(_field(b"\x0a", _any_value(item)) for item in value)
        return _field(b"\x2a", values)
    if value is None:  # an element of a sequence: an empty AnyValue
        return b""
    raise _Unsupported


def _key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue``'s bytes, remembered for scalar values: spans repeat most of theirs."""
    if type(value) not in _SCALARS or (type(value) is str and len(value) > _MEMO_TEXT):
        return _string(b"\x0a", key) + _field(b"\x12", _any_value(value))
    memo_key = (key, type(value), value)
    encoded = _memo.get(memo_key)
    if encoded is None:
        encoded = _string(b"\x0a", key) + _field(b"\x12", _any_value(value))
        if len(_memo) >= MEMO_SIZE:
            _memo.clear()
        _memo[memo_key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join([_field(tag, _key_value(key, value)) for key, value in attributes.items()])


def _count(tag: bytes, count: int) -> bytes:
    """A varint field, left out at zero (proto3's default)."""
    return tag + _varint(count) if count else b""


def _flags(tag: bytes, parent: SpanContext | None) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return tag + flags.to_bytes(4, "little")


def _trace_state(tag: bytes, context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _string(tag, ",".join(f"{key}={value}" for key, value in state.items()))


def _events(span: ReadableSpan) -> bytes:
    if not span.events:
        return b""
    return b"".join(
        _field(
            b"\x5a",
            b"\x09"
            + _FIXED64(event.timestamp)
            + _string(b"\x12", event.name)
            + _attributes(b"\x1a", event.attributes)
            + _count(b"\x20", event.dropped_attributes),
        )
        for event in span.events
    )


def _links(span: ReadableSpan) -> bytes:
    if not span.links:
        return b""
    return b"".join(
        _field(
            b"\x6a",
            _field(b"\x0a", link.context.trace_id.to_bytes(16, "big"))
            + _field(b"\x12", link.context.span_id.to_bytes(8, "big"))
            + _attributes(b"\x22", link.attributes)
            + _count(b"\x28", link.dropped_attributes)
            + _flags(b"\x35", link.context),
        )
        for link in span.links
    )


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    description = status.description
    payload = (_string(b"\x12", description) if description else b"") + _count(
        b"\x18", status.status_code.value
    )
    return _field(b"\x7a", payload)


def _span(span: ReadableSpan) -> bytes:
    """The fields of ``opentelemetry.proto.trace.v1.Span``, in field-number order."""
    context: SpanContext = span.context
    parent = span.parent
    return (
        b"\x0a\x10"  # 1 trace_id, 16 bytes
        + context.trace_id.to_bytes(16, "big")
        + b"\x12\x08"  # 2 span_id, 8 bytes
        + context.span_id.to_bytes(8, "big")
        + _trace_state(b"\x1a", context)  # 3
        + (b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"")  # 4
        + _string(b"\x2a", span.name)  # 5
        + _KIND[span.kind]  # 6
        + _TWO_FIXED64(0x39, span.start_time or 0, 0x41, span.end_time or 0)  # 7, 8
        + _attributes(b"\x4a", span.attributes)  # 9
        + _count(b"\x50", span.dropped_attributes)  # 10
        + _events(span)  # 11
        + _count(b"\x60", span.dropped_events)  # 12
        + _links(span)  # 13
        + _count(b"\x70", span.dropped_links)  # 14
        + _status(span)  # 15
        + _flags(b"\x85\x01", parent)  # 16, a two-byte tag
    )


def encode_span(span: ReadableSpan) -> bytes:
    """One ``Span`` message's bytes."""
    try:
        return _span(span)
    except (_Unsupported, UnicodeEncodeError):
        return bytes(_encode_span(span).SerializeToString())


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The bytes of an ``ExportTraceServiceRequest`` holding ``spans``."""
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        scopes = groups.setdefault(id(resource), (resource, {}))[1]
        scopes.setdefault(id(scope), (scope, []))[1].append(_field(_SPAN, encode_span(span)))
    out = []
    for resource, scopes in groups.values():
        scope_spans = b"".join(
            _field(
                _SCOPE_SPANS,
                _field(_SCOPE, _encode_instrumentation_scope(scope).SerializeToString())
                + b"".join(encoded)
                + (
                    _string(_SCOPE_SCHEMA_URL, scope.schema_url)
                    if scope and scope.schema_url
                    else b""
                ),
            )
            for scope, encoded in scopes.values()
        )
        out.append(
            _field(
                _REQUEST_RESOURCE_SPANS,
                _field(_RESOURCE, _encode_resource(resource).SerializeToString())
                + scope_spans
                + (
                    _string(_RESOURCE_SCHEMA_URL, resource.schema_url)
                    if resource.schema_url
                    else b""
                ),
            )
        )
    return b"".join(out)
