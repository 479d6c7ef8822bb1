"""The streaming tag parser: chunk-boundary invariance, spacing, tolerance, hostile input."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from avatar_agent.tags import Tag, TagParser
from avatar_shared.events import TagKind

ACTIONS = {"wave_hand", "speaking", "nod"}
EMOTIONS = {"neutral", "happy", "sad", "angry", "excited", "content", "scared"}


def parse(chunks: list[str], *, keep: bool = False) -> tuple[str, list[Tag], int]:
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, keep_emotions=keep)
    out: list[str] = []
    tags: list[Tag] = []
    for chunk in chunks:
        text, found = parser.feed(chunk)
        out.append(text)
        tags += found
    text, found = parser.close()
    return "".join(out) + text, tags + found, parser.dropped


def clean(text: str, *, keep: bool = False) -> str:
    return parse([text], keep=keep)[0]


# Text built from pieces that exercise every rule, including broken and tag-like text.
PIECES = st.sampled_from(
    [
        "Hello",
        "there",
        " ",
        "  ",
        "\n",
        ".",
        "!",
        ",",
        "a[0]",
        "x < y",
        "<3",
        "[",
        "<",
        "]",
        ">",
        "[citation needed]",
        "[action:wave_hand]",
        "[Action: Wave_Hand ]",
        "[action:nod]",
        "[action:unknown_thing]",
        "[action:",
        '<emotion value="happy"/>',
        "<emotion value=sad>",
        "<EMOTION value='angry' />",
        '<emotion value="furious"/>',
        "<emotion",
        "é",
        "日本",
        "🙂",
        "[[action:nod]]",
        "<<emotion value=happy/>",
    ]
)
TEXTS = st.lists(PIECES, max_size=30).map("".join)


@settings(max_examples=400)
@given(TEXTS, st.data(), st.booleans())
@example("Hello [action:wave_hand] there", None, False)
def test_every_way_of_cutting_the_text_gives_the_same_result(
    text: str, data: st.DataObject | None, keep: bool
) -> None:
    cuts = (
        sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=12)))
        if data is not None
        else list(range(len(text) + 1))
    )
    bounds = [0, *cuts, len(text)]
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse(chunks, keep=keep) == parse([text], keep=keep)
    assert parse(list(text), keep=keep) == parse([text], keep=keep)  # one character a chunk


@settings(max_examples=300)
@given(TEXTS)
def test_clean_text_and_offsets_do_not_depend_on_keeping_emotions(text: str) -> None:
    dropped_text, dropped_tags, _ = parse([text], keep=False)
    kept_text, kept_tags, _ = parse([text], keep=True)
    assert dropped_tags == kept_tags
    for tag_text in (f'<emotion value="{e}"/>' for e in EMOTIONS):
        kept_text = kept_text.replace(tag_text, "")
    assert kept_text == dropped_text


WORDS = st.sampled_from(["Hello", "there", "wave", "é", "日本", "a[0]", "x<y", "<3", "ok."])
TAGS = st.sampled_from(
    [
        "[action:wave_hand]",
        "[Action: Nod ]",
        "[action:moonwalk]",
        '<emotion value="happy"/>',
        "<emotion value=sad>",
        "<emotion value='furious' />",
    ]
)
WELL_FORMED = st.lists(st.one_of(WORDS, TAGS, st.sampled_from([" ", "  ", "\n"])), max_size=25).map(
    "".join
)


@settings(max_examples=400)
@given(WELL_FORMED)
def test_tags_vanish_and_words_are_neither_glued_nor_split(text: str) -> None:
    out, _tags, dropped = parse([text])
    assert "[action" not in out.lower()
    assert "<emotion" not in out.lower()
    assert dropped == 0
    without_tags = text
    for tag in (
        "[action:wave_hand]",
        "[Action: Nod ]",
        "[action:moonwalk]",
        '<emotion value="happy"/>',
        "<emotion value=sad>",
        "<emotion value='furious' />",
    ):
        without_tags = without_tags.replace(tag, " ")
    assert out.split() == without_tags.split()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello [action:wave_hand] there", "Hello there"),
        ("Hello[action:wave_hand]there", "Hello there"),
        ("Hello [action:wave_hand]there", "Hello there"),
        ("Hello  [action:nod]  there", "Hello there"),
        ("Hello\n[action:nod]\nthere", "Hello\nthere"),
        ("Hello [action:nod][action:wave_hand] there", "Hello there"),
        ("[action:wave_hand] Hello", "Hello"),
        ("Hello! [action:wave_hand]", "Hello!"),
        ("Hello [action:wave_hand].", "Hello."),
        ("Hello [action:wave_hand], there", "Hello, there"),
        ("I am so thrilled to meet you! [action:wave_hand]", "I am so thrilled to meet you!"),
        ("Hel" + "lo there", "Hello there"),
        ("  leading and trailing  ", "  leading and trailing  "),
        ("tabs\tstay", "tabs\tstay"),
    ],
)
def test_spacing_around_removed_tags(text: str, expected: str) -> None:
    assert clean(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a[0] = b[1]",
        "x < y and y > z",
        "[citation needed]",
        "I <3 you",
        "<b>bold</b>",
        "[action]",
        "[action:]",
        "[actions:wave]",
        "<emotion>",
        "<emotion value=>",
        "a [ b ] c",
    ],
)
def test_ordinary_text_passes_through_untouched(text: str) -> None:
    assert parse([text]) == (text, [], 0)


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        ("[action:wave_hand]", "wave_hand"),
        ("[Action: Wave_Hand ]", "wave_hand"),
        ("[ ACTION : wave-hand ]", "wave_hand"),
        ("[action:\tnod\n]", "nod"),
    ],
)
def test_action_tags_are_tolerant_of_case_and_spacing(tag: str, name: str) -> None:
    text, tags, _ = parse([f"Hi {tag} you"])
    assert text == "Hi you"
    assert [(t.kind, t.name, t.valid) for t in tags] == [(TagKind.ACTION, name, True)]


@pytest.mark.parametrize(
    "tag",
    [
        '<emotion value="happy"/>',
        "<emotion value='happy' />",
        "<emotion value=happy>",
        '<Emotion  Value = "HAPPY" / >',
        "< emotion value=happy/>",
    ],
)
def test_emotion_tags_are_tolerant_and_canonical_for_cartesia(tag: str) -> None:
    assert clean(f"{tag} Great news!") == "Great news!"
    assert clean(f"{tag} Great news!", keep=True) == '<emotion value="happy"/>Great news!'
    assert clean(f"So {tag} great", keep=True) == 'So <emotion value="happy"/>great'


def test_unknown_emotions_are_never_sent_to_tts_and_are_flagged() -> None:
    text, tags, _ = parse(['<emotion value="furious"/> No!'], keep=True)
    assert text == "No!"
    assert [(t.name, t.valid) for t in tags] == [("furious", False)]


def test_unknown_actions_are_removed_and_flagged() -> None:
    text, tags, _ = parse(["Sure [action:moonwalk] thing"])
    assert text == "Sure thing"
    assert [(t.name, t.valid) for t in tags] == [("moonwalk", False)]


def test_tags_carry_their_order_and_position_in_the_clean_text() -> None:
    _, tags, _ = parse(
        [
            '<emotion value="excited"/> I am so thrilled to [action:speaking] meet you! ',
            "[action:wave_hand]",
        ]
    )
    assert [(t.index, t.name, t.char_offset, t.word_index) for t in tags] == [
        (0, "excited", 0, 0),
        (1, "speaking", 19, 5),
        (2, "wave_hand", 29, 7),
    ]


@pytest.mark.parametrize("tail", ["[action:wave", "[act", '<emotion value="ha', "[", "<"])
def test_an_unterminated_tag_at_the_end_is_never_spoken(tail: str) -> None:
    text, tags, dropped = parse(["Goodbye ", tail])
    assert text == "Goodbye"
    assert tags == []
    assert dropped == 1


def test_nested_and_doubled_brackets() -> None:
    assert clean("a [[action:nod]] b") == "a [] b"  # "]" closes: no space before it
    assert clean("a <<emotion value=happy/> b") == "a < b"


def test_hold_back_is_bounded() -> None:
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("[action:" + "a" * 100)
    assert text == "[action:" + "a" * 100  # not a tag once longer than the bound
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("word" + " " * 200)
    assert text.startswith("word")
    assert len(text) >= 4 + 200 - 64


@pytest.mark.parametrize(
    "hostile",
    [
        "[" * 100_000,
        "<" * 100_000,
        "[action:" * 20_000,
        "[ " * 50_000,
        "<emotion value=" * 10_000,
        "[action:wave_hand" + "_" * 100_000,
        "🙂[" * 50_000,
    ],
)
def test_hostile_input_is_handled_in_one_pass(hostile: str) -> None:
    text, tags, _ = parse([hostile])
    assert tags == []
    assert len(text) <= len(hostile)


def test_the_scanner_and_str_isspace_agree_on_every_character() -> None:
    from avatar_agent.tags import _PLAIN, _SPACE

    for code in range(0x110000):
        char = chr(code)
        if char in "[<":
            continue
        assert bool(_SPACE.fullmatch(char)) == char.isspace(), hex(code)
        assert bool(_PLAIN.fullmatch(char)) != char.isspace(), hex(code)
