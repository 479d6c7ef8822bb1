"""The usual hand-written token server: one FastAPI route that only mints an AccessToken.

No authentication, no policy, no tracing: the baseline the token service is compared to.
"""

from __future__ import annotations

import os
import secrets

from fastapi import FastAPI
from livekit.api import AccessToken, VideoGrants

app = FastAPI()
API_KEY = os.environ["LIVEKIT_API_KEY"]
API_SECRET = os.environ["LIVEKIT_API_SECRET"]


@app.get("/api/livekit/token")
async def token(avatar_id: str, name: str = "guest") -> dict[str, str]:
    room = f"avatar-{avatar_id}-{secrets.token_hex(8)}"
    identity = f"user-{secrets.token_hex(8)}"
    jwt = (
        AccessToken(API_KEY, API_SECRET)
        .with_identity(identity)
        .with_name(name)
        .with_grants(VideoGrants(room_join=True, room=room))
        .to_jwt()
    )
    return {"token": jwt, "room": room, "identity": identity}
