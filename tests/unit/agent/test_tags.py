"""The streaming tag parser: chunk-boundary invariance, spacing, tolerance, hostile input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from avatar_agent.tags import OPENER, Tag, TagParser
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
    return "".join(out) + text, tags + found, parser.unterminated


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
        "[actionable]",
        "<emotional>",
        "<emotion>",
        "happy",
        "</emotion>",
        "[action]",
        "[/action]",
        "<action>nod</action>",
        "\uff3baction:nod\uff3d",  # fullwidth brackets
        "\uff1c",
        "\uff3b",
        # markdown markers, which go with a tag they wrap
        "*",
        "**",
        "_",
        "`",
        "~~",
        "*[action:nod]*",
        "**bold**",
    ]
)
# Tags as LLMs really write them, broken ones included.
MALFORMED = st.builds(
    lambda opener, sep, name, close: opener + sep + name + close,
    st.sampled_from(
        [
            "[action",
            "[Action",
            "[ ACTION",
            "[actions",
            "<emotion",
            "< Emotion",
            "</emotion",
            # the keywords in each other's brackets, and closing forms of both
            "[emotion",
            "[ Emotions",
            "<action",
            "<Action",
            "</action",
            "[/action",
            "[ / emotion",
        ]
    ),
    st.sampled_from(["", ":", ": ", " : ", "=", " value=", ' value="', " value='", "\t"]),
    st.sampled_from(["", "wave hand", "Wave-Hand", "waveHand", "nod", "very happy", 'happy"']),
    st.sampled_from(["]", ">", "/>", " / >", "", "\n", "]]", "[", "<"]),
)
TEXTS = st.lists(st.one_of(PIECES, MALFORMED), max_size=30).map("".join)


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
        "a [ b ] c",
        "[actionable items]",
        "<emotional support>",
        "[transaction:x]",
        "[emotional support]",
        "<actionable>",
        "[emotionless face]",
        "a </b> c",
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
        ("[    action :   nod ]", "nod"),
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


@pytest.mark.parametrize(
    "tail", ["[action:wave", "[act", '<emotion value="ha', "[", "<", "[action", "</emotion"]
)
def test_an_unterminated_tag_at_the_end_is_never_spoken(tail: str) -> None:
    text, tags, dropped = parse(["Goodbye ", tail])
    assert text == "Goodbye"
    assert tags == []
    assert dropped == 1


def test_nested_and_doubled_brackets() -> None:
    assert clean("a [[action:nod]] b") == "a [] b"  # "]" closes: no space before it
    assert clean("a <<emotion value=happy/> b") == "a <\nb"  # a line break after "<"


def test_hold_back_is_bounded() -> None:
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("[" + "a" * 100)
    assert text == "[" + "a" * 100  # no tag starts this way: written at once
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("[action: " + "a" * 100 + " after")
    assert text == "after"  # an opener: dropped through the bound and the rest of its word
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("word" + " " * 200)
    assert text.startswith("word")
    assert len(text) >= 4 + 200 - 64
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("Hi <action>" + " " * 100 + "nod")
    assert text == "Hi nod"  # no element that long: the opening tag goes alone
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("[   " + " " * 100 + "action: nod] and")
    assert text.startswith("[")  # an opener is at most max_hold characters long
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS, max_hold=64)
    text, _ = parser.feed("Hi *[action:nod]" + "*" * 100)
    assert text == "Hi * " + "*" * 100  # the markers after a wrapped tag are not held


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


@pytest.mark.parametrize(
    ("text", "spoken", "tags"),
    [
        ("Hi [action: wave hand] there", "Hi there", [("action", "wave_hand", True)]),
        ("Hi [action:Wave-Hand] there", "Hi there", [("action", "wave_hand", True)]),
        ("Hi [action: waveHand] there", "Hi there", [("action", "wave_hand", True)]),
        ('Hi [action: "nod"] there', "Hi there", [("action", "nod", True)]),
        ("Hi [ACTION = nod] there", "Hi there", [("action", "nod", True)]),
        ("Hi [actions: nod] there", "Hi there", [("action", "nod", True)]),
        ("Hi [action nod] there", "Hi there", [("action", "nod", True)]),
        ("Hi [action_nod] there", "Hi there", [("action", "nod", True)]),
        ("Hi [action:] there", "Hi there", []),
        ("Hi [action] there", "Hi there", []),
        ('<emotion value="happy"></emotion> Great', "Great", [("emotion", "happy", True)]),
        ('<emotion value="very happy"/> Great', "Great", [("emotion", "very_happy", False)]),
        ("<emotion happy> Great", "Great", [("emotion", "happy", True)]),
        ("<emotion=sad> Oh", "Oh", [("emotion", "sad", True)]),
        ("<emotion intensity='high' value='sad'/> Oh", "Oh", [("emotion", "sad", True)]),
        ("<emotion> Oh, I see </emotion>", "Oh, I see", []),
        ("< / Emotion > Oh", "Oh", []),
        ("<  /  emotion value=happy> Oh", "Oh", []),  # a closing tag names nothing
        ("Hi [  action:  nod ] there", "Hi there", [("action", "nod", True)]),
        ("So <emotions value=sad> sorry", "So sorry", [("emotion", "sad", True)]),
        # the keyword, not the bracket, says the kind: LLMs mix the two forms
        ("Hi [emotion: happy] there", "Hi there", [("emotion", "happy", True)]),
        ("Hi [Emotion=Sad] there", "Hi there", [("emotion", "sad", True)]),
        ("Hi <action:nod/> there", "Hi there", [("action", "nod", True)]),
        ('Hi <action name="wave hand"/> there', "Hi there", [("action", "wave_hand", True)]),
        ("Hi <action type='nod'> there", "Hi there", [("action", "nod", True)]),
        ("Hi [action:nod][/action] there", "Hi there", [("action", "nod", True)]),
        ("Hi [ / emotion] there", "Hi there", []),
        # One name-shaped word between a nameless opening tag and a closing tag: the
        # tag's name, as LLMs write XML elements.
        ("<emotion>happy</emotion> Great", "Great", [("emotion", "happy", True)]),
        ("Hi <action>nod</action>.", "Hi.", [("action", "nod", True)]),
        ("Hi < Action > Wave-Hand </ action > you", "Hi you", [("action", "wave_hand", True)]),
        ('Hi <emotion>"Sad"</emotion> you', "Hi you", [("emotion", "sad", True)]),
        ("Hi <action>\u201cnod\u201d</action> you", "Hi you", [("action", "nod", True)]),
        ("Hi [action]nod[/action] you", "Hi you", [("action", "nod", True)]),
        ("Hi [emotion] happy [ / emotion] you", "Hi you", [("emotion", "happy", True)]),
        ("Hi <emotion>furious</emotion> you", "Hi you", [("emotion", "furious", False)]),
        ("Hi <emotion>Sorry</emotion>", "Hi", [("emotion", "sorry", False)]),
        # The opener says the kind, whichever keyword closes it.
        ("Hi <action>nod</emotion> you", "Hi you", [("action", "nod", True)]),
        # Anything else after a nameless opening tag is text: it is removed alone.
        ("<emotion>I am so glad</emotion>", "I am so glad", []),
        ("<emotion>Sorry!</emotion> Oh", "Sorry! Oh", []),
        ("Hi <action>nod and smile", "Hi nod and smile", []),
        ("Hi <action>nod", "Hi nod", []),
        ("Hi <action>nod\n</action> you", "Hi nod\nyou", []),
        ("Hi <action/>nod</action> you", "Hi nod you", []),  # closed: not an element
        ('Hi <emotion value="sad">sorry</emotion> you', "Hi sorry you", [("emotion", "sad", True)]),
        ("Hi [action]nod</action> you", "Hi nod you", []),  # brackets must agree
        ("Hi <action>nod[/action] you", "Hi nod you", []),
        ("Hi </action>nod</action> you", "Hi nod you", []),  # a closing tag opens nothing
        ("Hi <action>" + "a" * 70 + "</action> you", "Hi " + "a" * 70 + " you", []),
    ],
)
def test_malformed_tags_are_removed_and_named(
    text: str, spoken: str, tags: list[tuple[str, str, bool]]
) -> None:
    out, found, unterminated = parse([text])
    assert out == spoken
    assert [(t.kind.value, t.name, t.valid) for t in found] == tags
    assert unterminated == 0
    for cut in range(1, len(text)):  # wherever the stream is cut
        assert parse([text[:cut], text[cut:]])[:2] == (out, found), cut


@pytest.mark.parametrize(
    ("text", "spoken", "tags"),
    [
        ("Hi \uff3baction\uff1awave_hand\uff3d there", "Hi there", [("action", "wave_hand", True)]),
        (
            "\u3053\u3093\u306b\u3061\u306f\uff1cemotion value='happy'\uff0f\uff1e\u5143\u6c17",
            "\u3053\u3093\u306b\u3061\u306f \u5143\u6c17",
            [("emotion", "happy", True)],
        ),
        ("Hi \uff1c\uff0femotion\uff1e there", "Hi there", []),  # a closing tag
        ("x \uff1c y \uff3b1\uff3d", "x < y [1]", []),  # text: written with ASCII brackets
    ],
)
def test_fullwidth_brackets_are_read_as_ascii(
    text: str, spoken: str, tags: list[tuple[str, str, bool]]
) -> None:
    out, found, _ = parse([text])
    assert out == spoken
    assert [(t.kind.value, t.name, t.valid) for t in found] == tags
    for cut in range(1, len(text)):
        assert parse([text[:cut], text[cut:]])[:2] == (out, found), cut


def test_nameless_tags_are_counted() -> None:
    parser = TagParser(actions=ACTIONS, emotions=EMOTIONS)
    parser.feed("a [action:] b </emotion> c [action] d")
    parser.close()
    assert parser.nameless == 3


def test_an_element_keeps_its_emotion_for_cartesia() -> None:
    assert clean("Oh <emotion>sad</emotion> no", keep=True) == 'Oh <emotion value="sad"/>no'


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        # A line break ends an unterminated opener; the next line is spoken.
        ("Sure [action: wave_hand\nWhat next?", "Sure What next?"),
        # So does the start of another tag, which is parsed as usual.
        ("Sure [action: wave [action:nod] thing", "Sure thing"),
        ("Sure <emotion value=happy [action:nod] thing", "Sure thing"),
        # Else the opener and up to max_hold characters, to the end of a word, go.
        (
            "Sure [action: wave_hand. Hello there, how are you today, my dear friend? "
            "I hope you are well.",
            "Sure I hope you are well.",
        ),
        # At the end of the text, whatever is held.
        ("Bye [action: wave", "Bye"),
    ],
)
def test_an_unterminated_opener_is_never_spoken(text: str, spoken: str) -> None:
    assert clean(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        # The same markers right before and right after a tag go with it.
        ("Hi *[action:nod]* there", "Hi there"),
        ("Hi **[action:nod]** there", "Hi there"),
        ("Hi ***[action:nod]***!", "Hi!"),
        ("Hi _[action:nod]_ there", "Hi there"),
        ("Hi ~~[action:nod]~~ there", "Hi there"),
        ("`<emotion value=happy/>` Hi", "Hi"),
        ("*<emotion>happy</emotion>* Hi", "Hi"),
        # Anything else is text: markers that differ, or wrap more than the tag...
        ("Hi *[action:nod]** there", "Hi * ** there"),
        ("Hi **[action:nod]* there", "Hi ** * there"),
        ("*[action:nod] Hello*", "* Hello*"),
        ("**Hello [action:nod]**", "**Hello **"),
        # ...markers inside a word, runs longer than three, what is not a tag.
        ("word*[action:nod]* x", "word* * x"),
        ("x ****[action:nod]**** y", "x **** **** y"),
        ("x *[citation needed]* y", "x *[citation needed]* y"),
        ("x *[action: nod", "x *"),
        ("x *[action: nod [action:wave_hand]* y", "x * * y"),  # they wrapped the broken one
        ("a * b * c", "a * b * c"),
    ],
)
def test_markdown_markers_around_a_tag_go_with_it(text: str, spoken: str) -> None:
    assert clean(text) == spoken
    assert clean(text, keep=True).replace('<emotion value="happy"/>', "") == spoken


@pytest.mark.parametrize("end", ["", "*", "**", "*!"])
def test_a_wrapped_tag_at_the_end_of_the_text_is_reported(end: str) -> None:
    text, tags, _ = parse(["Bye *[action:nod]", end])
    assert [tag.name for tag in tags] == ["nod"]
    assert text == {"": "Bye *", "*": "Bye", "**": "Bye * **", "*!": "Bye!"}[end]


def test_thousands_of_openers_say_nothing() -> None:
    text, tags, unterminated = parse(["[action:" * 20_000])
    assert (text, tags, unterminated) == ("", [], 20_000)
    assert clean("Hi " + "[action:" * 20_000 + "\nthere") == "Hi there"


@settings(max_examples=600)
@given(TEXTS, st.booleans())
@example("[[action:x]action: y]", False)
@example("[ [action:x] <emotion value=happy/>  action: y]", True)
def test_no_opener_is_ever_spoken(text: str, keep: bool) -> None:
    out, _, _ = parse([text], keep=keep)
    for kept in (f'<emotion value="{e}"/>' for e in EMOTIONS):
        out = out.replace(kept, "")
    assert OPENER.search(out) is None, out


@settings(max_examples=300)
@given(TEXTS)
def test_clean_text_is_clean(text: str) -> None:
    """What the parser lets through, parsed again, has no tag and loses nothing.

    Except a "[" or "<" left at the very end (as in "a [[action:x]"), which could still
    open a tag when it is the end of the text being parsed.
    """
    out, _, _ = parse([text])
    again, tags, _ = parse([out])
    assert tags == []
    assert out.startswith(again)
    assert set(out[len(again) :]) <= set("[< \t\n")


CORPUS = json.loads((Path(__file__).parent / "tag_corpus.json").read_text())


@pytest.mark.parametrize("case", CORPUS, ids=[case["name"] for case in CORPUS])
def test_real_world_shaped_replies(case: dict[str, Any]) -> None:
    out, tags, _ = parse([case["reply"]])
    assert out == case["spoken"]
    assert [[t.kind.value, t.name, t.valid] for t in tags] == case["tags"]
    step = 3  # as an LLM streams it: a few characters a chunk
    chunks = [case["reply"][i : i + step] for i in range(0, len(case["reply"]), step)]
    assert parse(chunks) == parse([case["reply"]])
