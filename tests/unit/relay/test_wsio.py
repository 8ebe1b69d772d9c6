"""Binary frames written by wsio itself are read back by the websockets library, both sides.

Needs the websockets library (python3-websockets); see test_end_to_end.py for
running it on the lab images (websockets 10.4 and 15).
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

pytest.importorskip("websockets")
from higgs_relay import wsio
from websockets.frames import Opcode
from websockets.uri import parse_uri
from websockets.utils import apply_mask as library_mask

SIZES = [1, 4, 125, 126, 1400, 65535, 65536, 200000]


class Transport:
    """Collects what the WebSocket writes."""

    def __init__(self):
        self.out = bytearray()

    def write(self, data):
        self.out += data

    def writelines(self, parts):
        for part in parts:
            self.out += part

    def is_closing(self):
        return False

    def can_write_eof(self):
        return True

    def write_eof(self):
        pass

    def close(self):
        pass

    abort = close


def _pair():
    """A client and a server protocol of the library, handshake done in memory."""
    client = wsio._Client(parse_uri("ws://relay.example.net/relay/x"), max_size=wsio.MAX_MESSAGE)
    server = wsio._Server(max_size=wsio.MAX_MESSAGE)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    (request,) = server.events_received()
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert client.state.name == server.state.name == "OPEN"
    return client, server


@pytest.mark.parametrize("side", ["client", "server"])
def test_written_frames_read_back(side):
    client, server = _pair()
    writer, reader = (client, server) if side == "client" else (server, client)
    loop = asyncio.new_event_loop()
    ws = wsio.WebSocket(writer, loop=loop)
    ws.transport = Transport()
    frames = [b"\x04\0\0\0" + os.urandom(size - 4) if size > 4 else os.urandom(size) for size in SIZES]
    frames.append(memoryview(b"\0\0\0\7" + frames[4])[4:])   # views are sent as they are
    total = ws.send_binary_many(frames)
    assert total == len(ws.transport.out) == ws.bytes_out
    reader.receive_data(bytes(ws.transport.out))
    got = reader.events_received()
    assert [f.opcode for f in got] == [Opcode.BINARY] * len(frames)
    assert all(f.fin for f in got)
    assert [bytes(f.data) for f in got] == [bytes(f) for f in frames]
    # masked from the client only, as RFC 6455 wants; the library's reader enforces it
    assert (ws.transport.out[1] & 0x80 == 0x80) == (side == "client")
    loop.close()


def _chunks(stream, how):
    if how == "whole":
        return [stream]
    if how == "bytes":   # header by header, byte by byte
        return [stream[i:i + 1] for i in range(len(stream))]
    rng = random.Random(how)
    out, pos = [], 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 5, 9, 13, 700, 1500, 16000, 70000])
        out.append(stream[pos:pos + step])
        pos += step
    return out


@pytest.mark.parametrize("how", ["whole", "bytes", 1, 2, 3])
@pytest.mark.parametrize("side", ["client", "server"])
def test_frames_read_in_any_chunks(side, how):
    """Binary frames read here, text, ping, fragments and close by the library, in any split."""
    client, server = _pair()
    mine, peer = (client, server) if side == "client" else (server, client)
    loop = asyncio.new_event_loop()
    ws = wsio.WebSocket(mine, loop=loop)
    ws.transport = Transport()
    binary, text = [], []
    ws.start(on_binary=lambda data: binary.append(bytes(data)), on_text=text.append)
    ws._check_fast()
    expected = []
    for index, size in enumerate(SIZES if how != "bytes" else SIZES[:5]):
        data = os.urandom(size)
        peer.send_binary(data)
        expected.append(data)
        if index == 1:
            peer.send_text(b"control")
            peer.send_ping(b"ping")
        if index == 2:
            peer.send_binary(b"frag", fin=False)
            peer.send_continuation(b"ment", fin=False)
            peer.send_continuation(b"ed", fin=True)
            expected.append(b"fragmented")
    peer.send_close(1000, "bye")
    stream = b"".join(peer.data_to_send())
    for chunk in _chunks(stream, how):
        assert ws._fast == (mine.state.name == "OPEN")
        ws.data_received(chunk)
    assert binary == expected
    assert text == ["control"]
    assert not ws._fast and mine.state.name != "OPEN"
    assert ws.bytes_in == len(stream)
    # the library answered the ping and the close
    peer.receive_data(bytes(ws.transport.out))
    answers = peer.events_received()
    assert (answers[0].opcode, bytes(answers[0].data)) == (Opcode.PONG, b"ping")
    assert answers[-1].opcode == Opcode.CLOSE
    loop.close()


def test_protocol_errors_are_left_to_the_library():
    """An unmasked frame from a client and an oversized one close the connection as the library does."""
    for frame, code in ((b"\x82\x02ab", 1002), (b"\x82\xff" + (2 << 20).to_bytes(8, "big") + b"mask", 1009)):
        _, server = _pair()
        loop = asyncio.new_event_loop()
        ws = wsio.WebSocket(server, loop=loop)
        ws.transport = Transport()
        got = []
        ws.start(on_binary=got.append)
        ws._check_fast()
        assert ws._fast
        ws.data_received(frame)
        assert got == [] and not ws._fast
        assert server.state.name != "OPEN" and server.close_sent.code == code
        loop.close()


def test_mask_matches_the_library():
    for size in (0, 1, 3, 4, 5, 1399, 16384):
        data, key = os.urandom(size), os.urandom(4)
        assert bytes(wsio.mask(data, key)) == library_mask(data, key)
