"""Counters of the connector and the local health / Prometheus endpoint.

All counters are plain integers bumped on the data path (no locks: one event
loop).  ``/metrics`` renders them in the Prometheus text format, ``/health``
answers 200 with a JSON summary while at least one relay link is up and 503
otherwise.  The label sets are bounded: per relay (the configured ones and
at most ``config.MAX_DISCOVERED`` announced ones) and per drop reason (fixed
list).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

DROP_REASONS = ("queue_full", "udp_send", "session_limit", "malformed", "not_connected", "no_return_path")
REQUESTS = ("register", "heartbeat", "metrics", "unregister")
PREFIX = "higgs_relay"


class Metrics:
    def __init__(self, relays=()):
        self.started = time.time()
        self.datagrams_to_relay = 0
        self.datagrams_from_relay = 0
        self.frames_to_relay = 0
        self.frames_from_relay = 0
        self.bytes_to_relay = 0         # WebSocket bytes written (frames, headers, masks)
        self.bytes_from_relay = 0
        self.wireguard_bytes_to_relay = 0    # datagram bytes read from WireGuard
        self.wireguard_bytes_from_relay = 0  # datagram bytes sent to WireGuard
        self.batches_to_relay = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.sessions = 0
        self.sessions_opened = 0
        self.sessions_evicted = 0
        self.sessions_refused = 0
        self.queue_depth = 0
        self.per_relay = {r: self._relay() for r in relays}

    @staticmethod
    def _relay():
        return {"connected": 0, "reconnects": 0, "rtt": float("nan"), "registrations": 0,
                "http_errors": 0, "rate_limited": 0, "protocol": 0, "heartbeats": 0,
                "refused": {},   # (request, HTTP status) -> count; requests fixed, statuses 100..599
                "last_refusal": ""}   # the latest one with the server's message (escaped, bounded)

    def relay(self, name):
        entry = self.per_relay.get(name)
        if entry is None:
            entry = self.per_relay[name] = self._relay()
        return entry

    def drop(self, reason, count=1):
        self.drops[reason] += count

    @property
    def up(self) -> bool:
        return any(r["connected"] for r in self.per_relay.values())

    def health(self) -> dict:
        return {
            "status": "ok" if self.up else "down",
            "uptime": round(time.time() - self.started, 1),
            "sessions": self.sessions,
            "relays": {name: {"connected": bool(r["connected"]), "protocol": r["protocol"],
                              "rtt_ms": None if math.isnan(r["rtt"]) else round(r["rtt"] * 1000, 2),
                              "refused": {"%s %s" % key: count for key, count in sorted(r["refused"].items())},
                              "last_refusal": r["last_refusal"]}
                       for name, r in self.per_relay.items()},
        }

    def render(self) -> str:
        lines = []

        def metric(name, kind, help_text, samples):
            full = "%s_%s" % (PREFIX, name)
            lines.append("# HELP %s %s" % (full, help_text))
            lines.append("# TYPE %s %s" % (full, kind))
            for labels, value in samples:
                label = ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"'))
                                 for k, v in labels.items())
                lines.append("%s%s %s" % (full, "{%s}" % label if label else "", _num(value)))

        metric("sessions", "gauge", "Client sessions with a local UDP socket.", [({}, self.sessions)])
        metric("sessions_opened_total", "counter", "Client sessions opened.", [({}, self.sessions_opened)])
        metric("sessions_evicted_total", "counter", "Idle sessions closed to make room for a new one.",
               [({}, self.sessions_evicted)])
        metric("sessions_refused_total", "counter", "New sessions refused: the table was full of active ones.",
               [({}, self.sessions_refused)])
        metric("queue_depth", "gauge", "Datagrams waiting for the relay.", [({}, self.queue_depth)])
        metric("datagrams_total", "counter", "WireGuard datagrams carried.",
               [({"direction": "to_relay"}, self.datagrams_to_relay),
                ({"direction": "from_relay"}, self.datagrams_from_relay)])
        metric("frames_total", "counter", "WebSocket binary frames.",
               [({"direction": "to_relay"}, self.frames_to_relay),
                ({"direction": "from_relay"}, self.frames_from_relay)])
        metric("batches_total", "counter", "Batch frames sent to the relay.", [({}, self.batches_to_relay)])
        metric("bytes_total", "counter", "Bytes on the relay connection (WebSocket framing included).",
               [({"direction": "to_relay"}, self.bytes_to_relay),
                ({"direction": "from_relay"}, self.bytes_from_relay)])
        metric("wireguard_bytes_total", "counter", "WireGuard datagram bytes exchanged with the local port.",
               [({"direction": "to_relay"}, self.wireguard_bytes_to_relay),
                ({"direction": "from_relay"}, self.wireguard_bytes_from_relay)])
        metric("drops_total", "counter", "Datagrams dropped, by reason.",
               [({"reason": k}, v) for k, v in self.drops.items()])
        relays = sorted(self.per_relay.items())
        metric("relay_connected", "gauge", "1 while the node socket to the relay is open.",
               [({"relay": n}, r["connected"]) for n, r in relays])
        metric("relay_protocol", "gauge", "Protocol version the relay announced (0: not connected).",
               [({"relay": n}, r["protocol"]) for n, r in relays])
        metric("relay_reconnects_total", "counter", "Node socket (re)connections after a failure.",
               [({"relay": n}, r["reconnects"]) for n, r in relays])
        metric("relay_registrations_total", "counter", "Successful registrations.",
               [({"relay": n}, r["registrations"]) for n, r in relays])
        metric("relay_heartbeats_total", "counter", "Successful heartbeats.",
               [({"relay": n}, r["heartbeats"]) for n, r in relays])
        metric("relay_http_errors_total", "counter", "Failed REST calls.",
               [({"relay": n}, r["http_errors"]) for n, r in relays])
        metric("relay_refused_total", "counter", "REST requests the relay refused, by request and HTTP status.",
               [({"relay": n, "request": request, "status": status}, count)
                for n, r in relays for (request, status), count in sorted(r["refused"].items())])
        metric("relay_rate_limited_total", "counter", "HTTP 429 answers.",
               [({"relay": n}, r["rate_limited"]) for n, r in relays])
        metric("relay_rtt_seconds", "gauge", "WebSocket ping round trip to the relay.",
               [({"relay": n}, r["rtt"]) for n, r in relays])
        metric("uptime_seconds", "gauge", "Seconds since start.", [({}, time.time() - self.started)])
        return "\n".join(lines) + "\n"


def _num(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return repr(round(value, 6))
    return str(value)


async def serve(metrics: Metrics, host: str, port: int):
    """Start the HTTP endpoint (GET /health, GET /metrics) and return the server."""

    async def handle(reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path = ([*head.split(b"\r\n", 1)[0].decode("latin-1").split(" "), "", ""])[:2]
            if method != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", "GET only\n"
            elif path.split("?")[0] == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", metrics.render()
            elif path.split("?")[0] in ("/health", "/"):
                status = "200 OK" if metrics.up else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(metrics.health()) + "\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", "try /health or /metrics\n"
            data = body.encode()
            writer.write(("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                          % (status, ctype, len(data))).encode() + data)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=8192)
