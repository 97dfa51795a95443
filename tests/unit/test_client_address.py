"""The client address behind trusted proxies: the right-most X-Forwarded-For entry that is
not itself a trusted proxy, and only when the peer is one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfms.gateway.client_address import client_address, parse_address, parse_networks

PROXIES = parse_networks(["10.0.0.0/24", "fd00::/64", "192.0.2.7"])
CLIENT = "203.0.113.9"


@pytest.mark.parametrize(("peer", "header", "expected"), [
    # Nothing trusted: the peer, whatever the header says.
    ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),
    ("198.51.100.1", [], "198.51.100.1"),
    # A trusted peer: the entry its proxy appended.
    ("10.0.0.5", [CLIENT], CLIENT),
    ("192.0.2.7", [CLIENT], CLIENT),
    ("fd00::2", [CLIENT], CLIENT),
    # What the client sent itself is to the left of it and never believed.
    ("10.0.0.5", [f"1.1.1.1, 8.8.8.8, {CLIENT}"], CLIENT),
    ("10.0.0.5", ["1.1.1.1", CLIENT], CLIENT),  # several header lines are one list
    # Trusted proxies in the chain are skipped (two proxies in a row).
    ("10.0.0.5", [f"1.1.1.1, {CLIENT}, 10.0.0.9"], CLIENT),
    ("10.0.0.5", [f"{CLIENT}, 10.0.0.9,fd00::1"], CLIENT),
    # Forms proxies write: ports, brackets, IPv4 mapped into IPv6, spaces.
    ("10.0.0.5", [f" {CLIENT}:51234 "], CLIENT),
    ("10.0.0.5", ["[2001:db8::5]:443"], "2001:db8::5"),
    ("10.0.0.5", ["2001:db8::5"], "2001:db8::5"),
    ("::ffff:10.0.0.5", [CLIENT], CLIENT),
    ("10.0.0.5", [f"::ffff:{CLIENT}"], CLIENT),
    # No header, or only trusted entries: the furthest trusted hop.
    ("10.0.0.5", [], "10.0.0.5"),
    ("10.0.0.5", ["10.0.0.9"], "10.0.0.9"),
    # An entry that is no address ends the chain at the last address reached.
    ("10.0.0.5", [f"{CLIENT}, unknown"], "10.0.0.5"),
    ("10.0.0.5", [f"{CLIENT}, 10.0.0.9, _hidden"], "10.0.0.5"),
    ("10.0.0.5", [f"{CLIENT}, garbage, 10.0.0.9"], "10.0.0.9"),
    ("10.0.0.5", [f"{CLIENT},"], "10.0.0.5"),
    # A peer that is no IP address (a Unix socket) or none at all.
    ("", [CLIENT], "unknown"),
    (None, [CLIENT], "unknown"),
])
def test_client_address(peer: str | None, header: list[str], expected: str) -> None:
    assert client_address(peer, header, PROXIES) == expected


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert client_address("10.0.0.5", [CLIENT], ()) == "10.0.0.5"
    assert client_address("::ffff:10.0.0.5", [CLIENT], ()) == "10.0.0.5"


def test_addresses_and_networks_parse_the_ways_proxies_and_configs_write_them() -> None:
    assert str(parse_address("[::1]:80")) == "::1"
    assert str(parse_address("127.0.0.1:80")) == "127.0.0.1"
    assert parse_address("example.org") is None and parse_address("") is None
    assert [str(n) for n in parse_networks(["10.1.2.3/8", " ::1 "])] == ["10.0.0.0/8",
                                                                         "::1/128"]
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])


_ips = st.ip_addresses(v=4).map(str)


@given(client=_ips, forged=st.lists(_ips, max_size=3), proxies=st.integers(0, 3))
def test_a_client_behind_trusted_proxies_cannot_choose_its_address(
        client: str, forged: list[str], proxies: int) -> None:
    """Whatever a client outside the proxies' networks puts in the header, the result is
    the address the first trusted proxy saw it come from."""
    if any(parse_address(client) in net for net in PROXIES):
        return
    chain = [*forged, client, *(f"10.0.0.{i + 10}" for i in range(proxies))]
    assert client_address("10.0.0.5", [", ".join(chain)], PROXIES) == client
