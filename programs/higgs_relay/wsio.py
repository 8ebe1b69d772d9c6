"""asyncio driver for the websockets Sans-I/O protocol (websockets 10.4 and 15.x).

Debian 12 ships websockets 10.4 and Debian 13 15.0; their asyncio APIs differ
(legacy vs new implementation) but both carry the same Sans-I/O core
(``ClientConnection``/``ServerConnection``, renamed ``ClientProtocol``/
``ServerProtocol`` in 11).  Driving that core from an ``asyncio.Protocol``
gives one code path for both releases, keeps the RFC 6455 details (handshake,
parsing, fragmentation, ping/pong, close handshake) in the library, and lets
the caller write many frames with one ``transport.writelines``: no task, future
or lock per frame.

Binary data frames of the simplest kind (FIN, opcode 2, no extension: none is
ever negotiated here) are the one thing framed and parsed here rather than by
the library, which builds each through a generator, a frame object, a checker
and a BytesIO (and Debian 12's package has no compiled masking): that was most
of the CPU of a busy relay path.  Sending, they are written in order after
whatever the library has pending.  Receiving on an open connection, frame
boundaries are found here; every other frame (text, control, fragments,
anything malformed or too big) is handed to the library whole, so its parser
always stands between two frames, and after a close frame (or before the
library reaches a frame boundary after the handshake) everything goes to the
library as before.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from urllib.parse import urlsplit

try:  # websockets >= 11
    from websockets.client import ClientProtocol as _Client
    from websockets.server import ServerProtocol as _Server
except ImportError:  # websockets 10.x
    from websockets.client import ClientConnection as _Client
    from websockets.server import ServerConnection as _Server
import contextlib

from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:   # Debian 12: the C extension is not built
    apply_mask = None

MAX_MESSAGE = 1 << 20
OPEN = "OPEN"
_HEAD7 = struct.Struct("!BB")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")
_U64 = struct.Struct("!Q")
_XOR = [bytes(b ^ key for b in range(256)) for key in range(256)] if apply_mask is None else []


def mask(data, key: bytes):
    """``data`` XOR the 4-byte ``key`` repeated (RFC 6455 section 5.3).

    Four strided byte translations: about twice as fast as the library's
    pure-Python fallback; the library's C version when it is built.
    """
    if apply_mask is not None:
        return apply_mask(data, key)
    out = bytearray(data)
    for index in range(4):
        out[index::4] = out[index::4].translate(_XOR[key[index]])
    return out


class WebSocket(asyncio.Protocol):
    """One WebSocket connection.

    Callbacks: ``on_binary(data)``, ``on_text(str)``, ``on_pong(rtt)``,
    ``on_drain()`` (the transport accepts writes again), ``on_close(code,
    reason)``.  ``opened`` resolves when the handshake completes, ``closed``
    when the connection is gone.
    """

    def __init__(self, protocol, loop=None, write_limit: int = 256 << 10):
        self.proto = protocol
        self.masked = isinstance(protocol, _Client)   # a client masks what it sends
        self.loop = loop or asyncio.get_event_loop()
        self.transport = None
        self.opened = self.loop.create_future()
        self.closed = self.loop.create_future()
        self.write_limit = write_limit
        self.paused = False
        self.on_binary = self.on_text = self.on_pong = self.on_drain = self.on_close = None
        self._fragments = None
        self._pings = {}
        self._out = []
        self._early = []
        self._fast = False      # frame boundaries found here (see the module docstring)
        self._pending = []      # chunks holding the start of a frame not complete yet (fast mode)
        self._pending_size = 0
        self._need = 0          # bytes the pending frame needs before it can be read further
        self.bytes_in = 0
        self.bytes_out = 0
        self.request = None

    # asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=self.write_limit, low=self.write_limit // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.proto, _Client):
            request = self.proto.connect()
            self.proto.send_request(request)
            self._flush()

    def data_received(self, data):
        self.bytes_in += len(data)
        if self._fast:
            self._receive_frames(data)
        else:
            self.proto.receive_data(data)
            self._process()
            self._check_fast()

    def _check_fast(self):
        """Find frame boundaries here from now on if the library's parser stands between frames."""
        reader = getattr(self.proto, "reader", None)
        self._fast = (self.proto.state.name == OPEN and self._fragments is None
                      and not getattr(reader, "buffer", True))

    def _receive_frames(self, data):
        if self._pending:   # joined once enough has come: a frame sent in tiny pieces costs no more
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._need:
                return
            data = b"".join(self._pending)
            self._pending = []
        view = memoryview(data)
        size = len(view)
        pos = 0
        from_client = not self.masked   # a server reads masked frames, a client unmasked ones
        while True:
            need = 2
            if size - pos < need:
                break
            first, second = view[pos], view[pos + 1]
            length = second & 0x7F
            if length == 126:
                need = 4
                if size - pos < need:
                    break
                length = (view[pos + 2] << 8) | view[pos + 3]
            elif length == 127:
                need = 10
                if size - pos < need:
                    break
                length = _U64.unpack_from(view, pos + 2)[0]
            masked = second & 0x80
            head = need + 4 if masked else need
            if length > MAX_MESSAGE:        # the library refuses it (1009)
                self._to_library(view[pos:])
                return
            need = head + length
            if size - pos < need:
                break
            end = pos + need
            if first == 0x82 and bool(masked) == from_client and self._fragments is None:
                payload = view[pos + head:end]
                self._deliver(Opcode.BINARY, mask(payload, bytes(view[pos + head - 4:pos + head]))
                              if masked else payload)
                pos = end
                continue
            self.proto.receive_data(bytes(view[pos:end]))   # one whole frame
            self._process()
            pos = end
            if self.proto.state.name != OPEN:   # closing: the library reads the rest
                self._to_library(view[pos:])
                return
        if pos < size:
            self._pending = [bytes(view[pos:])]
            self._pending_size = size - pos
            self._need = need

    def _to_library(self, rest):
        self._fast = False
        if rest:
            self.proto.receive_data(bytes(rest))
            self._process()

    def eof_received(self):
        rest, self._pending = b"".join(self._pending), []
        self._to_library(rest)
        self.proto.receive_eof()
        self._process()
        return False

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(
                "connection closed during the handshake%s" % (": %s" % exc if exc else "")))
        if not self.closed.done():
            code, reason = self.close_status()
            self.closed.set_result((code, reason))
            if self.on_close:
                self.on_close(code, reason)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.on_drain:
            self.on_drain()

    # frames -----------------------------------------------------------------
    def _process(self):
        for event in self.proto.events_received():
            if isinstance(event, Response):        # client: handshake answer
                self._handshake_done()
            elif isinstance(event, Request):       # server: the caller accepts or rejects
                self.request = event
                if not self.opened.done():
                    self.opened.set_result(event)
            else:
                self._frame(event)
        self._flush()

    def _handshake_done(self):
        if self.opened.done():
            return
        error = getattr(self.proto, "handshake_exc", None)
        if error is None and self.proto.state.name == OPEN:
            self.opened.set_result(True)
        else:
            self.opened.set_exception(ConnectionError("WebSocket handshake failed: %s" % (error or "rejected")))

    def _frame(self, frame):
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if frame.fin:
                self._deliver(opcode, frame.data)
            else:
                self._fragments = (opcode, [frame.data], len(frame.data))
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return
            first, parts, size = self._fragments
            size += len(frame.data)
            if size > MAX_MESSAGE:
                self._fragments = None
                self.fail(1009, "message too big")
                return
            parts.append(frame.data)
            self._fragments = (first, parts, size)
            if frame.fin:
                self._fragments = None
                self._deliver(first, b"".join(parts))
        elif opcode is Opcode.PONG:
            sent = self._pings.pop(bytes(frame.data), None)
            if sent is not None and self.on_pong:
                self.on_pong(time.monotonic() - sent)

    def start(self, on_binary=None, on_text=None, on_pong=None, on_drain=None, on_close=None):
        """Set the callbacks and deliver the frames that arrived with the handshake."""
        self.on_binary, self.on_text, self.on_pong = on_binary, on_text, on_pong
        self.on_drain, self.on_close = on_drain, on_close
        early, self._early = self._early, None
        for opcode, data in early or ():
            self._deliver(opcode, data)

    def _deliver(self, opcode, data):
        if self._early is not None:   # start() not called yet: keep the frame
            self._early.append((opcode, data))
            return
        if opcode is Opcode.BINARY:
            if self.on_binary:
                self.on_binary(data)
        elif self.on_text:
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in a text frame")
                return
            self.on_text(text)

    def _flush(self):
        chunks = self.proto.data_to_send()
        if not chunks or self.transport is None:
            return
        eof = False
        if chunks[-1] == b"":
            eof = True
            chunks = chunks[:-1]
        data = b"".join(chunks)
        if data:
            self.bytes_out += len(data)
            self.transport.write(data)
        if eof:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
        elif self.proto.state.name == "CLOSED":
            self.transport.close()

    # API --------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.proto.state.name == OPEN and self.transport is not None and not self.transport.is_closing()

    def send_binary_many(self, frames) -> int:
        """Send binary frames (bytes-like) with one write; returns the bytes handed to the transport."""
        if not self.is_open:
            return 0
        self._flush()   # anything the library has pending (a pong, say) goes first
        parts = []
        total = 0
        masked = self.masked
        for frame in frames:
            size = len(frame)
            if size < 126:
                head = _HEAD7.pack(0x82, size | (0x80 if masked else 0))
            elif size < 65536:
                head = _HEAD16.pack(0x82, 0xFE if masked else 126, size)
            else:
                head = _HEAD64.pack(0x82, 0xFF if masked else 127, size)
            if masked:
                key = os.urandom(4)
                parts += (head, key, mask(frame, key))
                total += len(head) + 4 + size
            else:
                parts += (head, frame)
                total += len(head) + size
        if parts:
            self.bytes_out += total
            self.transport.writelines(parts)
        return total

    def queue_binary(self, frame) -> bool:
        """Queue a frame for the write at the end of this loop iteration.

        Returns False (frame dropped) while the transport is over its write
        limit or the connection is not open: the caller counts the drop.
        """
        if self.paused or not self.is_open:
            return False
        self._out.append(frame)
        if len(self._out) == 1:
            self.loop.call_soon(self._send_queued)
        return True

    def _send_queued(self):
        frames, self._out = self._out, []
        if frames:
            self.send_binary_many(frames)

    def send_text(self, text: str):
        if self.is_open:
            self.proto.send_text(text.encode())
            self._flush()

    def ping(self):
        if not self.is_open:
            return
        payload = os.urandom(4)
        if len(self._pings) > 16:  # pongs that never came: forget the oldest
            self._pings.pop(next(iter(self._pings)))
        self._pings[payload] = time.monotonic()
        self.proto.send_ping(payload)
        self._flush()

    def pings_outstanding(self) -> float:
        """Age in seconds of the oldest unanswered ping (0 when none)."""
        if not self._pings:
            return 0.0
        return time.monotonic() - min(self._pings.values())

    def pings_pending(self) -> int:
        """Pings sent on this socket and not answered yet."""
        return len(self._pings)

    def close(self, code: int = 1000, reason: str = ""):
        if self.is_open:
            self.proto.send_close(code, reason)
            self._flush()
            self.loop.call_later(2.0, self.abort)
        else:
            self.abort()

    def fail(self, code: int, reason: str = ""):
        with contextlib.suppress(Exception):
            self.proto.fail(code, reason)
        self._flush()
        self.abort()

    def abort(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def close_status(self):
        received = getattr(self.proto, "close_rcvd", None)
        if received is not None:
            return int(received.code), received.reason
        return 1006, "connection lost"

    # server side ------------------------------------------------------------
    def accept(self):
        """Accept the upgrade request seen in ``opened`` (server side)."""
        response = self.proto.accept(self.request)
        self.proto.send_response(response)
        self._flush()
        self._check_fast()
        return response.status_code == 101

    def reject(self, status: int, text: str):
        response = self.proto.reject(status, text)
        self.proto.send_response(response)
        self._flush()
        self.transport.close()


def server_protocol(loop=None, write_limit: int = 256 << 10) -> WebSocket:
    return WebSocket(_Server(max_size=MAX_MESSAGE), loop=loop, write_limit=write_limit)


async def connect(url: str, ssl_context=None, timeout: float = 10.0, write_limit: int = 256 << 10,
                  headers=None) -> WebSocket:
    """Open a client WebSocket to ``url`` and wait for the handshake."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    parts = urlsplit(url)
    protocol = _Client(uri, max_size=MAX_MESSAGE)
    if headers:  # extra request headers (e.g. Authorization)
        connect_request = protocol.connect

        def connect_with_headers():
            request = connect_request()
            for key, value in headers.items():
                request.headers[key] = value
            return request
        protocol.connect = connect_with_headers
    ws = WebSocket(protocol, loop=loop, write_limit=write_limit)
    ssl = ssl_context if uri.secure else None
    async with asyncio.timeout(timeout):
        await loop.create_connection(lambda: ws, parts.hostname, uri.port, ssl=ssl,
                                     server_hostname=parts.hostname if ssl else None)
        await ws.opened
    return ws
