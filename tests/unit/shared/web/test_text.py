import pytest

from avatar_shared.web.text import has_unsafe_characters, is_identity_text


@pytest.mark.parametrize(
    "value",
    [
        "nul\x00",
        "esc\x1b[31m",
        "del\x7f",
        "c1\x85",
        "rlo\u202e",
        "lri\u2066",
        "lrm\u200e",
        "alm\u061c",
    ],
)
def test_control_and_bidi_characters_are_unsafe(value: str) -> None:
    assert has_unsafe_characters(value)
    assert has_unsafe_characters(value, multiline=True)


def test_line_breaks_only_in_multiline_text() -> None:
    assert has_unsafe_characters("a\nb")
    assert not has_unsafe_characters("a\n\tb\r\n", multiline=True)


@pytest.mark.parametrize("value", ["Zoë 👨‍👩‍👧", "名前", "O'Brien (ops)"])
def test_ordinary_text_is_safe(value: str) -> None:
    assert not has_unsafe_characters(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [("alice", True), ("a b", True), (" alice", False), ("bob\n", False), ("x\u200b", False)],
)
def test_identity_text(value: str, ok: bool) -> None:
    assert is_identity_text(value) is ok
