"""The caller's address: the socket peer, or X-Forwarded-For behind trusted proxies only.

``X-Forwarded-For`` is read right to left, skipping addresses of trusted proxies; the first
untrusted address is the client. Several ``X-Forwarded-For`` lines are one list, in their
order (RFC 9110; HAProxy adds a line of its own rather than extending the client's), so a
line the client sent first cannot stand in for the one its proxy added. Without trusted
proxies the header is ignored, so a client cannot pick its own rate-limit bucket. A hop
that is not an IP address ends the walk: nothing to its left can be believed, so the last
trusted hop stands for the client.

:func:`rate_key` is the bucket an address is limited under: the address itself for IPv4,
its /64 for IPv6 (one subscriber usually holds a whole /64, so per-address buckets would
let one client take 2**64 of them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.requests import HTTPConnection

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(value: str) -> Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def rate_key(address: str) -> str:
    """``ip:<v4>`` or ``ip:<v6 /64>``; unparsable peers share one bucket per spelling."""
    ip = _address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"ip:{ip if ip is not None else address}"


class ClientAddress:
    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self._trusted: list[Network] = [
            ipaddress.ip_network(p, strict=False) for p in trusted_proxies
        ]

    def _is_trusted(self, ip: Address | None) -> bool:
        return ip is not None and any(ip in net for net in self._trusted)

    def of(self, request: HTTPConnection) -> str:
        """The address of the client that sent ``request``."""
        peer = request.client.host if request.client else None
        return self.resolve(peer, ",".join(request.headers.getlist("x-forwarded-for")))

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        peer = peer or "unknown"
        if not forwarded_for or not self._is_trusted(_address(peer)):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            if not hop.strip():
                continue
            ip = _address(hop)
            if ip is None:
                break  # garbage: whatever lies left of it was not written by our proxies
            client = str(ip)
            if not self._is_trusted(ip):
                break
        return client
