"""A small STUN client (RFC 5389 binding, RFC 5780 NAT behaviour discovery).

Only what behaviour discovery needs: a binding request (optionally with
CHANGE-REQUEST), and a parser for the answer's XOR-MAPPED-ADDRESS (or the
old MAPPED-ADDRESS), OTHER-ADDRESS and RESPONSE-ORIGIN.  The parser treats the
answer as hostile: every length is checked against the datagram, anything
malformed raises StunError.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time

MAGIC = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
XOR_MAPPED_ADDRESS = 0x0020
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C
CHANGE_IP = 0x04
CHANGE_PORT = 0x02
MAX_DATAGRAM = 1500


class StunError(ValueError):
    """A datagram that is not a well-formed STUN binding success answer."""


def request(txid: bytes, change: int = 0) -> bytes:
    """A binding request with transaction id ``txid`` (12 bytes), CHANGE-REQUEST when ``change``."""
    if len(txid) != 12:
        raise ValueError("a transaction id has 12 bytes")
    attrs = struct.pack("!HHI", CHANGE_REQUEST, 4, change) if change else b""
    return struct.pack("!HHI", BINDING_REQUEST, len(attrs), MAGIC) + txid + attrs


def _address(value: bytes, xor: bytes | None) -> tuple[str, int]:
    if len(value) < 4 or value[0] != 0:
        raise StunError("address attribute too short or with a non-zero first byte")
    family, port = value[1], struct.unpack("!H", value[2:4])[0]
    size = {1: 4, 2: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise StunError("address attribute of family %d and length %d" % (family, len(value)))
    raw = value[4:]
    if xor is not None:
        port ^= MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor))
    return str(ipaddress.ip_address(raw)), port


def parse(data: bytes, txid: bytes) -> dict:
    """The addresses of a binding success answer to the request with ``txid``.

    Returns {"mapped": (ip, port), "other": (ip, port) or None, "origin": (ip, port) or None}.
    """
    if len(data) < 20 or len(data) > MAX_DATAGRAM:
        raise StunError("a STUN message has 20 to %d bytes, not %d" % (MAX_DATAGRAM, len(data)))
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC:
        raise StunError("no STUN magic cookie")
    if data[8:20] != txid:
        raise StunError("answer to another transaction")
    if kind != BINDING_SUCCESS:
        raise StunError("not a binding success answer (type 0x%04x)" % kind)
    if length % 4 or length != len(data) - 20:
        raise StunError("message length %d does not match the datagram (%d bytes)" % (length, len(data)))
    xor = struct.pack("!I", MAGIC) + txid
    found = {}
    pos = 20
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        atype, alen = struct.unpack("!HH", data[pos:pos + 4])
        end = pos + 4 + alen
        if end > len(data):
            raise StunError("attribute 0x%04x runs past the message" % atype)
        value = data[pos + 4:end]
        if atype in (XOR_MAPPED_ADDRESS, MAPPED_ADDRESS, OTHER_ADDRESS, RESPONSE_ORIGIN) and atype not in found:
            found[atype] = _address(value, xor if atype == XOR_MAPPED_ADDRESS else None)
        pos = end + (-alen % 4)
    mapped = found.get(XOR_MAPPED_ADDRESS) or found.get(MAPPED_ADDRESS)
    if mapped is None:
        raise StunError("no (XOR-)MAPPED-ADDRESS")
    return {"mapped": mapped, "other": found.get(OTHER_ADDRESS), "origin": found.get(RESPONSE_ORIGIN)}


def transact(sock: socket.socket, server: tuple[str, int], change: int = 0, timeout: float = 1.5,
             tries: int = 3) -> dict | None:
    """One binding transaction over ``sock``; None when no valid answer came in ``timeout`` s.

    The request is sent ``tries`` times within the timeout; datagrams that are
    not the answer (other sources' junk, malformed answers) are ignored.
    """
    txid = os.urandom(12)
    message = request(txid, change)
    deadline = time.monotonic() + timeout
    step = timeout / tries
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None
        if now >= next_send:
            sock.sendto(message, server)
            next_send = now + step
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - now))
        if not ready:
            continue
        data, _source = sock.recvfrom(MAX_DATAGRAM + 1)
        try:
            return parse(data, txid)
        except StunError:
            continue


def classify(mapping: str | None, filtering: str | None) -> str | None:
    """BosonServer's natType from RFC 5780 mapping and filtering behaviour."""
    if mapping is None:
        return None
    if mapping not in ("none", "endpoint-independent"):
        return "Symmetric"
    return {"endpoint-independent": "FullCone", "address-dependent": "RestrictedCone"}.get(
        filtering, "PortRestricted")


def discover(servers: list[tuple[str, int]], local_ip: str, timeout: float = 1.5) -> dict:
    """RFC 5780 behaviour discovery from an ephemeral port of ``local_ip``.

    Uses the first server that answers; its OTHER-ADDRESS (a server with two
    addresses) gives the mapping tests II/III and the filtering tests.  Without
    it a second server (another address) tells endpoint-independent mapping
    from the rest, and filtering stays unknown (taken as port-restricted).
    """
    result = {"server": None, "mapped": None, "mapping": None, "filtering": None, "nat_type": None,
              "other_address": None}
    family = socket.AF_INET6 if ":" in local_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((local_ip, 0))
        local = sock.getsockname()[:2]
        first = index = None
        for index, server in enumerate(servers):  # noqa: B007 - the answering server is used below
            first = transact(sock, server, timeout=timeout)
            if first is not None:
                break
        if first is None:
            return result
        m1 = first["mapped"]
        result.update(server="%s:%d" % server, mapped=m1, other_address=first["other"])
        other = first["other"]
        if m1 == local:
            result["mapping"] = "none"
        elif other is not None:
            m2 = transact(sock, (other[0], server[1]), timeout=timeout)
            if m2 is not None and m2["mapped"] == m1:
                result["mapping"] = "endpoint-independent"
            elif m2 is not None:
                m3 = transact(sock, other, timeout=timeout)
                same = m3 is not None and m3["mapped"] == m2["mapped"]
                result["mapping"] = "address-dependent" if same else "address-and-port-dependent"
        else:
            for second in servers[index + 1:]:
                if second[0] == server[0]:
                    continue
                m2 = transact(sock, second, timeout=timeout)
                if m2 is not None:
                    result["mapping"] = ("endpoint-independent" if m2["mapped"] == m1
                                         else "address-and-port-dependent")
                    break
        if other is not None:
            if transact(sock, server, CHANGE_IP | CHANGE_PORT, timeout=timeout) is not None:
                result["filtering"] = "endpoint-independent"
            elif transact(sock, server, CHANGE_PORT, timeout=timeout) is not None:
                result["filtering"] = "address-dependent"
            else:
                result["filtering"] = "address-and-port-dependent"
    result["nat_type"] = classify(result["mapping"], result["filtering"])
    return result
