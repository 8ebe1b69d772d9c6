"""Wire format: batch round trips, the batch/single rule, malformed frames, control frames."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest
import yaml
from higgs_relay import framing

CASES = yaml.safe_load((Path(__file__).parent / "framing_cases.yml").read_text())


def _hex(text):
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("case", CASES["decode"], ids=lambda c: c["name"])
def test_decode(case):
    frame = _hex(case["frame"]) + _hex(case.get("repeat_entry", "")) * case.get("repeat", 0)
    if "error" in case:
        with pytest.raises(framing.FrameError, match=case["error"]):
            framing.decode(frame)
        return
    got = [bytes(d) for d in framing.decode(frame)]
    if "datagrams_count" in case:
        assert len(got) == case["datagrams_count"]
    else:
        assert got == [_hex(d) for d in case["datagrams"]]


@pytest.mark.parametrize("kind", [1, 2, 3, 4])
def test_wireguard_messages_never_read_as_batches(kind):
    for size in (32, 92, 148, 1452):
        assert not framing.is_batch(bytes([kind, 0, 0, 0]) + os.urandom(size - 4))


def test_batch_round_trip_random():
    rng = random.Random(7)
    for _ in range(200):
        count = rng.randint(2, 99)
        datagrams = [bytes([4, 0, 0, 0]) + rng.randbytes(rng.randint(1, 1500)) for _ in range(count)]
        frame = framing.encode_batch(datagrams)
        assert framing.is_batch(frame)
        assert [bytes(d) for d in framing.decode(frame)] == datagrams


def test_batch_limits():
    with pytest.raises(framing.FrameError):
        framing.encode_batch([b"\x04\0\0\0"])
    with pytest.raises(framing.FrameError):
        framing.encode_batch([b"\x04\0\0\0"] * 100)
    with pytest.raises(framing.FrameError):
        framing.encode_batch([b"\x04\0\0\0", b""])


def test_pack_groups_within_limits_and_round_trips():
    datagrams = [bytes([4, 0, 0, 0]) + bytes([i]) * 1000 for i in range(70)]
    frames, rejected = framing.pack(datagrams, max_count=32, max_bytes=16384)
    assert rejected == 0
    assert all(len(f) <= 16384 for f in frames)
    assert [bytes(d) for f in frames for d in framing.decode(f)] == datagrams
    assert len(frames) == 5  # 16 datagrams of 1006 bytes fit 16384


def test_pack_without_batching_sends_each_datagram_alone():
    datagrams = [b"\x04\0\0\0a", b"\x01\0\0\0b"]
    frames, rejected = framing.pack(datagrams, batch=False)
    assert frames == datagrams and rejected == 0


def test_pack_rejects_what_cannot_be_framed():
    frames, rejected = framing.pack([b"\x00\x05junk", b"", b"\x04\0\0\0ok"], batch=False)
    assert frames == [b"\x04\0\0\0ok"] and rejected == 2
    # inside a batch a datagram that looks like a batch is fine
    frames, rejected = framing.pack([b"\x00\x05junk", b"\x04\0\0\0ok"])
    assert rejected == 0 and [bytes(d) for d in framing.decode(frames[0])] == [b"\x00\x05junk", b"\x04\0\0\0ok"]
    # ...but not alone
    frames, rejected = framing.pack([b"\x00\x05junk"])
    assert frames == [] and rejected == 1


def test_pack_with_the_session_tag():
    datagrams = [bytes([4, 0, 0, 0]) + bytes([i]) * 700 for i in range(7)]
    for batch, count in ((True, 3), (False, 1)):
        frames, rejected = framing.pack(datagrams, max_count=count, batch=batch, prefix=framing.TAG.pack(9))
        assert rejected == 0 and len(frames) == (3 if batch else 7)
        untagged = [framing.untag(f) for f in frames]
        assert {session for session, _ in untagged} == {9}
        assert [bytes(d) for _, payload in untagged for d in framing.decode(payload)] == datagrams


def test_version_2_tag_round_trip():
    frame = framing.tag(0xDEADBEEF, framing.encode_batch([b"\x04\0\0\0a", b"\x04\0\0\0b"]))
    session, payload = framing.untag(frame)
    assert session == 0xDEADBEEF
    assert [bytes(d) for d in framing.decode(payload)] == [b"\x04\0\0\0a", b"\x04\0\0\0b"]
    with pytest.raises(framing.FrameError):
        framing.untag(b"\0\0\0\1")


def test_random_garbage_never_crashes():
    rng = random.Random(11)
    for _ in range(5000):
        frame = rng.randbytes(rng.randint(0, 64))
        with contextlib.suppress(framing.FrameError):
            framing.decode(frame[4:] if len(frame) > 4 else frame)


@pytest.mark.parametrize("text, error", [
    ("not json", "not a JSON"),
    ("[1, 2]", "object with a type"),
    ('{"type": "control", "payload": 3}', "payload is not an object"),
    ('{"type": "control", "compressed": true, "data": "!!"}', "not a JSON"),
])
def test_bad_text_frames(text, error):
    with pytest.raises(framing.FrameError, match=error):
        framing.parse_text(text)


def test_control_frames_plain_and_compressed():
    text = framing.control("connected", "abc", "server", protocol=2)
    message = framing.parse_text(text)
    assert message == {"type": "control", "sessionId": "abc", "direction": "server",
                       "payload": {"action": "connected", "protocol": 2}}
    assert framing.parse_text(framing.compress(text)) == message


def test_compressed_bomb_is_refused():
    import base64
    import gzip
    import json
    data = base64.b64encode(gzip.compress(b" " * 200000)).decode()
    with pytest.raises(framing.FrameError, match="inflates"):
        framing.parse_text(json.dumps({"type": "control", "compressed": True, "data": data}))
