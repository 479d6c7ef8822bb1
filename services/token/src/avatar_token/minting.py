"""Turn a decided :class:`~avatar_token.sessions.Session` into a signed LiveKit token.

The claims are livekit-api's own: :meth:`Minter.reference` builds the token with
``AccessToken``, and a test checks that :meth:`Minter.mint` produces exactly the same
claims for every kind of session. ``mint`` is faster because ``AccessToken`` turns its
grant dataclasses into claims with ``dataclasses.asdict`` (a deep copy of every field)
and the room configuration with protobuf's ``MessageToDict``, for every token, while
those parts depend only on the policy's grant choices and the dispatch: ``mint`` asks
livekit-api for them once per distinct value and only fills in room, identity and times.
It then signs the claims as PyJWT would (same header, same JSON, HS256), with the key
prepared once instead of for every token; the test also checks the tokens byte for byte.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from livekit.api import AccessToken, VideoGrants
from livekit.api.access_token import Claims
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from avatar_token.sessions import Session

#: A room name no real session has: where the template's room goes.
_ROOM = "\x00room"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


#: PyJWT's header for HS256: sorted keys, compact separators.
_HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}')


def _grants(session: Session, room: str) -> VideoGrants:
    return VideoGrants(
        room_join=True,
        room=room,
        can_publish=bool(session.can_publish_sources),
        can_publish_sources=list(session.can_publish_sources),
        can_subscribe=True,
        can_publish_data=session.can_publish_data,
        can_update_own_metadata=False,
    )


def _room_config(
    agent_name: str, dispatch_metadata: str, limits: tuple[int, int, int]
) -> RoomConfiguration:
    empty_timeout, departure_timeout, max_participants = limits
    return RoomConfiguration(
        agents=[RoomAgentDispatch(agent_name=agent_name, metadata=dispatch_metadata)],
        empty_timeout=empty_timeout,
        departure_timeout=departure_timeout,
        max_participants=max_participants,
    )


@functools.lru_cache(maxsize=256)
def _video_claims(sources: tuple[str, ...], can_publish_data: bool) -> dict[str, Any]:
    """livekit-api's ``video`` claim for these grant choices, room left as a marker."""
    probe = Session("a", _ROOM, "i", None, 60, can_publish_data, sources, "agent", "{}")
    claims: dict[str, Any] = Claims(video=_grants(probe, _ROOM)).asdict()
    return dict(claims["video"])


@functools.lru_cache(maxsize=4096)
def _room_config_claims(
    agent_name: str, dispatch_metadata: str, limits: tuple[int, int, int]
) -> dict[str, Any]:
    config = _room_config(agent_name, dispatch_metadata, limits)
    claims: dict[str, Any] = Claims(room_config=config).asdict()
    return dict(claims["roomConfig"])


class Minter:
    def __init__(self, api_key: str, api_secret: str) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._key = api_secret.encode()

    def mint(self, session: Session) -> tuple[str, datetime]:
        """The JWT and the moment it stops admitting joins."""
        now = int(time.time())
        video = dict(_video_claims(session.can_publish_sources, session.can_publish_data))
        video["room"] = session.room
        claims: dict[str, Any] = {}
        # The order and the omission of empty values follow Claims.asdict().
        if session.name:
            claims["name"] = session.name
        if session.metadata:
            claims["metadata"] = session.metadata
        claims["video"] = video
        if session.attributes:
            claims["attributes"] = dict(session.attributes)
        # Shared, never mutated: it is only serialised.
        claims["roomConfig"] = _room_config_claims(
            session.agent_name, session.dispatch_metadata, session.room_limits
        )
        claims["sub"] = session.identity
        claims["iss"] = self._api_key
        claims["nbf"] = now
        claims["exp"] = now + session.ttl_seconds
        payload = json.dumps(claims, separators=(",", ":")).encode()
        signing_input = _HEADER + b"." + _b64(payload)
        signature = hmac.digest(self._key, signing_input, hashlib.sha256)
        token = (signing_input + b"." + _b64(signature)).decode("ascii")
        return token, datetime.fromtimestamp(claims["exp"], UTC)

    def reference(self, session: Session) -> str:
        """The same token, built the slow way with livekit-api's ``AccessToken``."""
        token = (
            AccessToken(self._api_key, self._api_secret)
            .with_identity(session.identity)
            .with_ttl(timedelta(seconds=session.ttl_seconds))
            .with_grants(_grants(session, session.room))
            .with_room_config(
                _room_config(session.agent_name, session.dispatch_metadata, session.room_limits)
            )
        )
        if session.name:
            token = token.with_name(session.name)
        if session.metadata:
            token = token.with_metadata(session.metadata)
        if session.attributes:
            token = token.with_attributes(session.attributes)
        return token.to_jwt()
