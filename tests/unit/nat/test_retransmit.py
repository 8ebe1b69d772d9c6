"""The exchange NAT-PMP and PCP share, on a fake clock: when it sends (250 ms first wait, doubling, until
the timeout), what it ignores (another address, another port, what the parser refuses), and how its errors
name the protocol and the result."""

from __future__ import annotations

from typing import ClassVar

import pytest
from higgs_nat import natpmp, pcp, retransmit

GATEWAY = ("192.0.2.1", 5351)


class ToyError(retransmit.GatewayError):
    protocol = "TOY"
    results: ClassVar[dict] = {0: "success", 2: "refused here"}


def parse(data):
    """b"ok" and a result code, else ValueError (junk)."""
    if len(data) != 3 or data[:2] != b"ok":
        raise ValueError("junk")
    return {"result": data[2]}


class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


class FakeSocket:
    """``arrivals``: (time, datagram, source) readable from that time on; ``refused``: "send" (from the second
    send on) or "recv" raises the ICMP port unreachable a connected socket reports."""

    def __init__(self, clock, arrivals=(), refused=None):
        self.clock, self.arrivals, self.refused = clock, sorted(arrivals), refused
        self.sent, self.sizes = [], []

    def sendto(self, data, address):
        if self.refused == "send" and self.sent:
            raise ConnectionRefusedError
        self.sent.append((self.clock.now, data, address))

    def recvfrom(self, size):
        self.sizes.append(size)
        if self.refused == "recv":
            raise ConnectionRefusedError
        _, data, source = self.arrivals.pop(0)
        return data, source

    def select(self, readers, writers, errors, timeout):
        """select.select on the fake clock: ready at the next arrival, or the clock moves by ``timeout``."""
        if self.arrivals and self.arrivals[0][0] <= self.clock.now + timeout:
            self.clock.now = max(self.clock.now, self.arrivals[0][0])
            return readers, [], []
        self.clock.now += timeout
        return [], [], []


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(retransmit, "time", clock)
    return clock


def run(clock, monkeypatch, arrivals=(), refused=None, **kwargs):
    sock = FakeSocket(clock, arrivals, refused)
    monkeypatch.setattr(retransmit, "select", sock)
    try:
        return sock, retransmit.exchange(sock, *GATEWAY, b"request", parse, ToyError, 100, **kwargs)
    except ToyError as exc:
        return sock, exc


def test_retransmits_after_doubling_waits_until_the_timeout(clock, monkeypatch):
    sock, got = run(clock, monkeypatch, timeout=2.0)
    assert [when for when, _, _ in sock.sent] == pytest.approx([0, 0.25, 0.75, 1.75])
    assert all(data == b"request" and address == GATEWAY for _, data, address in sock.sent)
    assert str(got) == "TOY: no answer from 192.0.2.1:5351"
    assert clock.now == pytest.approx(2.0)


def test_first_wait_and_timeout_are_the_callers(clock, monkeypatch):
    sock, got = run(clock, monkeypatch, timeout=1.0, first_wait=0.1)
    assert [when for when, _, _ in sock.sent] == pytest.approx([0, 0.1, 0.3, 0.7])
    assert isinstance(got, ToyError)


def test_a_late_answer_after_retransmissions(clock, monkeypatch):
    sock, got = run(clock, monkeypatch, [(0.5, b"ok\0", GATEWAY)])
    assert got == {"result": 0}
    assert [when for when, _, _ in sock.sent] == pytest.approx([0, 0.25])


def test_ignores_another_sender_another_port_and_junk(clock, monkeypatch):
    arrivals = [(0.1, b"ok\x02", ("192.0.2.9", 5351)),     # another address (its result would be an error)
                (0.1, b"ok\x02", ("192.0.2.1", 5352)),     # another port
                (0.1, b"junk", GATEWAY),
                (0.1, b"ok\x02\x00", GATEWAY),             # too long: the parser refuses it
                (0.2, b"ok\0", GATEWAY)]
    sock, got = run(clock, monkeypatch, arrivals)
    assert got == {"result": 0}
    assert len(sock.sent) == 1 and sock.sizes == [100] * 5 and not sock.arrivals


@pytest.mark.parametrize(("code", "message"), [(2, "TOY: refused here (result 2)"), (99, "TOY: error (result 99)")])
def test_a_result_code_is_an_error_naming_it(clock, monkeypatch, code, message):
    sock, got = run(clock, monkeypatch, [(0.1, b"ok" + bytes([code]), GATEWAY), (0.2, b"ok\0", GATEWAY)])
    assert isinstance(got, ToyError) and str(got) == message
    assert len(sock.arrivals) == 1     # the error is raised at the first answer


@pytest.mark.parametrize("where", ["send", "recv"])
def test_port_unreachable_says_no_server(clock, monkeypatch, where):
    _, got = run(clock, monkeypatch, [(0.3, b"ok\0", GATEWAY)], refused=where)
    assert isinstance(got, ToyError) and str(got) == "TOY: no TOY server on 192.0.2.1:5351"
    assert got.__cause__ is None and got.__suppress_context__


@pytest.mark.parametrize(("error", "protocol"), [(natpmp.NatPmpError, "NAT-PMP"), (pcp.PcpError, "PCP")])
def test_the_protocols_errors_name_them_and_their_results(error, protocol):
    assert issubclass(error, retransmit.GatewayError) and error.protocol == protocol
    assert error.results[2].startswith("not authorized")
