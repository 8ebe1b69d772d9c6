"""The relay: REST control plane and WebSocket relay on one port, protocol version 2.

    python3 -m boson_relay.server --listen 0.0.0.0:3000

REST (JSON): POST /api/v1/nodes/register, POST /api/v1/nodes/{id}/heartbeat,
DELETE /api/v1/nodes/{id}, POST /api/v1/metrics, POST /api/v1/routing/request,
GET /health, GET /metrics (Prometheus).  WebSocket: /relay/{nodeId} (node
socket, frames tagged with the session number both ways) and
/relay/{sessionId} (client socket, version-1 frames).  Plain HTTP: put a TLS
reverse proxy in front, as BosonServer deployments do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import time
import uuid

from higgs_relay import framing, wsio

log = logging.getLogger("boson-relay")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ONLINE_FOR = 120.0       # a node without heartbeat for this long is offline
SESSION_TTL = 3600.0
MAX_HEAD = 16384
MAX_BODY = 1 << 20


class Node:
    def __init__(self, node_id):
        self.id = node_id
        self.info = {}
        self.seen = 0.0
        self.ws = None
        self.sessions = {}      # number -> Session

    @property
    def online(self):
        return time.monotonic() - self.seen < ONLINE_FOR


class Session:
    def __init__(self, session_id, number, node, client_id):
        self.id = session_id
        self.number = number
        self.node = node
        self.client_id = client_id
        self.ws = None
        self.expires = time.monotonic() + SESSION_TTL


class Relay:
    def __init__(self, args):
        self.args = args
        self.epoch = secrets.token_hex(8)
        self.nodes = {}
        self.sessions = {}
        self.next_number = 1
        self.auth = ""
        if args.auth_token_file:
            with open(args.auth_token_file, encoding="utf-8") as handle:
                self.auth = handle.read().strip()
        self.hits = {}
        self.stats = {"frames_client_to_node": 0, "frames_node_to_client": 0, "bytes_client_to_node": 0,
                      "bytes_node_to_client": 0, "drops_no_route": 0, "drops_backpressure": 0,
                      "drops_malformed": 0, "registrations": 0, "rate_limited": 0, "node_sockets": 0,
                      "client_sockets": 0}

    # REST ------------------------------------------------------------------------
    def limited(self, peer, path):
        """Seconds to wait (Retry-After) when the source is over its rate, else 0.

        A fixed window per source, as express-rate-limit in BosonServer:
        ``--node-rate`` requests to /api/v1/nodes/* per ``--rate-window``
        seconds; requests refused still count.
        """
        if not self.args.node_rate or not path.startswith("/api/v1/nodes"):
            return 0
        now = time.monotonic()
        start, count = self.hits.get(peer, (now, 0))
        if now - start >= self.args.rate_window:
            start, count = now, 0
        self.hits[peer] = (start, count + 1)
        if count < self.args.node_rate:
            return 0
        self.stats["rate_limited"] += 1
        return max(1, math.ceil(start + self.args.rate_window - now))

    def rest(self, method, path, headers, body, peer):
        if path in ("/health", "/health/live", "/health/ready"):
            return 200, {"status": "ok", "nodes": sum(n.online for n in self.nodes.values()),
                         "sessions": len(self.sessions), "protocol": 2}
        wait = self.limited(peer, path)
        if wait:
            return 429, wait
        if method == "POST" and path == "/api/v1/nodes/register":
            return self.register(headers, body)
        match = re.fullmatch(r"/api/v1/nodes/([^/]+)(/heartbeat)?", path)
        if match:
            node = self.nodes.get(match.group(1))
            if not headers.get("authorization", "").startswith("Bearer "):
                return _error(401, "Missing bearer token")
            if method == "POST" and match.group(2):
                if node is not None:
                    node.seen = time.monotonic()
                return 200, {"status": "ok", "nextHeartbeat": self.args.heartbeat, "actions": []}
            if method == "DELETE" and not match.group(2):
                if node is not None:
                    self.forget(node)
                return 200, {"status": "unregistered"}
        if method == "POST" and path == "/api/v1/metrics":
            return 200, {"status": "ok"}
        if method == "POST" and path == "/api/v1/routing/request":
            return self.route(headers, body)
        return _error(404, "Not found")

    def register(self, headers, body):
        if self.auth and headers.get("authorization", "") != "Bearer " + self.auth:
            return _error(401, "Registration needs the relay's bearer token")
        if not isinstance(body, dict):
            return _error(400, "Body must be a JSON object")
        node_id = body.get("nodeId")
        if not isinstance(node_id, str) or not UUID_RE.match(node_id):
            return _error(400, "nodeId must be a lowercase UUID")
        for key in ("publicKey", "networkInfo", "capabilities", "location"):
            if key not in body:
                return _error(400, "%s is required" % key)
        node = self.nodes.get(node_id) or Node(node_id)
        self.nodes[node_id] = node
        node.info = body
        node.seen = time.monotonic()
        self.stats["registrations"] += 1
        servers = [{"id": self.epoch, "host": self.args.public_host, "port": self.args.public_port,
                    "protocol": "websocket"}]
        for other in self.args.announce:
            host, _, port = other.rpartition(":")
            servers.append({"id": other, "host": host.strip("[]"), "port": int(port), "protocol": "websocket"})
        return 200, {
            "nodeId": node_id, "status": "registered",
            "relayServers": servers,
            "stunServers": [], "sessionToken": secrets.token_urlsafe(24),
            "expiresAt": int((time.time() + 86400) * 1000),
        }

    def route(self, headers, body):
        if not isinstance(body, dict) or not isinstance(body.get("targetNodeId"), str):
            return _error(400, "targetNodeId is required")
        node = self.nodes.get(body["targetNodeId"])
        if node is None or not node.online:
            return _error(404, "Node not found or offline")
        session_id = str(uuid.uuid4())
        number = self.next_number
        self.next_number += 1
        session = Session(session_id, number, node, str(body.get("clientId") or ""))
        self.sessions[session_id] = session
        node.sessions[number] = session
        host = headers.get("host") or "%s:%s" % (self.args.public_host, self.args.public_port)
        return 200, {
            "selectedRoute": {"nodeId": node.id, "relayEndpoint": "ws://%s/relay/%s" % (host, session_id)},
            "sessionId": session_id, "sessionToken": secrets.token_urlsafe(24),
            "expiresAt": int((time.time() + SESSION_TTL) * 1000),
        }

    def forget(self, node):
        for session in list(node.sessions.values()):
            self.end_session(session, 1000, "node left")
        if node.ws is not None:   # the socket is no node connection any more, as on a new upgrade
            node.ws.close(1008, "Node not online")
        self.nodes.pop(node.id, None)

    def end_session(self, session, code, reason):
        self.sessions.pop(session.id, None)
        session.node.sessions.pop(session.number, None)
        if session.ws is not None:
            session.ws.close(code, reason)
            session.ws = None
        node_ws = session.node.ws
        if node_ws is not None:
            node_ws.send_text(framing.control("disconnect", session.id, "server", session=session.number))

    # WebSocket -------------------------------------------------------------------
    def upgraded(self, ws, ident):
        node = self.nodes.get(ident)
        if node is not None:
            if not node.online:
                ws.start()
                ws.close(1008, "Node not online")
                return
            self.node_socket(node, ws)
            return
        session = self.sessions.get(ident)
        if session is None or session.expires < time.monotonic():
            ws.start()
            ws.close(1008, "Invalid session")
            return
        self.client_socket(session, ws)

    def node_socket(self, node, ws):
        old = node.ws
        node.ws = ws
        self.stats["node_sockets"] += 1
        if old is not None:
            old.close(1000, "replaced by a newer node socket")
        ws.send_text(framing.control("connected", node.id, "server", protocol=2, relayId=self.epoch))
        for session in node.sessions.values():
            if session.ws is not None:
                ws.send_text(framing.control("connect", session.id, "server", session=session.number))
        stats = self.stats

        def on_binary(data):
            try:
                number, payload = framing.untag(data)
            except framing.FrameError:
                stats["drops_malformed"] += 1
                return
            session = node.sessions.get(number)
            if session is None or session.ws is None:
                stats["drops_no_route"] += 1
                return
            if session.ws.queue_binary(payload):   # a view of the frame: written without a copy
                stats["frames_node_to_client"] += 1
                stats["bytes_node_to_client"] += len(payload)
            else:
                stats["drops_backpressure"] += 1

        def on_close(code, reason):
            if node.ws is ws:   # a late close of an old socket leaves the new one mapped
                node.ws = None
            log.info("node %s socket closed (%s)", node.id, code)

        ws.start(on_binary=on_binary, on_text=lambda text: None, on_close=on_close)
        log.info("node %s connected", node.id)

    def client_socket(self, session, ws):
        old = session.ws
        session.ws = ws
        self.stats["client_sockets"] += 1
        if old is not None:
            old.close(1000, "replaced")
        node = session.node
        ws.send_text(framing.control("connected", session.id, "server", protocol=2))
        if node.ws is not None:
            node.ws.send_text(framing.control("connect", session.id, "server", session=session.number))
        prefix = framing.TAG.pack(session.number)
        stats = self.stats

        def on_binary(data):
            session.expires = time.monotonic() + SESSION_TTL
            target = node.ws
            if target is None:
                stats["drops_no_route"] += 1
                return
            if target.queue_binary(prefix + bytes(data)):
                stats["frames_client_to_node"] += 1
                stats["bytes_client_to_node"] += len(data)
            else:
                stats["drops_backpressure"] += 1

        def on_close(code, reason):
            if session.ws is ws:
                self.end_session(session, 1000, "client left")

        ws.start(on_binary=on_binary, on_text=lambda text: None, on_close=on_close)

    async def heartbeats(self):
        while True:
            await asyncio.sleep(self.args.heartbeat)
            now = int(time.time() * 1000)
            for node in list(self.nodes.values()):
                if node.ws is not None:
                    node.ws.send_text(json.dumps({"type": "heartbeat", "sessionId": node.id, "direction": "server",
                                                  "payload": {"timestamp": now}}))
            stale = time.monotonic()
            for session in [s for s in self.sessions.values() if s.expires < stale]:
                self.end_session(session, 1000, "session expired")

    def prometheus(self):
        lines = []
        for key, value in sorted(self.stats.items()):
            lines.append("# TYPE boson_relay_%s counter" % key)
            lines.append("boson_relay_%s %d" % (key, value))
        lines.append("boson_relay_nodes_online %d" % sum(n.online for n in self.nodes.values()))
        lines.append("boson_relay_sessions %d" % len(self.sessions))
        return "\n".join(lines) + "\n"


def _error(status, message):
    return status, {"error": {"message": message, "statusCode": status}}


class HttpConnection(asyncio.Protocol):
    """One TCP connection: a REST request, or an upgrade handed to the WebSocket driver."""

    def __init__(self, relay):
        self.relay = relay
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.respond(431, {"error": {"message": "Header too large", "statusCode": 431}})
            return
        head = self.buffer[:end].decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            self.respond(400, {"error": {"message": "Bad request line", "statusCode": 400}})
            return
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if headers.get("upgrade", "").lower() == "websocket":
            self.upgrade(path)
            return
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.respond(413, {"error": {"message": "Body too large", "statusCode": 413}})
            return
        if len(self.buffer) < end + 4 + length:
            return
        raw = self.buffer[end + 4:end + 4 + length]
        if method == "GET" and path == "/metrics":
            self.respond(200, self.relay.prometheus(), "text/plain; version=0.0.4")
            return
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self.respond(500, {"error": {"message": "Malformed JSON", "statusCode": 500}})
                return
        peer = (self.transport.get_extra_info("peername") or ("?",))[0]
        status, answer = self.relay.rest(method, path, headers, body, peer)
        if status == 429:
            self.respond(429, "Too many requests, please try again later.", "text/html", {"Retry-After": answer})
        else:
            self.respond(status, answer)

    def respond(self, status, body, ctype="application/json", extra=None):
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        head = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n" % (
            status, "OK" if status == 200 else "Error", ctype, len(data))
        for key, value in (extra or {}).items():
            head += "%s: %s\r\n" % (key, value)
        self.transport.write(head.encode() + b"\r\n" + data)
        self.transport.close()
        self.buffer = b""

    def upgrade(self, path):
        match = re.fullmatch(r"/relay/([A-Za-z0-9-]{1,64})", path)
        ws = wsio.server_protocol(write_limit=self.relay.args.write_buffer)
        self.transport.set_protocol(ws)
        ws.connection_made(self.transport)
        data, self.buffer = self.buffer, b""
        ws.data_received(data)
        if ws.request is None:
            ws.abort()
            return
        if not ws.accept():
            return
        if match is None:
            ws.start()
            ws.close(1008, "Invalid path")
            return
        self.relay.upgraded(ws, match.group(1))


async def serve(args):
    relay = Relay(args)
    loop = asyncio.get_running_loop()
    host, _, port = args.listen.rpartition(":")
    server = await loop.create_server(lambda: HttpConnection(relay), host.strip("[]") or None, int(port),
                                      reuse_address=True)
    log.info("boson relay (protocol 2) on %s, relay id %s", args.listen, relay.epoch)
    ticker = loop.create_task(relay.heartbeats())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    ticker.cancel()
    server.close()
    for node in list(relay.nodes.values()):
        if node.ws is not None:
            node.ws.close(1001, "relay stopping")
    for session in list(relay.sessions.values()):
        if session.ws is not None:
            session.ws.close(1001, "relay stopping")
    await asyncio.sleep(0.2)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="boson-relay", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="0.0.0.0:3000")
    parser.add_argument("--public-host", default=os.uname().nodename,
                        help="host announced in relayServers")
    parser.add_argument("--public-port", type=int, default=3000)
    parser.add_argument("--announce", action="append", default=[], metavar="HOST:PORT",
                        help="another relay to announce in relayServers (repeatable)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeat frames")
    parser.add_argument("--node-rate", type=int, default=0,
                        help="requests per --rate-window per source to /api/v1/nodes/* (0: no limit)")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds of the rate-limit window")
    parser.add_argument("--auth-token-file", default="", help="require this bearer token at registration")
    parser.add_argument("--write-buffer", type=int, default=1 << 20)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    for other in args.announce:
        host, _, port = other.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            parser.error("--announce %s is not HOST:PORT" % other)
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=args.log_level.upper())
    logging.getLogger("websockets").setLevel(logging.WARNING)
    from higgs_relay.connector import run
    run(serve(args), not args.no_uvloop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
