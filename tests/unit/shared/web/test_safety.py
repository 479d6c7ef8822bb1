"""Settings unsafe in production are refused at start, unless in development mode."""

import pytest

from avatar_shared.config import ConfigError
from avatar_shared.web.policy import Policy
from avatar_shared.web.safety import (
    DeploymentSettings,
    anonymous_everything,
    broad_proxies,
    open_cors,
    plain_text_url,
    refuse_unsafe,
    weak_secret,
)


def test_short_secrets() -> None:
    assert weak_secret("S", "x" * 31) == ["S is shorter than 32 characters"]
    assert weak_secret("S", "x" * 32) == []


@pytest.mark.parametrize(
    ("networks", "unsafe"),
    [
        (["0.0.0.0/0"], True),
        (["::/0"], True),
        (["0.0.0.0/1"], True),
        (["10.0.0.0/8"], False),
        (["10.0.0.0/7"], True),
        (["192.168.1.0/24", "fd00::/8"], True),
        (["2001:db8::/32"], False),
        ([], False),
    ],
)
def test_trusting_too_wide_a_network(networks: list[str], unsafe: bool) -> None:
    assert bool(broad_proxies("P", networks)) is unsafe


def test_cors_for_every_origin() -> None:
    assert open_cors("C", ["*"])
    assert open_cors("C", ["https://a", "https://*.b"])
    assert open_cors("C", ["https://app.example"]) == []
    assert open_cors("C", ["https://app.example", "null"])  # a sandboxed frame's origin
    assert open_cors("C", [" NULL "])


@pytest.mark.parametrize(
    ("url", "unsafe"),
    [
        ("http://issuer.example/jwks", True),
        ("ws://livekit.example:7880", True),
        ("https://issuer.example/jwks", False),
        ("wss://livekit.example", False),
        ("http://127.0.0.1:8080/jwks", False),
        ("ws://localhost:7880", False),
        ("http://[::1]:7880", False),
        (None, False),
    ],
)
def test_plain_text_urls_off_this_machine(url: str | None, unsafe: bool) -> None:
    assert bool(plain_text_url("U", url)) is unsafe


def test_anonymous_access_to_every_avatar() -> None:
    star = Policy.model_validate({"rules": [{"principals": ["anonymous"], "avatars": ["*"]}]})
    one = Policy.model_validate({"rules": [{"principals": ["anonymous"], "avatars": ["demo"]}]})
    assert anonymous_everything(True, star)
    assert anonymous_everything(False, star) == []
    assert anonymous_everything(True, one) == []


def test_refused_unless_in_development_mode(caplog: pytest.LogCaptureFixture) -> None:
    problems = ["A is unsafe", "B is unsafe"]
    with pytest.raises(ConfigError, match=r"A is unsafe; B is unsafe .*AVATAR_DEV_MODE=true"):
        refuse_unsafe(problems, DeploymentSettings(dev_mode=False))
    refuse_unsafe(problems, DeploymentSettings(dev_mode=True))
    assert [r.getMessage() for r in caplog.records] == [
        "unsafe outside development: A is unsafe",
        "unsafe outside development: B is unsafe",
    ]
    refuse_unsafe([], DeploymentSettings(dev_mode=False))
