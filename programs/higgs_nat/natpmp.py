"""NAT-PMP client (RFC 6886): the router's external address and UDP port mappings.

A mapping belongs to the requesting host and internal port: the router lets a
host change or delete only its own, so this client cannot touch mappings made
by other hosts.  Answers are checked against the request (opcode, internal
port, sender) and anything malformed is ignored.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from . import retransmit

PORT = 5351
OP_EXTERNAL = 0
OP_MAP_UDP = 1
RESULTS = {
    0: "success", 1: "unsupported version", 2: "not authorized or refused",
    3: "network failure", 4: "out of resources", 5: "unsupported opcode",
}


class NatPmpError(retransmit.GatewayError):
    """The router refused (result code) or did not answer."""

    protocol = "NAT-PMP"
    results = RESULTS


def external_request() -> bytes:
    return struct.pack("!BB", 0, OP_EXTERNAL)


def map_request(internal_port: int, external_port: int, lifetime: int) -> bytes:
    if not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535 or not 0 <= lifetime < 1 << 32:
        raise ValueError("port or lifetime out of range")
    return struct.pack("!BBHHHI", 0, OP_MAP_UDP, 0, internal_port, external_port, lifetime)


def parse(data: bytes, opcode: int, internal_port: int | None = None) -> dict:
    """An answer to ``opcode``: {"result", "epoch", and "external" or "internal"/"external_port"/"lifetime"}.

    Raises ValueError for a datagram that is not that answer.
    """
    if len(data) < 8 or data[0] != 0 or data[1] != 128 + opcode:
        raise ValueError("not a NAT-PMP answer to opcode %d" % opcode)
    result, epoch = struct.unpack("!HI", data[2:8])
    answer = {"result": result, "epoch": epoch}
    if result != 0:
        return answer
    if opcode == OP_EXTERNAL:
        if len(data) != 12:
            raise ValueError("external address answer of %d bytes" % len(data))
        answer["external"] = str(ipaddress.IPv4Address(data[8:12]))
    else:
        if len(data) != 16:
            raise ValueError("mapping answer of %d bytes" % len(data))
        internal, external, lifetime = struct.unpack("!HHI", data[8:16])
        if internal_port is not None and internal != internal_port:
            raise ValueError("answer for internal port %d" % internal)
        answer.update(internal=internal, external_port=external, lifetime=lifetime)
    return answer


def transact(gateway: str, message: bytes, opcode: int, internal_port: int | None = None,
             timeout: float = 2.0, first_wait: float = 0.25) -> dict:
    """Send ``message`` to the gateway (retransmitted with doubling waits, RFC 6886 3.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return retransmit.exchange(sock, gateway, PORT, message, lambda data: parse(data, opcode, internal_port),
                                   NatPmpError, 64, timeout, first_wait)


def external_address(gateway: str, timeout: float = 2.0) -> str:
    return transact(gateway, external_request(), OP_EXTERNAL, timeout=timeout)["external"]


def map_udp(gateway: str, internal_port: int, external_port: int, lifetime: int, timeout: float = 2.0) -> dict:
    """Create or renew the mapping of ``internal_port`` (lifetime 0 deletes it)."""
    return transact(gateway, map_request(internal_port, external_port, lifetime), OP_MAP_UDP,
                    internal_port, timeout=timeout)
