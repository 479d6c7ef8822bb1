from pathlib import Path

import pytest

from avatar_shared.config import ConfigError
from avatar_shared.web.policy import load_policy
from avatar_shared.web.principal import Principal

ROOT = Path(__file__).parents[4]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_policies_load() -> None:
    for path in [ROOT / "deploy/local/policy.toml", ROOT / "docs/policy.example.toml"]:
        assert load_policy(path).rules


def test_first_matching_rule_decides(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            """
[[rules]]
principals = ["group:staff"]
avatars = ["*"]
ttl_seconds = 60
[[rules]]
principals = ["user:*"]
avatars = ["ava-1"]
""",
        )
    )
    staff = Principal("user", "u1", frozenset({"staff"}))
    user = Principal("user", "u2")
    assert policy.rule_for(staff, "anything") is policy.rules[0]
    assert policy.rule_for(user, "ava-1") is policy.rules[1]
    assert policy.rule_for(user, "ava-2") is None
    assert policy.rule_for(Principal("anonymous", "anon-1"), "ava-1") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rules]\n", "policy.toml"),
        ('[[rules]]\nprincipals = ["everyone"]\navatars = ["*"]\n', "rules.0.principals.0"),
        ('[[rules]]\nprincipals = ["anonymous"]\navatars = ["../x"]\n', "rules.0.avatars.0"),
        ('[[rules]]\nprincipals = ["anonymous"]\navatars = ["demo\\n"]\n', "rules.0.avatars.0"),
        ('[[rules]]\nprincipals = ["api_key:k\\n"]\navatars = ["*"]\n', "rules.0.principals.0"),
        (
            '[[rules]]\nprincipals = ["anonymous"]\navatars = ["*"]\nroom_pattern = "a.*"\n',
            "anchored",
        ),
        (  # a look-ahead: not on the linear-time engine the patterns run on
            '[[rules]]\nprincipals = ["anonymous"]\navatars = ["*"]\nroom_pattern = "^(?!x).*$"\n',
            "linear-time",
        ),
        ('[[rules]]\nprincipals = ["anonymous"]\navatars = ["*"]\ncolour = 1\n', "colour"),
        ('[[api_keys]]\nname = "k"\nsha256 = "abc"\n', "api_keys.0.sha256"),
        (
            '[[api_keys]]\nname = "k"\nsha256 = "' + "a" * 64 + '"\n'
            '[[api_keys]]\nname = "k"\nsha256 = "' + "b" * 64 + '"\n',
            "unique",
        ),
    ],
)
def test_broken_policies_stop_the_service_with_the_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_policy(write(tmp_path, text))


def test_missing_policy_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_policy(tmp_path / "absent.toml")
