"""The doubles' nonce check behaves as livekit-server's UserPacketDeduper."""

import uuid

from tests.support.livekit_dedup import MAX_SIZE, PacketDeduper


def nonce() -> bytes:
    return uuid.uuid4().bytes


def test_a_repeated_nonce_is_a_duplicate() -> None:
    dedup = PacketDeduper()
    first = nonce()
    assert not dedup.is_duplicate(first)
    assert dedup.is_duplicate(first)  # the newest
    second = nonce()
    assert not dedup.is_duplicate(second)
    assert dedup.is_duplicate(first)  # an older one


def test_only_the_last_100_are_remembered() -> None:
    dedup = PacketDeduper()
    nonces = [nonce() for _ in range(MAX_SIZE + 1)]
    for n in nonces:
        assert not dedup.is_duplicate(n)
    assert dedup.is_duplicate(nonces[-MAX_SIZE + 1])
    assert not dedup.is_duplicate(nonces[0])  # forgotten: delivered again


def test_a_nonce_that_is_not_a_uuid_is_never_a_duplicate() -> None:
    dedup = PacketDeduper()
    for value in (b"", b"short", b"x" * 17):
        assert not dedup.is_duplicate(value)
        assert not dedup.is_duplicate(value)
