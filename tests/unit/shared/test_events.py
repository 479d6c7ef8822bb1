import json

import pytest
from pydantic import ValidationError

from avatar_shared.events import (
    EVENT_TYPES,
    Event,
    InvalidEvent,
    PlayoutStarted,
    SpeechDone,
    TagParsed,
    decode_event,
)
from tests.support.events import one_of_each


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: e.type)
def test_every_event_type_round_trips(event: Event) -> None:
    assert decode_event(event.to_json()) == event


def test_the_examples_cover_every_event_type() -> None:
    assert {e.type for e in one_of_each()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: e.type)
def test_consumers_ignore_unknown_fields(event: Event) -> None:
    body = json.loads(event.to_json())
    body["added_by_a_newer_producer"] = {"nested": [1, 2]}
    assert decode_event(json.dumps(body)) == event


def test_consumers_skip_unknown_event_types() -> None:
    body = json.loads(one_of_each()[0].to_json()) | {"type": "from_the_future"}
    assert decode_event(json.dumps(body)) is None


def test_producers_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        PlayoutStarted(room="r", speech_id="s", seq=0, colour="blue")  # type: ignore[call-arg]


def test_producers_refuse_coercible_but_wrong_types() -> None:
    with pytest.raises(ValidationError, match="seq"):
        SpeechDone(room="r", speech_id="s", seq="1", interrupted=False)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="interrupted"):
        SpeechDone(room="r", speech_id="s", seq=1, interrupted="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"room": ""}, "room"),
        ({"room": "x" * 257}, "room"),
        ({"avatar_id": "../etc/passwd"}, "avatar_id"),
        ({"speech_id": "has space"}, "speech_id"),
        ({"seq": -1}, "seq"),
        ({"name": "Wave Hand"}, "name"),
        ({"char_offset": -3}, "char_offset"),
    ],
)
def test_producers_refuse_invalid_values_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    valid = one_of_each()[3]
    assert isinstance(valid, TagParsed)
    with pytest.raises(ValidationError, match=field):
        TagParsed(**(valid.model_dump() | changes))


def test_speech_events_require_a_speech_id() -> None:
    with pytest.raises(ValidationError, match="speech_id"):
        PlayoutStarted(room="r", seq=0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
        (b'{"type": "speech_done", "seq": ' + b"9" * 5000 + b"}", "not JSON"),  # int() limit
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # deeper than the parser goes
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": 3}', "no string 'type'"),
        (b'{"type": "speech_done", "room": "r"}', "speech_id: Field required"),
        (
            b'{"type": "speech_done", "v": 2, "room": "r", "speech_id": "s", "seq": 0, '
            b'"interrupted": false}',
            "v: Input should be 1",
        ),
    ],
)
def test_consumers_reject_invalid_bodies_with_a_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        decode_event(body)


def test_subject_follows_the_event() -> None:
    event = one_of_each(room="a.b")[3]
    assert event.subject == "avatars.v1.agent.tag_parsed.a=2Eb"
    assert event.subject_template == "avatars.v1.agent.tag_parsed.{room}"
    decision = next(e for e in one_of_each(room="a.b") if e.type == "action_decision")
    assert decision.subject == "avatars.v1.actions.action_decision.a=2Eb"


def test_ids_are_unique_per_event() -> None:
    assert len({e.id for e in one_of_each() + one_of_each()}) == 2 * len(EVENT_TYPES)
