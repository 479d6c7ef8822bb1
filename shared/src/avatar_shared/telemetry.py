"""One call at process start: traces and metrics configured from the standard OTEL_* variables.

- ``OTEL_SDK_DISABLED=true``: nothing is installed; the API's no-op providers stay.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal ``..._TRACES_/..._METRICS_ENDPOINT``):
  spans and metrics are exported over OTLP/HTTP (protobuf). Without an endpoint, spans are
  still created (so trace ids reach the logs and NATS headers) but exported nowhere.
- Spans leave through :class:`~avatar_shared.span_export.LoopSpanProcessor` (encoded on
  the event loop in slices, posted from a thread; ``OTEL_BSP_*`` batching as the SDK's).
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp`` (the default when an
  endpoint is set) or ``none``, each signal on its own: a tracing backend without a
  metrics endpoint takes ``OTEL_METRICS_EXPORTER=none``.
- An exporter that keeps failing (a collector away, a backend answering 404 for one
  signal) logs its first failure and then at most one line every 10 minutes per kind of
  failure, instead of an ERROR per export.
- ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the resource;
  ``OTEL_PROPAGATORS`` is honoured by the API (W3C ``traceparent`` by default).
- ``prometheus=True`` also exposes metrics through ``prometheus_client`` for a ``/metrics``
  route on the service's health port.

Only OTLP over HTTP is shipped; asking for another protocol is a configuration error
rather than a silent fallback.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider

from avatar_shared.config import ConfigError
from avatar_shared.span_export import LoopSpanProcessor

_SUPPORTED_PROTOCOLS = ("", "http/protobuf")


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` installed; call :meth:`shutdown` before exiting."""

    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    exporting: bool = False
    readers: list[MetricReader] = field(default_factory=list)

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _otlp_enabled(signal: str) -> bool:
    exporter = _env(f"OTEL_{signal}_EXPORTER").lower() or "otlp"
    if exporter not in ("otlp", "none"):
        raise ConfigError(
            f"OTEL_{signal}_EXPORTER: {exporter!r} is not supported; use otlp or none"
        )
    if exporter == "none":
        return False
    if not (_env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")):
        return False
    protocol = _env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol not in _SUPPORTED_PROTOCOLS:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; use http/protobuf"
        )
    return True


def build_resource(service: str, version: str) -> Resource:
    # OTEL_SERVICE_NAME must win over the code's default, as the specification says.
    return Resource.create(
        {SERVICE_NAME: _env("OTEL_SERVICE_NAME") or service, SERVICE_VERSION: version}
    )


class RepeatedFailures(logging.Filter):
    """Lets the first record of each kind through, then one per ``window`` seconds."""

    def __init__(self, window: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._last: dict[tuple[str, int, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg)[:80])
        now = self._clock()
        if now - self._last.get(kind, -self._window) < self._window:
            return False
        self._last[kind] = now
        return True


#: The loggers the OTLP exporters and the SDK's export loops report failures on.
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
    "avatar_shared.span_export",
)


def _quiet_export_failures() -> None:
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatedFailures) for f in logger.filters):
            logger.addFilter(RepeatedFailures())


def setup_telemetry(service: str, version: str = "0.1.0", *, prometheus: bool = False) -> Telemetry:
    """Install global tracer and meter providers for this process."""
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return Telemetry()
    _quiet_export_failures()
    resource = build_resource(service, version)
    telemetry = Telemetry()

    tracer_provider = TracerProvider(resource=resource)
    if _otlp_enabled("TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(LoopSpanProcessor(OTLPSpanExporter()))
        telemetry.exporting = True
    trace.set_tracer_provider(tracer_provider)
    telemetry.tracer_provider = tracer_provider

    if _otlp_enabled("METRICS"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        telemetry.readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        telemetry.readers.append(PrometheusMetricReader())
    meter_provider = MeterProvider(resource=resource, metric_readers=telemetry.readers)
    metrics.set_meter_provider(meter_provider)
    telemetry.meter_provider = meter_provider
    return telemetry


def inject_context(headers: MutableMapping[str, str]) -> None:
    """Write the current trace context (W3C ``traceparent``/``tracestate``) into headers."""
    propagate.inject(headers)


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context carried by message headers (empty context when there is none)."""
    return propagate.extract(dict(headers or {}))


class Tally:
    """A monotonic counter for hot paths: adding is a dict update; the metric reader
    collects the totals through an observable counter, instead of every ``add`` going
    through the SDK's aggregation (several microseconds each). Get one with :func:`tally`:
    a meter keeps the first callback registered under a name, so tallies are shared."""

    def __init__(self, meter: metrics.Meter, name: str, description: str) -> None:
        self._counts: dict[tuple[tuple[str, str | bool | int], ...], int] = {}
        meter.create_observable_counter(name, callbacks=[self._observe], description=description)

    def add(self, amount: int, attributes: dict[str, str | bool | int]) -> None:
        key = tuple(sorted(attributes.items()))
        self._counts[key] = self._counts.get(key, 0) + amount

    def totals(self) -> dict[tuple[tuple[str, str | bool | int], ...], int]:
        """The counts so far, by sorted attributes."""
        return dict(self._counts)

    def _observe(self, _: metrics.CallbackOptions) -> list[metrics.Observation]:
        return [metrics.Observation(count, dict(key)) for key, count in self._counts.items()]


_tallies: dict[tuple[int, str], tuple[metrics.Meter, Tally]] = {}


def tally(meter: metrics.Meter, name: str, description: str) -> Tally:
    """The one :class:`Tally` of ``meter`` named ``name``."""
    key = (id(meter), name)
    if key not in _tallies:
        _tallies[key] = (meter, Tally(meter, name, description))  # the meter stays alive
    return _tallies[key][1]
