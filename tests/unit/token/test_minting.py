"""The fast minter produces exactly livekit-api's claims, for every kind of session."""

from __future__ import annotations

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from avatar_token.minting import Minter
from avatar_token.sessions import Session

KEY, SECRET = "APIkey", "a-secret-that-is-long-enough-for-hs256-signing-0123456789"
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)

sessions = st.builds(
    Session,
    avatar_id=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    room=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True),
    identity=st.from_regex(r"[a-z0-9:_-]{1,30}", fullmatch=True),
    name=st.none() | text,
    ttl_seconds=st.integers(60, 3600),
    can_publish_data=st.booleans(),
    can_publish_sources=st.lists(
        st.sampled_from(["microphone", "camera", "screen_share"]), unique=True
    ).map(tuple),
    agent_name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    dispatch_metadata=st.builds(
        lambda a: f'{{"avatar_id":"{a}"}}', st.from_regex(r"[a-z]{1,8}", fullmatch=True)
    ),
    metadata=st.none() | text,
    attributes=st.none()
    | st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), text, max_size=3),
)


def claims(token: str) -> dict[str, object]:
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})
    assert decoded["exp"] - decoded["nbf"] > 0
    return {k: v for k, v in decoded.items() if k not in ("nbf", "exp")}


@settings(max_examples=300)
@given(sessions)
def test_mint_equals_livekit_access_token(session: Session) -> None:
    minter = Minter(KEY, SECRET)
    fast, expires_at = minter.mint(session)
    assert claims(fast) == claims(minter.reference(session))
    decoded = jwt.decode(fast, SECRET, algorithms=["HS256"])
    assert decoded["exp"] - decoded["nbf"] == session.ttl_seconds
    assert int(expires_at.timestamp()) == decoded["exp"]
    # Signed exactly as PyJWT signs the same claims (jwt.decode keeps their order).
    assert fast == jwt.encode(decoded, SECRET, algorithm="HS256")
