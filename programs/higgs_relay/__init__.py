"""Higgs.net relay: the BosonServer protocol, version 2 (docs/relay-protocol.md), in one package.

Programs: ``connector`` (the node connector, carrying WireGuard datagrams between
a relay and the node; ``python3 -m higgs_relay``), ``server`` (the collection's
relay: REST control plane and WebSocket relay on one port) and ``client`` (the
client-side connector: a local UDP port for wg-quick's Endpoint, carried to a
relay over one WebSocket).  They share the modules ``framing`` (wire format,
protocol versions 1 and 2), ``backoff``, ``config``, ``wsio`` (asyncio driver of
the websockets Sans-I/O protocol), ``udp`` (burst reads of datagram sockets),
``rest`` (control plane) and ``metrics`` (counters, health and Prometheus
endpoint).  Only the standard library and Debian's python3-websockets are used;
python3-uvloop is used when present.
"""

__version__ = "1.0.0"
