"""A local OIDC issuer double: RSA signing keys, a JWKS document served over httpx.

Its answers are streamed, as a network answer is, so the code reading them is the code
that reads a real issuer's. ``failing`` makes it answer 503; ``hang`` makes every fetch
wait until the event is set (an issuer that does not answer).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://issuer.test"
AUDIENCE = "avatar-backend"
JWKS_URL = f"{ISSUER}/.well-known/jwks.json"


class Streamed(httpx.AsyncByteStream):
    """A body that arrives in pieces, like one read from a socket."""

    def __init__(self, body: bytes, piece: int = 4096) -> None:
        self._pieces = [body[i : i + piece] for i in range(0, len(body), piece)]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece


def streamed(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None, piece: int = 4096
) -> httpx.Response:
    return httpx.Response(status, headers=headers, stream=Streamed(body, piece))


class Issuer:
    def __init__(self, kid: str = "key-1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_requests = 0
        self.failing = False
        self.hang: asyncio.Event | None = None
        self.document: bytes | None = None  # served instead of the real JWKS, if set

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [jwk | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            if request.method != "GET" or str(request.url) != JWKS_URL:
                return streamed(404)
            self.jwks_requests += 1
            if self.hang is not None:
                await self.hang.wait()
            if self.failing:
                return streamed(503, b"unavailable")
            body = self.document if self.document is not None else json.dumps(self.jwks())
            return streamed(200, body.encode() if isinstance(body, str) else body)

        return httpx.MockTransport(handler)

    def token(self, *, kid: str | None = None, key: Any = None, **claims: Any) -> str:
        """A signed JWT; a claim given as None is left out."""
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "iat": now, "exp": now + 300}
        body = {k: v for k, v in (body | claims).items() if v is not None}
        return jwt.encode(
            body, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )
