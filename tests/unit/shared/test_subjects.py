import pytest

from avatar_shared import subjects


def test_subjects_read_namespace_first_and_room_last() -> None:
    subject = subjects.subject_for(subjects.AGENT, "tag_parsed", "lobby.1")
    assert subject == "avatars.v1.agent.tag_parsed.lobby=2E1"
    parts = subjects.parse_subject(subject)
    assert (parts.source, parts.type, parts.room) == ("agent", "tag_parsed", "lobby.1")


def test_templates_have_no_room_in_them() -> None:
    assert (
        subjects.subject_template("agent", "speech_done") == "avatars.v1.agent.speech_done.{room}"
    )


def test_room_filter_matches_one_room_of_every_type() -> None:
    assert subjects.room_filter("r 1") == "avatars.v1.*.*.r=201"


@pytest.mark.parametrize(
    "subject",
    [
        "avatars.v1.agent.tag_parsed",
        "avatars.v2.agent.tag_parsed.room",
        "other.v1.agent.tag_parsed.room",
        "avatars.v1.nobody.tag_parsed.room",
        "avatars.v1.agent.tag_parsed.bad=zz",
        "avatars.v1.agent.tag_parsed.room.extra",
    ],
)
def test_foreign_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        subjects.parse_subject(subject)
