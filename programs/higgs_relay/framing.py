"""Wire format of the relay's binary and text frames (docs/relay-protocol.md).

Version 1 (reference BosonServer): a binary frame is one WireGuard datagram,
or a batch ``count:u16be`` (2..99) followed by ``count`` times ``len:u16be,
datagram``.  A WireGuard message starts with its type (1..4) and three zero
bytes, so its first two bytes read as a u16 of at least 0x0100 and a single
datagram never looks like a batch.

Version 2 (this collection's relay), node socket only: every binary frame, in
both directions, is ``session:u32be`` followed by a version-1 frame whose
datagrams all belong to that session.  Client sockets stay version 1.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct

BATCH_MIN = 2
BATCH_MAX = 99
MAX_DATAGRAM = 0xFFFF
TAG = struct.Struct(">I")
U16 = struct.Struct(">H")
SESSION_MAX = 0xFFFFFFFF


class FrameError(ValueError):
    """A frame that does not follow the wire format."""


def is_batch(frame) -> bool:
    """The discrimination rule: first two bytes, big endian, between 2 and 99."""
    return len(frame) >= 2 and BATCH_MIN <= ((frame[0] << 8) | frame[1]) <= BATCH_MAX


def encode_batch(datagrams) -> bytes:
    """``count:u16be`` then ``len:u16be, datagram`` for each of 2..99 datagrams."""
    count = len(datagrams)
    if not BATCH_MIN <= count <= BATCH_MAX:
        raise FrameError("a batch holds 2 to 99 datagrams, not %d" % count)
    parts = [U16.pack(count)]
    for datagram in datagrams:
        size = len(datagram)
        if not 0 < size <= MAX_DATAGRAM:
            raise FrameError("datagram of %d bytes cannot be batched" % size)
        parts += (U16.pack(size), datagram)
    return b"".join(parts)


def encode(datagrams) -> bytes:
    """One frame for one or more datagrams: the datagram itself, or a batch."""
    if len(datagrams) == 1:
        datagram = datagrams[0]
        if is_batch(datagram) or not datagram:
            raise FrameError("a datagram that reads as a batch must be sent in a batch")
        return bytes(datagram)
    return encode_batch(datagrams)


def decode(frame) -> list:
    """Datagrams of a version-1 frame (memoryview slices; no copy).

    Raises FrameError for a truncated batch, trailing bytes, an empty entry or
    an empty frame.
    """
    view = memoryview(frame)
    size = len(view)
    if size == 0:
        raise FrameError("empty frame")
    if not is_batch(view):
        return [view]
    count = (view[0] << 8) | view[1]
    out = []
    pos = 2
    for index in range(count):
        if pos + 2 > size:
            raise FrameError("batch truncated at entry %d of %d" % (index + 1, count))
        length = (view[pos] << 8) | view[pos + 1]
        pos += 2
        if length == 0 or pos + length > size:
            raise FrameError("batch entry %d has a bad length %d" % (index + 1, length))
        out.append(view[pos:pos + length])
        pos += length
    if pos != size:
        raise FrameError("%d stray bytes after a batch of %d" % (size - pos, count))
    return out


def tag(session: int, frame: bytes) -> bytes:
    """Version-2 node frame: session number, then a version-1 frame."""
    return TAG.pack(session) + frame


def untag(frame):
    """(session, version-1 frame) of a version-2 node frame."""
    if len(frame) < 5:
        raise FrameError("tagged frame of %d bytes is too short" % len(frame))
    view = memoryview(frame)
    return TAG.unpack_from(view)[0], view[4:]


def pack(datagrams, max_count: int = BATCH_MAX, max_bytes: int = 65536, batch: bool = True, prefix: bytes = b""):
    """(frames, rejected) for a run of datagrams of one session.

    Datagrams are grouped into batches of at most ``max_count`` entries and
    ``max_bytes`` bytes (a single datagram is sent as it is).  Without
    batching every datagram is its own frame.  A datagram that is empty,
    longer than 65535 bytes, or would read as a batch on its own (never a
    WireGuard message) is rejected and counted, not sent.  Every frame starts
    with ``prefix`` (the version-2 session tag), joined in the same copy.
    """
    frames = []
    rejected = 0
    limit = max(1, min(max_count, BATCH_MAX)) if batch else 1
    pack16 = U16.pack
    parts = []      # the frame being built: prefix, count, then length and datagram for each
    count = used = 0
    for datagram in datagrams:
        size = len(datagram)
        if not 0 < size <= MAX_DATAGRAM or (limit == 1 and is_batch(datagram)):
            rejected += 1
            continue
        if count and (count >= limit or used + size + 2 > max_bytes):
            rejected += _close(parts, count, frames)
            count = 0
        if not count:
            parts = [prefix, b""]
            used = 2
        parts += (pack16(size), datagram)
        count += 1
        used += size + 2
    if count:
        rejected += _close(parts, count, frames)
    return frames, rejected


def _close(parts, count, frames) -> int:
    """Append the frame of ``parts`` (one copy of each datagram); 1 if it had to be rejected."""
    if count > 1:
        parts[1] = U16.pack(count)
        frames.append(b"".join(parts))
    elif is_batch(parts[3]):
        return 1
    else:
        frames.append(parts[0] + parts[3])
    return 0


# Text (control) frames ------------------------------------------------------

def control(action: str, session_id: str = "", direction: str = "node", **payload) -> str:
    """A control text frame as the reference server writes them."""
    body = {"action": action}
    body.update(payload)
    return json.dumps({"type": "control", "sessionId": session_id, "direction": direction,
                       "payload": body}, separators=(",", ":"))


def parse_text(text, max_size: int = 65536) -> dict:
    """A text frame as a dict; unwraps ``{"compressed": true, "data": <base64 gzip>}``.

    Raises FrameError when it is not a JSON object (or inflates beyond max_size).
    """
    try:
        message = json.loads(text)
        if isinstance(message, dict) and message.get("compressed") is True:
            raw = base64.b64decode(message.get("data") or "", validate=True)
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                inner = stream.read(max_size + 1)
            if len(inner) > max_size:
                raise FrameError("compressed control frame inflates beyond %d bytes" % max_size)
            message = json.loads(inner)
    except (ValueError, OSError, EOFError) as exc:
        raise FrameError("text frame is not a JSON control message: %s" % exc) from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("text frame is not a JSON object with a type")
    payload = message.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise FrameError("control payload is not an object")
    return message


def compress(text: str) -> str:
    """The gzip-compressed form of a control frame."""
    data = base64.b64encode(gzip.compress(text.encode())).decode()
    return json.dumps({"type": "control", "compressed": True, "data": data}, separators=(",", ":"))
