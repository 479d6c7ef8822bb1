import pytest

from avatar_shared.web.clientip import ClientAddress


def test_peer_is_the_client_without_trusted_proxies() -> None:
    assert ClientAddress().resolve("203.0.113.9", "198.51.100.1") == "203.0.113.9"


def test_rightmost_untrusted_hop_behind_trusted_proxies() -> None:
    resolver = ClientAddress(["10.0.0.0/8"])
    header = "1.1.1.1, 198.51.100.7, 10.0.0.3"
    assert resolver.resolve("10.0.0.2", header) == "198.51.100.7"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert ClientAddress(["10.0.0.0/8"]).resolve("203.0.113.9", "1.1.1.1") == "203.0.113.9"


@pytest.mark.parametrize("header", ["", " , ", "not-an-ip"])
def test_odd_headers_do_not_break_resolution(header: str) -> None:
    resolved = ClientAddress(["10.0.0.0/8"]).resolve("10.0.0.2", header)
    assert resolved in {"10.0.0.2", "not-an-ip"}
