"""The relay: REST control plane and WebSocket relay on one port, protocol version 2.

    python3 -m higgs_relay.server --listen 127.0.0.1:3000 --auth-token-file /etc/higgs-vpn/relay-server/token

REST (JSON): POST /api/v1/nodes/register, POST /api/v1/nodes/{id}/heartbeat,
DELETE /api/v1/nodes/{id}, POST /api/v1/metrics, POST /api/v1/routing/request,
GET /health, GET /metrics (Prometheus, loopback only).  WebSocket:
/relay/{nodeId} (node socket, frames tagged with the session number both ways;
needs the node's registration token) and /relay/{sessionId} (client socket,
version-1 frames; needs the session's token).  Plain HTTP: put a TLS reverse
proxy in front, as BosonServer deployments do.

Requests are validated with the shapes of the reference server (400 with
``{"error": {"message", "statusCode"}}``); every stored field, table, buffer
and wait is bounded (docs/relay-protocol.md, "The collection's relay").
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import sys
import time
import uuid

from higgs_relay import framing, wsio

log = logging.getLogger("boson-relay")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")   # used with fullmatch
TOKEN_RE = re.compile(r"[\x21-\x7e]{16,512}")
ONLINE_FOR = 120.0       # a node without heartbeat for this long is offline
MAX_HEAD = 8192          # request line and headers
MAX_BODY = 16384         # a registration is about 1 KB
MAX_DEPTH = 8            # nesting of the JSON bodies the protocol defines (4 at most)
NATS = ("FullCone", "RestrictedCone", "PortRestricted", "Symmetric")
MAX_STUN_SERVERS = 8    # announced in stunServers (the connector keeps as many)


# Validation with the reference's shapes (zod there) -----------------------------------------------

class Invalid(ValueError):
    def __init__(self, path, message):
        super().__init__("%s: %s" % (".".join(map(str, path)) or "body", message))


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def string(min_len=0, max_len=256, check=None, message="Invalid"):
    def validate(value, path):
        if not isinstance(value, str):
            raise Invalid(path, "Expected string, received %s" % _kind(value))
        if len(value) < min_len:
            raise Invalid(path, "String must contain at least %d character(s)" % min_len)
        if len(value) > max_len:
            raise Invalid(path, "String must contain at most %d character(s)" % max_len)
        if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
            raise Invalid(path, "String must not contain control characters")
        if check is not None and not check(value):
            raise Invalid(path, message)
        return value
    return validate


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return "%" not in value


UUID = string(0, 36, UUID_RE.fullmatch, "Invalid uuid")
IP = string(2, 45, _is_ip, "Invalid ip")


def number(minimum=None, maximum=None, integer=False):
    def validate(value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(path, "Expected number, received %s" % _kind(value))
        if integer and not (isinstance(value, int) or value.is_integer()):
            raise Invalid(path, "Expected integer, received float")
        if minimum is not None and value < minimum:
            raise Invalid(path, "Number must be greater than or equal to %s" % minimum)
        if maximum is not None and value > maximum:
            raise Invalid(path, "Number must be less than or equal to %s" % maximum)
        return value
    return validate


def boolean(value, path):
    if not isinstance(value, bool):
        raise Invalid(path, "Expected boolean, received %s" % _kind(value))
    return value


def enum(*choices):
    def validate(value, path):
        if value not in choices or not isinstance(value, str):
            raise Invalid(path, "Invalid enum value. Expected %s, received %s"
                          % (" | ".join("'%s'" % c for c in choices), json.dumps(value)[:40]))
        return value
    return validate


def nullable(inner):
    def validate(value, path):
        return None if value is None else inner(value, path)
    return validate


def pair(value, path):
    if not isinstance(value, list):
        raise Invalid(path, "Expected array, received %s" % _kind(value))
    if len(value) != 2:
        raise Invalid(path, "Array must contain exactly 2 element(s)")
    return [number()(item, [*path, index]) for index, item in enumerate(value)]


def obj(required, optional=None):
    """An object with these keys; unknown keys are dropped (zod's default), so nothing unchecked is kept."""
    optional = optional or {}

    def validate(value, path):
        if not isinstance(value, dict):
            raise Invalid(path, "Expected object, received %s" % _kind(value))
        clean = {}
        for key, inner in required.items():
            if key not in value:
                raise Invalid([*path, key], "Required")
            clean[key] = inner(value[key], [*path, key])
        for key, inner in optional.items():
            if key in value and value[key] is not None:
                clean[key] = inner(value[key], [*path, key])
        return clean
    return validate


PERCENT = number(0, 100)
POSITIVE = number(0)
COUNT = number(0, integer=True)
BANDWIDTH = obj({"up": POSITIVE, "down": POSITIVE})
REGISTER = obj({
    "nodeId": UUID,
    "publicKey": string(1, 256),
    "networkInfo": obj({"ipv4": IP, "ipv6": nullable(IP), "natType": enum(*NATS),
                        "stunMappedAddress": nullable(string(0, 64)), "localPort": number(1, 65535, True)},
                       {"publicIp": IP}),
    "capabilities": obj({"maxConnections": number(1, integer=True), "bandwidth": BANDWIDTH,
                         "routing": boolean, "natting": boolean}),
    "location": obj({"country": string(2, 2), "region": string(0, 128), "coordinates": nullable(pair)}),
}, {
    "metrics": obj({"latency": POSITIVE, "jitter": POSITIVE, "packetLoss": PERCENT, "cpuUsage": PERCENT,
                    "memoryUsage": PERCENT}),
    "heartbeatInterval": number(10, 300, True),
})
HEARTBEAT = obj({}, {
    "metrics": obj({"latency": POSITIVE, "jitter": POSITIVE, "packetLoss": PERCENT, "cpuUsage": PERCENT,
                    "memoryUsage": PERCENT, "activeConnections": COUNT, "bandwidth": BANDWIDTH}),
    "status": enum("online", "degraded", "offline"),
})
METRICS = obj({
    "nodeId": UUID,
    "metrics": obj({
        "network": obj({"latency": POSITIVE, "jitter": POSITIVE, "packetLoss": PERCENT, "bandwidth": BANDWIDTH}),
        "system": obj({"cpuUsage": PERCENT, "memoryUsage": PERCENT, "diskUsage": PERCENT, "loadAverage": POSITIVE}),
        "wireguard": obj({"packets": obj({"sent": COUNT, "received": COUNT, "errors": COUNT}),
                          "bytes": obj({"sent": COUNT, "received": COUNT})}),
        "connections": obj({"active": COUNT, "total": COUNT, "failed": COUNT}),
    }),
}, {"timestamp": number()})
ROUTING = obj({
    "clientId": UUID,
    "clientNetworkInfo": obj({"ipv4": IP, "natType": enum(*NATS)}, {"stunMappedAddress": string(0, 64)}),
}, {
    "targetNodeId": UUID,
    "requirements": obj({}, {"minBandwidth": POSITIVE, "maxLatency": POSITIVE, "preferredLocation": string(0, 128),
                             "preferredCountry": string(2, 2)}),
})


def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def parse_json(raw):
    """The body as a JSON value; ValueError for malformed, too deep or non-finite input."""
    depth = 0
    for char in raw:   # bytes; brackets inside strings count too, which only makes the bound stricter
        if char in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError("JSON nested deeper than %d levels" % MAX_DEPTH)
        elif char in b"]}":
            depth -= 1
    return json.loads(raw, parse_constant=_reject_constant)


# State ---------------------------------------------------------------------------------------

class Node:
    def __init__(self, node_id):
        self.id = node_id
        self.info = {}
        self.seen = 0.0
        self.ws = None
        self.sessions = {}      # number -> Session
        self.tokens = []        # the token of the last registration and the one before (in-flight calls)

    @property
    def online(self):
        return time.monotonic() - self.seen < ONLINE_FOR

    def holds(self, token):
        return any(hmac.compare_digest(token, known) for known in self.tokens) if token else False


class Session:
    def __init__(self, session_id, number, node, client_id, token, source, claim_by):
        self.id = session_id
        self.number = number
        self.node = node
        self.client_id = client_id
        self.token = token
        self.source = source
        self.ws = None
        self.expires = claim_by     # unclaimed: the client socket must come by then; then idle expiry


def _bearer(headers):
    value = headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


class Relay:
    def __init__(self, args, token=""):
        self.args = args
        self.epoch = secrets.token_hex(8)
        self.nodes = {}
        self.sessions = {}
        self.per_source = {}    # source address -> live sessions
        self.next_number = 1
        self.auth = token
        self.proxies = frozenset(args.trusted_proxy)
        self.hits = {}          # rate-limit key -> [window start, count]
        self.http_open = 0
        self.http_by_source = {}   # peer address -> requests not complete yet
        self.sockets_open = 0
        self.stats = {"frames_client_to_node": 0, "frames_node_to_client": 0, "bytes_client_to_node": 0,
                      "bytes_node_to_client": 0, "drops_no_route": 0, "drops_backpressure": 0,
                      "drops_malformed": 0, "registrations": 0, "rate_limited": 0, "node_sockets": 0,
                      "client_sockets": 0, "auth_failures": 0, "bad_requests": 0, "sessions_refused": 0,
                      "connections_refused": 0, "timeouts": 0, "slow_readers": 0, "expired_sessions": 0,
                      "expired_nodes": 0}

    # REST ------------------------------------------------------------------------
    def source(self, peer, headers):
        """The client's address: the peer, or the last X-Forwarded-For hop when the peer is a trusted proxy."""
        if peer in self.proxies:
            hop = headers.get("x-forwarded-for", "").rsplit(",", 1)[-1].strip()
            if _is_ip(hop):
                return hop
        return peer

    def limited(self, key, rate):
        """Seconds to wait (Retry-After) when ``key`` is over ``rate`` requests per window, else 0.

        A fixed window per key, as express-rate-limit in BosonServer; refused requests still count.
        Keys are ("node", id) for requests that proved a node's credential and ("src", address) for
        everything else, so outsiders never spend a node's budget.
        """
        if not rate:
            return 0
        now = time.monotonic()
        entry = self.hits.get(key)
        if entry is None or now - entry[0] >= self.args.rate_window:
            if entry is None and len(self.hits) >= self.args.max_rate_keys:
                self.prune_hits(now)
                if len(self.hits) >= self.args.max_rate_keys:
                    self.stats["rate_limited"] += 1
                    return max(1, math.ceil(self.args.rate_window))
            entry = self.hits[key] = [now, 0]
        entry[1] += 1
        if entry[1] <= rate:
            return 0
        self.stats["rate_limited"] += 1
        return max(1, math.ceil(entry[0] + self.args.rate_window - now))

    def prune_hits(self, now):
        window = self.args.rate_window
        for key in [k for k, (start, _) in self.hits.items() if now - start >= window]:
            del self.hits[key]

    def rest(self, method, path, headers, raw, peer):
        """(status, answer) of one REST request; answer is a dict, a text or (for 429) the wait in seconds."""
        source = self.source(peer, headers)
        if method == "GET" and path in ("/health", "/health/live", "/health/ready"):
            return 200, {"status": "ok", "nodes": sum(n.online for n in self.nodes.values()),
                         "sessions": len(self.sessions), "protocol": 2}
        if method == "GET" and path == "/metrics":
            if not _is_loopback(peer) or "x-forwarded-for" in headers:
                return _error(403, "Metrics are served on loopback only")
            return 200, self.prometheus()
        token = _bearer(headers)
        node_path = re.fullmatch(r"/api/v1/nodes/([^/]{1,64})(/heartbeat)?", path)
        if method == "POST" and path == "/api/v1/nodes/register":
            body, problem = self.body(raw)
            proven = not self.auth or (bool(token) and hmac.compare_digest(token, self.auth))
            who = body.get("nodeId") if proven and self.auth and isinstance(body, dict) else None
            key = ("node", who) if isinstance(who, str) and UUID_RE.fullmatch(who) else ("src", source)
            return self.checked(key, self.args.node_rate, proven, "Registration needs the relay's bearer token",
                                problem or (lambda: self.register(body, source)))
        if node_path and ((method == "POST" and node_path.group(2)) or (method == "DELETE" and not node_path.group(2))):
            node = self.nodes.get(node_path.group(1))
            proven = node is not None and node.holds(token)
            key = ("node", node.id) if proven else ("src", source)
            if node_path.group(2):
                body, problem = self.body(raw, {})
                return self.checked(key, self.args.node_rate, proven, "Invalid or missing node token",
                                    problem or (lambda: self.heartbeat(node, body)))
            return self.checked(key, self.args.node_rate, proven, "Invalid or missing node token",
                                lambda: self.unregister(node))
        if method == "POST" and path == "/api/v1/metrics":
            body, problem = self.body(raw)
            node = self.nodes.get(body.get("nodeId")) if isinstance(body, dict) and isinstance(
                body.get("nodeId"), str) else None
            proven = node is not None and node.holds(token)
            key = ("node", node.id) if proven else ("src", source)
            return self.checked(key, self.args.api_rate, proven, "Invalid or missing node token",
                                problem or (lambda: self.metrics(body)))
        if method == "POST" and path == "/api/v1/routing/request":
            body, problem = self.body(raw)
            return self.checked(("route", source), self.args.routing_rate, True, "",
                                problem or (lambda: self.route(headers, body, source)))
        wait = self.limited(("src", source), self.args.api_rate)
        if wait:
            return 429, wait
        return _error(404, "Not found")

    def checked(self, key, rate, proven, refusal, handle):
        """Rate limit on ``key``, then the credential, then the handler (a callable, or a ready answer)."""
        wait = self.limited(key, rate)
        if wait:
            return 429, wait
        if not proven:
            self.stats["auth_failures"] += 1
            return _error(401, refusal)
        return handle() if callable(handle) else handle

    def body(self, raw, empty=None):
        """(parsed body, None) or (None, a 400 answer)."""
        if not raw:
            if empty is not None:
                return empty, None
            self.stats["bad_requests"] += 1
            return None, _error(400, "Validation error: body: Required")
        try:
            return parse_json(raw), None
        except (ValueError, RecursionError) as exc:
            self.stats["bad_requests"] += 1
            return None, _error(400, "Malformed JSON: %s" % str(exc)[:100])

    def validated(self, schema, body):
        try:
            return schema(body, []), None
        except Invalid as exc:
            self.stats["bad_requests"] += 1
            return None, _error(400, "Validation error: %s" % exc)

    def register(self, body, source):
        info, problem = self.validated(REGISTER, body)
        if problem:
            return problem
        node = self.nodes.get(info["nodeId"])
        if node is None:
            if len(self.nodes) >= self.args.max_nodes:
                self.prune(time.monotonic())
                if len(self.nodes) >= self.args.max_nodes:
                    return _error(503, "The relay holds as many nodes as it may (%d)" % self.args.max_nodes)
            node = self.nodes[info["nodeId"]] = Node(info["nodeId"])
        node.info = info
        node.seen = time.monotonic()
        token = secrets.token_urlsafe(32)
        node.tokens = [token, *node.tokens[:1]]
        self.stats["registrations"] += 1
        servers = [{"id": self.epoch, "host": self.args.public_host, "port": self.args.public_port,
                    "protocol": "websocket"}]
        for other in self.args.announce:
            host, _, port = other.rpartition(":")
            servers.append({"id": other, "host": host.strip("[]"), "port": int(port), "protocol": "websocket"})
        return 201, {
            "nodeId": node.id, "status": "registered",
            "relayServers": servers,
            "stunServers": [{"host": host.strip("[]"), "port": int(port)}
                            for host, _, port in (s.rpartition(":") for s in self.args.stun_server)],
            "sessionToken": token,
            "expiresAt": int((time.time() + 86400) * 1000),
        }

    def heartbeat(self, node, body):
        info, problem = self.validated(HEARTBEAT, body)
        if problem:
            return problem
        node.seen = time.monotonic()
        status = info.get("status", "online")
        return 200, {"status": "ok", "nextHeartbeat": 10 if status == "degraded" else 30, "actions": []}

    def unregister(self, node):
        self.forget(node, "Node not online")
        return 204, None

    def metrics(self, body):
        _, problem = self.validated(METRICS, body)
        return problem or (200, {"status": "ok"})

    def route(self, headers, body, source):
        request, problem = self.validated(ROUTING, body)
        if problem:
            return problem
        if "targetNodeId" in request:
            node = self.nodes.get(request["targetNodeId"])
            if node is None or not node.online:
                return _error(404, "Node not found or offline")
        else:
            country = request.get("requirements", {}).get("preferredCountry", "").upper()
            candidates = [n for n in self.nodes.values() if n.online and n.ws is not None
                          and (not country or n.info["location"]["country"].upper() == country)]
            if not candidates:
                return _error(404, "No node available")
            node = min(candidates, key=lambda n: len(n.sessions))
        if len(node.sessions) >= min(self.args.max_sessions_per_node, node.info["capabilities"]["maxConnections"]):
            self.stats["sessions_refused"] += 1
            return _error(503, "Node has no free session")
        if self.per_source.get(source, 0) >= self.args.max_sessions_per_source:
            self.stats["sessions_refused"] += 1
            return _error(429, "Too many sessions from this address")
        if len(self.sessions) >= self.args.max_sessions:
            self.stats["sessions_refused"] += 1
            return _error(503, "The relay holds as many sessions as it may")
        session_id = str(uuid.uuid4())
        number = self.next_number
        self.next_number = number % 0xFFFFFFFF + 1
        token = secrets.token_urlsafe(32)
        session = Session(session_id, number, node, request["clientId"], token, source,
                          time.monotonic() + self.args.claim_timeout)
        self.sessions[session_id] = session
        node.sessions[number] = session
        self.per_source[source] = self.per_source.get(source, 0) + 1
        host = headers.get("host", "")
        if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]{1,260}", host):
            host = "%s:%s" % (self.args.public_host, self.args.public_port)
        return 200, {
            "selectedRoute": {"nodeId": node.id, "type": "relay", "sessionToken": token,
                              "relayEndpoint": "ws://%s/relay/%s" % (host, session_id)},
            "sessionId": session_id, "sessionToken": token,
            "expiresAt": int((time.time() + self.args.session_idle) * 1000),
        }

    def forget(self, node, reason):
        for session in list(node.sessions.values()):
            self.end_session(session, 1000, "node left")
        if node.ws is not None:   # the socket is no node connection any more, as on a new upgrade
            node.ws.close(1008, reason)
            node.ws = None
        self.nodes.pop(node.id, None)

    def end_session(self, session, code, reason):
        if self.sessions.pop(session.id, None) is None:
            return
        session.node.sessions.pop(session.number, None)
        left = self.per_source.get(session.source, 1) - 1
        if left > 0:
            self.per_source[session.source] = left
        else:
            self.per_source.pop(session.source, None)
        if session.ws is not None:
            session.ws.close(code, reason)
            session.ws = None
            node_ws = session.node.ws
            if node_ws is not None:
                node_ws.send_text(framing.control("disconnect", session.node.id, "server", session=session.number))

    # WebSocket -------------------------------------------------------------------
    def upgraded(self, ws, ident, token):
        """(status, message) to refuse the upgrade with, or None when ``ws`` was taken (accepted or closed)."""
        node = self.nodes.get(ident)
        if node is not None:
            if not node.holds(token):
                self.stats["auth_failures"] += 1
                return 401, "A node socket needs the token of the node's registration"
            if not ws.accept():
                return None
            if not node.online:
                ws.start()
                ws.close(1008, "Node not online")
                return None
            self.node_socket(node, ws)
            return None
        session = self.sessions.get(ident)
        if session is not None and not hmac.compare_digest(token, session.token):
            self.stats["auth_failures"] += 1
            return 401, "A client socket needs the token of its session"
        if not ws.accept():
            return None
        if session is None:
            ws.start()
            ws.close(1008, "Invalid session")
            return None
        self.client_socket(session, ws)
        return None

    def node_socket(self, node, ws):
        old = node.ws
        node.ws = ws
        self.stats["node_sockets"] += 1
        if old is not None:
            old.close(1000, "replaced by a newer node socket")
        ws.send_text(framing.control("connected", node.id, "server", protocol=2, relayId=self.epoch))
        for session in node.sessions.values():
            if session.ws is not None:
                ws.send_text(framing.control("connect", node.id, "server", session=session.number))
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
        session.expires = time.monotonic() + self.args.session_idle
        self.stats["client_sockets"] += 1
        if old is not None:
            old.close(1000, "replaced")
        node = session.node
        ws.send_text(framing.control("connected", session.id, "server", protocol=2))
        if node.ws is not None and old is None:
            node.ws.send_text(framing.control("connect", node.id, "server", session=session.number))
        prefix = framing.TAG.pack(session.number)
        stats = self.stats
        idle = self.args.session_idle

        def on_binary(data):
            session.expires = time.monotonic() + idle
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

    def prune(self, now):
        """Expire unclaimed and idle sessions, forget nodes silent for --node-expiry, drop old rate counters."""
        for session in [s for s in self.sessions.values() if s.expires < now]:
            self.stats["expired_sessions"] += 1
            self.end_session(session, 1000, "session expired")
        for node in [n for n in self.nodes.values() if now - n.seen > self.args.node_expiry]:
            self.stats["expired_nodes"] += 1
            self.forget(node, "Node not online")
        self.prune_hits(now)

    async def ticker(self):
        next_heartbeat = time.monotonic() + self.args.heartbeat
        while True:
            await asyncio.sleep(min(5.0, self.args.heartbeat))
            now = time.monotonic()
            self.prune(now)
            if now >= next_heartbeat:
                next_heartbeat = now + self.args.heartbeat
                stamp = int(time.time() * 1000)
                for node in list(self.nodes.values()):
                    if node.ws is not None:
                        node.ws.send_text(json.dumps({"type": "heartbeat", "sessionId": node.id,
                                                      "direction": "server", "payload": {"timestamp": stamp}}))

    def prometheus(self):
        lines = []
        for key, value in sorted(self.stats.items()):
            lines.append("# TYPE boson_relay_%s counter" % key)
            lines.append("boson_relay_%s %d" % (key, value))
        lines.append("boson_relay_nodes_online %d" % sum(n.online for n in self.nodes.values()))
        lines.append("boson_relay_nodes %d" % len(self.nodes))
        registered = [n.info.get("networkInfo", {}).get("natType") for n in self.nodes.values() if n.online]
        for nat in NATS:   # what the online nodes registered (their measured natType drives the route choice)
            lines.append('boson_relay_nodes_online_nat_type{nat_type="%s"} %d' % (nat, registered.count(nat)))
        lines.append("boson_relay_sessions %d" % len(self.sessions))
        lines.append("boson_relay_http_connections %d" % self.http_open)
        lines.append("boson_relay_websockets %d" % self.sockets_open)
        return "\n".join(lines) + "\n"


def _is_loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _error(status, message):
    return status, {"error": {"message": message, "statusCode": status}}


REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 413: "Payload Too Large",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
REQUEST_LINE = re.compile(r"([A-Z]{1,16}) (/[\x21-\x7e]{0,2047}) HTTP/1\.[01]")


class RelaySocket(wsio.WebSocket):
    """The WebSocket driver, bounded for a server facing the internet.

    A peer that keeps sending while not reading (pings whose pongs pile up, say) is cut off once the
    write buffer holds twice the write limit; once the connection is closing, a few KB more are read
    (the peer's close frame) and the transport is aborted after that or after two seconds, so no
    descriptor is kept and no input is read and discarded for long.
    """

    def __init__(self, relay, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.relay = relay
        self.after_close = 0
        self.abort_timer = None
        self.refused = False

    def connection_made(self, transport):
        super().connection_made(transport)
        self.relay.sockets_open += 1

    def connection_lost(self, exc):
        self.relay.sockets_open -= 1
        if isinstance(exc, TimeoutError):   # the kernel gave up: --send-timeout without the peer taking data
            self.relay.stats["slow_readers"] += 1
        if self.abort_timer is not None:
            self.abort_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data):
        if self.closing:
            self.after_close += len(data)
            if self.after_close > 4096:
                self.transport.abort()
                return
        super().data_received(data)
        self.check()

    def check(self):
        transport = self.transport
        if transport is None:
            return
        if self.closing:
            if self.abort_timer is None:   # transport.abort: also after close(), with data not sent yet
                self.abort_timer = self.loop.call_later(2.0, transport.abort)
        elif transport.get_write_buffer_size() > 2 * self.write_limit:
            self.relay.stats["slow_readers"] += 1
            transport.abort()

    @property
    def closing(self):
        """Closing or closed, or an upgrade that was refused: nothing more is to be read."""
        return self.proto.state.name in ("CLOSING", "CLOSED") or self.refused

    def refuse(self, status, text):
        self.refused = True
        self.reject(status, text)
        self.check()

    def send_text(self, text):
        super().send_text(text)
        self.check()


class HttpConnection(asyncio.Protocol):
    """One TCP connection: one REST request, or an upgrade handed to the WebSocket driver.

    The request head and body must arrive within --request-timeout seconds; head, header count and
    body are bounded; anything malformed is answered 400 and the connection closed.
    """

    def __init__(self, relay):
        self.relay = relay
        self.buffer = bytearray()
        self.transport = None
        self.timer = None
        self.counted = False
        self.head = None
        self.peer = "?"

    def connection_made(self, transport):
        self.transport = transport
        relay = self.relay
        self.peer = (transport.get_extra_info("peername") or ("?",))[0]
        pending = relay.http_by_source.get(self.peer, 0)
        if relay.http_open + relay.sockets_open >= relay.args.max_connections or (
                pending >= relay.args.max_pending_per_source):
            relay.stats["connections_refused"] += 1
            transport.abort()
            return
        relay.http_open += 1
        relay.http_by_source[self.peer] = pending + 1
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            # A peer that stops reading stalls the kernel's send queue (up to megabytes, unseen by the
            # write-buffer check) or lets its own TCP back off: TCP_USER_TIMEOUT closes the connection
            # once sent data stays unacknowledged, or queued data unsent (zero window), that long.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(relay.args.send_timeout * 1000))
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(relay.args.request_timeout, self.timeout)

    def timeout(self):
        self.relay.stats["timeouts"] += 1
        self.respond(408, {"error": {"message": "Request not complete in time", "statusCode": 408}})

    def connection_lost(self, exc):
        if isinstance(exc, TimeoutError):
            self.relay.stats["slow_readers"] += 1
        self.done()

    def done(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            relay = self.relay
            relay.http_open -= 1
            left = relay.http_by_source[self.peer] - 1
            if left:
                relay.http_by_source[self.peer] = left
            else:
                del relay.http_by_source[self.peer]

    def data_received(self, data):
        if self.transport.is_closing():
            return
        self.buffer += data
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.respond(431, {"error": {"message": "Header too large", "statusCode": 431}})
                return
            if end > MAX_HEAD:
                self.respond(431, {"error": {"message": "Header too large", "statusCode": 431}})
                return
            self.head = self.parse_head(bytes(self.buffer[:end]))
            if self.head is None:
                return
            del self.buffer[:end + 4]
        method, path, headers, length = self.head
        if headers.get("upgrade", "").lower() == "websocket":
            self.upgrade(path, headers)
            return
        if len(self.buffer) < length:
            return
        raw = bytes(self.buffer[:length])
        status, answer = self.relay.rest(method, path, headers, raw, self.peer)
        if status == 429:
            self.respond(429, "Too many requests, please try again later.", "text/html", {"Retry-After": answer})
        elif isinstance(answer, str):
            self.respond(status, answer, "text/plain; version=0.0.4")
        else:
            self.respond(status, answer)

    def parse_head(self, raw):
        """(method, path, headers, body length), or None after answering 400/413."""
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return self.bad("Request head is not ASCII")
        lines = text.split("\r\n")
        line = REQUEST_LINE.fullmatch(lines[0])
        if line is None:
            return self.bad("Bad request line")
        if len(lines) > 64:
            return self.bad("Too many header lines")
        headers = {}
        for entry in lines[1:]:
            key, colon, value = entry.partition(":")
            if not colon or not TOKEN_CHARS.fullmatch(key) or any(ord(c) < 32 and c != "\t" for c in value):
                return self.bad("Bad header line")
            key = key.lower()
            value = value.strip(" \t")
            if key in headers and key in ("content-length", "authorization", "host", "upgrade", "x-forwarded-for"):
                return self.bad("Repeated %s header" % key)
            headers[key] = value
        if "transfer-encoding" in headers:
            return self.bad("Transfer-Encoding is not supported; send Content-Length")
        length = headers.get("content-length", "0")
        if not re.fullmatch(r"[0-9]{1,9}", length):
            return self.bad("Content-Length must be a number")
        if int(length) > MAX_BODY:
            self.respond(413, {"error": {"message": "Body larger than %d bytes" % MAX_BODY, "statusCode": 413}})
            return None
        return line.group(1), line.group(2).split("?", 1)[0], headers, int(length)

    def bad(self, message):
        self.relay.stats["bad_requests"] += 1
        self.respond(400, {"error": {"message": message, "statusCode": 400}})

    def respond(self, status, body, ctype="application/json", extra=None):
        if self.transport is None or self.transport.is_closing():
            return
        data = b"" if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
        head = "HTTP/1.1 %d %s\r\nConnection: close\r\n" % (status, REASONS.get(status, "Error"))
        if status != 204:
            head += "Content-Type: %s\r\nContent-Length: %d\r\n" % (ctype, len(data))
        for key, value in (extra or {}).items():
            head += "%s: %s\r\n" % (key, value)
        self.transport.write(head.encode() + b"\r\n" + data)
        self.transport.close()   # stops reading; the answer fits the socket buffer
        transport = self.transport
        asyncio.get_running_loop().call_later(2.0, transport.abort)   # a peer that does not read it
        self.buffer = bytearray()
        self.done()

    def upgrade(self, path, headers):
        match = re.fullmatch(r"/relay/([A-Za-z0-9-]{1,64})", path)
        self.done()
        relay = self.relay
        ws = RelaySocket(relay, wsio._Server(max_size=wsio.MAX_MESSAGE), write_limit=relay.args.write_buffer)
        self.transport.set_protocol(ws)
        ws.connection_made(self.transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        ws.data_received(self.raw_head(headers) + data)
        if ws.request is None:
            ws.abort()
            return
        if match is None:
            if ws.accept():
                ws.start()
                ws.close(1008, "Invalid path")
        else:
            refused = relay.upgraded(ws, match.group(1), _bearer(headers))
            if refused is not None:
                ws.refuse(*refused)
        if not ws.is_open:   # a refused upgrade or a failed handshake: the transport goes within two seconds
            ws.refused = True
            ws.check()

    def raw_head(self, headers):
        """The request head again, for the WebSocket library's own parser."""
        method, path = self.head[0], self.head[1]
        lines = ["%s %s HTTP/1.1" % (method, path)] + ["%s: %s" % item for item in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def serve(args, token):
    relay = Relay(args, token)
    loop = asyncio.get_running_loop()
    host, _, port = args.listen.rpartition(":")
    try:
        server = await loop.create_server(lambda: HttpConnection(relay), host.strip("[]") or None, int(port),
                                          reuse_address=True, backlog=1024)
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc.strerror or exc)
        return 71
    log.info("boson relay (protocol 2) on %s, relay id %s%s", args.listen, relay.epoch,
             "" if token else "; registration is open to anyone (--no-auth)")
    ticker = loop.create_task(relay.ticker())
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
    return 0


def _read_token(path):
    """The registration token in ``path``; exits 78 (EX_CONFIG) naming the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        log.error("--auth-token-file %s cannot be read (%s)", path, exc.strerror or exc)
        raise SystemExit(78) from None
    if not TOKEN_RE.fullmatch(token):
        log.error("--auth-token-file %s must hold 16-512 printable ASCII characters without spaces", path)
        raise SystemExit(78)
    return token


def make_parser():
    parser = argparse.ArgumentParser(prog="boson-relay", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:3000", help="address:port (default loopback only)")
    parser.add_argument("--public-host", default=os.uname().nodename,
                        help="host announced in relayServers")
    parser.add_argument("--public-port", type=int, default=3000)
    parser.add_argument("--announce", action="append", default=[], metavar="HOST:PORT",
                        help="another relay to announce in relayServers (repeatable)")
    parser.add_argument("--stun-server", action="append", default=[], metavar="HOST:PORT",
                        help="a STUN server announced to nodes in stunServers (repeatable, at most 8)")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeat frames")
    parser.add_argument("--auth-token-file", default="", help="the bearer token nodes register with (required)")
    parser.add_argument("--no-auth", action="store_true", help="let anyone register a node (a closed lab only)")
    parser.add_argument("--node-rate", type=int, default=60,
                        help="requests per --rate-window to /api/v1/nodes/* per node, and per source for "
                             "requests without a valid credential (0: no limit)")
    parser.add_argument("--api-rate", type=int, default=120, help="other /api requests per window and key")
    parser.add_argument("--routing-rate", type=int, default=30, help="routing requests per window and source")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds of the rate-limit window")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS",
                        help="a reverse proxy whose X-Forwarded-For is believed (repeatable)")
    parser.add_argument("--max-nodes", type=int, default=1024)
    parser.add_argument("--max-sessions", type=int, default=4096)
    parser.add_argument("--max-sessions-per-node", type=int, default=128)
    parser.add_argument("--max-sessions-per-source", type=int, default=8)
    parser.add_argument("--max-connections", type=int, default=4096, help="open TCP connections in all")
    parser.add_argument("--max-pending-per-source", type=int, default=64,
                        help="HTTP requests in progress per peer address (before an upgrade)")
    parser.add_argument("--max-rate-keys", type=int, default=65536, help="rate-limit counters kept at most")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds for a request's head and body to arrive")
    parser.add_argument("--claim-timeout", type=float, default=30.0,
                        help="seconds a routed session waits for its client socket")
    parser.add_argument("--session-idle", type=float, default=900.0,
                        help="seconds a session lives without a datagram from its client")
    parser.add_argument("--node-expiry", type=float, default=600.0,
                        help="seconds after its last heartbeat a node is forgotten")
    parser.add_argument("--write-buffer", type=int, default=256 << 10)
    parser.add_argument("--send-timeout", type=float, default=30.0,
                        help="seconds sent data may stay unacknowledged (or queued behind a zero window) "
                             "before the connection is closed (TCP_USER_TIMEOUT)")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--log-level", default="info")
    return parser


def parse_args(argv=None):
    """The options, checked; exits 2 naming a bad one."""
    parser = make_parser()
    args = parser.parse_args(argv)
    for option, values in (("--announce", args.announce), ("--stun-server", args.stun_server)):
        for other in values:
            host, _, port = other.rpartition(":")
            if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]", host) or not re.fullmatch(
                    r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
                parser.error("%s %s is not HOST:PORT" % (option, other))
    if len(args.stun_server) > MAX_STUN_SERVERS:
        parser.error("at most %d --stun-server" % MAX_STUN_SERVERS)
    for proxy in args.trusted_proxy:
        if not _is_ip(proxy):
            parser.error("--trusted-proxy %s is not an IP address" % proxy)
    if not args.auth_token_file and not args.no_auth:
        parser.error("--auth-token-file is required (or --no-auth for a closed lab)")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=args.log_level.upper())
    logging.getLogger("websockets").setLevel(logging.WARNING)
    token = _read_token(args.auth_token_file) if args.auth_token_file else ""
    from higgs_relay.connector import run
    return run(serve(args, token), not args.no_uvloop) or 0


if __name__ == "__main__":
    raise SystemExit(main())
