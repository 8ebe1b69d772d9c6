"""The agent's PCP client (RFC 6887 MAP) against a fake gateway on loopback that sends junk, answers from
another address, for another nonce and another internal port, and error codes; removal reuses our nonce with
lifetime 0; the answer parser is fuzzed (seeded)."""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import struct

import pytest
from higgs_nat import __main__ as agent
from higgs_nat import pcp

NONCE = bytes(range(1, 13))


def answer(nonce=NONCE, internal=51820, external=51820, address="198.51.100.7", result=0, lifetime=600,
           version=2, opcode=0x81, protocol=17):
    return (struct.pack("!BBBBII12s", version, opcode, 0, result, lifetime, 4242, b"\0" * 12)
            + struct.pack("!12sB3sHH16s", nonce, protocol, b"\0\0\0", internal, external,
                          ipaddress.IPv6Address("::ffff:" + address).packed))


def respond(gateway, data, source):
    """Junk and answers to other requests first, then the answer (``natpmp_only``: a NAT-PMP router's)."""
    if gateway.options.get("natpmp_only"):   # a NAT-PMP router: version 0, "unsupported version" (RFC 6887 9)
        gateway.sock.sendto(struct.pack("!BBHI", 0, 0x81, 1, 7), source)
        return
    nonce, _, _, internal, external, _ = struct.unpack("!12sB3sHH16s", data[24:60])
    lifetime = struct.unpack("!I", data[4:8])[0]
    good = answer(nonce, internal, external or 40000, result=gateway.result, lifetime=lifetime)
    gateway.stranger.sendto(good, source)                                   # right shape, wrong sender
    gateway.sock.sendto(good[:30], source)                                  # truncated
    gateway.sock.sendto(b"\xff" * 60, source)                               # junk
    gateway.sock.sendto(answer(bytes(12), internal, external, lifetime=lifetime), source)   # another nonce
    gateway.sock.sendto(answer(nonce, internal + 1, external, lifetime=lifetime), source)   # another port
    gateway.sock.sendto(answer(nonce, internal, external, protocol=6, lifetime=lifetime), source)  # TCP
    gateway.sock.sendto(good, source)


@pytest.fixture
def protocol():
    return pcp, respond


def test_map_request_format():
    req = pcp.map_request("192.168.1.10", NONCE, 51820, 51820, 3600)
    assert len(req) == 60 and req[:2] == b"\x02\x01" and struct.unpack("!I", req[4:8])[0] == 3600
    assert ipaddress.IPv6Address(req[8:24]).ipv4_mapped == ipaddress.IPv4Address("192.168.1.10")
    assert req[24:36] == NONCE and req[36] == 17 and struct.unpack("!HH", req[40:44]) == (51820, 51820)
    with pytest.raises(ValueError):
        pcp.map_request("192.168.1.10", b"short", 51820, 51820, 3600)


def test_maps_past_junk_wrong_sender_nonce_port_and_protocol(gateway):
    got = pcp.map_udp("127.0.0.1", NONCE, 51820, 51820, 600, timeout=2)
    assert got == {"result": 0, "lifetime": 600, "epoch": 4242, "external_port": 51820,
                   "external_address": "198.51.100.7"}
    assert ipaddress.IPv6Address(gateway.requests[0][8:24]).ipv4_mapped == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(("gateway", "message"), [
    ({"result": 2}, "PCP: not authorized (result 2)"),
    ({"result": 8}, "PCP: no resources (result 8)"),
    ({"result": 99}, "PCP: error (result 99)"),
    ({"natpmp_only": True}, "PCP: unsupported version (result 1)"),
    ({"silent": True}, "PCP: no answer"),
], indirect=["gateway"])
def test_refusals_and_silence_name_the_reason(gateway, message):
    with pytest.raises(pcp.PcpError, match=re.escape(message)):
        pcp.map_udp("127.0.0.1", NONCE, 51820, 51820, 600, timeout=0.6, first_wait=0.1)


def test_no_pcp_server_is_said_at_once(monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(pcp, "PORT", closed.getsockname()[1])
    with pytest.raises(pcp.PcpError, match=r"no PCP server|no answer"):
        pcp.map_udp("127.0.0.1", NONCE, 51820, 51820, 600, timeout=1, first_wait=0.1)


CFG = {"wireguard_port": 51820, "protocols": ["pcp"], "lease": 600, "timeout": 1,
       "description": "higgs-vpn wireguard", "stun": [], "state_file": "/nonexistent"}


def test_the_agent_keeps_the_nonce_and_removes_only_with_it(gateway):
    mapping, errors = agent.Router(CFG, "127.0.0.1").map(None)
    assert not errors and mapping["protocol"] == "pcp" and mapping["external_address"] == "198.51.100.7"
    nonce = bytes.fromhex(mapping["nonce"])
    assert gateway.requests[-1][24:36] == nonce
    state = {"mapping": mapping}
    # renewal and removal: the same nonce (from the state); removal asks for lifetime 0
    assert agent.Router(CFG, "127.0.0.1", agent.previous_nonce(state)).map(51820)[0]["nonce"] == mapping["nonce"]
    assert gateway.requests[-1][24:36] == nonce
    assert agent.Router(CFG, "127.0.0.1", agent.previous_nonce(state)).unmap(51820) == {"pcp": [51820]}
    assert gateway.requests[-1][24:36] == nonce and gateway.requests[-1][4:8] == b"\0\0\0\0"


def test_without_our_nonce_nothing_is_removed(gateway):
    """A mapping made by someone else (or one whose nonce we lost) cannot be ours to delete."""
    assert agent.Router(CFG, "127.0.0.1", None).unmap(51820) == {"pcp": []}
    assert gateway.requests == []


@pytest.mark.parametrize("state", [{}, {"mapping": None}, {"mapping": {"protocol": "upnp", "nonce": NONCE.hex()}},
                                   {"mapping": {"protocol": "pcp", "nonce": "zz"}},
                                   {"mapping": {"protocol": "pcp", "nonce": "00"}}])
def test_no_nonce_from_other_states(state):
    assert agent.previous_nonce(state) is None


def test_parser_fuzz():
    """Seeded: mutated answers and random datagrams give a checked answer or ValueError, nothing else."""
    rng = random.Random(6887)
    base = answer()
    for _ in range(30000):
        kind = rng.random()
        if kind < 0.4:
            data = bytearray(base)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind < 0.7:
            data = bytearray(base[:rng.randrange(len(base) + 1)]) + bytes(rng.randrange(256) for _ in range(
                rng.randrange(0, 64)))
        else:
            data = bytearray(rng.randrange(256) for _ in range(rng.randrange(0, 1200)))
        try:
            got = pcp.parse(bytes(data), NONCE, 51820)
        except ValueError:
            continue
        assert isinstance(got["result"], int) and 0 <= got["result"] <= 255
        if got["result"] == 0 and got["lifetime"] > 0 and "external_port" in got:
            assert 1 <= got["external_port"] <= 65535
            ipaddress.IPv4Address(got["external_address"])
