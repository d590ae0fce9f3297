"""Client address rules: trusted proxy headers and trusted ip/ipv4/ipv6 parameters."""

import ipaddress

import pytest
from multidict import CIMultiDict

from aggregator.announce import AnnounceLimits, AnnounceRequest, parse_announce
from aggregator.client_address import ClientAddressRules, parse_endpoint
from tests.service_harness import announce_query, get_bencoded, serving, settings_for

INFO_HASH = bytes(range(0x40, 0x54))
PROXIES = ("10.0.0.0/8", "fd00::/8")

# (peer, headers, trusted proxies, expected client address)
HEADER_CASES = [
    # Headers from a peer that is not a trusted proxy are ignored.
    ("203.0.113.7", [("X-Forwarded-For", "1.2.3.4")], (), "203.0.113.7"),
    ("198.51.100.1", [("X-Forwarded-For", "6.6.6.6, 203.0.113.7")], PROXIES, "198.51.100.1"),
    ("198.51.100.1", [("X-Real-IP", "203.0.113.9")], PROXIES, "198.51.100.1"),
    # From a trusted proxy, the rightmost entry that is not a trusted proxy wins.
    ("10.0.0.1", [("X-Forwarded-For", "6.6.6.6, 203.0.113.7")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.7, 10.0.0.2")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("x-forwarded-for", "203.0.113.7")], PROXIES, "203.0.113.7"),
    # Only trusted proxies in the chain: the leftmost one is the client.
    ("10.0.0.1", [("X-Forwarded-For", "10.0.0.3, 10.0.0.2")], PROXIES, "10.0.0.3"),
    # Empty list elements are skipped, ports and brackets are accepted.
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.7, , ")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.7:4711")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "[2001:db8::7]:4711")], PROXIES, "2001:db8::7"),
    # Malformed values are ignored: the peer (or X-Real-IP) is used instead.
    ("10.0.0.1", [("X-Forwarded-For", "garbage")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "unknown")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "6.6.6.6, garbage")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.7:0")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.7:99999")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "[2001:db8::7")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "\u0663.\u0663.\u0663.\u0663")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "1" * 300)], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Forwarded-For", "garbage, 203.0.113.7")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "garbage"), ("X-Real-IP", "203.0.113.9")], PROXIES, "203.0.113.9"),
    # X-Real-IP alone, and two of them (ambiguous, so ignored).
    ("10.0.0.1", [("X-Real-IP", "203.0.113.9")], PROXIES, "203.0.113.9"),
    ("10.0.0.1", [("X-Real-IP", "203.0.113.9"), ("X-Real-IP", "203.0.113.8")], PROXIES, "10.0.0.1"),
    ("10.0.0.1", [("X-Real-IP", "nonsense")], PROXIES, "10.0.0.1"),
    # IPv6 proxies and clients.
    ("fd00::1", [("X-Forwarded-For", "2001:db8::7")], PROXIES, "2001:db8::7"),
    ("fd00::1", [("X-Forwarded-For", "203.0.113.7, fd00::2")], PROXIES, "203.0.113.7"),
    ("2001:db8::99", [("X-Forwarded-For", "203.0.113.7")], PROXIES, "2001:db8::99"),
    # An IPv4-mapped address is IPv4: as the peer, in the header and in the configured network.
    ("::ffff:10.0.0.1", [("X-Forwarded-For", "203.0.113.7")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "::ffff:203.0.113.7")], PROXIES, "203.0.113.7"),
    ("10.0.0.1", [("X-Forwarded-For", "203.0.113.7")], ("::ffff:10.0.0.0/104",), "203.0.113.7"),
    ("::ffff:198.51.100.1", [], (), "198.51.100.1"),
    # A zone id on a link-local peer is dropped.
    ("fe80::1%eth0", [], (), "fe80::1"),
]


@pytest.mark.parametrize(("peer", "headers", "proxies", "expected"), HEADER_CASES)
def test_client_address_table(
    peer: str, headers: list[tuple[str, str]], proxies: tuple[str, ...], expected: str
) -> None:
    rules = ClientAddressRules(trusted_proxies=proxies)

    address = rules.client_address(peer, CIMultiDict(headers))

    assert address == ipaddress.ip_address(expected)
    assert str(address) == expected


def test_client_address_peer_not_ip() -> None:
    with pytest.raises(ValueError):
        ClientAddressRules().client_address("/run/aggregator.sock", CIMultiDict())


def announce_request(**parameters: str) -> AnnounceRequest:
    query = announce_query(6881, INFO_HASH, **parameters)

    return parse_announce(query, AnnounceLimits(default_numwant=50, max_numwant=200))


PARAM_NETWORKS = ("127.0.0.0/8", "::1/128")

# (client, announce parameters, expected address, expected port)
PARAMETER_CASES = [
    ("127.0.0.1", {"ipv4": "192.0.2.5"}, "192.0.2.5", 6881),
    ("127.0.0.1", {"ipv4": "192.0.2.5:7000"}, "192.0.2.5", 7000),
    ("127.0.0.1", {"ip": "192.0.2.6"}, "192.0.2.6", 6881),
    ("127.0.0.1", {"ip": "2001:db8::5"}, "2001:db8::5", 6881),
    ("127.0.0.1", {"ipv4": "192.0.2.5", "ip": "192.0.2.6"}, "192.0.2.5", 6881),
    ("127.0.0.1", {"ipv4": "not-an-address", "ip": "192.0.2.6"}, "192.0.2.6", 6881),
    # ipv6 names an IPv6 address, so it does not replace an IPv4 client's address.
    ("127.0.0.1", {"ipv6": "2001:db8::5"}, "127.0.0.1", 6881),
    ("127.0.0.1", {"ipv4": "2001:db8::5"}, "127.0.0.1", 6881),
    ("::1", {"ipv6": "2001:db8::9"}, "2001:db8::9", 6881),
    ("::1", {"ipv6": "%5B2001:db8::9%5D:6000"}, "2001:db8::9", 6000),
    ("::1", {"ipv4": "192.0.2.5"}, "::1", 6881),
    # ::ffff:a.b.c.d is IPv4: not an ipv6 value, but a valid ip value.
    ("::1", {"ipv6": "::ffff:192.0.2.1"}, "::1", 6881),
    ("::1", {"ip": "::ffff:192.0.2.1"}, "192.0.2.1", 6881),
    # DNS names, bad ports and non-ASCII bytes are ignored.
    ("127.0.0.1", {"ip": "tracker.example"}, "127.0.0.1", 6881),
    ("127.0.0.1", {"ip": "192.0.2.6:0"}, "127.0.0.1", 6881),
    ("127.0.0.1", {"ip": "%FF%FE"}, "127.0.0.1", 6881),
    # A client outside the trusted networks cannot choose its address.
    ("198.51.100.1", {"ip": "192.0.2.6", "ipv4": "192.0.2.5"}, "198.51.100.1", 6881),
    ("2001:db8::1", {"ipv6": "2001:db8::9"}, "2001:db8::1", 6881),
]


@pytest.mark.parametrize(("client", "parameters", "expected", "expected_port"), PARAMETER_CASES)
def test_announced_endpoint_table(client: str, parameters: dict[str, str], expected: str, expected_port: int) -> None:
    rules = ClientAddressRules(trusted_ip_param_networks=PARAM_NETWORKS)

    address, port = rules.announced_endpoint(ipaddress.ip_address(client), announce_request(**parameters))

    assert address == ipaddress.ip_address(expected)
    assert port == expected_port


def test_parameters_ignored_without_networks() -> None:
    rules = ClientAddressRules(trusted_proxies=("127.0.0.0/8",))
    client = ipaddress.ip_address("127.0.0.1")

    address, port = rules.announced_endpoint(client, announce_request(ip="192.0.2.6", ipv4="192.0.2.5"))

    assert address == client
    assert port == 6881


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", None)),
        (" 192.0.2.1 ", ("192.0.2.1", None)),
        ("192.0.2.1:80", ("192.0.2.1", 80)),
        ("2001:db8::1", ("2001:db8::1", None)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
        ("[fe80::1%eth0]:1", ("fe80::1", 1)),
        ("", None),
        ("192.0.2.1:", None),
        ("192.0.2.1:65536", None),
        ("192.0.2.1:-1", None),
        ("[2001:db8::1]80", None),
        ("2001:db8::1]:80", None),
        ("192.0.2.256", None),
        ("_hidden", None),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int | None] | None) -> None:
    parsed = parse_endpoint(text)

    if expected is None:
        assert parsed is None
    else:
        assert parsed == (ipaddress.ip_address(expected[0]), expected[1])


# Through the service


async def test_service_uses_trusted_forwarded_for() -> None:
    settings = settings_for([], trusted_proxies=("127.0.0.0/8",))
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    async with serving(settings) as (service, session, url):
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, INFO_HASH)}", headers=headers)
        status, reply = await get_bencoded(session, f"{url}/announce?{announce_query(7002, INFO_HASH, compact='0')}")
        status, own = await get_bencoded(
            session, f"{url}/announce?{announce_query(7001, INFO_HASH, compact='0')}", headers=headers
        )

    assert status == 200
    assert [(peer[b"ip"], peer[b"port"]) for peer in reply[b"peers"]] == [(b"203.0.113.7", 7001)]
    # The client behind the proxy never gets its own address back, but gets the other peer.
    assert [(peer[b"ip"], peer[b"port"]) for peer in own[b"peers"]] == [(b"127.0.0.1", 7002)]


async def test_service_ignores_untrusted_forwarded_for() -> None:
    async with serving(settings_for([])) as (service, session, url):
        await get_bencoded(
            session,
            f"{url}/announce?{announce_query(7001, INFO_HASH, ip='192.0.2.6')}",
            headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7", "X-Real-IP": "203.0.113.9"},
        )
        status, reply = await get_bencoded(session, f"{url}/announce?{announce_query(7002, INFO_HASH, compact='0')}")

    assert [(peer[b"ip"], peer[b"port"]) for peer in reply[b"peers"]] == [(b"127.0.0.1", 7001)]


async def test_service_uses_trusted_ip_parameter() -> None:
    settings = settings_for([], trusted_ip_param_networks=("127.0.0.0/8",))
    async with serving(settings) as (service, session, url):
        await get_bencoded(session, f"{url}/announce?{announce_query(7001, INFO_HASH, ip='192.0.2.6')}")
        await get_bencoded(session, f"{url}/announce?{announce_query(7003, INFO_HASH, ipv4='192.0.2.7:7004')}")
        status, reply = await get_bencoded(session, f"{url}/announce?{announce_query(7002, INFO_HASH, compact='0')}")

    peers = {(peer[b"ip"], peer[b"port"]) for peer in reply[b"peers"]}
    assert peers == {(b"192.0.2.6", 7001), (b"192.0.2.7", 7004)}
