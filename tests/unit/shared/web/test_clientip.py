import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


# What a client can choose: any hops before its proxies' (its own header), junk included.
_hop = st.one_of(
    st.sampled_from(["10.0.0.3", "10.9.9.9", "198.51.100.7", "203.0.113.5", "2001:db8::1"]),
    st.sampled_from(["junk", "", " ", "unknown", "1.2.3.4.5"]),
)


@settings(max_examples=300)
@given(
    claimed=st.lists(_hop, max_size=6),
    proxies_saw=st.lists(st.sampled_from(["198.51.100.7", "203.0.113.5", "10.0.0.3"]), max_size=3),
    peer=st.sampled_from(["10.0.0.2", "203.0.113.9"]),
)
def test_a_client_cannot_choose_its_address_past_the_first_untrusted_hop(
    claimed: list[str], proxies_saw: list[str], peer: str
) -> None:
    """Whatever a client puts in front, the answer is the rightmost hop our trusted
    proxies wrote that is not one of them, or the peer: never a hop left of it."""
    resolver = ClientAddress(["10.0.0.0/8"])
    header = ", ".join([*claimed, *proxies_saw])
    resolved = resolver.resolve(peer, header)
    if peer == "203.0.113.9":  # not a trusted proxy: its header is its own word
        assert resolved == peer
        return
    untrusted = [hop for hop in proxies_saw if not hop.startswith("10.")]
    if untrusted:
        assert resolved == untrusted[-1]  # the hops the client wrote never count
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    if resolved != peer:  # a hop with only trusted proxies, all real addresses, after it
        place = max(i for i, hop in enumerate(hops) if hop == resolved)
        assert all(hop.startswith("10.") and _is_ip(hop) for hop in hops[place + 1 :])


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
