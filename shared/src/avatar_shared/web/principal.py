"""Who a request acts for, and how policy rules may name them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Principal:
    kind: Literal["anonymous", "api_key", "user"]
    id: str
    groups: frozenset[str] = field(default_factory=frozenset)

    @property
    def ref(self) -> str:
        """The one name quotas and the audit trail use: ``api_key:<name>``,
        ``user:<id>``, or ``anonymous`` (every anonymous caller together)."""
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.id}"

    @property
    def refs(self) -> frozenset[str]:
        """``anonymous``, ``api_key:<name>``, or ``user:<id>``, ``user:*``, ``group:<g>``."""
        if self.kind == "anonymous":
            return frozenset({"anonymous"})
        if self.kind == "api_key":
            return frozenset({f"api_key:{self.id}"})
        return frozenset({f"user:{self.id}", "user:*"} | {f"group:{g}" for g in self.groups})
