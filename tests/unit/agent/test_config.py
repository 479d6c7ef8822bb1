"""The avatars file, the prompt built from it, and the provider settings' fail-fast checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_agent.avatars import DEFAULT_EMOTIONS, AvatarCatalog
from avatar_agent.config import AgentSettings
from avatar_agent.prompt import build_instructions
from avatar_agent.runtime import avatar_id_from_metadata
from avatar_shared.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[3]


def test_the_local_avatars_file_loads_with_defaults_applied() -> None:
    catalog = AvatarCatalog.load(ROOT / "deploy" / "local" / "avatars.toml")
    avatar = catalog.get("demo-avatar")
    assert avatar is not None
    assert avatar.emotions == DEFAULT_EMOTIONS
    assert set(avatar.actions) == {"wave_hand", "nod", "thumbs_up"}
    assert avatar.voice == "9626c31c-bec5-4cca-baa8-f8ba9e84c8bc"


def test_an_avatar_overrides_defaults() -> None:
    catalog = AvatarCatalog.parse(
        {
            "defaults": {"emotions": ["happy"], "actions": {"nod": "nodding"}},
            "avatars": {"a": {"name": "A"}, "b": {"name": "B", "emotions": [], "actions": {}}},
        }
    )
    a, b = catalog.get("a"), catalog.get("b")
    assert a is not None
    assert b is not None
    assert (a.emotions, a.actions) == (("happy",), {"nod": "nodding"})
    assert (b.emotions, b.actions) == ((), {})
    assert catalog.ids == ["a", "b"]
    assert "a" in catalog
    assert catalog.get("c") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"avatars": {}}, "avatars: "),
        ({"avatars": {"a": {"name": "A", "actions": {"Wave Hand": ""}}}}, "avatars.a.actions"),
        ({"avatars": {"a b": {"name": "A"}}}, "avatars.a b"),
        ({"avatars": {"a": {"name": "A", "colour": "red"}}}, "avatars.a.colour"),
        ({"avatars": {"a": {}}}, "avatars.a.name"),
    ],
)
def test_mistakes_in_the_avatars_file_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"avatars\.toml: ") as err:
        AvatarCatalog.parse(data, source="avatars.toml")
    assert message in str(err.value)


def test_unreadable_or_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        AvatarCatalog.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[avatars.a\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        AvatarCatalog.load(broken)


def test_the_prompt_lists_the_avatars_own_vocabulary() -> None:
    catalog = AvatarCatalog.parse(
        {
            "avatars": {
                "a": {
                    "name": "Ava",
                    "instructions": "You sell bikes.",
                    "emotions": ["happy", "sad"],
                    "actions": {"bow": "a polite bow", "shrug": ""},
                }
            }
        }
    )
    avatar = catalog.get("a")
    assert avatar is not None
    prompt = build_instructions(avatar)
    assert prompt.startswith("You sell bikes.")
    assert "Allowed emotions: happy, sad." in prompt
    assert "- bow: a polite bow\n- shrug\n" in prompt
    assert "wave_hand" not in prompt
    assert "neutral" not in prompt


def test_without_actions_or_emotions_the_prompt_teaches_no_tags() -> None:
    avatar = AvatarCatalog.parse(
        {"avatars": {"a": {"name": "A", "emotions": [], "actions": {}}}}
    ).get("a")
    assert avatar is not None
    prompt = build_instructions(avatar)
    assert "[action:" not in prompt
    assert "<emotion" not in prompt


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OPENAI_API_KEY", "CARTESIA_API_KEY", "AGENT_LLM", "AGENT_TTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENT_AVATARS_FILE", "avatars.toml")
    return monkeypatch


def test_the_default_providers_need_both_keys(agent_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        load(AgentSettings)
    assert "OPENAI_API_KEY (needed by AGENT_LLM=realtime)" in str(err.value)
    assert "CARTESIA_API_KEY (needed by AGENT_TTS=cartesia)" in str(err.value)
    agent_env.setenv("OPENAI_API_KEY", "sk-test")
    agent_env.setenv("CARTESIA_API_KEY", "ck-test")
    assert load(AgentSettings).llm == "realtime"


def test_a_self_hosted_openai_compatible_llm_needs_no_key(agent_env: pytest.MonkeyPatch) -> None:
    agent_env.setenv("AGENT_LLM", "openai-compatible")
    agent_env.setenv("AGENT_TTS", "demo")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        load(AgentSettings)  # STT and LLM default to OpenAI itself
    agent_env.setenv("AGENT_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    agent_env.setenv("AGENT_STT_BASE_URL", "http://127.0.0.1:8000/v1")
    assert load(AgentSettings).llm_base_url == "http://127.0.0.1:11434/v1"


def test_demo_providers_need_nothing_and_bad_names_are_refused(
    agent_env: pytest.MonkeyPatch,
) -> None:
    agent_env.setenv("AGENT_LLM", "demo")
    agent_env.setenv("AGENT_TTS", "demo")
    assert load(AgentSettings).tts == "demo"
    agent_env.setenv("AGENT_TTS", "elevenlabs")
    with pytest.raises(ConfigError, match="AGENT_TTS"):
        load(AgentSettings)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ('{"avatar_id":"demo-avatar"}', "demo-avatar"),
        ("", None),
        ("not json", None),
        ("[1]", None),
        ('{"avatar_id": 3}', None),
    ],
)
def test_the_avatar_id_comes_from_the_dispatch_metadata(
    metadata: str, expected: str | None
) -> None:
    assert avatar_id_from_metadata(metadata) == expected
