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
import ipaddress
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time

from . import __version__, backoff, config, framing, metrics, rest, sendqueue, udp

log = logging.getLogger("higgs-relay")

EX_SOFTWARE = 70          # an unexpected error: logged, and systemd restarts the unit
MAX_NAT_STATE = 1 << 16    # bytes read of the NAT state file
MAX_STUN_SERVERS = 8      # announced STUN servers written for the NAT agent (the first valid ones)
STUN_FILE = "stun-servers.json"   # in the unit's RuntimeDirectory, read by the nat_traversal agent
MIN_REREGISTER = 30.0     # seconds between two registrations at one relay, whatever expiresAt says
HEARTBEAT_RANGE = (10.0, 300.0)   # what the server accepts as heartbeatInterval; nextHeartbeat clamped to it
NOTES = 256               # distinct "log once" causes kept per link (memory bound)
WINDOW = 30               # ping round trips kept for latency and jitter
EVICT_IDLE = 30.0         # a session idle this long may be closed to admit a new one when the table is full


def say(value, limit=200) -> str:
    """Relay-controlled text made safe for one log line: escaped (no newline survives) and bounded."""
    text = value if isinstance(value, str) else repr(value)[:limit + 1]
    clipped = text[:limit]
    return json.dumps(clipped)[1:-1] + ("..." if len(text) > limit else "")


class LinkDown(Exception):
    """The link ended; ``wait`` is the least time before trying this relay again (its Retry-After)."""

    def __init__(self, message, wait=0.0, quiet=False):
        super().__init__(message)
        self.wait = wait
        self.quiet = quiet   # already logged once for this cause


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
        self.queue = sendqueue.SendQueue(self.loop, self.cfg.queue_size, self.m, lambda: self.ws, self.pack)
        self.sessions = {}
        self.seen_in = 0
        self.ready = None
        self.pause = None           # the Backoff of the supervisor keeping this link (set by Daemon.keep)
        self.not_before = 0.0       # monotonic time before which this relay asked not to be tried (Retry-After)
        self.next_register = 0.0    # monotonic time of the next periodic registration
        self.registered_mono = 0.0
        self.nat_generation = 0     # the NatState generation of the last registration
        self.heartbeat_due = 0.0
        self.noted = set()          # causes already logged (bounded by NOTES)
        self.rtts = collections.deque(maxlen=WINDOW)
        self.pings_sent = 0
        self.pongs = 0
        self.lost_mark = (0, 0)     # (pings sent, pings lost) at the last loss figure
        self.rate_mark = (time.monotonic(), 0, 0)   # (when, bytes to relay, bytes from relay)
        self.v1_warned = False
        self.evict_after = 0.0      # monotonic time before which no session can be evicted

    def note(self, key, level, message, *args) -> bool:
        """Log ``message`` once per ``key`` (a bounded set of causes); True if it was logged."""
        if key in self.noted or len(self.noted) >= NOTES:
            return False
        self.noted.add(key)
        log.log(level, message, *args)
        return True

    def refused(self, request, exc, say_it=True):
        """A REST request the relay refused: counted by request and status, logged once per cause.

        True if the cause is new (and was logged, unless the caller logs it itself).
        """
        stats = self.stats
        stats["http_errors"] += 1
        if exc.status == 429:
            stats["rate_limited"] += 1
        key = (request, exc.status)
        stats["refused"][key] = stats["refused"].get(key, 0) + 1
        message = say(exc.message)
        stats["last_refusal"] = "%s: HTTP %s %s" % (request, exc.status, message)
        key = ("refused", request, exc.status, message)
        if not say_it:
            return self.note(key, logging.DEBUG, "%s refused by %s: HTTP %s %s", request, self.relay.name,
                             exc.status, message)
        return self.note(key, logging.WARNING, "%s refused by %s: HTTP %s %s", request, self.relay.name,
                         exc.status, message)

    def unreachable(self, request, exc):
        self.stats["http_errors"] += 1
        return self.note(("unreachable", request, say(exc)), logging.WARNING,
                         "%s: cannot reach %s: %s", request, self.relay.api, say(exc))

    # control plane ------------------------------------------------------------
    async def register(self):
        d = self.daemon
        body = d.registration(self)
        self.next_register = time.monotonic() + MIN_REREGISTER   # also after a failure: no storm
        try:
            answer = await rest.call(self.relay.api, "POST", "/api/v1/nodes/register", body,
                                     token=self.cfg.token, context=d.ssl, timeout=self.cfg.connect_timeout)
        except rest.HttpError as exc:
            new = self.refused("register", exc, say_it=False)   # the supervisor logs the LinkDown
            if exc.status == 429:
                raise LinkDown("registration rate-limited by %s" % self.relay.name, wait=exc.retry_after,
                               quiet=not new) from None
            raise LinkDown("registration refused by %s: HTTP %s %s" % (self.relay.name, exc.status, say(exc.message)),
                           quiet=not new) from None
        except OSError as exc:
            self.stats["http_errors"] += 1
            raise LinkDown("cannot reach %s: %s" % (self.relay.api, say(exc))) from None
        token = answer.get("sessionToken")
        self.token = token if isinstance(token, str) and len(token) <= 4096 else ""
        expires = answer.get("expiresAt")
        self.expires = expires / 1000.0 if isinstance(expires, (int, float)) and not isinstance(expires, bool) \
            and math.isfinite(expires) else 0.0
        self.registered_at = time.time()
        self.registered_mono = time.monotonic()
        self.next_register = self.registered_mono + reregister_delay(
            self.cfg.reregister_interval, self.expires - self.registered_at if self.expires else None)
        self.stats["registrations"] += 1
        log.debug("registered at %s", self.relay.name)
        if self.cfg.discover_relays:
            d.discover(self, answer.get("relayServers"))
        d.stun.update(self, answer.get("stunServers"))

    async def heartbeat(self):
        """One heartbeat; returns the seconds until the next one.

        No ``status`` is sent: the server judges "degraded" itself from the
        figures, and a sent status would override that judgement.  The next
        heartbeat follows the answer's ``nextHeartbeat`` (30 s online, 10 s
        degraded) or a 429's Retry-After.
        """
        d = self.daemon
        body = {}
        figures = d.node_metrics(self)
        if figures is not None:
            body["metrics"] = figures
        try:
            answer = await rest.call(self.relay.api, "POST", "/api/v1/nodes/%s/heartbeat" % self.cfg.node_id, body,
                                     token=self.token, context=d.ssl, timeout=self.cfg.connect_timeout)
        except rest.HttpError as exc:
            self.refused("heartbeat", exc)
            if exc.status == 429:
                return max(HEARTBEAT_RANGE[0], exc.retry_after)
            if exc.status in (401, 403, 404):   # the relay no longer knows this node (or its token)
                self.forgotten("heartbeat answered HTTP %s" % exc.status)
            return self.cfg.heartbeat_interval
        except OSError as exc:
            self.unreachable("heartbeat", exc)
            return self.cfg.heartbeat_interval
        self.stats["heartbeats"] += 1
        actions = answer.get("actions")
        if isinstance(actions, list) and actions:
            kinds = sorted({say(a.get("type"), 40) for a in actions[:64] if isinstance(a, dict)})
            self.note(("actions", tuple(kinds[:8])), logging.INFO, "relay %s asks for %d action(s), not acted upon: %s",
                      self.relay.name, len(actions), ", ".join(kinds[:8]) or "(malformed)")
        wait = answer.get("nextHeartbeat")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and math.isfinite(wait):
            return max(HEARTBEAT_RANGE[0], min(HEARTBEAT_RANGE[1], float(wait)))
        return self.cfg.heartbeat_interval

    def forgotten(self, why):
        """The relay lost this node: register again now (at most every MIN_REREGISTER seconds)."""
        self.note(("forgotten", why), logging.WARNING, "%s forgot this node (%s): registering again",
                  self.relay.name, why)
        self.next_register = min(self.next_register, self.registered_mono + MIN_REREGISTER)

    async def send_metrics(self):
        d = self.daemon
        report = d.report(self)
        if report is None:
            self.note(("metrics", "unmeasured"), logging.INFO,
                      "metrics report to %s waits for its first figures (ping round trips)", self.relay.name)
            return
        body = {"nodeId": self.cfg.node_id, "timestamp": int(time.time() * 1000), "metrics": report}
        try:
            await rest.call(self.relay.api, "POST", "/api/v1/metrics", body, token=self.token,
                            context=d.ssl, timeout=self.cfg.connect_timeout)
        except rest.HttpError as exc:
            self.refused("metrics", exc)
        except OSError as exc:
            self.unreachable("metrics", exc)

    async def unregister(self):
        """DELETE the node at the relay (orderly stop); one retry after a 429 (at most 3 s later)."""
        if not self.token:
            return
        for attempt in (1, 2):
            try:
                await rest.call(self.relay.api, "DELETE", "/api/v1/nodes/%s" % self.cfg.node_id, token=self.token,
                                context=self.daemon.ssl, timeout=3.0)
                log.info("unregistered from %s", self.relay.name)
                break
            except rest.HttpError as exc:
                self.refused("unregister", exc)
                if exc.status != 429 or attempt == 2:
                    log.warning("unregistering from %s failed: HTTP %s %s", self.relay.name, exc.status,
                                say(exc.message))
                    break
                await asyncio.sleep(min(3.0, exc.retry_after))
            except OSError as exc:
                self.unreachable("unregister", exc)
                log.warning("unregistering from %s failed: %s", self.relay.name, say(exc))
                break
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
            raise LinkDown("cannot open %s: %s" % (url, say(exc))) from None
        self.ws = ws
        self.seen_in = 0
        self.ready = self.loop.create_future()
        self.version = 0
        ws.start(on_binary=self.from_relay, on_text=self.control, on_pong=self.pong, on_drain=self.queue.schedule)
        try:
            try:
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await asyncio.shield(self.ready)
            except TimeoutError:
                raise LinkDown("%s sent no 'connected' control frame" % self.relay.name) from None
            if ws.closed.done():
                code, reason = ws.closed.result()
                raise LinkDown("%s closed the socket (%s %s)" % (self.relay.name, code, say(reason)))
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
                           % (self.relay.name, up, code, ", " + say(reason) if reason else ""))
        finally:
            self.stats["connected"] = 0
            self.stats["protocol"] = 0
            self.stats["rtt"] = float("nan")
            ws.abort()
            self.ws = None
            self.queue.discard()

    def control(self, text):
        try:
            message = framing.parse_text(text)
        except framing.FrameError as exc:
            log.debug("ignored text frame from %s: %s", self.relay.name, exc)
            return
        if message["type"] != "control":
            return  # heartbeat frames of the relay need no answer
        payload = message.get("payload") or {}   # parse_text: an object or absent
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
        elif action in ("connect", "disconnect") and self.version == 2:
            sid = payload.get("session")
            if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid <= framing.SESSION_MAX:
                self.note(("bad control", action), logging.WARNING, "relay %s sent a %s control frame without a"
                          " valid session number (ignored): %s", self.relay.name, action, say(sid, 60))
            elif action == "connect":
                self.session(sid)
            elif sid in self.sessions:
                self.close_session(self.sessions[sid])
        elif action == "error":
            self.note(("error", say(payload.get("errorCode"), 40), say(payload.get("errorMessage"))), logging.WARNING,
                      "relay %s reports error %s: %s", self.relay.name,
                      say(payload.get("errorCode"), 40), say(payload.get("errorMessage")))

    def pong(self, rtt):
        self.stats["rtt"] = rtt
        self.rtts.append(rtt)
        self.pongs += 1

    def path_figures(self):
        """Latency and jitter (ms) from the recent ping round trips, pong loss (%) since the last call.

        None while no round trip has been measured.  Jitter is the mean
        difference between consecutive round trips (RFC 3550's estimator
        without its smoothing).  Loss counts pings to this relay that were
        never answered (the path is TCP: it shows stalls, not datagram loss).
        """
        rtts = list(self.rtts)
        if not rtts:
            return None
        latency = 1000.0 * sum(rtts) / len(rtts)
        jitter = (1000.0 * sum(abs(b - a) for a, b in zip(rtts, rtts[1:])) / (len(rtts) - 1)) if len(rtts) > 1 else 0.0
        pending = self.ws.pings_pending() if self.ws is not None else 0
        lost = max(0, self.pings_sent - self.pongs - pending)
        sent_before, lost_before = self.lost_mark
        self.lost_mark = (self.pings_sent, lost)
        sent = self.pings_sent - sent_before
        loss = min(100.0, 100.0 * max(0, lost - lost_before) / sent) if sent > 0 else 0.0
        return {"latency": round(latency, 2), "jitter": round(jitter, 2), "packetLoss": round(loss, 2)}

    def throughput(self):
        """Relay connection throughput (Mbit/s) up and down since the last call."""
        m = self.m
        now = time.monotonic()
        then, out_before, in_before = self.rate_mark
        self.rate_mark = (now, m.bytes_to_relay, m.bytes_from_relay)
        span = max(now - then, 1e-3)
        return {"up": round((m.bytes_to_relay - out_before) * 8 / span / 1e6, 3),
                "down": round((m.bytes_from_relay - in_before) * 8 / span / 1e6, 3)}

    async def keepalive(self):
        cfg = self.cfg
        now = time.monotonic()
        next_ping = now
        self.heartbeat_due = now + cfg.heartbeat_interval
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
                    self.pings_sent += 1
                    next_ping = now + cfg.ping_interval
                if now >= self.heartbeat_due:
                    self.heartbeat_due = math.inf   # until this heartbeat's answer sets the next one
                    pending.add(self.daemon.spawn(self._heartbeat()))
                if now >= next_metrics:
                    next_metrics = now + cfg.metrics_interval
                    pending.add(self.daemon.spawn(self.send_metrics()))
                self.daemon.nat.refresh()
                if self.daemon.nat.generation != self.nat_generation and self.next_register != math.inf:
                    # the NAT state changed what the relay's route choice depends on: tell it (no storm:
                    # not sooner than MIN_REREGISTER after the last registration)
                    self.next_register = min(self.next_register, self.registered_mono + MIN_REREGISTER)
                if now >= self.next_register:
                    self.next_register = math.inf   # register() sets the next one
                    pending.add(self.daemon.spawn(self._reregister()))
                self.sweep()
                pending = {t for t in pending if not t.done()}
                await asyncio.sleep(min(1.0, cfg.ping_interval))
        finally:
            for task in pending:
                task.cancel()

    async def _heartbeat(self):
        wait = self.cfg.heartbeat_interval
        try:
            wait = await self.heartbeat()
        finally:
            self.heartbeat_due = time.monotonic() + wait

    async def _reregister(self):
        try:
            await self.register()
        except LinkDown as exc:
            if not exc.quiet:
                log.warning("re-registration: %s", exc)

    # data path ----------------------------------------------------------------
    def session(self, sid):
        found = self.sessions.get(sid)
        if found is not None:
            return found
        if self.m.sessions >= self.cfg.max_sessions and not self.evict():
            self.m.sessions_refused += 1
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

    def evict(self) -> bool:
        """Close this link's longest-idle session if it has been idle EVICT_IDLE seconds (table full).

        Sessions someone opened and left (or opened only to fill the table)
        give way to a new client; sessions carrying traffic are never closed.
        The scan runs only when the table is full, and not again before the
        oldest session could have become evictable.
        """
        now = time.monotonic()
        if now < self.evict_after or not self.sessions:
            return False
        oldest = min(self.sessions.values(), key=lambda s: s.last)
        if now - oldest.last < EVICT_IDLE:
            self.evict_after = oldest.last + EVICT_IDLE
            return False
        log.debug("session %s idle for %.0f s, closed for a new one", oldest.sid, now - oldest.last)
        self.close_session(oldest)
        self.m.sessions_evicted += 1
        return True

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
        recv = session.sock.recv
        sid = session.sid
        connected = self.ws is not None and self.ws.is_open
        if connected and self.version == 1:
            self.no_return_path(session)
            return
        batch = []
        append = batch.append
        count = size = 0
        try:
            for _ in range(self.cfg.burst):
                data = recv(65535)
                count += 1
                size += len(data)
                if connected:
                    append((sid, data))
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
        self.queue.extend(batch)

    def no_return_path(self, session):
        """Protocol 1 (reference server): it drops node-to-client frames (after a database query each).

        Nothing is sent; the datagrams are counted as dropped (no_return_path)
        and the link warns once.
        """
        count = 0
        try:
            for _ in range(self.cfg.burst):
                session.sock.recv(65535)
                count += 1
        except OSError:
            pass
        if count:
            session.last = time.monotonic()
            self.m.drop("no_return_path", count)
            if not self.v1_warned:
                self.v1_warned = True
                log.warning("relay %s speaks protocol 1, which has no node-to-client path over the socket: WireGuard's"
                            " answers are dropped here (counted as no_return_path); use a protocol-2 relay for"
                            " traffic", self.relay.name)

    def pack(self, items):
        """The frames carrying ``items`` ((session id, datagram)), for the send queue: a run of one session's
        datagrams goes into its batches, tagged with the session id on protocol 2."""
        tagged = self.version == 2
        frames = []
        group = []
        current = None
        for sid, data in items:
            if sid != current and group:
                self._pack(current, group, frames, tagged)
                group = []
            current = sid
            group.append(data)
        if group:
            self._pack(current, group, frames, tagged)
        return frames

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


class NatState:
    """natType and stunMappedAddress measured by the nat_traversal role's agent, from its state file.

    The file is read again only when it changed (mtime, size, inode), at most
    MAX_NAT_STATE bytes.  A missing, oversized or malformed file, or values the
    relay would refuse, leave the configured network values in place (logged
    once per distinct problem).  ``generation`` counts changes of what the
    relay's route choice depends on (natType, route, endpoint): a link
    registers again when it registered an older generation.
    """

    def __init__(self, path):
        self.path = path
        self.stamp = None
        self.values = None
        self.key = None
        self.generation = 0
        self.problem = None

    def refresh(self):
        if not self.path:
            return
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self.stamp:
            return
        self.stamp = stamp
        values, problem = self.read() if stamp else (None, None)
        if problem and problem != self.problem:
            log.warning("NAT state %s not used: %s", self.path, problem)
        self.problem = problem
        self.values = values
        key = values and (values["nat_type"], values["route"], values["endpoint"])
        if key != self.key:
            self.key = key
            self.generation += 1
            if values:
                log.info("NAT state: natType %s, %s route", values["nat_type"], values["route"])

    def read(self):
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_NAT_STATE + 1)
        except OSError as exc:
            return None, say(exc)
        if len(raw) > MAX_NAT_STATE:
            return None, "larger than %d bytes" % MAX_NAT_STATE
        try:
            data = json.loads(raw)
        except ValueError:
            return None, "not JSON"
        if not isinstance(data, dict):
            return None, "not a JSON object"
        values = {key: data.get(key) for key in ("nat_type", "stun_mapped_address", "route", "endpoint")}
        for key, check in (("nat_type", config._nat_type), ("stun_mapped_address", config._mapped_address),
                           ("endpoint", config._mapped_address)):
            problem = check(values[key])
            if problem:
                return None, "%s %s" % (key, problem)
        if values["route"] not in ("direct", "relay"):
            return None, "route must be direct or relay, not %r" % (values["route"],)
        return values, None


def announced_stun_servers(entries, refused=None) -> list:
    """``host:port`` of a registration answer's ``stunServers`` ({"host", "port"}), at most MAX_STUN_SERVERS.

    The answer comes from a relay, which is not trusted: only a host name or
    an IP address that is not loopback, unspecified, multicast or link-local,
    with a port 1..65535, counts, from the first 64 entries; a host skipped
    for its value goes to ``refused`` (made safe for a log line).
    """
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries[:64]:
        if len(found) >= MAX_STUN_SERVERS:
            break
        host, port = (entry.get("host"), entry.get("port")) if isinstance(entry, dict) else (None, None)
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            continue
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if config._HOSTNAME.fullmatch(host):
                found.append("%s:%d" % (host, port))
            elif refused is not None:
                refused.append(say(host, 80))
            continue
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
            if refused is not None:
                refused.append(host)
            continue
        found.append("[%s]:%d" % (ip, port) if ip.version == 6 else "%s:%d" % (ip, port))
    return found


class StunServers:
    """The relay-announced STUN servers, written for the NAT agent (``{"stun_servers": ["host:port", ...]}``).

    The file lives in the unit's RuntimeDirectory (``$RUNTIME_DIRECTORY``;
    nothing is written without one): replaced atomically, mode 0644 (the
    agent runs as another user), only when the list changed.  The latest
    registration answer wins.
    """

    def __init__(self, directory):
        self.path = os.path.join(directory.split(":")[0], STUN_FILE) if directory else ""
        self.written = None

    def update(self, link, entries):
        refused = []
        servers = announced_stun_servers(entries, refused)
        for host in refused:
            link.note(("stun", host), logging.WARNING, "STUN server %s announced by %s refused", host, link.relay.name)
        if not self.path or servers == self.written:
            return
        text = json.dumps({"stun_servers": servers}) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".stun-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            link.note(("stun-file", str(exc.errno)), logging.WARNING, "cannot write %s: %s", self.path, say(exc))
            return
        self.written = servers
        log.info("STUN servers announced by %s: %s", link.relay.name, ", ".join(servers) or "none")


class Daemon:
    def __init__(self, cfg: config.Config):
        self.cfg = cfg
        self.nat = NatState(cfg.nat_state_file)
        self.stun = StunServers(os.environ.get("RUNTIME_DIRECTORY", ""))
        self.loop = asyncio.get_running_loop()
        self.metrics = metrics.Metrics([r.name for r in cfg.relays])
        self.ssl = rest.ssl_context(cfg.ca_file) if any(r.tls for r in cfg.relays) else None
        self.local_host = "::1" if ":" in cfg.wireguard_host else "127.0.0.1"
        self.links = [Link(self, r) for r in cfg.relays]
        self.discovered = 0
        self.tasks = []
        self.stopping = asyncio.Event()
        self.failure = None        # the unexpected error that stops the daemon
        self.system = System()
        self.loop.set_exception_handler(self.loop_error)

    def spawn(self, coro):
        """A task whose unexpected failure stops the daemon (logged, exit 70) instead of vanishing."""
        task = self.loop.create_task(coro)
        task.add_done_callback(self.task_done)
        return task

    def task_done(self, task):
        if not task.cancelled() and task.exception() is not None:
            self.fail(task.exception(), "task %s" % task.get_coro().__qualname__)

    def fail(self, exc, where):
        if self.failure is None:
            self.failure = exc
            log.critical("unexpected error in %s, stopping: %s", where, exc, exc_info=exc)
        self.stopping.set()

    def loop_error(self, loop, context):
        exc = context.get("exception")
        if exc is None or isinstance(exc, OSError):   # transport trouble: the link notices and reconnects
            log.warning("%s%s", context.get("message"), ": %s" % say(exc) if exc else "")
            return
        self.fail(exc, context.get("message") or "a callback")

    def discover(self, link, entries):
        """Add the relays ``link``'s relay announced after the known ones (at most MAX_DISCOVERED in all).

        In failover mode they extend the list walked on failure; in mode
        ``all`` each gets a link of its own.
        """
        known = {other.relay.name for other in self.links}
        refused = []
        learnt = config.announced_relays(entries, link.relay, config.MAX_DISCOVERED + len(known), refused)
        for where, why in refused:
            link.note(("announced", where), logging.WARNING, "relay %s announced by %s refused: %s",
                      say(where, 80), link.relay.name, why)
        for relay in learnt:
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
                self.tasks.append(self.spawn(self.keep([new])))

    def stable(self, link, seconds):
        """The link stayed up ``seconds``: the next retry starts the backoff schedule again."""
        if seconds >= self.cfg.stable_after and link.pause is not None:
            link.pause.reset()

    # registration payloads ------------------------------------------------------
    def registration(self, link):
        """The register body in exactly the server's shape (config.validate checked every value)."""
        cfg = self.cfg
        net = cfg.network
        self.nat.refresh()
        link.nat_generation = self.nat.generation
        if self.nat.values:
            net = dict(net, nat_type=self.nat.values["nat_type"],
                       stun_mapped_address=self.nat.values["stun_mapped_address"])
        cap = cfg.capabilities
        loc = cfg.location
        body = {
            "nodeId": cfg.node_id,
            "publicKey": cfg.public_key,
            "networkInfo": {
                "ipv4": net.get("ipv4") or "0.0.0.0",
                "ipv6": net.get("ipv6"),
                "natType": net.get("nat_type", "FullCone"),
                "stunMappedAddress": net.get("stun_mapped_address"),
                "localPort": net.get("local_port", cfg.wireguard_port),
            },
            "capabilities": {
                "maxConnections": cap.get("max_connections", cfg.max_sessions),
                "bandwidth": {"up": cap.get("bandwidth_up", 100), "down": cap.get("bandwidth_down", 100)},
                "routing": cap.get("routing", True),
                "natting": cap.get("natting", True),
            },
            "location": {
                "country": loc.get("country", "ZZ").upper(),
                "region": loc.get("region", ""),
                "coordinates": loc.get("coordinates"),
            },
            "heartbeatInterval": int(cfg.heartbeat_interval),
        }
        figures = self.node_metrics(link, heartbeat=False)
        if figures is not None:   # optional: left out until measured (the first registration)
            body["metrics"] = figures
        return body

    def node_metrics(self, link, heartbeat=True):
        """Heartbeat (or registration) metrics, all measured; None while a figure is not."""
        path = link.path_figures()
        cpu, memory = self.system.cpu(), self.system.memory()
        if path is None or cpu is None or memory is None:
            return None
        figures = dict(path, cpuUsage=cpu, memoryUsage=memory)
        if heartbeat:
            figures["activeConnections"] = self.metrics.sessions
            figures["bandwidth"] = link.throughput()
        return figures

    def report(self, link):
        """The metrics report body (every key the server requires); None while a figure is not measured."""
        m = self.metrics
        path = link.path_figures()
        system = self.system.figures()
        if path is None or system is None:
            return None
        return {
            "network": dict(path, bandwidth=link.throughput()),
            "system": system,
            "wireguard": {
                # datagrams this connector carried between the relay and the local WireGuard port
                "packets": {"sent": m.datagrams_to_relay, "received": m.datagrams_from_relay,
                            "errors": sum(m.drops.values())},
                "bytes": {"sent": m.wireguard_bytes_to_relay, "received": m.wireguard_bytes_from_relay},
            },
            "connections": {"active": m.sessions, "total": m.sessions_opened, "failed": m.sessions_refused},
        }

    # supervision -------------------------------------------------------------------
    async def keep(self, links):
        """Keep one link up, walking through ``links`` on failure (failover).

        A relay's Retry-After holds back that relay only: failover moves on
        to the next relay at once (after the backoff), and waits for a
        Retry-After only when every relay asked for one.  One Backoff per
        supervisor, shared by its links, is what ``stable()`` resets.
        """
        index = 0
        pause = backoff.Backoff(self.cfg.backoff_base, self.cfg.backoff_cap)
        while not self.stopping.is_set():
            link = links[index % len(links)]
            link.pause = pause
            try:
                await link.serve()
            except LinkDown as exc:
                if self.stopping.is_set():
                    break          # an orderly stop closed the socket: nothing to retry
                now = time.monotonic()
                if exc.wait:
                    link.not_before = now + exc.wait
                link.stats["reconnects"] += 1
                index, wait = next_relay(links, index, now, pause.next())
                if not exc.quiet:
                    if len(links) > 1:
                        log.warning("%s; trying %s in %.1f s", exc, links[index].relay.name, wait)
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
        # failover: one supervisor walking the links list itself, so that discovered relays join the walk
        groups = [[link] for link in self.links] if cfg.relay_mode == "all" else [self.links]
        self.tasks.extend(self.spawn(self.keep(links)) for links in groups)
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


def next_relay(links, index, now, wait):
    """(index, seconds) of the next attempt after links[index] failed and the backoff says ``wait``.

    In failover the walk moves to the next relay not holding us off with a
    Retry-After; if every relay is, it waits for the one free first.
    """
    count = len(links)
    candidates = [(index + step) % count for step in range(1, count + 1)]
    for candidate in candidates:
        if links[candidate].not_before <= now + wait:
            return candidate, wait
    first = min(candidates, key=lambda i: links[i].not_before)
    return first, max(wait, links[first].not_before - now)


def reregister_delay(interval, expires_in):
    """Seconds until the next periodic registration: the interval, or 10 minutes before the token
    expires, never sooner than MIN_REREGISTER (an expiresAt in the past must not cause a storm)."""
    if expires_in is not None:
        interval = min(interval, expires_in - 600)
    return max(MIN_REREGISTER, interval)


class System:
    """CPU, memory, disk and load of the node, from /proc and statvfs (readable unprivileged)."""

    MIN_SPAN = 100   # jiffies (all CPUs) a CPU figure spans at least: shorter ones are noise

    def __init__(self):
        self.cpu_mark = _cpu_times()
        self.cpu_last = None

    def cpu(self):
        """Busy share of all CPUs (%) since the previous figure; None if /proc/stat is unreadable.

        Until MIN_SPAN jiffies have passed, the previous figure (or the
        average since boot) is returned and the mark is kept.
        """
        now = _cpu_times()
        if now is None:
            return None
        before = self.cpu_mark
        if before is None or now[1] - before[1] < self.MIN_SPAN:
            if before is None:
                self.cpu_mark = now
            return self.cpu_last if self.cpu_last is not None else _busy(now[0], now[1])
        self.cpu_mark = now
        self.cpu_last = _busy(now[0] - before[0], now[1] - before[1])
        return self.cpu_last

    @staticmethod
    def memory():
        try:
            info = {}
            with open("/proc/meminfo", encoding="ascii") as handle:
                for line in handle:
                    key, value = line.split(":", 1)
                    info[key] = int(value.split()[0])
            return round(100.0 * (1 - info["MemAvailable"] / info["MemTotal"]), 1)
        except (OSError, ValueError, KeyError, ZeroDivisionError):
            return None

    @staticmethod
    def disk():
        try:
            st = os.statvfs("/")
            return round(100.0 * (1 - st.f_bavail / st.f_blocks), 1) if st.f_blocks else None
        except OSError:
            return None

    @staticmethod
    def load():
        try:
            with open("/proc/loadavg", encoding="ascii") as handle:
                return float(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def figures(self):
        found = {"cpuUsage": self.cpu(), "memoryUsage": self.memory(), "diskUsage": self.disk(),
                 "loadAverage": self.load()}
        return None if None in found.values() else found


def _busy(idle, total):
    return round(min(100.0, max(0.0, 100.0 * (1 - idle / total))), 1) if total > 0 else None


def _cpu_times():
    """(idle + iowait, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])
    except (OSError, ValueError, IndexError):
        return None


async def _main(cfg):
    daemon = Daemon(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        daemon.loop.add_signal_handler(sig, daemon.stopping.set)
    await daemon.run()
    return daemon.failure


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
    failure = run(_main(cfg), cfg.uvloop)
    if failure is not None:
        log.error("stopped after an unexpected error (exit %d; systemd restarts the service)", EX_SOFTWARE)
        return EX_SOFTWARE
    log.info("stopped")
    return 0
