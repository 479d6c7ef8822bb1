"""The published JSON Schema of the event contract, with the subject of each event type.

``python -m avatar_shared.schema docs/events.schema.json`` rewrites the document; a test
fails when the committed copy differs from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from avatar_shared import subjects
from avatar_shared.audit import AUDIT_EVENT, AUDIT_TYPES
from avatar_shared.bus.identities import AUDIT_PREFIX, AUDIT_STREAM
from avatar_shared.events import ANY_EVENT, EVENT_TYPES, SCHEMA_VERSION


def build_schema() -> dict[str, Any]:
    schema = ANY_EVENT.json_schema(mode="serialization", ref_template="#/$defs/{model}")
    document: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:avatar-backend:events:v{SCHEMA_VERSION}",
        "title": f"Avatar backend bus events, contract v{SCHEMA_VERSION}",
        "description": (
            "Every message on the bus is one of these JSON objects, chosen by 'type'. "
            "Consumers must ignore fields they do not know."
        ),
        **schema,
        "x-subjects": {
            name: subjects.subject_template(model.source, name)
            for name, model in sorted(EVENT_TYPES.items())
        },
        "x-stream": {
            "name": subjects.EVENTS_STREAM,
            "subjects": list(subjects.EVENTS_STREAM_SUBJECTS),
        },
        "x-audit": _audit_schema(),
    }
    return document


def _audit_schema() -> dict[str, Any]:
    """The audit trail's events (docs/audit.md): their own stream, subjects and schema."""
    schema = AUDIT_EVENT.json_schema(mode="serialization", ref_template="#/x-audit/$defs/{model}")
    return {
        "description": "Audit events, one of these JSON objects chosen by 'type'.",
        **schema,
        "x-subjects": {name: f"{AUDIT_PREFIX}.{name}" for name in AUDIT_TYPES},
        "x-stream": {"name": AUDIT_STREAM, "subjects": [f"{AUDIT_PREFIX}.>"]},
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m avatar_shared.schema OUTPUT.json", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
