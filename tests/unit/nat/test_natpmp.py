"""The agent's NAT-PMP client (RFC 6886) against a fake gateway on loopback that also sends junk,
answers from a wrong port and for another internal port before the real answer."""

from __future__ import annotations

import socket
import struct

import pytest
from higgs_nat import natpmp


def respond(gateway, data, source):
    op = data[1]
    head = struct.pack("!BBHI", 0, 128 + op, gateway.result, 1000)
    if op == natpmp.OP_EXTERNAL:
        body = socket.inet_aton("198.51.100.7")
    else:
        _, _, _, internal, external, lifetime = struct.unpack("!BBHHHI", data)
        body = struct.pack("!HHI", internal, external or 40000, lifetime)
        gateway.sock.sendto(head + struct.pack("!HHI", internal + 1, 1, 1), source)   # another port's
    gateway.stranger.sendto(head + body, source)      # right shape, wrong sender
    gateway.sock.sendto(b"\x00\x81\x00", source)      # truncated
    gateway.sock.sendto(head + body, source)


@pytest.fixture
def protocol():
    return natpmp, respond


def test_external_address(gateway):
    assert natpmp.external_address("127.0.0.1", timeout=1) == "198.51.100.7"


def test_map_udp_sends_the_request_and_reads_the_answer(gateway):
    answer = natpmp.map_udp("127.0.0.1", 51820, 51820, 3600, timeout=1)
    assert answer["internal"] == 51820 and answer["external_port"] == 51820 and answer["lifetime"] == 3600
    assert gateway.requests[-1] == struct.pack("!BBHHHI", 0, 1, 0, 51820, 51820, 3600)


def test_delete_asks_lifetime_zero(gateway):
    natpmp.map_udp("127.0.0.1", 51820, 0, 0, timeout=1)
    assert gateway.requests[-1] == struct.pack("!BBHHHI", 0, 1, 0, 51820, 0, 0)


@pytest.mark.parametrize("gateway", [{"result": 2}], indirect=True)
def test_refusal_is_an_error_naming_the_result(gateway):
    with pytest.raises(natpmp.NatPmpError, match="not authorized"):
        natpmp.map_udp("127.0.0.1", 51820, 51820, 3600, timeout=1)


@pytest.mark.parametrize("gateway", [{"silent": True}], indirect=True)
def test_silence_is_an_error_after_retransmissions(gateway):
    with pytest.raises(natpmp.NatPmpError, match="no answer"):
        natpmp.map_udp("127.0.0.1", 51820, 51820, 3600, timeout=0.8)
    assert len(gateway.requests) >= 2


@pytest.mark.parametrize(("args", "ok"), [((0, 1, 1), False), ((65536, 1, 1), False), ((1, -1, 1), False),
                                          ((1, 1, 1 << 32), False), ((51820, 0, 0), True)])
def test_map_request_refuses_out_of_range_values(args, ok):
    if ok:
        assert len(natpmp.map_request(*args)) == 12
    else:
        with pytest.raises(ValueError):
            natpmp.map_request(*args)
