"""The send queue both connectors use: its bound (queue_size items, the oldest dropped and counted queue_full),
one flush scheduled at a time, at most SLICE items a flush, nothing taken while the socket is paused, closed or
absent (the drain callback starts it again), and what waits at the close dropped as not_connected."""

from __future__ import annotations

import pytest
from higgs_relay import config, metrics, sendqueue


class Loop:
    """call_soon collects; run() runs what was scheduled, as one turn of the event loop would."""

    def __init__(self):
        self.ready = []

    def call_soon(self, callback):
        self.ready.append(callback)

    def run(self):
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class Socket:
    """A WebSocket whose write buffer pauses it at ``limit`` bytes (as the transport's pause_writing does)."""

    def __init__(self, limit=1 << 30):
        self.is_open, self.paused, self.limit = True, False, limit
        self.frames, self.buffered = [], 0

    def send_binary_many(self, frames):
        self.frames.extend(frames)
        written = sum(len(f) + 2 for f in frames)
        self.buffered += written
        self.paused = self.buffered >= self.limit
        return written

    def drain(self, queue):
        self.buffered, self.paused = 0, False
        queue.schedule()   # the connector's on_drain


def make(size=16, ws=None):
    loop, m, packed = Loop(), metrics.Metrics(), []
    holder = {"ws": ws}

    def pack(items):
        packed.append(list(items))
        return [bytes(item) for item in items]   # one frame an item

    queue = sendqueue.SendQueue(loop, size, m, lambda: holder["ws"], pack)
    return queue, loop, m, packed, holder


def datagrams(first, count):
    return [b"%d" % i for i in range(first, first + count)]


def test_the_bound_is_the_configured_queue_size():
    assert config.Config.__dataclass_fields__["queue_size"].default == 2048
    queue = make(size=2048)[0]
    queue.extend(datagrams(0, 2049))
    assert len(queue) == 2048 and queue.metrics.drops["queue_full"] == 1


def test_overflow_drops_the_oldest_and_counts_them():
    queue, _, m, _, _ = make(size=16)
    queue.extend(datagrams(0, 16))
    assert len(queue) == 16 and m.drops["queue_full"] == 0          # full, nothing dropped
    queue.extend(datagrams(16, 5))
    assert m.drops["queue_full"] == 5 and list(queue.items) == datagrams(5, 16)
    queue.extend(datagrams(21, 40))                                  # more than the bound at once
    assert m.drops["queue_full"] == 45 and list(queue.items) == datagrams(45, 16)


def test_one_flush_is_scheduled_at_a_time():
    queue, loop, _, packed, holder = make(ws=Socket())
    queue.extend(datagrams(0, 3))
    queue.extend(datagrams(3, 3))
    assert len(loop.ready) == 1 and not packed
    loop.run()
    assert packed == [datagrams(0, 6)] and holder["ws"].frames == datagrams(0, 6) and not loop.ready
    assert len(queue) == 0 and queue.metrics.queue_depth == 0


def test_a_flush_takes_at_most_a_slice_and_counts_what_it_wrote():
    assert sendqueue.SLICE == 4096
    ws = Socket()
    queue, loop, m, packed, _ = make(size=3 * sendqueue.SLICE, ws=ws)
    queue.extend(datagrams(0, sendqueue.SLICE + 10))
    loop.run()
    assert [len(p) for p in packed] == [sendqueue.SLICE] and m.queue_depth == 10 and len(loop.ready) == 1
    loop.run()
    assert [len(p) for p in packed] == [sendqueue.SLICE, 10] and m.queue_depth == 0 and not loop.ready
    assert ws.frames == datagrams(0, sendqueue.SLICE + 10)
    assert m.frames_to_relay == sendqueue.SLICE + 10
    assert m.bytes_to_relay == sum(len(f) + 2 for f in ws.frames)


def test_nothing_is_taken_while_the_socket_is_paused_until_it_drains():
    ws = Socket(limit=40)
    queue, loop, m, packed, _ = make(size=3 * sendqueue.SLICE, ws=ws)
    queue.extend(datagrams(0, sendqueue.SLICE + 10))
    loop.run()                       # the write pauses the socket: no further flush is scheduled
    assert ws.paused and len(packed) == 1 and not loop.ready and m.queue_depth == 10
    queue.extend(datagrams(sendqueue.SLICE + 10, 5))
    loop.run()                       # paused: nothing taken, the depth reported
    assert len(packed) == 1 and len(queue) == 15 and m.queue_depth == 15
    ws.drain(queue)
    loop.run()
    assert len(packed) == 2 and len(queue) == 0 and ws.frames == datagrams(0, sendqueue.SLICE + 15)


@pytest.mark.parametrize("state", ["absent", "closed"])
def test_nothing_is_taken_without_an_open_socket(state):
    ws = Socket()
    ws.is_open = False
    queue, loop, m, packed, _ = make(ws=None if state == "absent" else ws)
    queue.extend(datagrams(0, 20))
    loop.run()
    assert not packed and len(queue) == 16 and m.queue_depth == 16 and m.drops["queue_full"] == 4


def test_discard_drops_what_waits_as_not_connected():
    queue, _, m, _, _ = make()
    queue.extend(datagrams(0, 7))
    m.queue_depth = 7
    queue.discard()
    assert len(queue) == 0 and m.drops["not_connected"] == 7 and m.queue_depth == 0
    queue.discard()
    assert m.drops["not_connected"] == 7
