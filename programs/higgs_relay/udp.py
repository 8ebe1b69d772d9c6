"""Datagram sockets read in bursts: one wake-up drains up to ``burst`` datagrams.

asyncio's datagram transports read one datagram per event-loop iteration;
reading the socket directly from an ``add_reader`` callback until it would
block costs one wake-up per burst instead.
"""

from __future__ import annotations

import contextlib
import socket


def open_socket(host: str, port: int = 0, peer=None, buffer_size: int = 1 << 20) -> socket.socket:
    """A non-blocking UDP socket bound to host:port, connected to ``peer`` if given."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
        sock.bind((host, port))
        if peer is not None:
            sock.connect(peer)
    except OSError:
        sock.close()
        raise
    return sock


def probe(host: str, port: int, timeout: float = 0.3) -> str:
    """'' when something listens on UDP host:port, else the reason.

    Sends one byte (WireGuard ignores messages that short) on a connected
    socket: a closed port answers with ICMP port unreachable, which the
    kernel reports as ECONNREFUSED on the next receive.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.send(b"\0")
            sock.recv(16)
        except ConnectionRefusedError:
            return "nothing listens on UDP %s:%d (is WireGuard up?)" % (host, port)
        except TimeoutError:
            return ""
        except OSError as exc:
            return "UDP %s:%d: %s" % (host, port, exc.strerror or exc)
    return ""
