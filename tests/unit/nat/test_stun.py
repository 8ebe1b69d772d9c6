"""The agent's STUN client: the parser against well-formed, malformed and fuzzed answers, and
RFC 5780 behaviour discovery against fake STUN servers on loopback (two addresses)."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import struct
import threading

import pytest
from higgs_nat import stun


def attribute(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def address(kind, ip, port, txid=None):
    raw = ipaddress.ip_address(ip).packed
    family = 1 if len(raw) == 4 else 2
    if kind == stun.XOR_MAPPED_ADDRESS:
        port ^= stun.MAGIC >> 16
        raw = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", stun.MAGIC) + txid))
    return attribute(kind, struct.pack("!BBH", 0, family, port) + raw)


def answer(txid, mapped, other=None, kind=stun.BINDING_SUCCESS, xor=True, extra=b""):
    attrs = extra + address(stun.XOR_MAPPED_ADDRESS if xor else stun.MAPPED_ADDRESS, *mapped, txid=txid)
    if other:
        attrs += address(stun.OTHER_ADDRESS, *other)
    return struct.pack("!HHI", kind, len(attrs), stun.MAGIC) + txid + attrs


TXID = bytes(range(12))


@pytest.mark.parametrize("mapped", [("198.51.100.7", 40000), ("2001:db8::7", 51820)])
def test_parse_reads_the_xor_mapped_and_other_address(mapped):
    unknown = attribute(0x8022, b"coturn")   # SOFTWARE, padded: skipped
    got = stun.parse(answer(TXID, mapped, ("203.0.113.2", 3479), extra=unknown), TXID)
    assert got == {"mapped": mapped, "other": ("203.0.113.2", 3479), "origin": None}


def test_parse_reads_the_old_mapped_address():
    assert stun.parse(answer(TXID, ("198.51.100.7", 1), xor=False), TXID)["mapped"] == ("198.51.100.7", 1)


def test_request_carries_change_request():
    message = stun.request(TXID, stun.CHANGE_IP | stun.CHANGE_PORT)
    assert message[:2] == b"\x00\x01" and message[-8:] == struct.pack("!HHI", stun.CHANGE_REQUEST, 4, 6)


GOOD = answer(TXID, ("198.51.100.7", 40000), ("203.0.113.2", 3479))


@pytest.mark.parametrize(("data", "txid", "why"), [
    (GOOD, bytes(12), "another transaction"),
    (GOOD[:4] + b"\0\0\0\0" + GOOD[8:], TXID, "magic"),
    (answer(TXID, ("198.51.100.7", 1), kind=0x0111), TXID, "binding success"),
    (GOOD[:-4], TXID, "does not match"),
    (GOOD[:2] + struct.pack("!H", len(GOOD) - 20 + 4) + GOOD[4:] + b"\0\0\x00\x20", TXID, "runs past"),
    (struct.pack("!HHI", stun.BINDING_SUCCESS, 0, stun.MAGIC) + TXID, TXID, "MAPPED-ADDRESS"),
    (GOOD[:20] + attribute(stun.XOR_MAPPED_ADDRESS, b"\0\x03\0\0" + b"\0" * 4)[0:12], TXID, "length"),
    (b"\0" * 19, TXID, "20 to"),
    (GOOD + b"\0" * 1600, TXID, "20 to"),
])
def test_parse_refuses_malformed_answers(data, txid, why):
    with pytest.raises(stun.StunError, match=why):
        stun.parse(data, txid)


def test_parse_fuzz_raises_only_stun_errors():
    """Seeded mutations of valid answers: each either parses to real addresses or raises StunError."""
    rng = random.Random(16)
    seeds = [GOOD, answer(TXID, ("2001:db8::7", 9), ("2001:db8::8", 10)), answer(TXID, ("10.0.0.1", 1), xor=False)]
    parsed = 0
    for _ in range(30000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.4 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.6:
                del data[rng.randrange(len(data) + 1):]
            elif op < 0.8:
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = os.urandom(rng.randint(1, 16))
            else:   # a length field: the message's or an attribute's
                pos = rng.choice([2] + [p for p in range(20, max(20, len(data) - 3), 4)])
                data[pos:pos + 2] = struct.pack("!H", rng.randrange(65536))
        try:
            got = stun.parse(bytes(data), TXID)
        except stun.StunError:
            continue
        parsed += 1
        ipaddress.ip_address(got["mapped"][0])
        assert 0 <= got["mapped"][1] <= 65535
    assert parsed > 0   # the mutations leave some answers valid: the success path is fuzzed too


class FakeStun:
    """A STUN server on A1 = 127.0.0.1 and A2 = 127.0.0.2, ports P1 and P2 (four sockets), playing a NAT.

    ``mapping``: the port the "NAT" shows, "same" everywhere or "per-address" (another one toward A2);
    ``changes``: the CHANGE-REQUEST flags answered (the others are dropped, as a filtering NAT would).
    A junk datagram precedes every answer.
    """

    A1, A2 = "127.0.0.1", "127.0.0.2"

    def __init__(self, mapping="same", changes=(0, stun.CHANGE_PORT, stun.CHANGE_IP | stun.CHANGE_PORT)):
        self.mapping, self.changes = mapping, set(changes)
        self.socks = {}
        for _ in range(2):
            first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            first.bind((self.A1, 0))
            port = first.getsockname()[1]
            second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            second.bind((self.A2, port))
            self.socks[(self.A1, port)] = first
            self.socks[(self.A2, port)] = second
        self.p1, self.p2 = sorted({a[1] for a in self.socks})
        self.primary = (self.A1, self.p1)
        self.stop = False
        self.threads = [threading.Thread(target=self.serve, args=(s,), daemon=True) for s in self.socks.values()]
        for thread in self.threads:
            thread.start()

    def flip_ip(self, ip):
        return self.A2 if ip == self.A1 else self.A1

    def flip_port(self, port):
        return self.p2 if port == self.p1 else self.p1

    def serve(self, sock):
        sock.settimeout(0.1)
        here = sock.getsockname()
        while not self.stop:
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            txid = data[8:20]
            change = struct.unpack("!I", data[-4:])[0] if len(data) == 28 else 0
            if change not in self.changes:
                continue
            port = source[1] + (self.mapping == "per-address" and here[0] == self.A2)
            ip = self.flip_ip(here[0]) if change & stun.CHANGE_IP else here[0]
            reply_port = self.flip_port(here[1]) if change & stun.CHANGE_PORT else here[1]
            out = self.socks[(ip, reply_port)]
            other = (self.flip_ip(here[0]), self.flip_port(here[1]))
            out.sendto(os.urandom(24), source)
            out.sendto(answer(txid, ("198.51.100.7", port), other), source)

    def close(self):
        self.stop = True
        for thread in self.threads:
            thread.join()
        for sock in self.socks.values():
            sock.close()


@pytest.mark.parametrize(("mapping", "changes", "expected"), [
    ("same", (0, stun.CHANGE_PORT, stun.CHANGE_IP | stun.CHANGE_PORT),
     ("endpoint-independent", "endpoint-independent", "FullCone")),
    ("same", (0, stun.CHANGE_PORT), ("endpoint-independent", "address-dependent", "RestrictedCone")),
    ("same", (0,), ("endpoint-independent", "address-and-port-dependent", "PortRestricted")),
    ("per-address", (0,), ("address-dependent", "address-and-port-dependent", "Symmetric")),
])
def test_discover_tells_the_nat_behaviour(mapping, changes, expected):
    fake = FakeStun(mapping, changes)
    try:
        got = stun.discover([fake.primary], "127.0.0.1", timeout=0.4)
    finally:
        fake.close()
    assert (got["mapping"], got["filtering"], got["nat_type"]) == expected
    assert got["mapped"][0] == "198.51.100.7"


def test_discover_without_an_answer_measures_nothing():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        got = stun.discover([silent.getsockname()], "127.0.0.1", timeout=0.3)
    assert got["nat_type"] is None and got["mapped"] is None


@pytest.mark.parametrize(("mapping", "filtering", "expected"), [
    (None, None, None), ("none", "endpoint-independent", "FullCone"), ("none", None, "PortRestricted"),
    ("address-and-port-dependent", "endpoint-independent", "Symmetric"),
])
def test_classify(mapping, filtering, expected):
    assert stun.classify(mapping, filtering) == expected
