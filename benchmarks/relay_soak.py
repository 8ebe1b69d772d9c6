"""The collection's relay under outsider floods, with a legitimate node and client throughout (prints figures).

    python3 benchmarks/relay_soak.py [--seconds 60] [--floods ping,clientid,routing,register,partial,halfsent,junk]

Starts ``higgs_relay.server`` on loopback with its defaults (a registration token, rate limits on),
registers a node (node socket, heartbeats every 10 s) and opens a client session to it; the client
sends a datagram every 20 ms, the node echoes it.  Then each flood runs for ``--seconds`` from other
loopback addresses (127.0.0.2 and up: outsiders are other sources):

- ``ping``: client sockets that send pings and never read (re-opened when cut off);
- ``clientid``: routing requests with a 1 MB ``clientId``;
- ``routing``: routing requests as fast as they are answered, from 8 sources;
- ``register``: 1 MB registration bodies and registrations with a forged token;
- ``partial``: 150 connections at a time sending a body byte by byte, never finishing;
- ``halfsent``: 3 000 connections with half a request head each;
- ``junk``: upgrades to unknown ids followed by megabytes of junk.

Figures per flood: the relay's peak RSS and open descriptors (from /proc), the datagrams the
legitimate client sent and got back, and whether its node socket or client socket dropped.
Nothing is asserted.  Needs the websockets library (sync client, websockets >= 12).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "soak-registration-token-0123456789"
FLOODS = ("ping", "clientid", "routing", "register", "partial", "halfsent", "junk")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(port, method, path, body=b"", token="", source="127.0.0.1", timeout=5.0):
    head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n" % (method, path, len(body))
    if token:
        head += "Authorization: Bearer %s\r\n" % token
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    status = int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data.partition(b"\r\n\r\n")[2]


def registration(node_id):
    return {"nodeId": node_id, "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
            "networkInfo": {"ipv4": "192.0.2.1", "ipv6": None, "natType": "Symmetric", "stunMappedAddress": None,
                            "localPort": 51820},
            "capabilities": {"maxConnections": 128, "bandwidth": {"up": 10, "down": 10}, "routing": True,
                             "natting": True},
            "location": {"country": "DE", "region": "soak", "coordinates": None}}


def routing_body(node_id, client_id=None):
    return json.dumps({"clientId": client_id or str(uuid.uuid4()), "targetNodeId": node_id,
                       "clientNetworkInfo": {"ipv4": "0.0.0.0", "natType": "Symmetric"}}).encode()


class Legit:
    """A node and a client: the client sends a datagram every 20 ms, the node echoes it back."""

    def __init__(self, port):
        self.port = port
        self.node_id = str(uuid.uuid4())
        self.sent = self.got = self.node_drops = self.client_drops = 0
        self.stop = threading.Event()
        status, answer = http(port, "POST", "/api/v1/nodes/register", json.dumps(registration(self.node_id)).encode(),
                              TOKEN)
        assert status == 201, answer
        self.node_token = json.loads(answer)["sessionToken"]
        self.node = self.node_socket()
        status, answer = http(port, "POST", "/api/v1/routing/request", routing_body(self.node_id))
        assert status == 200, answer
        self.route = json.loads(answer)
        self.client = self.client_socket()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self.echo, self.talk, self.heartbeat)]
        for thread in self.threads:
            thread.start()

    def node_socket(self):
        ws = connect("ws://127.0.0.1:%d/relay/%s" % (self.port, self.node_id), open_timeout=10,
                     additional_headers={"Authorization": "Bearer " + self.node_token})
        ws.recv(timeout=10)   # connected
        return ws

    def client_socket(self):
        ws = connect("ws://127.0.0.1:%d/relay/%s" % (self.port, self.route["sessionId"]), open_timeout=10,
                     additional_headers={"Authorization": "Bearer " + self.route["sessionToken"]})
        ws.recv(timeout=10)
        return ws

    def heartbeat(self):
        while not self.stop.wait(10):
            http(self.port, "POST", "/api/v1/nodes/%s/heartbeat" % self.node_id, b"{}", self.node_token)

    def echo(self):
        while not self.stop.is_set():
            try:
                frame = self.node.recv(timeout=1)
            except TimeoutError:
                continue
            except Exception as exc:   # any end of the node socket counts as a drop
                if self.stop.is_set():
                    return
                self.node_drops += 1
                print("node socket dropped: %r (%r)" % (exc, exc.__cause__), file=sys.stderr)
                time.sleep(0.5)
                self.node = self.node_socket()
                continue
            if isinstance(frame, bytes):
                self.node.send(frame)

    def talk(self):
        while not self.stop.is_set():
            try:
                self.client.send(b"\x04\0\0\0" + struct.pack(">Q", self.sent) + b"x" * 100)
                self.sent += 1
                while True:
                    reply = self.client.recv(timeout=0.02)
                    if isinstance(reply, bytes):
                        self.got += 1
            except TimeoutError:
                continue
            except Exception as exc:   # any end of the client socket counts as a drop
                if self.stop.is_set():
                    return
                self.client_drops += 1
                print("client socket dropped: %r (%r)" % (exc, exc.__cause__), file=sys.stderr)
                time.sleep(0.5)
                status, answer = http(self.port, "POST", "/api/v1/routing/request", routing_body(self.node_id))
                if status == 200:
                    self.route = json.loads(answer)
                    self.client = self.client_socket()

    def close(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        for ws in (self.client, self.node):
            ws.close()


def flood(kind, port, legit, until, counter):
    """One attacker thread's loop; ``counter`` counts its requests."""
    index = int(threading.current_thread().name.rsplit("-", 1)[1])
    source = "127.0.0.%d" % (2 + index % 200)
    while time.monotonic() < until:
        counter[0] += 1
        try:
            if kind == "ping":
                status, answer = http(port, "POST", "/api/v1/routing/request", routing_body(legit.node_id),
                                      source=source)
                if status != 200:
                    time.sleep(0.2)
                    continue
                route = json.loads(answer)
                sock = upgrade(port, route["sessionId"], route["sessionToken"], source)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125
                with sock:
                    while time.monotonic() < until:
                        sock.sendall(ping * 256)
            elif kind == "clientid":
                http(port, "POST", "/api/v1/routing/request", routing_body(legit.node_id, "x" * (1 << 20)),
                     source=source)
            elif kind == "routing":
                http(port, "POST", "/api/v1/routing/request", routing_body(legit.node_id), source=source)
            elif kind == "register":
                big = json.dumps(dict(registration(str(uuid.uuid4())), publicKey="k" * (1 << 20))).encode()
                http(port, "POST", "/api/v1/nodes/register", big, TOKEN, source=source)
                http(port, "POST", "/api/v1/nodes/register", json.dumps(registration(legit.node_id)).encode(),
                     "forged-token-forged-token", source=source)
            elif kind == "partial":
                hold(port, source, until, 10, b"POST /api/v1/routing/request HTTP/1.1\r\nContent-Length: 9000\r\n\r\n",
                     slow=True)
            elif kind == "halfsent":
                hold(port, source, until, 200, b"POST /api/v1/routing/request HTTP/1.1\r\nHost: x\r\n")
            elif kind == "junk":
                with upgrade(port, str(uuid.uuid4()), "", source) as sock:
                    while time.monotonic() < until:
                        sock.sendall(b"\0" * 65536)
        except OSError:
            time.sleep(0.01)


def hold(port, source, until, count, head, slow=False):
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
            sock.sendall(head)
            socks.append(sock)
        while time.monotonic() < until and socks:
            time.sleep(0.5)
            for sock in list(socks):
                try:
                    if slow:
                        sock.sendall(b" ")
                    else:
                        sock.setblocking(False)
                        if sock.recv(1024) == b"":
                            raise OSError
                except BlockingIOError:
                    pass
                except OSError:
                    socks.remove(sock)
                    sock.close()
    finally:
        for sock in socks:
            sock.close()


def upgrade(port, ident, token, source):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    lines = ["GET /relay/%s HTTP/1.1" % ident, "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if token:
        lines.append("Authorization: Bearer " + token)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1)
        if not chunk:
            raise OSError("closed during the upgrade")
        answer += chunk
    return sock


def sample(pid):
    with open("/proc/%d/status" % pid) as handle:
        rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    return rss / 1024.0, len(os.listdir("/proc/%d/fd" % pid))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each flood (report 60)")
    parser.add_argument("--floods", default=",".join(FLOODS))
    parser.add_argument("--threads", type=int, default=8, help="attacker threads per flood")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="relay-soak-")
    token_file = Path(directory) / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    relay = subprocess.Popen([sys.executable, "-m", "higgs_relay.server", "--listen", "127.0.0.1:%d" % port,
                              "--auth-token-file", str(token_file), "--log-level", "warning"],
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                http(port, "GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        legit = Legit(port)
        idle_rss, idle_fds = sample(relay.pid)
        print("relay idle: RSS %.1f MB, %d fds" % (idle_rss, idle_fds))
        print("%-9s %9s %8s %9s %10s %8s %11s %12s" % ("flood", "requests", "peak MB", "peak fds", "legit sent",
                                                       "answered", "node drops", "client drops"))
        for kind in args.floods.split(","):
            before = (legit.sent, legit.got, legit.node_drops, legit.client_drops)
            until = time.monotonic() + args.seconds
            counter = [0]
            threads = [threading.Thread(target=flood, args=(kind, port, legit, until, counter), daemon=True,
                                        name="flood-%d" % n) for n in range(args.threads)]
            for thread in threads:
                thread.start()
            peak_rss, peak_fds = sample(relay.pid)
            while time.monotonic() < until:
                time.sleep(0.25)
                rss, fds = sample(relay.pid)
                peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
            for thread in threads:
                thread.join(15)
            time.sleep(0.5)
            print("%-9s %9d %8.1f %9d %10d %8d %11d %12d" % (
                kind, counter[0], peak_rss, peak_fds, legit.sent - before[0], legit.got - before[1],
                legit.node_drops - before[2], legit.client_drops - before[3]), flush=True)
            time.sleep(2.5)   # the relay's timers (closing sockets, request timeouts) settle between floods
        legit.close()
        counters = http(port, "GET", "/metrics")[1].decode().splitlines()
        shown = [line.replace("boson_relay_", "") for line in counters
                 if line.startswith("boson_relay_") and not line.endswith(" 0")]
        print("relay counters: " + ", ".join(shown))
        rss, fds = sample(relay.pid)
        print("relay after: RSS %.1f MB, %d fds; relay process %s" % (
            rss, fds, "running" if relay.poll() is None else "exited %s" % relay.returncode))
    finally:
        relay.terminate()
        relay.wait(10)


if __name__ == "__main__":
    main()
