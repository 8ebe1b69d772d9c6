"""The node-side relay connector daemon.

One ``Link`` per relay connection: it registers the node over REST, opens the
node WebSocket ``/relay/{nodeId}``, keeps it alive (pings, heartbeats,
metrics, re-registration) and bridges datagrams between the socket and the
local WireGuard port, one connected UDP socket per client session so that
WireGuard sees every client as its own endpoint.

Relay modes: ``failover`` keeps one link, on the first relay that works, and
moves to the next on failure; ``all`` keeps a link to every relay (clients
may then use any of them).  Relays announced in registration answers
(``relayServers``) join the configured ones, after them (``discover_relays``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import logging
import math
import os
import signal
import sys
import time

from . import __version__, backoff, config, framing, metrics, rest, udp

log = logging.getLogger("higgs-relay")


class LinkDown(Exception):
    """The link ended; ``wait`` is the least time before trying again."""

    def __init__(self, message, wait=0.0):
        super().__init__(message)
        self.wait = wait


class Session:
    __slots__ = ("fd", "last", "sid", "sock")

    def __init__(self, sid, sock):
        self.sid = sid
        self.sock = sock
        self.fd = sock.fileno()
        self.last = time.monotonic()


class Link:
    """The node's connection to one relay."""

    def __init__(self, daemon, relay: config.Relay):
        self.daemon = daemon
        self.cfg = daemon.cfg
        self.relay = relay
        self.stats = daemon.metrics.relay(relay.name)
        self.m = daemon.metrics
        self.loop = daemon.loop
        self.ws = None
        self.version = 0
        self.epoch = None
        self.token = ""
        self.expires = 0.0
        self.registered_at = 0.0
        self.queue = collections.deque(maxlen=self.cfg.queue_size)
        self.sessions = {}
        self.flush_pending = False
        self.seen_in = 0
        self.ready = None

    # control plane ------------------------------------------------------------
    async def register(self):
        d = self.daemon
        body = d.registration()
        try:
            answer = await rest.call(self.relay.api, "POST", "/api/v1/nodes/register", body,
                                     token=self.cfg.token, context=d.ssl, timeout=self.cfg.connect_timeout)
        except rest.HttpError as exc:
            self.stats["http_errors"] += 1
            if exc.status == 429:
                self.stats["rate_limited"] += 1
                raise LinkDown("registration rate-limited by %s" % self.relay.name, wait=exc.retry_after) from None
            raise LinkDown("registration refused by %s: %s" % (self.relay.name, exc)) from None
        except OSError as exc:
            self.stats["http_errors"] += 1
            raise LinkDown("cannot reach %s: %s" % (self.relay.api, exc)) from None
        self.token = str(answer.get("sessionToken") or "")
        try:
            self.expires = float(answer.get("expiresAt") or 0) / 1000.0
        except (TypeError, ValueError):
            self.expires = 0.0
        self.registered_at = time.time()
        self.stats["registrations"] += 1
        log.debug("registered at %s", self.relay.name)
        if self.cfg.discover_relays:
            d.discover(self, answer.get("relayServers"))

    async def heartbeat(self):
        d = self.daemon
        body = {"metrics": d.node_metrics(self), "status": "online"}
        try:
            answer = await rest.call(self.relay.api, "POST", "/api/v1/nodes/%s/heartbeat" % self.cfg.node_id, body,
                                     token=self.token, context=d.ssl, timeout=self.cfg.connect_timeout)
        except rest.HttpError as exc:
            self.stats["http_errors"] += 1
            if exc.status == 429:
                self.stats["rate_limited"] += 1
                return min(exc.retry_after, self.cfg.heartbeat_interval)
            if exc.status in (401, 403, 404):
                await self.register()
            log.warning("heartbeat to %s failed: %s", self.relay.name, exc)
            return None
        except OSError as exc:
            self.stats["http_errors"] += 1
            log.warning("heartbeat to %s failed: %s", self.relay.name, exc)
            return None
        self.stats["heartbeats"] += 1
        for action in answer.get("actions") or []:
            log.info("relay %s asks for action %s (not acted upon)", self.relay.name,
                     action.get("type") if isinstance(action, dict) else action)
        try:
            return max(5.0, min(3600.0, float(answer.get("nextHeartbeat"))))
        except (TypeError, ValueError):
            return None

    async def send_metrics(self):
        d = self.daemon
        body = {"nodeId": self.cfg.node_id, "timestamp": int(time.time() * 1000), "metrics": d.report(self)}
        try:
            await rest.call(self.relay.api, "POST", "/api/v1/metrics", body, token=self.token,
                            context=d.ssl, timeout=self.cfg.connect_timeout)
        except rest.HttpError as exc:
            self.stats["http_errors"] += 1
            self.stats["rate_limited"] += exc.status == 429
        except OSError:
            self.stats["http_errors"] += 1

    async def unregister(self):
        if not self.token:
            return
        try:
            await rest.call(self.relay.api, "DELETE", "/api/v1/nodes/%s" % self.cfg.node_id, token=self.token,
                            context=self.daemon.ssl, timeout=3.0)
            log.info("unregistered from %s", self.relay.name)
        except (rest.HttpError, OSError) as exc:
            log.warning("unregistering from %s failed: %s", self.relay.name, exc)
        self.token = ""

    # node socket --------------------------------------------------------------
    async def serve(self):
        """Register, connect and carry traffic until the socket closes (raises LinkDown)."""
        from . import wsio

        await self.register()
        url = "%s/relay/%s" % (self.relay.ws, self.cfg.node_id)
        try:
            # the token issued at registration authenticates the node socket (the reference
            # server ignores the header; the collection's relay requires it)
            ws = await wsio.connect(url, ssl_context=self.daemon.ssl, timeout=self.cfg.connect_timeout,
                                    write_limit=self.cfg.write_buffer,
                                    headers={"Authorization": "Bearer " + self.token} if self.token else None)
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise LinkDown("cannot open %s: %s" % (url, exc)) from None
        self.ws = ws
        self.seen_in = 0
        self.ready = self.loop.create_future()
        self.version = 0
        ws.start(on_binary=self.from_relay, on_text=self.control, on_pong=self.pong, on_drain=self.schedule_flush)
        try:
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await asyncio.shield(self.ready)
            except TimeoutError:
                raise LinkDown("%s sent no 'connected' control frame" % self.relay.name) from None
            if ws.closed.done():
                code, reason = ws.closed.result()
                raise LinkDown("%s closed the socket (%s %s)" % (self.relay.name, code, reason))
            since = time.monotonic()
            self.stats["connected"] = 1
            self.stats["protocol"] = self.version
            log.info("connected to %s (protocol %d)", self.relay.name, self.version)
            keeper = self.loop.create_task(self.keepalive())
            try:
                code, reason = await ws.closed
            finally:
                keeper.cancel()
            up = time.monotonic() - since
            self.daemon.stable(self, up)
            raise LinkDown("%s closed the socket after %.0f s (code %s%s)"
                           % (self.relay.name, up, code, ", " + reason if reason else ""))
        finally:
            self.stats["connected"] = 0
            self.stats["protocol"] = 0
            self.stats["rtt"] = float("nan")
            ws.abort()
            self.ws = None
            dropped = len(self.queue)
            if dropped:
                self.m.drop("not_connected", dropped)
                self.queue.clear()
                self.m.queue_depth = 0

    def control(self, text):
        try:
            message = framing.parse_text(text)
        except framing.FrameError as exc:
            log.debug("ignored text frame from %s: %s", self.relay.name, exc)
            return
        if message["type"] != "control":
            return  # heartbeat frames of the relay need no answer
        payload = message.get("payload") or {}
        action = payload.get("action")
        if action == "connected":
            version = payload.get("protocol", 1)
            self.version = 2 if version == 2 else 1
            epoch = payload.get("relayId")
            if epoch is None or epoch != self.epoch:
                self.close_sessions()
            self.epoch = epoch
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(True)
        elif action == "connect" and self.version == 2:
            sid = payload.get("session")
            if isinstance(sid, int) and 0 <= sid <= framing.SESSION_MAX:
                self.session(sid)
        elif action == "disconnect" and self.version == 2:
            sid = payload.get("session")
            if sid in self.sessions:
                self.close_session(self.sessions[sid])
        elif action == "error":
            log.warning("relay %s reports error %s: %s", self.relay.name,
                        payload.get("errorCode"), payload.get("errorMessage"))

    def pong(self, rtt):
        self.stats["rtt"] = rtt

    async def keepalive(self):
        cfg = self.cfg
        now = time.monotonic()
        next_ping = now
        next_heartbeat = now + cfg.heartbeat_interval
        next_metrics = now + cfg.metrics_interval
        pending = set()
        try:
            while True:
                now = time.monotonic()
                ws = self.ws
                if ws is None:
                    return
                if ws.pings_outstanding() > cfg.ping_timeout:
                    log.warning("no pong from %s for %.0f s: half-open connection, reconnecting",
                                self.relay.name, ws.pings_outstanding())
                    ws.abort()
                    return
                if now >= next_ping:
                    ws.ping()
                    next_ping = now + cfg.ping_interval
                if now >= next_heartbeat:
                    next_heartbeat = now + cfg.heartbeat_interval
                    pending.add(self.loop.create_task(self._heartbeat()))
                if now >= next_metrics:
                    next_metrics = now + cfg.metrics_interval
                    pending.add(self.loop.create_task(self.send_metrics()))
                wall = time.time()
                if wall - self.registered_at > cfg.reregister_interval or (
                        self.expires and wall > self.expires - 600):
                    self.registered_at = wall
                    pending.add(self.loop.create_task(self._reregister()))
                self.sweep()
                pending = {t for t in pending if not t.done()}
                await asyncio.sleep(min(1.0, cfg.ping_interval))
        finally:
            for task in pending:
                task.cancel()

    async def _heartbeat(self):
        try:
            await self.heartbeat()
        except LinkDown as exc:
            log.warning("%s", exc)

    async def _reregister(self):
        try:
            await self.register()
        except LinkDown as exc:
            log.warning("re-registration: %s", exc)

    # data path ----------------------------------------------------------------
    def session(self, sid):
        found = self.sessions.get(sid)
        if found is not None:
            return found
        if self.m.sessions >= self.cfg.max_sessions:
            return None
        try:
            sock = udp.open_socket(self.daemon.local_host, 0, (self.cfg.wireguard_host, self.cfg.wireguard_port),
                                   self.cfg.socket_buffer)
        except OSError as exc:
            log.error("cannot open a UDP socket for session %s: %s", sid, exc)
            return None
        session = Session(sid, sock)
        self.sessions[sid] = session
        self.loop.add_reader(session.fd, self.from_wireguard, session)
        self.m.sessions += 1
        self.m.sessions_opened += 1
        log.debug("session %s on %s (protocol %d): local port %d",
                  sid, self.relay.name, self.version, sock.getsockname()[1])
        return session

    def close_session(self, session):
        if self.sessions.pop(session.sid, None) is None:
            return
        self.loop.remove_reader(session.fd)
        session.sock.close()
        self.m.sessions -= 1

    def close_sessions(self):
        for session in list(self.sessions.values()):
            self.close_session(session)

    def sweep(self):
        limit = time.monotonic() - self.cfg.session_idle
        for session in [s for s in self.sessions.values() if s.last < limit]:
            log.debug("session %s idle, closed", session.sid)
            self.close_session(session)

    def from_relay(self, data):
        m = self.m
        m.frames_from_relay += 1
        ws = self.ws
        if ws is not None:
            m.bytes_from_relay += ws.bytes_in - self.seen_in
            self.seen_in = ws.bytes_in
        if not self.version:
            m.drop("not_connected")
            return
        try:
            if self.version == 2:
                sid, payload = framing.untag(data)
            else:
                sid, payload = 0, data
            datagrams = framing.decode(payload)
        except framing.FrameError as exc:
            m.drop("malformed")
            log.debug("malformed frame from %s: %s", self.relay.name, exc)
            return
        session = self.sessions.get(sid) or self.session(sid)
        if session is None:
            m.drop("session_limit", len(datagrams))
            return
        session.last = time.monotonic()
        send = session.sock.send
        count = len(datagrams)
        # datagram bytes: the frame less the batch header, less what could not be sent
        size = len(payload) - (2 + 2 * count if count > 1 else 0)
        for datagram in datagrams:
            try:
                send(datagram)
            except OSError:   # socket buffer full, or WireGuard not listening right now
                m.drop("udp_send")
                count -= 1
                size -= len(datagram)
        m.datagrams_from_relay += count
        m.wireguard_bytes_from_relay += size

    def from_wireguard(self, session):
        queue = self.queue
        recv = session.sock.recv
        sid = session.sid
        connected = self.ws is not None and self.ws.is_open
        before = len(queue)
        count = size = 0
        try:
            for _ in range(self.cfg.burst):
                data = recv(65535)
                count += 1
                size += len(data)
                if connected:
                    queue.append((sid, data))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno != errno.ECONNREFUSED:
                log.debug("session %s: %s", sid, exc)
        if not count:
            return
        m = self.m
        m.wireguard_bytes_to_relay += size
        session.last = time.monotonic()
        if not connected:
            m.drop("not_connected", count)
            return
        overflow = before + count - queue.maxlen   # the deque dropped its oldest
        if overflow > 0:
            m.drop("queue_full", overflow)
        self.schedule_flush()

    def schedule_flush(self):
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self):
        self.flush_pending = False
        ws = self.ws
        queue = self.queue
        m = self.m
        if ws is None or not ws.is_open or ws.paused or not queue:
            m.queue_depth = len(queue)
            return
        tagged = self.version == 2
        frames = []
        group = []
        current = None
        popleft = queue.popleft
        taken = 0
        while queue and taken < 4096:
            sid, data = popleft()
            taken += 1
            if sid != current and group:
                self._pack(current, group, frames, tagged)
                group = []
            current = sid
            group.append(data)
        if group:
            self._pack(current, group, frames, tagged)
        m.bytes_to_relay += ws.send_binary_many(frames)
        m.frames_to_relay += len(frames)
        m.queue_depth = len(queue)
        if queue and not ws.paused:
            self.schedule_flush()

    def _pack(self, sid, group, frames, tagged):
        cfg = self.cfg
        packed, rejected = framing.pack(group, cfg.batch_max_count, cfg.batch_max_bytes, cfg.batch,
                                        framing.TAG.pack(sid) if tagged else b"")
        if rejected:
            self.m.drop("malformed", rejected)
        sent = len(group) - rejected
        self.m.datagrams_to_relay += sent
        if len(packed) < sent:   # some went into batches
            start = framing.TAG.size if tagged else 0
            self.m.batches_to_relay += sum(1 for f in packed if framing.is_batch(memoryview(f)[start:]))
        frames.extend(packed)


class Daemon:
    def __init__(self, cfg: config.Config):
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.metrics = metrics.Metrics([r.name for r in cfg.relays])
        self.ssl = rest.ssl_context(cfg.ca_file) if any(r.tls for r in cfg.relays) else None
        self.local_host = "::1" if ":" in cfg.wireguard_host else "127.0.0.1"
        self.links = [Link(self, r) for r in cfg.relays]
        self.discovered = 0
        self.tasks = []
        self.stopping = asyncio.Event()
        self.backoffs = {}

    def discover(self, link, entries):
        """Add the relays ``link``'s relay announced after the known ones (at most MAX_DISCOVERED in all).

        In failover mode they extend the list walked on failure; in mode
        ``all`` each gets a link of its own.
        """
        known = {other.relay.name for other in self.links}
        for relay in config.announced_relays(entries, link.relay, config.MAX_DISCOVERED + len(known)):
            if self.discovered >= config.MAX_DISCOVERED:
                return
            if relay.name in known:
                continue
            known.add(relay.name)
            new = Link(self, relay)
            self.links.append(new)
            self.discovered += 1
            log.info("relay %s announced by %s: added to the relays", relay.name, link.relay.name)
            if self.cfg.relay_mode == "all":
                self.tasks.append(self.loop.create_task(self.keep([new], relay.name)))

    def stable(self, link, seconds):
        if seconds >= self.cfg.stable_after:
            self.backoff(link).reset()

    def backoff(self, key):
        found = self.backoffs.get(key)
        if found is None:
            found = self.backoffs[key] = backoff.Backoff(self.cfg.backoff_base, self.cfg.backoff_cap)
        return found

    # registration payloads ------------------------------------------------------
    def registration(self):
        cfg = self.cfg
        net = cfg.network
        cap = cfg.capabilities
        loc = cfg.location
        return {
            "nodeId": cfg.node_id,
            "publicKey": cfg.public_key,
            "networkInfo": {
                "ipv4": net.get("ipv4") or "0.0.0.0",
                "ipv6": net.get("ipv6") or None,
                "natType": net.get("nat_type", "FullCone"),
                "stunMappedAddress": net.get("stun_mapped_address") or None,
                "localPort": int(net.get("local_port") or cfg.wireguard_port),
            },
            "capabilities": {
                "maxConnections": int(cap.get("max_connections", cfg.max_sessions)),
                "bandwidth": {"up": int(cap.get("bandwidth_up", 100)), "down": int(cap.get("bandwidth_down", 100))},
                "routing": bool(cap.get("routing", True)),
                "natting": bool(cap.get("natting", True)),
            },
            "location": {
                "country": str(loc.get("country", "ZZ")).upper(),
                "region": str(loc.get("region", "")),
                "coordinates": list(loc.get("coordinates") or [0, 0]),
            },
            "metrics": self.node_metrics(None),
            "heartbeatInterval": int(cfg.heartbeat_interval),
        }

    def node_metrics(self, link):
        rtt = link.stats["rtt"] if link is not None else float("nan")
        return {
            "latency": 0 if math.isnan(rtt) else round(rtt * 1000, 2),
            "jitter": 0,
            "packetLoss": 0,
            "cpuUsage": _cpu_usage(),
            "memoryUsage": _memory_usage(),
            "activeConnections": self.metrics.sessions,
            "bandwidth": {"up": self.metrics.bytes_to_relay, "down": self.metrics.bytes_from_relay},
        }

    def report(self, link):
        m = self.metrics
        return {
            "network": {"bytesIn": m.bytes_from_relay, "bytesOut": m.bytes_to_relay,
                        "latency": self.node_metrics(link)["latency"]},
            "system": {"cpuUsage": _cpu_usage(), "memoryUsage": _memory_usage()},
            "wireguard": {"packets": m.datagrams_from_relay + m.datagrams_to_relay,
                          "bytes": m.wireguard_bytes_from_relay + m.wireguard_bytes_to_relay},
            "connections": m.sessions,
        }

    # supervision -------------------------------------------------------------------
    async def keep(self, links, key):
        """Keep one link up, walking through ``links`` on failure (failover)."""
        index = 0
        pause = self.backoff(key)
        while not self.stopping.is_set():
            link = links[index % len(links)]
            try:
                await link.serve()
            except LinkDown as exc:
                wait = max(exc.wait, pause.next())
                link.stats["reconnects"] += 1
                if len(links) > 1:
                    index += 1
                    log.warning("%s; trying %s in %.1f s", exc, links[index % len(links)].relay.name, wait)
                else:
                    log.warning("%s; reconnecting in %.1f s", exc, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), wait)

    async def run(self):
        cfg = self.cfg
        server = None
        if cfg.listen:
            host, port = config.split_hostport(cfg.listen)
            server = await metrics.serve(self.metrics, host, port)
        if cfg.relay_mode == "all":
            groups = [([link], link.relay.name) for link in self.links]
        else:
            groups = [(self.links, "failover")]   # the same list: discovered relays join the walk
        self.tasks.extend(self.loop.create_task(self.keep(links, key)) for links, key in groups)
        await self.stopping.wait()
        # close the node sockets in order (close frame 1000) before anything else
        closing = []
        for link in self.links:
            if link.ws is not None:
                link.ws.close(1000, "node stopping")
                closing.append(link.ws.closed)
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(link.unregister() for link in self.links), return_exceptions=True)
        for link in self.links:
            link.close_sessions()
        if server is not None:
            server.close()


def _cpu_usage():
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            load = float(handle.read().split()[0])
        return round(min(100.0, 100.0 * load / (os.cpu_count() or 1)), 1)
    except (OSError, ValueError, IndexError):
        return 0


def _memory_usage():
    try:
        info = {}
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0])
        return round(100.0 * (1 - info["MemAvailable"] / info["MemTotal"]), 1)
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return 0


async def _main(cfg):
    daemon = Daemon(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        daemon.loop.add_signal_handler(sig, daemon.stopping.set)
    await daemon.run()


def run(coro, use_uvloop=True):
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            use_uvloop = False
        else:
            log.info("using uvloop %s", uvloop.__version__)
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return asyncio.run(coro)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="higgs-relay-connector", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="/etc/higgs-vpn/relay/connector.json")
    parser.add_argument("--check", action="store_true",
                        help="check the configuration and the WireGuard port, then exit")
    parser.add_argument("--check-config", action="store_true", help="check the configuration file only, then exit")
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=logging.INFO)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        for problem in exc.problems:
            log.error("configuration %s: %s", args.config, problem)
        return config.EX_CONFIG
    if args.check_config:
        return 0
    logging.getLogger().setLevel(cfg.log_level.upper())
    logging.getLogger("websockets").setLevel(logging.DEBUG if cfg.log_level == "debug" else logging.WARNING)
    try:
        import websockets
    except ImportError:
        log.error("the websockets library is missing: install python3-websockets")
        return config.EX_CONFIG
    problem = udp.probe(cfg.wireguard_host, cfg.wireguard_port)
    if problem:
        log.error("WireGuard port unreachable: %s; set wireguard_port to the node's ListenPort", problem)
        return config.EX_UNAVAILABLE
    if args.check:
        print("configuration OK: node %s, %d relay(s), websockets %s"
              % (cfg.node_id, len(cfg.relays), websockets.__version__))
        return 0
    log.info("higgs relay connector %s: node %s, relays %s (%s), WireGuard %s:%d, websockets %s",
             __version__, cfg.node_id, ", ".join(r.name for r in cfg.relays), cfg.relay_mode,
             cfg.wireguard_host, cfg.wireguard_port, websockets.__version__)
    run(_main(cfg), cfg.uvloop)
    log.info("stopped")
    return 0
