import contextlib
import hmac

import httpx
import pytest

from avatar_shared.web import auth
from avatar_shared.web.auth import Authenticator, AuthSettings, hash_api_key
from avatar_shared.web.errors import ApiError
from avatar_shared.web.jwks import JwksCache
from tests.support import oidc

KEYS = {f"key-{i}": hash_api_key(f"secret-{i}") for i in range(5)}


def settings(**overrides: object) -> AuthSettings:
    return AuthSettings(policy_file="p.toml", **overrides)  # type: ignore[arg-type]


async def test_api_keys_are_compared_in_constant_time_against_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    authenticator = Authenticator(settings(), KEYS)
    for presented in ("secret-0", "secret-4", "nope"):
        calls.clear()
        with contextlib.suppress(ApiError):
            await authenticator.authenticate({"x-api-key": presented})
        # No early exit: the first and the last key cost the same comparisons.
        assert len(calls) == len(KEYS)
        # Only fixed-length digests are compared, never the raw key.
        assert all(len(a) == len(b) == 32 for a, b in calls)


async def test_api_key_names_the_principal() -> None:
    principal = await Authenticator(settings(), KEYS).authenticate({"x-api-key": "secret-3"})
    assert (principal.kind, principal.id) == ("api_key", "key-3")
    assert principal.refs == {"api_key:key-3"}


def test_symmetric_algorithms_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="AUTH_OIDC_ALGORITHMS"):
        Authenticator(settings(oidc_algorithms=["HS256"]), {})


def test_oidc_without_audience_is_refused_at_start() -> None:
    jwks = JwksCache(oidc.JWKS_URL, httpx.AsyncClient())
    with pytest.raises(ValueError, match="AUTH_OIDC_AUDIENCE"):
        Authenticator(settings(oidc_issuer=oidc.ISSUER), {}, jwks)


async def test_jwks_keys_are_cached_and_refreshed_after_their_ttl() -> None:
    issuer = oidc.Issuer()
    now = [0.0]
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http, ttl=300, min_refresh=30, clock=lambda: now[0])
        assert await cache.key(issuer.kid) is not None
        assert await cache.key(issuer.kid) is not None
        assert issuer.jwks_requests == 1
        now[0] = 301
        assert await cache.key(issuer.kid) is not None
        assert issuer.jwks_requests == 2


async def test_jwks_rotation_is_picked_up_on_an_unknown_kid() -> None:
    issuer = oidc.Issuer(kid="old")
    now = [0.0]
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http, ttl=300, min_refresh=30, clock=lambda: now[0])
        assert await cache.key("old") is not None
        issuer.kid = "new"
        assert await cache.key("new") is None  # too soon to refetch
        now[0] = 31
        assert await cache.key("new") is not None


async def test_jwks_outage_keeps_the_keys_already_known() -> None:
    issuer = oidc.Issuer()
    healthy = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        if not healthy[0]:
            return httpx.Response(503)
        return httpx.Response(200, json=issuer.jwks())

    now = [0.0]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        cache = JwksCache(oidc.JWKS_URL, http, ttl=10, clock=lambda: now[0])
        assert await cache.key(issuer.kid) is not None
        healthy[0] = False
        now[0] = 100
        assert await cache.key(issuer.kid) is not None
