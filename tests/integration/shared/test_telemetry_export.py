"""setup_telemetry exports over OTLP/HTTP when, and only when, the standard variables say so."""

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SCRIPT = """
from opentelemetry import metrics, trace
from avatar_shared.telemetry import setup_telemetry

telemetry = setup_telemetry("token")
print("exporting" if telemetry.exporting else "not exporting")
with trace.get_tracer("t").start_as_current_span("mint token"):
    metrics.get_meter("t").create_counter("avatar.test.count").add(1)
telemetry.shutdown()
"""


class Collector(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[tuple[str, str, bytes]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_spans_and_metrics_reach_an_otlp_http_collector(collector: Collector) -> None:
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    out = _run({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "token-test"})
    assert out == "exporting"
    by_path = {path: (ctype, body) for path, ctype, body in collector.received}
    assert by_path["/v1/traces"][0] == "application/x-protobuf"
    traces = ExportTraceServiceRequest.FromString(by_path["/v1/traces"][1])
    resource = {a.key: a.value.string_value for a in traces.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "token-test"
    assert traces.resource_spans[0].scope_spans[0].spans[0].name == "mint token"
    exported = ExportMetricsServiceRequest.FromString(by_path["/v1/metrics"][1])
    names = {
        m.name for rm in exported.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert "avatar.test.count" in names


def test_nothing_is_exported_without_an_endpoint(collector: Collector) -> None:
    assert _run({}) == "not exporting"
    assert collector.received == []
