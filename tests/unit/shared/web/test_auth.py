import asyncio
import contextlib
import hmac
import json

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.datastructures import Headers

from avatar_shared.web import auth
from avatar_shared.web.auth import Authenticator, AuthSettings, hash_api_key
from avatar_shared.web.errors import ApiError
from avatar_shared.web.jwks import JwksCache, KeysUnavailable
from tests.support import oidc

KEYS = {f"key-{i}": hash_api_key(f"secret-{i}") for i in range(5)}


def settings(**overrides: object) -> AuthSettings:
    if "oidc_issuer" in overrides:
        overrides.setdefault("oidc_jwks_url", oidc.JWKS_URL)
    return AuthSettings(policy_file="p.toml", **overrides)  # type: ignore[arg-type]


def bearer_authenticator(http: httpx.AsyncClient) -> Authenticator:
    """Bearer tokens of the test issuer only, its keys fetched through ``http``."""
    return Authenticator(
        settings(oidc_issuer=oidc.ISSUER, oidc_audience=oidc.AUDIENCE),
        {},
        JwksCache(oidc.JWKS_URL, http),
    )


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


@pytest.mark.parametrize(
    "raw",
    [
        [("x-api-key", "secret-3"), ("x-api-key", "secret-1")],
        [("x-api-key", "secret-3"), ("x-api-key", "secret-3")],
        [("authorization", "Bearer a.b.c"), ("authorization", "Bearer d.e.f")],
        [("x-api-key", "secret-3"), ("authorization", "Bearer a"), ("authorization", "x")],
    ],
)
async def test_a_credential_header_given_twice_is_refused(raw: list[tuple[str, str]]) -> None:
    headers = Headers(raw=[(k.encode(), v.encode()) for k, v in raw])
    with pytest.raises(ApiError) as refused:
        await Authenticator(settings(anonymous=True), KEYS).authenticate(headers)
    assert refused.value.status == 401
    assert "given more than once" in refused.value.body.message
    one = Headers(raw=[(b"x-api-key", b"secret-3"), (b"authorization", b"Basic eA==")])
    principal = await Authenticator(settings(), KEYS).authenticate(one)
    assert principal.id == "key-3"  # one of each: the API key, as before


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
    now = [0.0]
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http, ttl=10, clock=lambda: now[0])
        assert await cache.key(issuer.kid) is not None
        issuer.failing = True
        now[0] = 100
        assert await cache.key(issuer.kid) is not None


async def test_concurrent_callers_share_one_fetch() -> None:
    issuer = oidc.Issuer()
    issuer.hang = asyncio.Event()
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http)
        waiting = [asyncio.create_task(cache.key(issuer.kid)) for _ in range(30)]
        await asyncio.sleep(0.05)
        issuer.hang.set()
        keys = await asyncio.gather(*waiting)
    assert all(key is not None for key in keys)
    assert issuer.jwks_requests == 1


async def test_an_issuer_that_never_answered_gives_503_and_is_not_hammered() -> None:
    issuer = oidc.Issuer()
    issuer.failing = True
    now = [0.0]
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http, max_backoff=60, clock=lambda: now[0])
        for _ in range(30):
            with pytest.raises(KeysUnavailable):
                await cache.key(issuer.kid)
        assert issuer.jwks_requests == 1  # then backing off: 1 s, 2 s, 4 s, ...
        now[0] = 1.5
        with pytest.raises(KeysUnavailable) as refused:
            await cache.key(issuer.kid)
        assert issuer.jwks_requests == 2
        assert refused.value.retry_after == pytest.approx(2.0)
        issuer.failing = False
        now[0] = 4
        assert await cache.key(issuer.kid) is not None
        assert await cache.key("no-such-key") is None  # known to be unknown: a 401


async def test_a_hanging_issuer_costs_each_caller_at_most_the_timeout() -> None:
    issuer = oidc.Issuer()
    issuer.hang = asyncio.Event()
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http, timeout=0.2)
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(
            *(cache.key(issuer.kid) for _ in range(4)), return_exceptions=True
        )
        elapsed = asyncio.get_running_loop().time() - started
    assert all(isinstance(r, KeysUnavailable) for r in results)
    assert elapsed < 2.0  # one shared fetch, not four in turn
    assert issuer.jwks_requests == 1


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[" * 100_000,
        b'{"keys": "nope"}',
        b'{"keys": [{"kid": "key-1", "kty": "RSA", "n": "!!", "e": "AQAB"}]}',
        b'{"keys": []}' + b" " * 300_000,
    ],
)
async def test_a_broken_or_oversized_jwks_is_an_outage_not_a_crash(document: bytes) -> None:
    issuer = oidc.Issuer()
    issuer.document = document
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        cache = JwksCache(oidc.JWKS_URL, http, max_bytes=256 * 1024)
        with pytest.raises(KeysUnavailable) if b"RSA" not in document else contextlib.nullcontext():
            assert await cache.key("key-1") is None


async def test_an_unavailable_issuer_is_503_not_a_wrong_credentials_401() -> None:
    issuer = oidc.Issuer()
    issuer.failing = True
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        authenticator = bearer_authenticator(http)
        with pytest.raises(ApiError) as refused:
            await authenticator.authenticate({"authorization": f"Bearer {issuer.token()}"})
    assert refused.value.status == 503
    assert refused.value.body.error == "auth_unavailable"
    assert refused.value.headers["Retry-After"] == "1"


@pytest.mark.parametrize("sub", ["bob\n\u202eevil\x00", "eve\u2066", " padded", "tab\there"])
async def test_identity_claims_with_control_or_bidi_characters_are_refused(sub: str) -> None:
    issuer = oidc.Issuer()
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        authenticator = bearer_authenticator(http)
        with pytest.raises(ApiError) as refused:
            await authenticator.authenticate({"authorization": f"Bearer {issuer.token(sub=sub)}"})
    assert refused.value.status == 401


async def test_a_token_naming_a_key_of_another_type_is_401_not_a_crash() -> None:
    issuer = oidc.Issuer()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwks = issuer.jwks()
    jwks["keys"].append(ec_jwk | {"kid": "ec-1", "use": "sig", "alg": "ES256"})
    issuer.document = json.dumps(jwks).encode()
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        authenticator = bearer_authenticator(http)
        forged = issuer.token(kid="ec-1")  # RS256, signed with the RSA key
        with pytest.raises(ApiError) as refused:
            await authenticator.authenticate({"authorization": f"Bearer {forged}"})
        principal = await authenticator.authenticate({"authorization": f"Bearer {issuer.token()}"})
    assert (refused.value.status, refused.value.body.error) == (401, "unauthenticated")
    assert principal.kind == "user"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": float("inf")},
        {"exp": float("-inf")},
        {"exp": float("nan")},
        {"iat": float("inf")},
        {"nbf": float("inf")},
        {"exp": "tomorrow"},
        {"aud": {"nested": True}},
    ],
    ids=["exp-inf", "exp-minus-inf", "exp-nan", "iat-inf", "nbf-inf", "exp-text", "aud-object"],
)
async def test_odd_time_and_audience_claims_are_401_not_a_crash(claims: dict[str, object]) -> None:
    """A trusted issuer's token with claims PyJWT cannot compare (Python's json reads
    ``Infinity`` and ``NaN``) is refused like any invalid token."""
    issuer = oidc.Issuer()
    async with httpx.AsyncClient(transport=issuer.transport()) as http:
        authenticator = bearer_authenticator(http)
        with pytest.raises(ApiError) as refused:
            await authenticator.authenticate({"authorization": f"Bearer {issuer.token(**claims)}"})
    assert (refused.value.status, refused.value.body.error) == (401, "unauthenticated")
