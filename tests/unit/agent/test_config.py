"""The avatars file, the prompt built from it, and the provider settings' fail-fast checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_agent.avatars import DEFAULT_EMOTIONS, AvatarCatalog
from avatar_agent.config import DEFAULT_TEXT_LIMITS, AgentSettings, TextLimits
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


def problems(env: pytest.MonkeyPatch, *, hears_user: bool, **values: str) -> list[str]:
    for name, value in values.items():
        env.setenv(name, value)
    return load(AgentSettings).problems(hears_user=hears_user)


def test_the_default_providers_need_both_keys(agent_env: pytest.MonkeyPatch) -> None:
    settings = load(AgentSettings)
    with pytest.raises(ConfigError) as err:
        settings.check(hears_user=True)
    assert "OPENAI_API_KEY (AGENT_LLM=realtime runs on OpenAI)" in str(err.value)
    assert "CARTESIA_API_KEY (AGENT_TTS=cartesia)" in str(err.value)
    assert "AGENT_LLM=demo AGENT_TTS=demo" in str(err.value)
    keys = {"OPENAI_API_KEY": "sk-test", "CARTESIA_API_KEY": "ck-test"}
    assert problems(agent_env, hears_user=True, **keys) == []


OWN_LLM = {
    "AGENT_LLM": "openai-compatible",
    "AGENT_LLM_BASE_URL": "http://127.0.0.1:11434/v1",
    "AGENT_LLM_MODEL": "llama3.1:8b",
    "AGENT_TTS": "demo",
}


def test_the_local_run_with_its_own_llm_needs_no_key_and_no_stt(
    agent_env: pytest.MonkeyPatch,
) -> None:
    assert problems(agent_env, hears_user=False, **OWN_LLM) == []


def test_a_job_with_its_own_llm_needs_speech_to_text_and_says_how(
    agent_env: pytest.MonkeyPatch,
) -> None:
    missing = problems(agent_env, hears_user=True, **OWN_LLM)
    assert len(missing) == 1, missing
    assert "AGENT_STT_BASE_URL" in missing[0]
    stt = {"AGENT_STT_BASE_URL": "http://127.0.0.1:8000/v1"}
    assert ["AGENT_STT_MODEL" in m for m in problems(agent_env, hears_user=True, **stt)] == [True]
    assert problems(agent_env, hears_user=True, AGENT_STT_MODEL="whisper-large-v3") == []


def test_a_base_url_needs_a_model_name_the_server_serves(agent_env: pytest.MonkeyPatch) -> None:
    agent_env.setenv("AGENT_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    missing = problems(agent_env, hears_user=False, AGENT_LLM="openai-compatible", AGENT_TTS="demo")
    assert len(missing) == 1, missing
    assert missing[0].startswith("AGENT_LLM_MODEL")
    settings = load(AgentSettings)
    assert settings.chat_model == "gpt-4.1-mini"  # only what OpenAI itself would get


def test_openai_itself_needs_its_key_and_every_missing_setting_is_named_at_once(
    agent_env: pytest.MonkeyPatch,
) -> None:
    values = {"AGENT_LLM": "openai-compatible", "AGENT_TTS": "cartesia"}
    missing = problems(agent_env, hears_user=True, **values)
    assert [m.split(" ")[0] for m in missing] == [
        "OPENAI_API_KEY",  # the LLM
        "OPENAI_API_KEY",  # speech-to-text
        "CARTESIA_API_KEY",
    ]
    assert problems(agent_env, hears_user=False, OPENAI_API_KEY="sk", CARTESIA_API_KEY="ck") == []


def test_demo_providers_need_nothing_and_bad_names_are_refused(
    agent_env: pytest.MonkeyPatch,
) -> None:
    agent_env.setenv("AGENT_LLM", "demo")
    agent_env.setenv("AGENT_TTS", "demo")
    assert load(AgentSettings).tts == "demo"
    agent_env.setenv("AGENT_TTS", "elevenlabs")
    with pytest.raises(ConfigError, match="AGENT_TTS"):
        load(AgentSettings)


@pytest.mark.parametrize("rate", ["10", "0/minute", "10/fortnight", ""])
def test_a_typed_input_rate_that_is_not_a_rate_stops_the_start(
    agent_env: pytest.MonkeyPatch, rate: str
) -> None:
    agent_env.setenv("AGENT_TEXT_INPUT_RATE", rate)
    with pytest.raises(ConfigError, match="AGENT_TEXT_INPUT_RATE"):
        load(AgentSettings)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ('{"avatar_id":"demo-avatar"}', "demo-avatar"),
        ("", None),
        ("not json", None),
        ("[1]", None),
        ('{"avatar_id": 3}', None),
        ('{"avatar_id": "a", "n": ' + "9" * 5000 + "}", None),  # past int()'s digit limit
        ("[" * 100_000 + "]" * 100_000, None),  # deeper than json can go
    ],
)
def test_the_avatar_id_comes_from_the_dispatch_metadata(
    metadata: str, expected: str | None
) -> None:
    assert avatar_id_from_metadata(metadata) == expected


def test_the_text_limits_are_the_settings_of_their_names() -> None:
    avatars = ROOT / "deploy" / "local" / "avatars.toml"
    settings = AgentSettings(
        avatars_file=avatars,
        max_tag_hold=100,
        max_text_input_chars=300,
        text_input_rate="5/second",
        max_history_chars=4000,
        max_reply_tokens=500,
    )
    assert settings.text_limits == TextLimits(
        max_tag_hold=100,
        max_text_input_chars=300,
        text_input_rate="5/second",
        max_history_chars=4000,
        max_reply_tokens=500,
    )
    # the defaults are the settings' defaults
    assert AgentSettings(avatars_file=avatars).text_limits == DEFAULT_TEXT_LIMITS
