"""The client's address, for everything that counts or records per client (rate limits,
share-link password attempts).

By default it is the TCP peer. Behind a reverse proxy every request comes from the
proxy, so the peer says nothing about the client; the proxy appends the address it
saw to ``X-Forwarded-For``. That header is believed only as far as it was written
by proxies in ``gateway.trusted_proxies``: read from the right (the entry the last
proxy appended), skipping entries that are themselves trusted proxies, the first
entry outside those networks is the client. Anything to the left of it was sent by
the client itself and may be forged. Empty ``trusted_proxies`` (the default) ignores
the header altogether, so a client cannot pick its own address by sending it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from aiohttp import web

from dfms.gateway.context import CONFIG_KEY

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

FORWARDED_FOR = "X-Forwarded-For"
UNKNOWN = "unknown"
CLIENT_ADDRESS_KEY = web.RequestKey("client_address", str)


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Networks from CIDRs (a bare address is a network of one); ValueError if one is not."""
    return tuple(ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def parse_address(text: str) -> Address | None:
    """An address as a peer or a proxy writes it: ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``,
    ``[::1]:5678``; an IPv4 address mapped into IPv6 is the IPv4 address. None if it is
    none of these (``unknown``, an obfuscated ``_hidden`` name, garbage)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has several colons
        text = text.partition(":")[0]
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Address, networks: Sequence[Network]) -> bool:
    return any(addr in net for net in networks)  # a v4 address is in no v6 network


def client_address(peer: str | None, forwarded_for: Sequence[str],
                   trusted: Sequence[Network]) -> str:
    """The client's address, given the TCP peer, the ``X-Forwarded-For`` header values
    (all of them, in order) and the trusted proxies' networks.

    The peer, unless it is a trusted proxy; then the right-most header entry that is
    not one. If the chain cannot be followed (an entry is no address, or every entry
    is trusted), the last address reached is the answer: it is the furthest hop that
    trusted proxies vouch for.
    """
    current = parse_address(peer) if peer else None
    if current is None:
        return peer or UNKNOWN  # e.g. a Unix socket: nothing to compare or forward
    if not _trusted(current, trusted):
        return str(current)
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        addr = parse_address(hop)
        if addr is None:
            break
        current = addr
        if not _trusted(addr, trusted):
            break
    return str(current)


@functools.lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(cidrs)  # the config checked them when it loaded


def request_client_address(request: web.Request) -> str:
    """The client address of ``request`` by the gateway's ``trusted_proxies``; worked out
    once per request."""
    known = request.get(CLIENT_ADDRESS_KEY)
    if known is not None:
        return known
    trusted = _networks(request.config_dict[CONFIG_KEY].gateway.trusted_proxies)
    addr = client_address(request.remote, request.headers.getall(FORWARDED_FOR, ()), trusted)
    request[CLIENT_ADDRESS_KEY] = addr
    return addr
