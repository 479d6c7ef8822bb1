"""Rewrite the configuration table in the README from the settings classes.

Every variable any service reads is listed once; ``make docs`` runs this and a test fails
when the README's table is stale. Classes of services that are not installed are skipped.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from avatar_shared.config import settings_table

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"

#: "module:Class" for every settings class, shared ones first, then by service.
SETTINGS = (
    "avatar_shared.config:NatsSettings",
    "avatar_shared.config:LogSettings",
    "avatar_shared.config:LiveKitSettings",
    "avatar_shared.config:DeliverySettings",
    "avatar_shared.web.auth:AuthSettings",
    "avatar_shared.web.safety:DeploymentSettings",
    "avatar_shared.audit:AuditSettings",
    "avatar_token.config:TokenSettings",
    "avatar_bundles.config:BundlesSettings",
    "avatar_actions.config:ActionsSettings",
    "avatar_agent.config:AgentSettings",
)


def settings_classes() -> list[type[BaseSettings]]:
    classes = []
    for path in SETTINGS:
        module, _, name = path.partition(":")
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def rewrite(text: str) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README has no {START} ... {END} block")
    return f"{head}{START}\n{settings_table(settings_classes())}{END}{tail}"


def main(argv: list[str]) -> int:
    readme = Path(argv[1])
    readme.write_text(rewrite(readme.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
