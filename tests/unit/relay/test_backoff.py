"""Reconnect schedule: exponential growth, cap, equal jitter, reset, Retry-After."""

from __future__ import annotations

import random

import pytest
from higgs_relay.backoff import Backoff, retry_after


def test_schedule_doubles_up_to_the_cap():
    pause = Backoff(base=0.5, cap=30.0)
    assert [pause.ceiling(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert pause.ceiling(10_000) == 30.0


def test_jitter_stays_within_half_and_full_ceiling():
    pause = Backoff(base=0.5, cap=30.0, rng=random.Random(3))
    delays = [pause.next() for _ in range(12)]
    for n, delay in enumerate(delays, start=1):
        top = pause.ceiling(n)
        assert top / 2 <= delay <= top
    assert len({round(d, 6) for d in delays[7:]}) > 1   # jittered, not constant at the cap


def test_reset_starts_over():
    pause = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    for _ in range(6):
        pause.next()
    pause.reset()
    assert 0.5 <= pause.next() <= 1.0


@pytest.mark.parametrize("args", [(0, 1), (2, 1), (1, 2, 0.5)])
def test_bad_parameters(args):
    with pytest.raises(ValueError):
        Backoff(*args)


@pytest.mark.parametrize("header, expected", [
    ("120", 120.0), (None, 60.0), ("", 60.0), ("soon", 60.0), ("99999", 900.0),
    ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
])
def test_retry_after(header, expected):
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert retry_after(header, now=now) == expected
