"""Who is calling: API keys, OIDC/JWT bearer tokens, or (only if enabled) nobody.

- ``X-API-Key: <key>``: the key's SHA-256 is compared with every configured hash in
  constant time (``hmac.compare_digest``, no early exit), so neither the position nor the
  prefix of a match shows in the timing. Keys are random secrets, so a fast hash suffices.
- ``Authorization: Bearer <jwt>``: verified against the issuer's JWKS: signature with an
  allowlisted asymmetric algorithm, ``iss``, ``aud``, ``exp``/``nbf``; the identity is the
  configured claim, groups come from another.
- Neither header: anonymous, only when ``AUTH_ANONYMOUS=true``; otherwise 401.
- Either header given twice is refused (401), not resolved: a proxy that adds its own
  copy and the service would disagree on which one is the caller's.

A request carrying credentials is never downgraded to anonymous when they are wrong. An
anonymous request a browser sent for a page on another site is refused (403
``cross_site_refused``) unless the page's origin is one the service lets call.
When the issuer's keys cannot be fetched the answer is 503 ``auth_unavailable`` (retry
later), not a 401 that would tell a valid user their credentials are wrong. An identity
claim with control, bidi or non-printable characters is refused (401): it would become a
participant identity others see.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import jwt
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_shared.web.errors import ApiError
from avatar_shared.web.jwks import JwksCache, KeysUnavailable
from avatar_shared.web.principal import Principal
from avatar_shared.web.text import is_identity_text

if TYPE_CHECKING:
    import httpx

    from avatar_shared.web.policy import Policy

API_KEY_HEADER = "x-api-key"
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class AuthSettings(BaseSettings):
    """Authentication of callers (token and bundles services)."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    policy_file: str = Field(description="Path to the access policy (TOML, see docs/policy.md)")
    anonymous: bool = Field(False, description="Let callers without credentials in (local use)")
    oidc_issuer: str | None = Field(None, description="Expected `iss` of bearer JWTs; enables OIDC")
    oidc_audience: str | None = Field(None, description="Expected `aud` of bearer JWTs")
    oidc_jwks_url: str | None = Field(None, description="JWKS URL of the issuer")
    oidc_algorithms: list[str] = Field(["RS256", "ES256"], description="Allowed JWT algorithms")
    oidc_identity_claim: str = Field("sub", description="Claim that names the user")
    oidc_groups_claim: str = Field("groups", description="Claim listing the user's groups")
    oidc_leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed")

    @model_validator(mode="after")
    def _oidc_complete(self) -> AuthSettings:
        bad = set(self.oidc_algorithms) - _ASYMMETRIC
        if bad:
            raise ValueError(f"AUTH_OIDC_ALGORITHMS: not asymmetric: {', '.join(sorted(bad))}")
        if self.oidc_issuer and not (self.oidc_jwks_url and self.oidc_audience):
            raise ValueError(
                "OIDC needs AUTH_OIDC_ISSUER, AUTH_OIDC_AUDIENCE and AUTH_OIDC_JWKS_URL"
            )
        return self


def security_requirements(settings: AuthSettings, policy: Policy) -> list[dict[str, list[str]]]:
    """The OpenAPI ``security`` of the HTTP routes under this configuration (scheme names
    from :data:`avatar_shared.web.service.SECURITY_SCHEMES`); ``{}``: anonymous allowed."""
    requirements: list[dict[str, list[str]]] = []
    if policy.api_keys:
        requirements.append({"apiKey": []})
    if settings.oidc_issuer:
        requirements.append({"bearer": []})
    if settings.anonymous:
        requirements.append({})
    return requirements


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


def _only(headers: Any, name: str) -> str | None:
    """The header's one value; a 401 if it is given more than once."""
    values = headers.getlist(name) if hasattr(headers, "getlist") else [headers.get(name)]
    if len(values) > 1:
        raise unauthenticated(f"the {name} header is given more than once")
    return values[0] if values else None


class Authenticator:
    def __init__(
        self,
        settings: AuthSettings,
        api_keys: dict[str, str],
        jwks: JwksCache | None = None,
        *,
        browser_origins: Collection[str] = (),
    ) -> None:
        """``api_keys`` maps key names to hex SHA-256 hashes; ``browser_origins``: the
        pages on other sites whose browsers may call anonymously (the service's CORS
        origins)."""
        self._settings = settings
        self._keys = [(name, bytes.fromhex(digest)) for name, digest in api_keys.items()]
        self._jwks = jwks
        self._browser_origins = frozenset(browser_origins)

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        policy: Policy,
        http: httpx.AsyncClient,
        *,
        browser_origins: Collection[str] = (),
    ) -> Authenticator:
        """API keys from the policy file; OIDC when AUTH_OIDC_ISSUER is set."""
        jwks = JwksCache(settings.oidc_jwks_url, http) if settings.oidc_jwks_url else None
        keys = {key.name: key.sha256 for key in policy.api_keys}
        return cls(settings, keys, jwks, browser_origins=browser_origins)

    async def authenticate(self, headers: Any) -> Principal:
        """Identify the caller from request headers (a case-insensitive mapping)."""
        api_key = _only(headers, API_KEY_HEADER)
        authorization = _only(headers, "authorization")
        if api_key is not None:
            return self._api_key(api_key)
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise unauthenticated("Authorization must be 'Bearer <token>'")
            return await self._bearer(credentials.strip())
        if self._settings.anonymous:
            self._refuse_other_sites(headers)
            return Principal("anonymous", f"anon-{secrets.token_hex(8)}")
        raise unauthenticated("credentials required: X-API-Key or Authorization: Bearer")

    def _refuse_other_sites(self, headers: Any) -> None:
        """An anonymous request a browser sent for a page on another site (it says so in
        ``Sec-Fetch-Site``) is served only if that page's ``Origin`` is one of ours.

        Anonymous callers carry no credentials, so any page could otherwise make its
        visitors' browsers call (an ``<img>`` or a form needs no CORS), each call minting
        a token and holding a session slot: the quotas filled from another site."""
        elsewhere = headers.get("sec-fetch-site") in ("cross-site", "same-site")
        if elsewhere and headers.get("origin") not in self._browser_origins:
            raise ApiError(
                403,
                "cross_site_refused",
                "anonymous requests from pages on other sites need an allowed Origin",
            )

    def _api_key(self, key: str) -> Principal:
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for name, expected in self._keys:  # every key compared: no early exit
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise unauthenticated("API key not recognised")
        return Principal("api_key", found)

    async def _bearer(self, token: str) -> Principal:
        if self._jwks is None or not self._settings.oidc_issuer:
            raise unauthenticated("bearer tokens are not accepted here")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthenticated("bearer token is not a JWT") from None
        if header.get("alg") not in self._settings.oidc_algorithms:
            raise unauthenticated("bearer token algorithm not allowed")
        try:
            key = await self._jwks.key(str(header.get("kid", "")))
        except KeysUnavailable as exc:
            raise ApiError(
                503,
                "auth_unavailable",
                "bearer tokens cannot be verified right now; retry later",
                headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
            ) from None
        if key is None:
            raise unauthenticated("bearer token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=self._settings.oidc_algorithms,
                audience=self._settings.oidc_audience,
                issuer=self._settings.oidc_issuer,
                leeway=self._settings.oidc_leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("bearer token expired") from None
        except jwt.InvalidAudienceError:
            raise unauthenticated("bearer token has the wrong audience") from None
        except jwt.InvalidIssuerError:
            raise unauthenticated("bearer token has the wrong issuer") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            # TypeError: the kid names a key of another type than the token's algorithm
            # (an EC key for RS256), which PyJWT does not check before using it.
            raise unauthenticated("bearer token is invalid") from None
        identity = claims.get(self._settings.oidc_identity_claim)
        if not isinstance(identity, str) or not 0 < len(identity) <= 256:
            raise unauthenticated(f"bearer token has no '{self._settings.oidc_identity_claim}'")
        if not is_identity_text(identity):
            raise unauthenticated(
                f"bearer token's '{self._settings.oidc_identity_claim}' has characters"
                " an identity may not have"
            )
        groups = claims.get(self._settings.oidc_groups_claim) or []
        if not isinstance(groups, list):
            groups = []
        return Principal("user", identity, frozenset(str(g) for g in groups))
