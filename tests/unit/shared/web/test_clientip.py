import pytest
from starlette.requests import Request

from avatar_shared.web.clientip import ClientAddress, rate_key


def test_peer_is_the_client_without_trusted_proxies() -> None:
    assert ClientAddress().resolve("203.0.113.9", "198.51.100.1") == "203.0.113.9"


def test_rightmost_untrusted_hop_behind_trusted_proxies() -> None:
    resolver = ClientAddress(["10.0.0.0/8"])
    header = "1.1.1.1, 198.51.100.7, 10.0.0.3"
    assert resolver.resolve("10.0.0.2", header) == "198.51.100.7"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert ClientAddress(["10.0.0.0/8"]).resolve("203.0.113.9", "1.1.1.1") == "203.0.113.9"


def request_from(peer: str, *forwarded_for: str) -> Request:
    headers = [(b"x-forwarded-for", line.encode()) for line in forwarded_for]
    return Request({"type": "http", "client": (peer, 50000), "headers": headers})


def test_several_forwarded_for_lines_are_one_list_in_their_order() -> None:
    resolver = ClientAddress(["10.0.0.0/8"])
    # The client's own line first, the one its proxy added (as HAProxy does) last.
    spoofed = request_from("10.0.0.2", "1.1.1.1", "198.51.100.7")
    assert resolver.of(spoofed) == "198.51.100.7"
    assert resolver.of(request_from("10.0.0.2", "1.1.1.1, 198.51.100.7", "10.0.0.3")) == (
        "198.51.100.7"
    )
    assert resolver.of(request_from("10.0.0.2")) == "10.0.0.2"
    assert resolver.of(request_from("203.0.113.9", "1.1.1.1")) == "203.0.113.9"


@pytest.mark.parametrize("header", ["", " , ", "not-an-ip"])
def test_odd_headers_do_not_break_resolution(header: str) -> None:
    resolved = ClientAddress(["10.0.0.0/8"]).resolve("10.0.0.2", header)
    assert resolved in {"10.0.0.2", "not-an-ip"}


def test_a_hop_that_is_not_an_address_ends_the_walk() -> None:
    resolver = ClientAddress(["10.0.0.0/8"])
    assert resolver.resolve("10.0.0.2", "198.51.100.7, junk, 10.0.0.3") == "10.0.0.3"
    assert resolver.resolve("10.0.0.2", "junk") == "10.0.0.2"
    assert resolver.resolve("10.0.0.2", "198.51.100.7, 10.0.0.3") == "198.51.100.7"


def test_every_hop_trusted_leaves_the_leftmost() -> None:
    assert ClientAddress(["10.0.0.0/8"]).resolve("10.0.0.2", "10.1.1.1, 10.0.0.3") == "10.1.1.1"


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "ip:203.0.113.9"),
        ("2001:db8:1:2::1", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "ip:2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "ip:2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", "ip:203.0.113.9"),
        ("unknown", "ip:unknown"),
    ],
)
def test_rate_keys_group_ipv6_by_64(address: str, key: str) -> None:
    assert rate_key(address) == key
