"""A scriptable stand-in for the reference BosonServer, for connector tests on loopback.

It answers like the reference (docs: /work/shared/boson-protocol.md): register
201 with a token, heartbeat 200 with ``nextHeartbeat`` (even for a node it has
forgotten), metrics checked against the reference's required shape (400 with
the validation message otherwise), DELETE 200, and a node socket that speaks
protocol 1 (a ``connected`` control frame without a protocol number).  Tests
change ``answers`` (status, body, headers per request kind), read
``requests`` and drive the node socket (``sockets``).  It runs on the test's
event loop: the connector's REST calls run in threads.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from higgs_relay import framing, wsio

NUMBER = (int, float)
KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="   # a node's WireGuard public key


def registration(node_id, max_connections):
    """A registration body of the reference's shape (POST /api/v1/nodes/register)."""
    return {"nodeId": node_id, "publicKey": KEY,
            "networkInfo": {"ipv4": "192.0.2.1", "ipv6": None, "natType": "Symmetric", "stunMappedAddress": None,
                            "localPort": 51820},
            "capabilities": {"maxConnections": max_connections, "bandwidth": {"up": 10, "down": 10},
                             "routing": True, "natting": True},
            "location": {"country": "DE", "region": "lab", "coordinates": [52.5, 13.4]}}


def reference_metrics_problem(body):
    """The reference's validation of POST /api/v1/metrics: every key required, numbers in range."""
    def number(value, low=0, high=None):
        return isinstance(value, NUMBER) and not isinstance(value, bool) and value >= low and (
            high is None or value <= high)

    def integer(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    try:
        m = body["metrics"]
        net, system, wg, conn = m["network"], m["system"], m["wireguard"], m["connections"]
        checks = {
            "nodeId": isinstance(body["nodeId"], str),
            "network.latency": number(net["latency"]), "network.jitter": number(net["jitter"]),
            "network.packetLoss": number(net["packetLoss"], 0, 100),
            "network.bandwidth": number(net["bandwidth"]["up"]) and number(net["bandwidth"]["down"]),
            "system.cpuUsage": number(system["cpuUsage"], 0, 100),
            "system.memoryUsage": number(system["memoryUsage"], 0, 100),
            "system.diskUsage": number(system["diskUsage"], 0, 100),
            "system.loadAverage": number(system["loadAverage"]),
            "wireguard.packets": all(integer(wg["packets"][k]) for k in ("sent", "received", "errors")),
            "wireguard.bytes": all(integer(wg["bytes"][k]) for k in ("sent", "received")),
            "connections": all(integer(conn[k]) for k in ("active", "total", "failed")),
        }
    except (KeyError, TypeError) as exc:
        return "Required: %s" % exc
    bad = [key for key, ok in checks.items() if not ok]
    return "Invalid: %s" % ", ".join(bad) if bad else None


class FakeBoson:
    def __init__(self):
        self.requests = []        # (kind, method, path, headers, body)
        self.answers = {}         # kind -> (status, body, headers); kinds: register, heartbeat, metrics, delete
        self.next_heartbeat = 30
        self.actions = []
        self.expires_in = 86400.0
        self.sockets = []         # node sockets, newest last
        self.frames = []          # binary frames the node sent
        self.server = None
        self.port = 0

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def count(self, kind):
        return sum(1 for r in self.requests if r[0] == kind)

    async def start(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self):
        for ws in self.sockets:
            ws.abort()
        self.server.close()

    def answer(self, kind, method, path, headers, body):
        self.requests.append((kind, method, path, headers, body))
        if kind in self.answers:
            return self.answers[kind]
        if kind == "register":
            return 201, {"nodeId": body.get("nodeId"), "status": "registered", "relayServers": [],
                         "stunServers": [], "sessionToken": "t%d" % len(self.requests),
                         "expiresAt": int((time.time() + self.expires_in) * 1000)}, {}
        if kind == "heartbeat":
            return 200, {"status": "ok", "nextHeartbeat": self.next_heartbeat, "actions": self.actions}, {}
        if kind == "metrics":
            problem = reference_metrics_problem(body)
            if problem:
                return 400, {"error": {"message": problem, "statusCode": 400}}, {}
            return 200, {"status": "ok"}, {}
        if kind == "delete":
            return 200, {"status": "unregistered"}, {}
        return 404, {"error": {"message": "Not found", "statusCode": 404}}, {}


def _kind(method, path):
    if method == "POST" and path == "/api/v1/nodes/register":
        return "register"
    if method == "POST" and re.fullmatch(r"/api/v1/nodes/[^/]+/heartbeat", path):
        return "heartbeat"
    if method == "DELETE" and re.fullmatch(r"/api/v1/nodes/[^/]+", path):
        return "delete"
    if method == "POST" and path == "/api/v1/metrics":
        return "metrics"
    return "other"


class _Connection(asyncio.Protocol):
    def __init__(self, fake):
        self.fake = fake
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() == "websocket":
            self.upgrade()
            return
        length = int(headers.get("content-length") or 0)
        if len(self.buffer) < end + 4 + length:
            return
        raw = self.buffer[end + 4:end + 4 + length]
        body = json.loads(raw) if raw else None
        status, answer, extra = self.fake.answer(_kind(method, path), method, path, headers, body)
        data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        head = "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % (
            status, len(data))
        head += "".join("%s: %s\r\n" % item for item in extra.items())
        self.transport.write(head.encode() + b"\r\n" + data)
        self.transport.close()

    def upgrade(self):
        fake = self.fake
        ws = wsio.server_protocol()
        self.transport.set_protocol(ws)
        ws.connection_made(self.transport)
        data, self.buffer = self.buffer, b""
        ws.data_received(data)
        if ws.request is None or not ws.accept():
            ws.abort()
            return
        ws.start(on_binary=lambda frame: fake.frames.append(bytes(frame)))
        fake.sockets.append(ws)
        ws.send_text(framing.control("connected", "", "server"))   # protocol 1: no protocol number
