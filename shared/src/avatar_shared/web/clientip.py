"""The caller's address: the socket peer, or X-Forwarded-For behind trusted proxies only.

``X-Forwarded-For`` is read right to left, skipping addresses of trusted proxies; the first
untrusted address is the client. Without trusted proxies the header is ignored, so a
client cannot pick its own rate-limit bucket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddress:
    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: list[Network] = [
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies
        ]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        peer = peer or "unknown"
        if not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer
