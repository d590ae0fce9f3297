"""The address an HTTP announce registers: the socket peer, a trusted proxy's header, or a trusted parameter.

By default the client address is the socket peer address. `X-Forwarded-For` and `X-Real-IP` count
only when that peer is inside `trusted_proxies`. The announce parameters `ip`, `ipv4` and `ipv6`
count only when the client address is inside `trusted_ip_param_networks`. Anyone can write these
headers and parameters, so trusting them from everyone would let one client register other
hosts' addresses and turn every swarm into a source of unwanted connections to them.

An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is treated as the IPv4 address everywhere, in
peers, headers, parameters and in the configured networks. IPv6 zone ids (`%eth0`) are dropped.
"""

import ipaddress
from collections.abc import Iterable, Sequence

from multidict import MultiMapping

from aggregator.announce import AnnounceRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# Maximum length of an endpoint text from a header or parameter. A bracketed IPv6 address with
# a zone id and a port fits in far less, so anything longer is malformed.
_MAX_ADDRESS_TEXT = 128


class ClientAddressRules:
    """The trusted networks from the settings, parsed once, and the rules that apply them."""

    def __init__(self, trusted_proxies: Iterable[str] = (), trusted_ip_param_networks: Iterable[str] = ()) -> None:
        """Parse the CIDR networks. Raises ValueError for a string that is not a network."""
        self._proxies = _parse_networks(trusted_proxies)
        self._ip_param_networks = _parse_networks(trusted_ip_param_networks)

    def client_address(self, peer: str, headers: MultiMapping[str]) -> IPAddress:
        """Return the address of the client behind a connection from `peer`.

        From a trusted proxy, the rightmost `X-Forwarded-For` entry that is not itself a trusted
        proxy wins, then a single `X-Real-IP`, then the peer. A malformed header is ignored.
        Raises ValueError when `peer` is not an IP address.
        """
        address = _normalize(ipaddress.ip_address(peer))
        if not _contains(self._proxies, address):
            return address

        forwarded = self._forwarded_for(headers.getall("X-Forwarded-For", ()))
        if forwarded is not None:
            return forwarded

        real_ip = headers.getall("X-Real-IP", ())
        if len(real_ip) == 1:
            endpoint = parse_endpoint(real_ip[0])
            if endpoint is not None:
                return endpoint[0]

        return address

    def is_plain_peer(self, peer: str) -> bool:
        """Return whether no header and no parameter can change the address of clients from `peer`.

        That is the case when the peer is no trusted proxy and is outside the trusted networks.
        Raises ValueError when `peer` is not an IP address.
        """
        address = _normalize(ipaddress.ip_address(peer))

        return not _contains(self._proxies, address) and not _contains(self._ip_param_networks, address)

    def announced_endpoint(self, client: IPAddress, request: AnnounceRequest) -> tuple[IPAddress, int]:
        """Return the address and port to register for an announce from `client`.

        Unless `client` is inside `trusted_ip_param_networks`, this is the client address and the
        `port` parameter. Otherwise the parameter named after the client's address family
        (`ipv4` for an IPv4 client, `ipv6` for an IPv6 client) wins, then `ip`. A value may carry
        its own port (BEP 7 endpoints: `192.0.2.1:6881`, `[2001:db8::1]:6881`), which then
        replaces `port`. Invalid values, DNS names and an `ipv4`/`ipv6` value of the other
        family are ignored.
        """
        if not _contains(self._ip_param_networks, client):
            return client, request.port

        same_family = request.ipv4 if client.version == 4 else request.ipv6
        candidates = ((same_family, client.version), (request.ip, None))
        for value, required_version in candidates:
            endpoint = _parse_parameter(value)
            if endpoint is None:
                continue

            address, port = endpoint
            if required_version is None or address.version == required_version:
                return address, port if port is not None else request.port

        return client, request.port

    def _forwarded_for(self, header_values: Sequence[str]) -> IPAddress | None:
        """Pick the client from X-Forwarded-For: walk from the right past trusted proxies.

        Every proxy appends the address it received the request from, so entries to the right of
        the first untrusted one were written by trusted proxies and entries to its left by the
        client itself. A malformed entry at that position voids the whole header, because
        skipping it would hand the choice to the client. When every entry is a trusted proxy,
        the leftmost one is the client.
        """
        entries = [entry for value in header_values for entry in value.split(",")]
        leftmost_trusted: IPAddress | None = None
        for entry in reversed(entries):
            if not entry.strip():
                continue  # RFC 9110 lists allow empty elements

            endpoint = parse_endpoint(entry)
            if endpoint is None:
                return None

            address = endpoint[0]
            if not _contains(self._proxies, address):
                return address
            leftmost_trusted = address

        return leftmost_trusted


def parse_endpoint(text: str) -> tuple[IPAddress, int | None] | None:
    """Parse `address`, `a.b.c.d:port`, `[v6]` or `[v6]:port`, and return None when malformed.

    A port of 0 or above 65535 makes the text malformed.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ADDRESS_TEXT:
        return None

    host = text
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            return None
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
    elif text.count(":") == 1:  # IPv4 with a port, because a bare IPv6 address has at least two colons
        host, _, port_text = text.partition(":")

    port: int | None = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            return None
        if not 1 <= int(port_text) <= 65535:
            return None
        port = int(port_text)

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None

    return _normalize(address), port


def _parse_parameter(value: bytes | None) -> tuple[IPAddress, int | None] | None:
    if value is None:
        return None

    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None

    return parse_endpoint(text)


def _normalize(address: IPAddress) -> IPAddress:
    """Map `::ffff:a.b.c.d` to IPv4 and drop an IPv6 zone id."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(address.packed)

    return address


def _parse_networks(texts: Iterable[str]) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for text in texts:
        network = ipaddress.ip_network(text, strict=False)
        # Peers are normalized to IPv4, so an IPv4-mapped network must be IPv4 too to match them.
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
            mapped_start = network.network_address.ipv4_mapped
            assert mapped_start is not None  # every address in ::ffff:0:0/96 is IPv4-mapped
            networks.append(ipaddress.IPv4Network((mapped_start, network.prefixlen - 96)))
        else:
            networks.append(network)

    return tuple(networks)


def _contains(networks: tuple[IPNetwork, ...], address: IPAddress) -> bool:
    # A network of the other family never contains the address (ipaddress returns False).
    return any(address in network for network in networks)
