"""The request/answer exchange NAT-PMP (RFC 6886 3.1) and PCP (RFC 6887 8.1.1) share.

The request is sent to the gateway and sent again after waits that double
(250 ms first) until the timeout.  A datagram from another address or port,
or one the protocol's parser refuses (ValueError: junk, an answer to another
request), is ignored; an answer with a non-zero result code is an error that
names the result.
"""

from __future__ import annotations

import select
import time
from typing import ClassVar


class GatewayError(Exception):
    """The router refused (result code), does not speak the protocol, or did not answer.

    A protocol's subclass names the protocol (``protocol``) and its result codes (``results``).
    """

    protocol: ClassVar[str] = "gateway"
    results: ClassVar[dict] = {}


def exchange(sock, gateway: str, port: int, request: bytes, parse, error: type[GatewayError], size: int,
             timeout: float = 2.0, first_wait: float = 0.25) -> dict:
    """Send ``request`` to ``gateway``:``port`` on the UDP ``sock`` until ``parse`` accepts an answer.

    ``parse(datagram)`` returns the answer (a dict with "result") or raises
    ValueError; at most ``size`` bytes of a datagram are read.  Raises
    ``error`` for a non-zero result, when nothing answered by ``timeout``, or
    when the gateway's ICMP says nothing listens on the port (reported only
    on a connected socket).
    """
    deadline = time.monotonic() + timeout
    wait = first_wait
    name = error.protocol
    while time.monotonic() < deadline:
        try:
            sock.sendto(request, (gateway, port))
        except ConnectionRefusedError:    # the ICMP port unreachable of an earlier send
            raise error("%s: no %s server on %s:%d" % (name, name, gateway, port)) from None
        until = min(deadline, time.monotonic() + wait)
        while True:
            left = until - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                data, source = sock.recvfrom(size)
            except ConnectionRefusedError:    # ICMP port unreachable: nothing listens on the port
                raise error("%s: no %s server on %s:%d" % (name, name, gateway, port)) from None
            if source[0] != gateway or source[1] != port:
                continue
            try:
                answer = parse(data)
            except ValueError:
                continue
            if answer["result"] != 0:
                code = answer["result"]
                raise error("%s: %s (result %d)" % (name, error.results.get(code, "error"), code))
            return answer
        wait *= 2
    raise error("%s: no answer from %s:%d" % (name, gateway, port))
