"""HTTP server spans and request metrics for the HTTP services, kept lean on purpose.

One SERVER span per request, named ``"<method> <route template>"``, child of the caller's
W3C context, with the stable HTTP semantic-convention attributes, and one
``http.server.request.duration`` histogram. Deliberately not recorded: the query string
(``/api/livekit/token?name=...`` carries a person's name) and client addresses.
Probes and scrapes (:data:`OPS_PATHS`) are not recorded at all.

FastAPI's own telemetry (``FastAPI(telemetry=...)``) records ``url.query`` verbatim and
cost more per request in our benchmark, so :data:`NO_FASTAPI_TELEMETRY` switches it off
in favour of this middleware.
"""

from __future__ import annotations

import time

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context, metrics, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
NO_FASTAPI_TELEMETRY = TelemetryConfig(tracing=False, metrics=False, logs=False)
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _HeaderGetter(Getter[Scope]):
    def get(self, carrier: Scope, key: str) -> list[str] | None:
        raw = key.encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier["headers"] if k == raw]
        return values or None

    def keys(self, carrier: Scope) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier["headers"]]


_GETTER = _HeaderGetter()


class ServerTelemetry:
    def __init__(
        self,
        app: ASGIApp,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.app = app
        self._tracer = trace.get_tracer("avatar_shared.web", tracer_provider=tracer_provider)
        meter = metrics.get_meter("avatar_shared.web", meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # start_span + attach rather than start_as_current_span: the same span without
        # two layers of context managers on every request.
        span = self._tracer.start_span(
            method,
            context=propagate.extract(scope, getter=_GETTER),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_with_status)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        finally:
            context.detach(token)
            route = getattr(scope.get("route"), "path", None)
            attributes: dict[str, str | int] = {
                "http.request.method": method,
                "http.response.status_code": status,
            }
            if route:
                attributes["http.route"] = route
                span.update_name(f"{method} {route}")
            span.set_attributes(attributes)
            span.end()
            self._duration.record(time.perf_counter() - started, attributes)
