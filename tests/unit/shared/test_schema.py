import json
from pathlib import Path

import jsonschema
import pytest

from avatar_shared.events import EVENT_TYPES, Event
from avatar_shared.schema import build_schema, render
from tests.support.events import one_of_each

DOCUMENT = Path(__file__).parents[3] / "docs" / "events.schema.json"


def test_committed_schema_matches_the_models() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/events.schema.json is stale: run `make docs`"
    )


def test_schema_names_a_subject_for_every_event_type() -> None:
    assert set(build_schema()["x-subjects"]) == set(EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: e.type)
def test_what_producers_send_validates_against_the_published_schema(event: Event) -> None:
    jsonschema.validate(json.loads(event.to_json()), build_schema())


def test_published_schema_rejects_what_producers_refuse() -> None:
    body = json.loads(one_of_each()[4].to_json()) | {"seq": -1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, build_schema())
