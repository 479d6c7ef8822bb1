"""The streaming tag parser: LLM text in, speakable text and parsed tags out.

The LLM is asked to write ``[action:wave_hand]`` for gestures and
``<emotion value="happy"/>`` for the voice, and writes them in many other ways.
:class:`TagParser` removes them as text streams through, one chunk at a time, and reports
each as a :class:`Tag` with its position in the clean text.

Invariant (chunk boundaries): the concatenated output and the list of tags depend only
on the concatenated input, never on how it was cut into chunks. Every decision is taken
at a character position of the input; the end of a chunk decides nothing. Text that may
still become a tag, and whitespace that may still have to merge with a removed tag, is
held back, at most ``max_hold`` characters each, until the next characters decide.

Rule: **text that opens as a tag is never spoken.**

- An *opener* is ``[`` or ``<``, then ``action`` or ``emotion`` (or their plurals), or
  the closing ``</emotion``, ``</action``, ``[/action``, ``[/emotion``, in any case, with
  any spaces or tabs after ``[``, ``<`` and ``/`` (an opener is still at most
  ``max_hold`` characters long), and followed by a character that is not a
  letter (so ``[actionable]`` and ``<emotional>`` are text). The keyword says the tag's
  kind, whatever its bracket: LLMs mix the two forms (``[emotion: happy]``,
  ``<action name="nod"/>``).
- An opener closed by its bracket's closer (``]`` or ``>``) within ``max_hold``
  characters is a tag and is removed, whatever is inside: ``[action: wave hand]``,
  ``[action:]``, ``<emotion value="very happy"/>``, ``</emotion>``.
- Its name is what follows the keyword in square brackets, or the ``value=`` (``name=``,
  ``type=``) in angle brackets, else their first word, normalised: quotes
  dropped, ``camelCase`` split, lower-cased, every run of other characters one ``_``
  (``Wave-Hand``, ``wave hand`` and ``waveHand`` are ``wave_hand``), at most 64
  characters. A tag with a name is reported, ``valid`` when the avatar allows it; one
  without (``[action:]``, ``</emotion>``) is removed and counted in :attr:`nameless`.
- An *element*: a nameless opening tag, one name-shaped word (letters, digits, ``_``,
  ``-``, quotes) and a closing tag of the same bracket, on one line and within
  ``max_hold`` characters (``<emotion>happy</emotion>``, ``[action] nod [/action]``), is
  one tag named by that word, removed whole: LLMs write XML elements, and the word is
  the tag's name, not speech. Anything else after a nameless opening tag (``<emotion>I
  am so glad</emotion>``, ``<action>Sorry!``) is text; the opening tag goes alone. So a
  one-word reply wrapped in a nameless emotion element (``<emotion>Okay</emotion>``) is
  taken as a name and not spoken: the lesser harm than speaking every name written so.
- An opener that does not close is dropped with everything after it up to the first line
  break, the next ``[`` or ``<``, or ``max_hold`` characters and the rest of the word they
  end in, whichever comes first; the text after that point is spoken. So a forgotten
  ``]`` costs at most ``max_hold`` characters and a word of the reply, and never speaks
  the tag. Counted in :attr:`unterminated`. At
  the end of the text, any held fragment that could still have become a tag is dropped.
- ``keep_emotions`` (text bound for Cartesia): an allowed emotion is also written, in the
  canonical form ``<emotion value="name"/>``, right before the next visible text. Nothing
  else of a tag is ever written.
- A tag and the whitespace around it become one whitespace character between two
  visible characters (the first whitespace character of the run, else a space, so words
  are neither glued nor doubled; a line break right after ``[`` or ``<``, so the removal
  cannot form a new opener), and nothing at the start or end of the text or before
  closing punctuation. So no opener is ever in the clean text; and the clean text, and
  every tag's offsets in it, are the same whether emotions are kept or not.
- Markdown markers around a tag go with it: the same run of up to three ``*``, ``_``,
  ``~`` or backquotes right before a tag, at the start of a word, and right after it
  (``*[action:wave]*``, ``**<emotion value="happy"/>**``) is removed with the tag.
  Markers that differ, or wrap more than the tag (``*[action:nod] Hello*``), are text.
- Anything else that starts like a tag (``a[0]``, ``x < y``, ``[citation needed]``,
  ``<3``) is text, unchanged.
- Fullwidth square and angle brackets and slash (U+FF3B, U+FF3D, U+FF1C, U+FF1E,
  U+FF0F), which LLMs writing Chinese or Japanese put in tags, are read as their ASCII
  forms, and written as them (one character for one, so offsets do not move): the
  fullwidth ``[action:wave]`` is a tag like the ASCII one.

Cost is linear in the input: a held candidate is at most ``max_hold`` characters and is
matched by anchored patterns without nested repetition, with partial matching.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

import regex

from avatar_shared.events import TagKind

# A whole tag: the opener, then (after a non-letter) anything but a line break or the
# start of another tag, then the closer, which may be alone on the next line. Either
# keyword goes with either bracket: LLMs write "[emotion: happy]" and "<action:nod/>".
_S = r"[^\S\r\n]*"  # the spaces LLMs put inside an opener (held up to max_hold)
_KEYWORD = r"(?:actions?|emotions?)"
_SQUARE_OPENER = rf"\[{_S}(?:/{_S})?{_KEYWORD}"
_ANGLE_OPENER = rf"<{_S}/?{_S}{_KEYWORD}"
_SQUARE = regex.compile(
    rf"{_SQUARE_OPENER}(?:[^A-Za-z\[\]<\r\n][^\[\]<\r\n]*)?(?:[\r\n]\s*)?\]", regex.IGNORECASE
)
_ANGLE = regex.compile(
    rf"{_ANGLE_OPENER}(?:[^A-Za-z<>\[\r\n][^<>\[\r\n]*)?(?:[\r\n]\s*)?>", regex.IGNORECASE
)
# An opener and the character after it: once a candidate has one, it is a tag, closed or
# not, and is never spoken.
OPENER = regex.compile(rf"(?:{_SQUARE_OPENER}|{_ANGLE_OPENER})(?![A-Za-z])", regex.IGNORECASE)
_SHORTEST_OPENED = len("[action:")
# What may follow an opener without deciding anything.
_BODY = {"[": regex.compile(r"[^\[\]<\r\n]*"), "<": regex.compile(r"[^<>\[\r\n]*")}
# The opener's keyword (which kind of tag), and whether it closes ("</emotion>").
_START = regex.compile(rf"[\[<]{_S}(/?){_S}(action|emotion)s?", regex.IGNORECASE)
# After a nameless opening tag, one name-shaped word and a closing tag: an element
# ("<emotion>happy</emotion>", "[action]nod[/action]") named by the word.
_WORD = r"[\"'\u201c\u2018]?[\w-]{1,64}[\"'\u201d\u2019]?"  # curly quotes too
_ELEMENT_REST = {
    "[": regex.compile(rf"{_S}({_WORD}){_S}\[{_S}/{_S}{_KEYWORD}{_S}\]", regex.IGNORECASE),
    "<": regex.compile(rf"{_S}({_WORD}){_S}<{_S}/{_S}{_KEYWORD}{_S}>", regex.IGNORECASE),
}
_SQUARE_NAME = regex.compile(r"[\s:=]*(.*)\]", regex.DOTALL)
_ATTRIBUTE = regex.compile(r"(?:value|name|type)\s*[:=]\s*", regex.IGNORECASE)
_SEPARATOR = regex.compile(r"[\s:=]*")
_VALUE = regex.compile(r"\"([^\"]*)|'([^']*)|([^/>]*)")
_CAMEL = regex.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_NAME = regex.compile(r"[^a-z0-9]+")
# Exactly the characters str.isspace() calls whitespace (\s alone misses \x1c-\x1f).
_SPACE = regex.compile(r"[\s\x1c-\x1f]+")
_PLAIN = regex.compile(r"[^\s\x1c-\x1f\[<]+")
_CLOSING = frozenset(".,!?;:)]}…")
# Markdown emphasis and code markers LLMs wrap tags in ("*[action:wave]*").
_MARKERS = "*_~`"
_MAX_WRAP = 3
_FULLWIDTH = str.maketrans("\uff3b\uff3d\uff1c\uff1e\uff0f", "[]<>/")
_HAS_FULLWIDTH = re.compile("[\uff3b\uff3d\uff1c\uff1e\uff0f]")
_MAX_NAME = 64


class _Match(Enum):
    FULL = 1
    PARTIAL = 2
    NONE = 3


@dataclass(frozen=True, slots=True)
class Tag:
    kind: TagKind
    name: str
    valid: bool
    index: int  # order among the tags of this text
    char_offset: int  # clean (tag-free) characters before the tag
    word_index: int  # clean words before the tag


def tag_kind(raw: str) -> TagKind:
    """Which kind of tag a whole tag is: its keyword says, whatever its brackets."""
    start = _START.match(raw)
    assert start is not None  # every tag starts with an opener
    return TagKind.ACTION if start.group(2).lower() == "action" else TagKind.EMOTION


def tag_name(raw: str) -> str:
    """The normalised name inside a whole tag; empty when it has none."""
    start = _START.match(raw)
    assert start is not None  # every tag starts with an opener
    if start.group(1):  # a closing tag
        return ""
    if raw[0] == "[":
        match = _SQUARE_NAME.fullmatch(raw, start.end())
        name = match.group(1) if match else ""
    else:
        body = raw[start.end() :]
        at = _ATTRIBUTE.search(body) or _SEPARATOR.match(body)
        assert at is not None  # the separator matches the empty string
        value = _VALUE.match(body, at.end())
        name = next((g for g in value.groups() if g is not None), "") if value else ""
    return _normalised(name)


def _normalised(name: str) -> str:
    name = _CAMEL.sub("_", name).lower()
    return _NOT_NAME.sub("_", name).strip("_")[:_MAX_NAME].rstrip("_")


def _opens_element(nameless: str) -> bool:
    """Whether a nameless whole tag may open an element: neither closing nor closed."""
    start = _START.match(nameless)
    assert start is not None  # every tag starts with an opener
    return not start.group(1) and not nameless[:-1].rstrip().endswith("/")


def _opened(candidate: str) -> bool:
    """Whether the candidate holds an opener and the character that confirms it."""
    if len(candidate) < _SHORTEST_OPENED:
        return False
    match = OPENER.match(candidate)
    return match is not None and match.end() < len(candidate)


@dataclass
class _Gap:
    """Whitespace, possibly with tags in it, not yet written out."""

    space: str = ""
    has_tag: bool = False
    kept: list[str] = field(default_factory=list)  # emotion tags to write after the space


@dataclass
class TagParser:
    actions: Collection[str]
    emotions: Collection[str]
    keep_emotions: bool = False
    max_hold: int = 64
    unterminated: int = 0  # openers dropped without their closer
    nameless: int = 0  # whole tags removed without a name to report

    _out: list[str] = field(default_factory=list)
    _tags: list[Tag] = field(default_factory=list)
    _gap: _Gap = field(default_factory=_Gap)
    _pending: str = ""
    _in_body: bool = False  # the candidate is an opener, before any line break
    _element_at: int = 0  # the candidate is a nameless opening tag this long, and more
    _wrap: str = ""  # markers right before a possible tag, held until it is decided
    _wrapped: tuple[str, str, str] | None = None  # a tag after markers: raw, name, markers
    _after: str = ""  # the markers read after that tag so far
    _rest_of_word: bool = False  # dropping the word an unterminated opener was cut in
    _clean_chars: int = 0
    _last_clean: str = ""
    _words: int = 0
    _in_word: bool = False
    _count: int = 0

    def feed(self, chunk: str) -> tuple[str, list[Tag]]:
        """Parse one chunk; returns the text that is now certain, and the tags found."""
        if not chunk.isascii() and _HAS_FULLWIDTH.search(chunk):
            chunk = chunk.translate(_FULLWIDTH)
        self._scan(chunk)
        return self._take()

    def close(self) -> tuple[str, list[Tag]]:
        """End of the text: drop a fragment that could still be a tag, and its gap."""
        if self._element_at:
            self._unclosed_element()
        self._rest_of_word = False
        if self._pending:
            self._pending = ""
            self._in_body = False
            self._drop_unterminated()
        if self._wrapped is not None:
            self._unwrap()
        self._flush_wrap()
        if not self._gap.has_tag:
            self._write(self._gap.space, clean=True)
        self._write("".join(self._gap.kept), clean=False)
        self._gap = _Gap()
        return self._take()

    # --- scanning ---------------------------------------------------------------------

    def _scan(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self._rest_of_word:
                run = _PLAIN.match(text, i)
                i = run.end() if run else i
                self._rest_of_word = i == len(text)
                continue
            if self._wrapped is not None:
                i = self._after_wrapped(text, i)
                continue
            if self._pending:
                i = self._extend_pending(text, i)
                continue
            char = text[i]
            if char in "[<":
                self._pending = char
                i += 1
            elif char.isspace():
                if self._wrap:
                    self._flush_wrap()
                run = _SPACE.match(text, i)
                assert run is not None  # it matches the character just looked at
                self._add_space(run.group())
                i = run.end()
            else:
                run = _PLAIN.match(text, i)
                assert run is not None  # it matches the character just looked at
                if char in _MARKERS and self._may_wrap(self._wrap + run.group()):
                    self._wrap += run.group()
                else:
                    self._visible(run.group())
                i = run.end()

    # --- markers around a tag ("*[action:wave]*", "`<emotion value="sad"/>`") ----------

    def _may_wrap(self, markers: str) -> bool:
        """Whether these characters, at the start of a word, may open a wrapped tag."""
        at_word_start = not self._in_word or bool(self._gap.space) or self._gap.has_tag
        return (
            len(markers) <= _MAX_WRAP
            and not markers.strip(_MARKERS)
            and (bool(self._wrap) or at_word_start)
        )

    def _flush_wrap(self) -> None:
        """The held markers are text after all."""
        if self._wrap:
            wrap, self._wrap = self._wrap, ""
            self._visible(wrap)

    def _after_wrapped(self, text: str, i: int) -> int:
        """After a tag that followed markers: read the markers after it, then decide."""
        assert self._wrapped is not None
        if text[i] in _MARKERS and len(self._after) <= len(self._wrapped[2]):
            self._after += text[i]
            return i + 1
        self._unwrap()
        return i  # scanned again, now that the tag is settled

    def _unwrap(self) -> None:
        """The same markers after the tag as before it go with the tag; else both are text."""
        assert self._wrapped is not None
        (raw, name, wrap), after = self._wrapped, self._after
        self._wrapped, self._after = None, ""
        if after == wrap:
            self._remove_tag(raw, name)
            return
        self._visible(wrap)
        self._remove_tag(raw, name)
        self._scan(after)

    def _extend_pending(self, text: str, i: int) -> int:
        """Grow the candidate tag; settle it once the text decides."""
        if self._element_at:
            self._extend_element(text[i])
            return i + 1
        if self._in_body:
            # Inside an opened tag, ordinary characters cannot decide anything: take
            # them at once, up to the hold bound, instead of one pattern match each.
            limit = min(len(text), i + self.max_hold + 1 - len(self._pending))
            body = _BODY[self._pending[0]].match(text, i, limit)
            assert body is not None  # the pattern matches the empty string
            if body.end() > i:
                self._pending += body.group()
                if len(self._pending) > self.max_hold:
                    self._pending = ""
                    self._in_body = False
                    self._drop_unterminated()
                    self._rest_of_word = True
                return body.end()
            if text[i] in "[<":  # another tag starts: this one never closes
                self._pending = ""
                self._in_body = False
                self._drop_unterminated()
                return i  # scanned again, as the start of a candidate
        self._pending += text[i]
        candidate = self._pending
        state = self._classify(candidate)
        if state is _Match.PARTIAL and len(candidate) <= self.max_hold:
            self._in_body = candidate[-1] not in "\r\n" and (self._in_body or _opened(candidate))
            return i + 1
        self._in_body = False
        if state is _Match.FULL:
            name = tag_name(candidate)
            if not name and _opens_element(candidate):
                self._element_at = len(candidate)  # held: what follows may name it
                return i + 1
            self._pending = ""
            self._tag(candidate, name)
            return i + 1
        self._pending = ""
        if not _opened(candidate):
            # Not a tag: its first character is text; the rest is scanned again, since a
            # tag may start inside it (as in "[[action:x]").
            self._visible(candidate[0])
            self._scan(candidate[1:])
        elif state is _Match.PARTIAL:  # an opener held for max_hold characters
            self._drop_unterminated()
            self._rest_of_word = True
        else:  # an opener broken by a line break or another tag's start
            self._drop_unterminated()
            self._scan(candidate[-1])
        return i + 1

    def _extend_element(self, char: str) -> None:
        """After a nameless opening tag: a word and a closing tag make it an element."""
        candidate = self._pending + char
        rest = _ELEMENT_REST[candidate[0]].fullmatch(candidate, self._element_at, partial=True)
        if rest is None or (rest.partial and len(candidate) > self.max_hold):
            self._pending = candidate
            self._unclosed_element()
        elif rest.partial:
            self._pending = candidate
        else:
            self._pending, self._element_at = "", 0
            self._tag(candidate, _normalised(rest.group(1)))

    def _unclosed_element(self) -> None:
        """The opening tag is removed alone; what followed it is scanned as text."""
        candidate, opening = self._pending, self._element_at
        self._pending, self._element_at = "", 0
        self._tag(candidate[:opening], "")
        self._scan(candidate[opening:])

    def _classify(self, candidate: str) -> _Match:
        pattern = _SQUARE if candidate[0] == "[" else _ANGLE
        match = pattern.fullmatch(candidate, partial=True)
        if match is None:
            return _Match.NONE
        return _Match.PARTIAL if match.partial else _Match.FULL

    # --- what the text becomes ----------------------------------------------------------

    def _tag(self, raw: str, name: str) -> None:
        """A whole tag, with its normalised name (empty: nameless); after markers, the
        markers after it decide whether they go with it."""
        if self._wrap:
            self._wrapped, self._wrap = (raw, name, self._wrap), ""
            return
        self._remove_tag(raw, name)

    def _remove_tag(self, raw: str, name: str) -> None:
        self._remove()
        if not name:
            self.nameless += 1
            return
        kind = tag_kind(raw)
        valid = name in (self.actions if kind is TagKind.ACTION else self.emotions)
        self._tags.append(Tag(kind, name, valid, self._count, self._clean_chars, self._words))
        self._count += 1
        if kind is TagKind.EMOTION and valid and self.keep_emotions:
            self._gap.kept.append(f'<emotion value="{name}"/>')

    def _drop_unterminated(self) -> None:
        self._flush_wrap()
        self.unterminated += 1
        self._remove()

    def _remove(self) -> None:
        """Something was removed here: the whitespace around it becomes one character."""
        self._gap.has_tag = True
        self._gap.space = self._gap.space[:1]

    def _add_space(self, space: str) -> None:
        if self._gap.has_tag:
            self._gap.space = (self._gap.space or space)[:1]
            return
        self._gap.space += space
        if len(self._gap.space) > self.max_hold:  # bounded hold-back
            self._write(self._gap.space, clean=True)
            self._gap.space = ""

    def _visible(self, text: str) -> None:
        if self._wrap:
            self._flush_wrap()
        self._settle_gap(before=text[0])
        self._write(text, clean=True)

    def _settle_gap(self, before: str) -> None:
        gap, self._gap = self._gap, _Gap()
        if not gap.has_tag:
            self._write(gap.space, clean=True)
        elif self._clean_chars and before not in _CLOSING:
            # After "[" or "<", a line break: a space could join them and the text after
            # the removed tag into a new opener ("[[action:x]action: y]").
            self._write("\n" if self._last_clean in ("[", "<") else gap.space or " ", clean=True)
        self._write("".join(gap.kept), clean=False)

    def _write(self, text: str, *, clean: bool) -> None:
        if not text:
            return
        self._out.append(text)
        if not clean:
            return
        self._clean_chars += len(text)
        self._last_clean = text[-1]
        for char in text:
            if char.isspace():
                self._in_word = False
            elif not self._in_word:
                self._in_word = True
                self._words += 1

    def _take(self) -> tuple[str, list[Tag]]:
        text, tags = "".join(self._out), self._tags
        self._out, self._tags = [], []
        return text, tags
