"""Per-avatar configuration: persona, voice, and the tags each avatar may use.

One TOML file describes every avatar the agent can play (``AGENT_AVATARS_FILE``; see
docs/agent.md for the format). ``[defaults]`` holds values an avatar inherits unless it
sets its own; ``[avatars.<id>]`` is one avatar. The file is read once at start, and any
mistake stops the process with a message naming the file and the offending key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from avatar_shared.config import ConfigError, describe
from avatar_shared.events import AvatarId

TagName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]

#: Cartesia sonic-3's best-supported emotions, plus "happy" as in the seed prompt.
DEFAULT_EMOTIONS = ("neutral", "happy", "angry", "excited", "content", "sad", "scared")
#: Cartesia's sample voice used by the seed agent.
DEFAULT_VOICE = "9626c31c-bec5-4cca-baa8-f8ba9e84c8bc"
#: Said when a provider failed a reply before any of it was heard ("" says nothing).
DEFAULT_FALLBACK_LINE = "Sorry, I lost my train of thought. Could you say that again?"
#: Said when the session reaches its maximum length or the user went away ("": nothing).
DEFAULT_CLOSING_LINE = "I have to end our conversation here. Thank you, and goodbye!"
DEFAULT_INSTRUCTIONS = (
    "You are a helpful voice assistant. Keep answers concise, friendly, and useful."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    instructions: str = Field(DEFAULT_INSTRUCTIONS, min_length=1, max_length=20_000)
    voice: str = Field(DEFAULT_VOICE, min_length=1, max_length=256)
    emotions: tuple[TagName, ...] = DEFAULT_EMOTIONS
    actions: dict[TagName, Annotated[str, StringConstraints(max_length=500)]] = {}
    greeting: str | None = Field(None, max_length=2_000)
    fallback_line: str = Field(DEFAULT_FALLBACK_LINE, max_length=500)
    closing_line: str = Field(DEFAULT_CLOSING_LINE, max_length=500)


class _AvatarEntry(_Strict):
    """An avatar as written in the file: unset fields come from ``[defaults]``."""

    name: str = Field(min_length=1, max_length=128)
    instructions: str | None = Field(None, min_length=1, max_length=20_000)
    voice: str | None = Field(None, min_length=1, max_length=256)
    emotions: tuple[TagName, ...] | None = None
    actions: dict[TagName, Annotated[str, StringConstraints(max_length=500)]] | None = None
    greeting: str | None = Field(None, max_length=2_000)
    fallback_line: str | None = Field(None, max_length=500)
    closing_line: str | None = Field(None, max_length=500)


class _File(_Strict):
    defaults: Defaults = Defaults()
    avatars: dict[AvatarId, _AvatarEntry] = Field(min_length=1)


class Avatar(_Strict):
    """One avatar, defaults applied."""

    id: AvatarId
    name: str
    instructions: str
    voice: str
    emotions: tuple[TagName, ...]
    #: action name -> what it looks like, for the prompt
    actions: dict[TagName, str]
    #: what the agent is asked to say first, if anything
    greeting: str | None
    #: what the agent says when a provider failed a reply before any of it was heard
    fallback_line: str
    #: what the agent says when the session reaches a limit (length, inactivity)
    closing_line: str


class AvatarCatalog:
    def __init__(self, avatars: dict[str, Avatar]) -> None:
        self._avatars = avatars

    def get(self, avatar_id: str) -> Avatar | None:
        return self._avatars.get(avatar_id)

    def __contains__(self, avatar_id: object) -> bool:
        return avatar_id in self._avatars

    def __len__(self) -> int:
        return len(self._avatars)

    @property
    def ids(self) -> list[str]:
        return sorted(self._avatars)

    @classmethod
    def parse(cls, data: dict[str, object], *, source: str = "<avatars>") -> AvatarCatalog:
        try:
            parsed = _File.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: {describe(exc)}") from None
        d = parsed.defaults
        return cls(
            {
                avatar_id: Avatar(
                    id=avatar_id,
                    name=entry.name,
                    instructions=entry.instructions or d.instructions,
                    voice=entry.voice or d.voice,
                    emotions=entry.emotions if entry.emotions is not None else d.emotions,
                    actions=entry.actions if entry.actions is not None else d.actions,
                    greeting=entry.greeting if entry.greeting is not None else d.greeting,
                    fallback_line=(
                        entry.fallback_line if entry.fallback_line is not None else d.fallback_line
                    ),
                    closing_line=(
                        entry.closing_line if entry.closing_line is not None else d.closing_line
                    ),
                )
                for avatar_id, entry in parsed.avatars.items()
            }
        )

    @classmethod
    def load(cls, path: Path) -> AvatarCatalog:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the avatars file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        return cls.parse(data, source=str(path))
