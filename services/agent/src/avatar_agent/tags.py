"""The streaming tag parser: LLM text in, speakable text and parsed tags out.

The LLM writes ``[action:wave_hand]`` for gestures and ``<emotion value="happy"/>`` for the
voice. :class:`TagParser` removes them as text streams through, one chunk at a time, and
reports each as a :class:`Tag` with its position in the clean text.

Invariant (chunk boundaries): the concatenated output and the list of tags depend only
on the concatenated input, never on how it was cut into chunks. Every decision is taken
at a character position of the input; the end of a chunk decides nothing. Text that may
still become a tag, and whitespace that may still have to merge with a removed tag, is
held back, at most ``max_hold`` characters each, until the next characters decide.

Rules:

- ``[action:NAME]`` (any case, spaces allowed around the parts) is always removed.
- ``<emotion value=NAME/>`` (quotes and the slash optional) is removed, except with
  ``keep_emotions`` (text bound for Cartesia) when NAME is allowed: then it is also
  written, in the canonical form ``<emotion value="name"/>``, right before the next
  visible text. An emotion that is not allowed is never written.
- A tag and the whitespace around it become one whitespace character between two
  visible characters (the first whitespace character of the run, else a space, so words
  are neither glued nor doubled), and nothing at the start or end of the text or before
  closing punctuation. So the clean text, and every tag's offsets in it, are the same
  whether emotions are kept or not.
- Anything else that starts like a tag (``a[0]``, ``x < y``, ``[citation needed]``,
  ``<3``) is text, unchanged.
- A fragment that could still be a tag when the text ends is dropped, never spoken.

Cost is linear in the input: a held candidate is at most ``max_hold`` characters and is
matched by anchored patterns without nested repetition, with partial matching.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

import regex

from avatar_shared.events import TagKind

_ACTION = regex.compile(r"\[\s*action\s*:\s*([A-Za-z0-9][A-Za-z0-9_-]*)\s*\]", regex.IGNORECASE)
_EMOTION = regex.compile(
    r"<\s*emotion\s+value\s*=\s*(?:\"([A-Za-z_]+)\"|'([A-Za-z_]+)'|([A-Za-z_]+))\s*/?\s*>",
    regex.IGNORECASE,
)
# Exactly the characters str.isspace() calls whitespace (\s alone misses \x1c-\x1f).
_SPACE = regex.compile(r"[\s\x1c-\x1f]+")
_PLAIN = regex.compile(r"[^\s\x1c-\x1f\[<]+")
_CLOSING = frozenset(".,!?;:)]}…")


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
    dropped: int = 0  # unterminated fragments dropped at the end

    _out: list[str] = field(default_factory=list)
    _tags: list[Tag] = field(default_factory=list)
    _gap: _Gap = field(default_factory=_Gap)
    _pending: str = ""
    _clean_chars: int = 0
    _words: int = 0
    _in_word: bool = False
    _count: int = 0

    def feed(self, chunk: str) -> tuple[str, list[Tag]]:
        """Parse one chunk; returns the text that is now certain, and the tags found."""
        self._scan(chunk)
        return self._take()

    def close(self) -> tuple[str, list[Tag]]:
        """End of the text: drop an unterminated tag and the gap around it."""
        if self._pending:
            self.dropped += 1
            self._pending = ""
            self._gap.has_tag = True
        if not self._gap.has_tag:
            self._write(self._gap.space, clean=True)
        self._write("".join(self._gap.kept), clean=False)
        self._gap = _Gap()
        return self._take()

    # --- scanning ---------------------------------------------------------------------

    def _scan(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self._pending:
                i = self._extend_pending(text, i)
                continue
            char = text[i]
            if char in "[<":
                self._pending = char
                i += 1
            else:
                run = (_SPACE if char.isspace() else _PLAIN).match(text, i)
                assert run is not None  # both match the character just looked at
                if char.isspace():
                    self._add_space(run.group())
                else:
                    self._visible(run.group())
                i = run.end()

    def _extend_pending(self, text: str, i: int) -> int:
        """Grow the candidate tag one character; settle it once the text decides."""
        self._pending += text[i]
        state, match = self._classify(self._pending)
        if state is _Match.PARTIAL and len(self._pending) <= self.max_hold:
            return i + 1
        candidate, self._pending = self._pending, ""
        if state is _Match.FULL and match is not None:
            self._tag(candidate, match)
            return i + 1
        # Not a tag: its first character is text; the rest is scanned again, since a
        # tag may start inside it (as in "[[action:x]").
        self._visible(candidate[0])
        self._scan(candidate[1:])
        return i + 1

    def _classify(self, candidate: str) -> tuple[_Match, regex.Match[str] | None]:
        pattern = _ACTION if candidate[0] == "[" else _EMOTION
        match = pattern.fullmatch(candidate, partial=True)
        if match is None:
            return _Match.NONE, None
        return (_Match.PARTIAL if match.partial else _Match.FULL), match

    # --- what the text becomes ----------------------------------------------------------

    def _tag(self, raw: str, match: regex.Match[str]) -> None:
        is_action = raw[0] == "["
        kind = TagKind.ACTION if is_action else TagKind.EMOTION
        name = next(g for g in match.groups() if g).lower().replace("-", "_")
        valid = name in (self.actions if is_action else self.emotions)
        self._tags.append(Tag(kind, name, valid, self._count, self._clean_chars, self._words))
        self._count += 1
        self._gap.has_tag = True
        self._gap.space = self._gap.space[:1]
        if kind is TagKind.EMOTION and valid and self.keep_emotions:
            self._gap.kept.append(f'<emotion value="{name}"/>')

    def _add_space(self, space: str) -> None:
        if self._gap.has_tag:
            self._gap.space = (self._gap.space or space)[:1]
            return
        self._gap.space += space
        if len(self._gap.space) > self.max_hold:  # bounded hold-back
            self._write(self._gap.space, clean=True)
            self._gap.space = ""

    def _visible(self, text: str) -> None:
        self._settle_gap(before=text[0])
        self._write(text, clean=True)

    def _settle_gap(self, before: str) -> None:
        gap, self._gap = self._gap, _Gap()
        if not gap.has_tag:
            self._write(gap.space, clean=True)
        elif self._clean_chars and before not in _CLOSING:
            self._write(gap.space or " ", clean=True)
        self._write("".join(gap.kept), clean=False)

    def _write(self, text: str, *, clean: bool) -> None:
        if not text:
            return
        self._out.append(text)
        if not clean:
            return
        self._clean_chars += len(text)
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
