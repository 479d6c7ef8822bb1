"""Code shared by every avatar backend service.

- ``events``: the versioned wire contract of everything that crosses the bus.
- ``subjects`` and ``rooms``: where events travel and how room names become subject tokens.
- ``bus``: the one place that talks to NATS (publish, provision, consume, drain).
- ``telemetry`` and ``logs``: traces, metrics and JSON logs from the standard OTEL_* variables.
- ``config``: pydantic-settings helpers that stop a process on a bad environment.
"""
