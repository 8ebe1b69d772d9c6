"""Attacks on the collection's relay from an outsider on loopback (issue 12): each one is refused or bounded.

The relay runs as a process with a registration token; the attacker knows node ids and session ids
(neither is a secret) but no token.  Everything is bounded in bytes and seconds.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("websockets.sync.client")
from fake_boson import registration
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "attack-test-registration-token"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Relay:
    def __init__(self, tmp_path, *options):
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        self.port = _free_port()
        self.log = tmp_path / "relay.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "higgs_relay.server", "--listen", "127.0.0.1:%d" % self.port,
                 "--public-host", "127.0.0.1", "--public-port", str(self.port), "--no-uvloop",
                 "--auth-token-file", str(token_file), *options], env=env, stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(self.log.read_text())

    def request(self, method, path, body=None, token="", headers=None, source="127.0.0.1", raw=None):
        """(status, headers text, body) of one request sent as raw bytes."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % self.port,
                 "Content-Length: %d" % len(data)]
        if token:
            lines.append("Authorization: Bearer " + token)
        lines += ["%s: %s" % item for item in (headers or {}).items()]
        with socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0)) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            answer = _read_all(sock)
        head, _, content = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), head.decode(), content

    def register(self, node_id, token=TOKEN):
        status, _, content = self.request("POST", "/api/v1/nodes/register", registration(node_id, 256), token)
        assert status in (200, 201), content   # (the status is tested in test_server_validation)
        return json.loads(content)["sessionToken"]

    def route(self, node_id, source="127.0.0.1"):
        body = {"clientId": str(uuid.uuid4()), "targetNodeId": node_id,
                "clientNetworkInfo": {"ipv4": "0.0.0.0", "natType": "Symmetric"}}
        status, _, content = self.request("POST", "/api/v1/routing/request", body, source=source)
        return status, json.loads(content) if status == 200 else content

    def ws(self, ident, token="", **kwargs):
        headers = {"Authorization": "Bearer " + token} if token else None
        return connect("ws://127.0.0.1:%d/relay/%s" % (self.port, ident), additional_headers=headers,
                       open_timeout=5, **kwargs)

    def counter(self, name):
        text = self.request("GET", "/metrics")[2].decode()
        for line in text.splitlines():
            if line.startswith("boson_relay_%s " % name):
                return int(line.split()[1])
        raise AssertionError("no %s in %s" % (name, text))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        return self.log.read_text()


def _read_all(sock):
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


@pytest.fixture
def relay(tmp_path, request):
    found = Relay(tmp_path, *getattr(request, "param", ()))
    yield found
    log = found.stop()
    assert "Traceback" not in log, log


def _connected(ws):
    frame = json.loads(ws.recv(timeout=5))
    assert frame["payload"]["action"] == "connected", frame
    return frame


def _node(relay):
    node_id = str(uuid.uuid4())
    token = relay.register(node_id)
    ws = relay.ws(node_id, token)
    _connected(ws)
    return node_id, token, ws


# 1 -------------------------------------------------------------------------------------------
def test_node_socket_needs_the_token_of_that_node(relay):
    node_id, _, node_ws = _node(relay)
    other_token = relay.register(str(uuid.uuid4()))
    for token in ("", "forged", other_token, TOKEN):
        with pytest.raises(InvalidStatus, match="401"):
            relay.ws(node_id, token)
    # the real node's socket was not replaced: it still gets its clients' datagrams
    status, route = relay.route(node_id)
    assert status == 200
    client = relay.ws(route["sessionId"], route["sessionToken"])
    _connected(client)
    assert json.loads(node_ws.recv(timeout=5))["payload"]["action"] == "connect"
    client.send(b"\x04\0\0\0attack")
    assert node_ws.recv(timeout=5)[4:] == b"\x04\0\0\0attack"
    client.close()
    node_ws.close()


def test_accepted_sockets_stay_open(relay):
    """Regression: the abort meant for refused upgrades (2 s) must not hit accepted sockets."""
    node_id, _, node_ws = _node(relay)
    _, route = relay.route(node_id)
    client = relay.ws(route["sessionId"], route["sessionToken"])
    _connected(client)
    node_ws.recv(timeout=5)   # connect
    time.sleep(3)
    client.send(b"\x04\0\0\0later")
    assert node_ws.recv(timeout=5)[4:] == b"\x04\0\0\0later"
    client.close()
    node_ws.close()


# 2 -------------------------------------------------------------------------------------------
def test_heartbeat_and_unregister_need_the_token_of_that_node(relay):
    node_id, token, node_ws = _node(relay)
    other_token = relay.register(str(uuid.uuid4()))
    for forged in ("x", other_token, TOKEN):
        assert relay.request("POST", "/api/v1/nodes/%s/heartbeat" % node_id, {}, forged)[0] == 401
        assert relay.request("DELETE", "/api/v1/nodes/" + node_id, None, forged)[0] == 401
    node_ws.ping()   # still connected, still registered
    assert relay.request("POST", "/api/v1/nodes/%s/heartbeat" % node_id, {}, token)[0] == 200
    assert relay.counter("auth_failures") == 6
    node_ws.close()


# 3 -------------------------------------------------------------------------------------------
def test_node_gets_session_numbers_only_and_client_sockets_need_their_token(relay):
    node_id, _, node_ws = _node(relay)
    _, route = relay.route(node_id)
    client = relay.ws(route["sessionId"], route["sessionToken"])
    _connected(client)
    connect_frame = node_ws.recv(timeout=5)
    assert route["sessionId"] not in connect_frame and route["sessionToken"] not in connect_frame
    assert isinstance(json.loads(connect_frame)["payload"]["session"], int)
    _, other = relay.route(node_id)
    for token in ("", "forged", other["sessionToken"]):
        with pytest.raises(InvalidStatus, match="401"):
            relay.ws(route["sessionId"], token)
    client.send(b"\x04\0\0\0still mine")   # the first client socket is still the session's
    assert node_ws.recv(timeout=5)[4:] == b"\x04\0\0\0still mine"
    client.close()
    node_ws.close()


# 4 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relay", [("--max-sessions-per-source", "8", "--routing-rate", "100")], indirect=True)
def test_one_source_cannot_fill_a_nodes_session_table(relay):
    node_id, _, node_ws = _node(relay)
    answers = [relay.route(node_id, source="127.0.0.2")[0] for _ in range(40)]
    assert answers.count(200) == 8 and answers.count(429) == 32
    assert relay.route(node_id, source="127.0.0.3")[0] == 200   # a real client elsewhere still gets one
    node_ws.close()


@pytest.mark.parametrize("relay", [("--routing-rate", "5", "--max-sessions-per-source", "100")], indirect=True)
def test_routing_requests_are_rate_limited(relay):
    node_id, _, node_ws = _node(relay)
    answers = [relay.route(node_id, source="127.0.0.2")[0] for _ in range(8)]
    assert answers == [200] * 5 + [429] * 3
    node_ws.close()


# 5 -------------------------------------------------------------------------------------------
# Two ways to the cut-off, both seen on loopback: the relay reads the pings faster than the kernel takes its
# pongs (its write buffer passes twice the limit), or the never-reading peer's tiny receive buffer makes both
# TCPs back off with the pongs held in the relay's kernel send queue (TCP_USER_TIMEOUT, --send-timeout).
@pytest.mark.parametrize("relay", [("--write-buffer", "65536", "--send-timeout", "3")], indirect=True)
def test_a_client_that_pings_but_never_reads_is_cut_off(relay):
    node_id, _, node_ws = _node(relay)
    _, route = relay.route(node_id)
    sock = _raw_upgrade(relay, route["sessionId"], route["sessionToken"])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = _masked(0x89, b"p" * 125)
    sent = 0
    with pytest.raises(OSError):   # reset by the relay long before 64 MB of pings
        sock.settimeout(30)
        while sent < 64 << 20:
            sock.sendall(ping * 512)
            sent += len(ping) * 512
    # on a loaded machine the send may time out while the relay still works through the pings
    # in its receive buffer: it cuts the reader off when it gets to them (bounded wait)
    for _ in range(60):
        if relay.counter("slow_readers"):
            break
        time.sleep(0.5)
    assert relay.counter("slow_readers") == 1
    sock.close()
    node_ws.close()


def test_oversized_bodies_are_refused_from_their_length(relay):
    for path, length in (("/api/v1/routing/request", 1 << 20), ("/api/v1/nodes/register", 20000)):
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n{" % (path.encode(), length))
            assert _read_all(sock).startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("relay", [("--claim-timeout", "1", "--node-expiry", "2", "--heartbeat", "1")], indirect=True)
def test_unclaimed_sessions_and_silent_nodes_expire(relay):
    node_id = str(uuid.uuid4())
    relay.register(node_id)
    assert relay.route(node_id)[0] == 200
    time.sleep(3.5)
    assert relay.counter("sessions") == 0 and relay.counter("nodes") == 0
    assert relay.counter("expired_sessions") == 1 and relay.counter("expired_nodes") == 1


# 6 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relay", [("--request-timeout", "1",)], indirect=True)
def test_half_sent_requests_are_closed(relay):
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
        sock.sendall(b"POST /api/v1/routing/request HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        socks.append(sock)
    for sock in socks:
        assert _read_all(sock).startswith(b"HTTP/1.1 408 ")
        sock.close()
    assert relay.counter("timeouts") == 20


def test_no_reading_after_a_refused_upgrade_or_a_protocol_error(relay):
    for ident, token in ((str(uuid.uuid4()), ""), (None, None)):
        if ident is None:   # a protocol error on an accepted client socket
            node_id, _, node_ws = _node(relay)
            _, route = relay.route(node_id)
            sock = _raw_upgrade(relay, route["sessionId"], route["sessionToken"])
            sock.sendall(_masked(0x83, b"reserved opcode"))
            node_ws.close()
        else:               # accepted, then closed 1008 Invalid session
            sock = _raw_upgrade(relay, ident, token)
        sent = 0
        sock.settimeout(5)
        with pytest.raises(OSError):
            while sent < 64 << 20:
                sock.sendall(b"\0" * 65536)
                sent += 65536
        assert sent < 8 << 20, sent
        sock.close()


# 7 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relay", [("--node-rate", "3",)], indirect=True)
def test_junk_requests_do_not_spend_a_nodes_budget(relay):
    node_id = str(uuid.uuid4())
    for _ in range(5):
        relay.request("POST", "/api/v1/nodes/%s/heartbeat" % node_id, {}, "junk")
        relay.request("POST", "/api/v1/nodes/register", registration(node_id, 256), "junk")
    token = relay.register(node_id)   # the real node is not rate-limited by them
    assert relay.request("POST", "/api/v1/nodes/%s/heartbeat" % node_id, {}, token)[0] == 200


@pytest.mark.parametrize("relay", [("--node-rate", "2", "--trusted-proxy", "127.0.0.1")], indirect=True)
def test_forwarded_for_is_believed_from_a_trusted_proxy_only(relay):
    def junk(forwarded, source="127.0.0.1"):
        return relay.request("POST", "/api/v1/nodes/register", {}, "junk", {"X-Forwarded-For": forwarded},
                             source=source)[0]

    assert [junk("198.51.100.1") for _ in range(3)] == [401, 401, 429]
    assert junk("198.51.100.2") == 401   # another client behind the proxy has its own budget
    # not from the proxy: the header is ignored and the peer (127.0.0.2) is counted
    assert [junk("198.51.100.%d" % n, "127.0.0.2") for n in range(3)] == [401, 401, 429]


# 8 -------------------------------------------------------------------------------------------
def test_the_relay_needs_a_token_and_listens_on_loopback_by_default(tmp_path):
    out = subprocess.run([sys.executable, "-m", "higgs_relay.server"], capture_output=True, text=True,
                         timeout=20, check=False)
    assert out.returncode == 2 and "--auth-token-file is required" in out.stderr
    (tmp_path / "short").write_text("short\n")
    out = subprocess.run([sys.executable, "-m", "higgs_relay.server", "--auth-token-file", str(tmp_path / "short")],
                         capture_output=True, text=True, timeout=20, check=False)
    assert out.returncode == 78 and "16-512 printable" in out.stderr
    from higgs_relay import server
    args = server.parse_args(["--no-auth"])
    assert args.listen == "127.0.0.1:3000" and args.node_rate > 0 and args.routing_rate > 0


def test_metrics_are_for_loopback_only(relay):
    assert relay.request("GET", "/metrics")[0] == 200
    assert relay.request("GET", "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 403


# 9 -------------------------------------------------------------------------------------------
def test_malformed_requests_get_400_without_a_traceback(relay):
    for raw_request in (b"POST /api/v1/routing/request HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                        b"POST /api/v1/routing/request HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
                        b"\xff\xfe / HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            sock.sendall(raw_request)
            assert _read_all(sock).startswith(b"HTTP/1.1 400 "), raw_request
    nested = b"[" * 8000 + b"]" * 8000
    assert relay.request("POST", "/api/v1/routing/request", raw=nested[:16000])[0] == 400
    assert relay.request("POST", "/api/v1/routing/request", raw=b"{not json")[0] == 400


def test_fuzzed_requests_leave_the_relay_healthy(relay):
    """Random and mutated requests (seeded): every one is answered or closed; the relay keeps serving."""
    rng = random.Random(12)
    good = (b"POST /api/v1/nodes/register HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Length: %d\r\n\r\n")
    body = json.dumps(registration(str(uuid.uuid4()), 256)).encode()
    for index in range(300):
        sample = bytearray(good % len(body) + body)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(sample))
            sample[position:position + rng.randint(0, 4)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
        if index % 10 == 0:
            sample = bytearray(rng.randbytes(rng.randint(1, 3000)))
        with socket.create_connection(("127.0.0.1", relay.port), timeout=3) as sock:
            sock.sendall(sample)
            sock.shutdown(socket.SHUT_WR)
            _read_all(sock)
    assert relay.request("GET", "/health")[0] == 200
    assert relay.counter("http_connections") == 1   # this request itself: none of the fuzzed ones is held


def _raw_upgrade(relay, ident, token):
    """A WebSocket upgrade on a plain socket (frames written by hand afterwards)."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=5)
    lines = ["GET /relay/%s HTTP/1.1" % ident, "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if token:
        lines.append("Authorization: Bearer " + token)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


def _masked(first, payload):
    key = b"\x01\x02\x03\x04"
    return struct.pack("!BB", first, 0x80 | len(payload)) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
