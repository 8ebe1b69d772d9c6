"""The datagrams the connectors (node side and client side) have read from WireGuard and not yet sent.

One event loop, no locks.  The queue holds at most ``size`` items (the
connector's ``queue_size``); beyond that the oldest are dropped and counted
as ``queue_full``.  A flush runs from the loop (``schedule``), takes at most
SLICE items, hands them to the owner's ``pack`` (items -> frames) and writes
the frames to the owner's WebSocket; while the socket is paused (its write
buffer is over its limit) nothing is taken, and the socket's drain callback
starts the flushing again.  What remains when the socket closes is dropped
as ``not_connected`` (``discard``).
"""

from __future__ import annotations

import collections

SLICE = 4096   # items taken by one flush: the loop serves others between slices


class SendQueue:
    """``socket()`` returns the owner's WebSocket (or None); ``pack(items)`` returns the frames to send."""

    def __init__(self, loop, size: int, metrics, socket, pack):
        self.items = collections.deque(maxlen=size)
        self.loop = loop
        self.metrics = metrics
        self.socket = socket
        self.pack = pack
        self.pending = False

    def __len__(self) -> int:
        return len(self.items)

    def extend(self, items: list) -> None:
        """Queue ``items`` (the oldest dropped beyond the bound) and schedule a flush."""
        queue = self.items
        before = len(queue)
        queue.extend(items)
        overflow = before + len(items) - queue.maxlen   # the deque dropped its oldest
        if overflow > 0:
            self.metrics.drop("queue_full", overflow)
        self.schedule()

    def schedule(self) -> None:
        if not self.pending:
            self.pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.pending = False
        ws = self.socket()
        queue = self.items
        m = self.metrics
        if ws is None or not ws.is_open or ws.paused or not queue:
            m.queue_depth = len(queue)
            return
        popleft = queue.popleft
        frames = self.pack([popleft() for _ in range(min(len(queue), SLICE))])
        m.bytes_to_relay += ws.send_binary_many(frames)
        m.frames_to_relay += len(frames)
        m.queue_depth = len(queue)
        if queue and not ws.paused:
            self.schedule()

    def discard(self) -> None:
        """Drop what waits (the socket closed), counted as not_connected."""
        dropped = len(self.items)
        if dropped:
            self.metrics.drop("not_connected", dropped)
            self.items.clear()
        self.metrics.queue_depth = 0
