"""Telemetry against backends that do not take everything: a tracing backend without a
metrics endpoint (404) is one logged line, not an ERROR every export; each signal's
exporter can be switched off with the standard variables."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from avatar_shared import telemetry


class NoMetrics(BaseHTTPRequestHandler):
    posts = 0

    def do_POST(self) -> None:
        NoMetrics.posts += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NoMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/metrics"
    server.shutdown()
    server.server_close()


def test_a_backend_without_metrics_is_one_line_not_a_storm(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry._quiet_export_failures()  # what setup_telemetry installs
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=backend, timeout=2), export_interval_millis=3_600_000
    )
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("t").create_counter("c")
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            counter.add(1)
            reader.force_flush()
    provider.shutdown()
    assert NoMetrics.posts >= 5  # every export was tried
    failures = [r for r in caplog.records if "Failed to export" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]


def test_each_signal_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert telemetry._otlp_enabled("TRACES")
    assert not telemetry._otlp_enabled("METRICS")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(telemetry.ConfigError, match="OTEL_TRACES_EXPORTER"):
        telemetry._otlp_enabled("TRACES")
