"""Turn a decided :class:`~avatar_token.sessions.Session` into a signed LiveKit token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from livekit.api import AccessToken, VideoGrants
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.room import RoomConfiguration

from avatar_token.sessions import Session


class Minter:
    def __init__(self, api_key: str, api_secret: str) -> None:
        self._api_key = api_key
        self._api_secret = api_secret

    def mint(self, session: Session) -> tuple[str, datetime]:
        """The JWT and the moment it stops admitting joins."""
        ttl = timedelta(seconds=session.ttl_seconds)
        token = (
            AccessToken(self._api_key, self._api_secret)
            .with_identity(session.identity)
            .with_ttl(ttl)
            .with_grants(
                VideoGrants(
                    room_join=True,
                    room=session.room,
                    can_publish=bool(session.can_publish_sources),
                    can_publish_sources=list(session.can_publish_sources),
                    can_subscribe=True,
                    can_publish_data=session.can_publish_data,
                    can_update_own_metadata=False,
                )
            )
            .with_room_config(
                RoomConfiguration(
                    agents=[
                        RoomAgentDispatch(
                            agent_name=session.agent_name, metadata=session.dispatch_metadata
                        )
                    ]
                )
            )
        )
        if session.name:
            token = token.with_name(session.name)
        if session.metadata:
            token = token.with_metadata(session.metadata)
        if session.attributes:
            token = token.with_attributes(session.attributes)
        expires_at = datetime.now(UTC).replace(microsecond=0) + ttl
        return token.to_jwt(), expires_at
