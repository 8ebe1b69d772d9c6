"""PCP client (RFC 6887): a MAP of one UDP port on the home router, IPv4.

A PCP mapping is owned by its nonce: the router renews or deletes it only for
a request with the same client address, protocol, internal port and nonce
(RFC 6887 11.3), so the nonce is kept with the mapping (state file) and
removal (lifetime 0) can only ever delete ours.  Answers are checked against
the request (sender, version, opcode, nonce, protocol, internal port) and
anything else is ignored.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from . import retransmit

PORT = 5351
VERSION = 2
OP_MAP = 1
UDP = 17
HEADER = struct.Struct("!BBHI16s")                 # version, R|opcode, reserved, lifetime, client address
ANSWER = struct.Struct("!BBBBII12s")               # version, R|opcode, reserved, result, lifetime, epoch, reserved
MAP = struct.Struct("!12sB3sHH16s")                # nonce, protocol, reserved, internal port, external port, address
MAX_ANSWER = 1100                                  # RFC 6887 7: messages are at most 1100 octets
RESULTS = {
    0: "success", 1: "unsupported version", 2: "not authorized", 3: "malformed request", 4: "unsupported opcode",
    5: "unsupported option", 6: "malformed option", 7: "network failure", 8: "no resources",
    9: "unsupported protocol", 10: "user exceeded quota", 11: "cannot provide external", 12: "address mismatch",
    13: "excessive remote peers",
}


class PcpError(retransmit.GatewayError):
    """The router refused (result code), does not speak PCP, or did not answer."""

    protocol = "PCP"
    results = RESULTS


def _v4mapped(address: str) -> bytes:
    return ipaddress.IPv6Address("::ffff:" + str(ipaddress.IPv4Address(address))).packed


def new_nonce() -> bytes:
    return os.urandom(12)


def map_request(client: str, nonce: bytes, internal_port: int, external_port: int, lifetime: int) -> bytes:
    """A MAP request for UDP ``internal_port`` (lifetime 0 deletes the mapping)."""
    if len(nonce) != 12 or not 1 <= internal_port <= 65535 or not 0 <= external_port <= 65535 \
            or not 0 <= lifetime < 1 << 32:
        raise ValueError("nonce, port or lifetime out of range")
    return (HEADER.pack(VERSION, OP_MAP, 0, lifetime, _v4mapped(client))
            + MAP.pack(nonce, UDP, b"\0\0\0", internal_port, external_port, _v4mapped("0.0.0.0")))


def parse(data: bytes, nonce: bytes, internal_port: int) -> dict:
    """The answer to our MAP: {"result", "lifetime", "epoch", and on success "external_port", "external_address"}.

    Raises ValueError for a datagram that is not that answer.  A NAT-PMP
    router answers a PCP request with its own version 0 "unsupported
    version": reported as result 1.
    """
    if len(data) >= 4 and data[0] == 0 and data[1] == 128 + OP_MAP:
        return {"result": 1, "lifetime": 0, "epoch": 0}
    if len(data) < ANSWER.size + MAP.size or len(data) > MAX_ANSWER or len(data) % 4:
        raise ValueError("not a PCP answer (%d bytes)" % len(data))
    version, opcode, _, result, lifetime, epoch, _ = ANSWER.unpack_from(data)
    if version != VERSION or opcode != 128 + OP_MAP:
        raise ValueError("not a PCP MAP answer")
    got_nonce, protocol, _, internal, external, address = MAP.unpack_from(data, ANSWER.size)
    if got_nonce != nonce or protocol != UDP or internal != internal_port:
        raise ValueError("an answer to another request")
    answer = {"result": result, "lifetime": lifetime, "epoch": epoch}
    if result == 0 and lifetime > 0:   # (a deletion's answer may carry no address)
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
        if mapped is None or external == 0:
            raise ValueError("success without an IPv4 external address and port")
        answer.update(external_port=external, external_address=str(mapped))
    return answer


def map_udp(gateway: str, nonce: bytes, internal_port: int, external_port: int, lifetime: int,
            timeout: float = 2.0, first_wait: float = 0.25) -> dict:
    """Create or renew our mapping of UDP ``internal_port``; lifetime 0 deletes it (same nonce).

    Retransmitted with doubling waits (RFC 6887 8.1.1) until ``timeout``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((gateway, PORT))     # our source address goes into the request (the router checks it)
        message = map_request(sock.getsockname()[0], nonce, internal_port, external_port, lifetime)
        return retransmit.exchange(sock, gateway, PORT, message, lambda data: parse(data, nonce, internal_port),
                                   PcpError, MAX_ANSWER + 1, timeout, first_wait)
