import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from avatar_shared.rooms import MAX_ROOM_BYTES, RoomNameError, decode_room, encode_room

TOKEN = re.compile(r"^[A-Za-z0-9_=-]+$")
KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")  # what JetStream key-value accepts

rooms = st.text(min_size=1, max_size=MAX_ROOM_BYTES).filter(
    lambda s: len(s.encode("utf-8")) <= MAX_ROOM_BYTES
)


@given(rooms)
@example("a.b")
@example("*")
@example(">")
@example("room with spaces\tand\ttabs\n")
@example("=41")
@example("日本語の部屋 🎭")
@example("x" * MAX_ROOM_BYTES)
@example("é" * (MAX_ROOM_BYTES // 2))
def test_encoding_round_trips_and_yields_one_valid_subject_token(room: str) -> None:
    token = encode_room(room)
    assert TOKEN.match(token)
    assert KV_KEY.match(token)
    assert len(token) <= 3 * MAX_ROOM_BYTES
    assert decode_room(token) == room


@given(rooms, rooms)
def test_distinct_rooms_get_distinct_tokens(a: str, b: str) -> None:
    assert (encode_room(a) == encode_room(b)) == (a == b)


def test_readable_room_names_stay_readable() -> None:
    assert encode_room("avatar-42_room") == "avatar-42_room"
    assert encode_room("a.b c") == "a=2Eb=20c"


@pytest.mark.parametrize("room", ["", "x" * (MAX_ROOM_BYTES + 1), "é" * 129, "\ud800"])
def test_invalid_rooms_are_refused(room: str) -> None:
    with pytest.raises(RoomNameError):
        encode_room(room)


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a b", "=", "=2", "=2g", "=41", "=FF", "=C3", "*", ">", "=2e"],
)
def test_tokens_not_made_by_encode_room_are_refused(token: str) -> None:
    with pytest.raises(RoomNameError):
        decode_room(token)
