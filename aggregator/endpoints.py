"""Compact peer endpoints: 6 bytes for IPv4 (BEP 23) and 18 bytes for IPv6 (BEP 7), network order."""

import ipaddress
import socket
import struct

IPV4_ENDPOINT_BYTES = 6
IPV6_ENDPOINT_BYTES = 18

_PORT = struct.Struct("!H")


def pack_ip(address: str) -> bytes:
    """Pack a textual IP address into 4 or 16 bytes; a v4-mapped IPv6 address becomes IPv4.

    Raises ValueError for anything that is not an IP address.
    """
    parsed = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone such as "%eth0"
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped.packed

    return parsed.packed


def make_endpoint(packed_ip: bytes, port: int) -> bytes:
    """Join a packed IP address and a port into one compact endpoint."""
    return packed_ip + _PORT.pack(port)


def endpoint_port(endpoint: bytes) -> int:
    """Return the port of a compact endpoint."""
    port: int = _PORT.unpack_from(endpoint, len(endpoint) - 2)[0]

    return port


def endpoint_ip_text(endpoint: bytes) -> str:
    """Return the IP address of a compact endpoint as text ("192.0.2.1" or "2001:db8::1")."""
    family = socket.AF_INET if len(endpoint) == IPV4_ENDPOINT_BYTES else socket.AF_INET6

    return socket.inet_ntop(family, endpoint[:-2])


def split_compact(data: bytes, width: int) -> list[bytes]:
    """Split a compact peer string into endpoints of `width` bytes.

    A trailing partial entry is dropped, and so are entries with port 0, which no peer can listen on.
    """
    endpoints = []
    for offset in range(0, len(data) - width + 1, width):
        endpoint = data[offset : offset + width]
        if endpoint[-2:] != b"\x00\x00":
            endpoints.append(endpoint)

    return endpoints
