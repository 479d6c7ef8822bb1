"""Test kinds come from the folder a test lives in; integration tests share one NATS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.nats_server import NatsServer, start_nats

# Property tests check behaviour, not speed: a slow CI machine must not fail them.
settings.register_profile("repo", deadline=None, print_blob=True)
settings.load_profile("repo")

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

_KINDS = ("unit", "integration", "e2e", "images")
_ROOT = Path(__file__).parent
_used: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(item.path).relative_to(_ROOT).parts[0]
        if kind not in _KINDS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live under tests/{{unit,integration,e2e,images}}/"
            )
        item.add_marker(getattr(pytest.mark, kind))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for how in _used:
        terminalreporter.write_line(f"NATS for integration tests: {how}")


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = start_nats()
    _used.append(server.how)
    print(f"\nNATS for integration tests: {server.how} at {server.url}")
    try:
        yield server
    finally:
        server.stop()
