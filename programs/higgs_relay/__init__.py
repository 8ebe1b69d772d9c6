"""Higgs.net relay connector: carries WireGuard datagrams between a relay and the node.

Modules: ``framing`` (wire format, protocol versions 1 and 2), ``backoff``,
``config``, ``wsio`` (asyncio driver of the websockets Sans-I/O protocol),
``udp`` (burst reads of datagram sockets), ``rest`` (control plane),
``metrics`` (counters, health and Prometheus endpoint), ``connector`` (the
daemon).  Only the standard library and Debian's python3-websockets are used;
python3-uvloop is used when present.
"""

__version__ = "1.0.0"
