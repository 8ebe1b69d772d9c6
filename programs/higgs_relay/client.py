"""Client-side connector: a local UDP port for wg-quick, carried over the relay.

    python3 -m higgs_relay.client --relay http://relay:3000 --node-id UUID --listen 127.0.0.1:51821

The client's WireGuard uses ``Endpoint = 127.0.0.1:51821``.  The connector
asks a relay for a session to the node (POST /api/v1/routing/request), opens
the client socket ``/relay/{sessionId}`` and carries datagrams both ways as
version-1 frames (single datagrams or batches).  On failure it backs off with
jitter and moves to the next relay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
import time
import uuid

from higgs_relay import backoff, config, framing, metrics, rest, sendqueue, udp, wsio
from higgs_relay.connector import run

log = logging.getLogger("boson-client")


class Client:
    def __init__(self, args):
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.relays = [config.parse_relay(url) for url in args.relay]
        self.metrics = metrics.Metrics([r.name for r in self.relays])
        self.ssl = rest.ssl_context(args.ca_file) if any(r.tls for r in self.relays) else None
        host, port = config.split_hostport(args.listen)
        self.sock = udp.open_socket(host, port, None, args.socket_buffer)
        self.peer = None
        self.queue = sendqueue.SendQueue(self.loop, args.queue_size, self.metrics, lambda: self.ws, self.pack)
        self.ws = None
        self.stopping = asyncio.Event()
        self.loop.add_reader(self.sock.fileno(), self.from_wireguard)

    def from_wireguard(self):
        recv = self.sock.recvfrom
        batch = []
        append = batch.append
        connected = self.ws is not None and self.ws.is_open
        got = size = 0
        peer = None
        try:
            for _ in range(self.args.burst):
                data, peer = recv(65535)
                got += 1
                size += len(data)
                if connected:
                    append(data)
        except OSError:   # drained (BlockingIOError), or an ICMP error of an earlier send
            pass
        if not got:
            return
        self.peer = peer
        m = self.metrics
        m.wireguard_bytes_to_relay += size
        if not connected:
            m.drop("not_connected", got)
            return
        self.queue.extend(batch)

    def pack(self, group):
        """The frames carrying ``group`` (datagrams), for the send queue."""
        frames, rejected = framing.pack(group, self.args.batch_max_count, self.args.batch_max_bytes,
                                        not self.args.no_batch)
        m = self.metrics
        m.drop("malformed", rejected)
        m.datagrams_to_relay += len(group) - rejected
        return frames

    def from_relay(self, data):
        m = self.metrics
        m.frames_from_relay += 1
        try:
            datagrams = framing.decode(data)
        except framing.FrameError:
            m.drop("malformed")
            return
        if self.peer is None:
            m.drop("not_connected", len(datagrams))
            return
        send = self.sock.sendto
        peer = self.peer
        count = len(datagrams)
        size = len(data) - (2 + 2 * count if count > 1 else 0)   # less the batch header
        for datagram in datagrams:
            try:
                send(datagram, peer)
            except OSError:
                m.drop("udp_send")
                count -= 1
                size -= len(datagram)
        m.datagrams_from_relay += count
        m.wireguard_bytes_from_relay += size

    async def session(self, relay):
        stats = self.metrics.relay(relay.name)
        try:
            answer = await rest.call(relay.api, "POST", "/api/v1/routing/request",
                                     {"clientId": self.args.client_id, "targetNodeId": self.args.node_id,
                                      "clientNetworkInfo": {"ipv4": "0.0.0.0", "natType": "Symmetric"}},
                                     context=self.ssl, timeout=10)
        except rest.HttpError as exc:
            stats["http_errors"] += 1
            raise ConnectionError("routing request to %s: %s" % (relay.name, exc)) from None
        route = answer.get("selectedRoute") or {}
        endpoint = str(route.get("relayEndpoint") or "")
        path = endpoint[endpoint.find("/relay/"):] if "/relay/" in endpoint else ""
        if not path:
            raise ConnectionError("%s answered no relay endpoint" % relay.name)
        # the session's token authenticates the client socket (the collection's relay requires it)
        token = str(route.get("sessionToken") or answer.get("sessionToken") or "")
        ws = await wsio.connect(relay.ws + path, ssl_context=self.ssl, timeout=10,
                                write_limit=self.args.write_buffer,
                                headers={"Authorization": "Bearer " + token} if token else None)
        ws.start(on_binary=self.from_relay, on_text=lambda text: None, on_drain=self.queue.flush,
                 on_pong=lambda rtt: stats.__setitem__("rtt", rtt))
        self.ws = ws
        stats["connected"] = 1
        stats["protocol"] = 2
        since = time.monotonic()
        log.info("session to node %s via %s", self.args.node_id, relay.name)
        try:
            while not ws.closed.done():
                if ws.pings_outstanding() > self.args.ping_timeout:
                    log.warning("no pong from %s: half-open, reconnecting", relay.name)
                    ws.abort()
                    break
                ws.ping()
                await asyncio.wait([ws.closed], timeout=self.args.ping_interval)
        finally:
            stats["connected"] = 0
            self.ws = None
            ws.abort()
            self.queue.discard()
        return time.monotonic() - since

    async def keep(self):
        pause = backoff.Backoff(0.5, self.args.backoff_cap)
        index = 0
        while not self.stopping.is_set():
            relay = self.relays[index % len(self.relays)]
            try:
                if await self.session(relay) >= 10:
                    pause.reset()
                problem = "%s closed the session" % relay.name
            except (OSError, ConnectionError, TimeoutError) as exc:
                problem = str(exc) or exc.__class__.__name__
            self.metrics.relay(relay.name)["reconnects"] += 1
            index += 1
            wait = pause.next()
            log.warning("%s; trying %s in %.1f s", problem, self.relays[index % len(self.relays)].name, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), wait)


async def _main(args):
    client = Client(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        client.loop.add_signal_handler(sig, client.stopping.set)
    server = None
    if args.metrics:
        host, port = config.split_hostport(args.metrics)
        server = await metrics.serve(client.metrics, host, port)
    task = client.loop.create_task(client.keep())
    await client.stopping.wait()
    task.cancel()
    if client.ws is not None:
        client.ws.close(1000, "client stopping")
    if server is not None:
        server.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="boson-client", description=__doc__.split("\n")[0])
    parser.add_argument("--relay", action="append", required=True, help="relay base URL (repeat for failover)")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", default="127.0.0.1:51821", help="local UDP address for wg-quick's Endpoint")
    parser.add_argument("--client-id", default=str(uuid.uuid4()), help="UUID (a random one by default)")
    parser.add_argument("--ca-file", default="")
    parser.add_argument("--metrics", default="127.0.0.1:9478", help="health/metrics address ('' to disable)")
    parser.add_argument("--no-batch", action="store_true")
    parser.add_argument("--batch-max-count", type=int, default=32)
    parser.add_argument("--batch-max-bytes", type=int, default=16384)
    parser.add_argument("--queue-size", type=int, default=2048)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--socket-buffer", type=int, default=1 << 20)
    parser.add_argument("--write-buffer", type=int, default=256 << 10)
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--ping-timeout", type=float, default=10.0)
    parser.add_argument("--backoff-cap", type=float, default=5.0, help="longest pause between attempts (s)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s", level=logging.INFO)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        for url in args.relay:
            config.parse_relay(url)
        config.split_hostport(args.listen)
    except ValueError as exc:
        parser.error("bad --relay or --listen: %s" % exc)
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", args.client_id):
        parser.error("--client-id %r is not a lowercase UUID" % args.client_id)
    run(_main(args), not args.no_uvloop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
