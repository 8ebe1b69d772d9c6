"""End to end on loopback: relay, node connector and client connector as processes.

Needs the websockets library (python3-websockets on Debian); skipped without it.
Run it on a lab image to cover each Debian release (the lab images have no
pytest; the controller's pure-Python one works on both):
``docker run --rm -v $PWD:/c:ro -w /c -e PYTHONPATH=/c/.venv/lib/python3.11/site-packages:/c/programs
--entrypoint python3 higgs-lab:trixie -m pytest -q -p no:cacheprovider tests/unit/relay``
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("websockets")
from fake_boson import KEY, registration

ROOT = Path(__file__).resolve().parents[3]

TOKEN = "test-registration-token-0123456789"   # the relays' registration token (--auth-token-file)


def _token_file():
    """A file holding TOKEN (the relay requires one, the node connector reads it from a file)."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / ("higgs-relay-test-token-%d" % os.getpid())
    if not path.exists():
        path.write_text(TOKEN + "\n")
    return str(path)


def _free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _get(url):
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.read().decode()


def _relay(port, *options):
    """A relay on 127.0.0.1:port announcing itself as such; waits until it answers."""
    proc = _spawn("-m", "higgs_relay.server", "--listen", "127.0.0.1:%d" % port, "--public-host", "127.0.0.1",
                  "--public-port", str(port), "--heartbeat", "2", "--no-uvloop", "--auth-token-file", _token_file(),
                  *options)
    assert _wait(lambda: "ok" in _get("http://127.0.0.1:%d/health" % port)), proc
    return proc


def _connector(directory, node_id, relay_ports, wireguard_port, **settings):
    """Start the node connector; returns (process, health port)."""
    health = _free_port()
    cfg = {
        "node_id": node_id, "public_key": KEY,
        "relays": ["http://127.0.0.1:%d" % p for p in relay_ports], "relay_mode": "failover",
        "wireguard_port": wireguard_port, "listen": "127.0.0.1:%d" % health,
        "ping_interval": 1, "ping_timeout": 3, "backoff_base": 0.2, "backoff_cap": 1,
        "heartbeat_interval": 10, "uvloop": False, "token_file": _token_file(), **settings,
    }
    path = directory / ("connector-%d.json" % health)
    path.write_text(json.dumps(cfg))
    return _spawn("-m", "higgs_relay", "--config", str(path)), health


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(predicate, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


class Echo:
    """Stand-in WireGuard: answers every datagram with itself, reversed after the header."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sources = set()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                while True:
                    data, peer = self.sock.recvfrom(65535)
                    if len(data) > 4:
                        self.sock.sendto(data[:4] + data[4:][::-1], peer)
            finally:
                os._exit(0)

    def stop(self):
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.sock.close()


@pytest.fixture
def lab(tmp_path, request):
    """Two relays (the first announces the second), the node connector configured with ``connector_relays``
    of them (indirect parametrisation; both by default) and the client connector using both."""
    procs = []
    echo = Echo()
    relay_ports = [_free_port(), _free_port()]
    node_id = str(uuid.uuid4())
    try:
        procs.append(_relay(relay_ports[0], "--announce", "127.0.0.1:%d" % relay_ports[1]))
        procs.append(_relay(relay_ports[1]))
        configured = relay_ports[:getattr(request, "param", 2)]
        node, health = _connector(tmp_path, node_id, configured, echo.port)
        procs.append(node)
        assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health)), node
        client_port = _free_port(socket.SOCK_DGRAM)
        relays = [arg for port in relay_ports for arg in ("--relay", "http://127.0.0.1:%d" % port)]
        client = _spawn("-m", "higgs_relay.client", *relays,
                        "--node-id", node_id, "--listen", "127.0.0.1:%d" % client_port, "--metrics", "",
                        "--ping-interval", "1", "--ping-timeout", "3", "--no-uvloop")
        procs.append(client)
        yield {"client_port": client_port, "relay_ports": relay_ports, "procs": procs, "health": health,
               "node": node}
    finally:
        _stop(procs)
        echo.stop()


def _exchange(port, count=50, size=1200, timeout=10.0):
    """Send WireGuard-looking datagrams to the client connector until ``count`` answers arrive."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    got = 0
    end = time.monotonic() + timeout
    try:
        while got < count and time.monotonic() < end:
            for _ in range(10):
                body = os.urandom(size)
                sock.sendto(b"\x04\0\0\0" + body, ("127.0.0.1", port))
            try:
                while True:
                    data = sock.recv(65535)
                    assert data[:4] == b"\x04\0\0\0"
                    got += 1
            except TimeoutError:
                pass
    finally:
        sock.close()
    return got


@pytest.mark.parametrize("lab", [2, 1], ids=["configured", "discovered"], indirect=True)
def test_datagrams_round_trip_and_failover(lab):
    """Failover to the second relay, configured or only announced by the first."""
    assert _exchange(lab["client_port"]) >= 50
    metrics = _get("http://127.0.0.1:%d/metrics" % lab["health"])
    assert 'higgs_relay_relay_protocol{relay="127.0.0.1:%d"} 2' % lab["relay_ports"][0] in metrics
    assert 'higgs_relay_relay_connected{relay="127.0.0.1:%d"} 0' % lab["relay_ports"][1] in metrics
    # the first relay dies: node and client move to the second
    lab["procs"][0].kill()
    assert _exchange(lab["client_port"], count=20, timeout=20) >= 20
    metrics = _get("http://127.0.0.1:%d/metrics" % lab["health"])
    assert 'higgs_relay_relay_connected{relay="127.0.0.1:%d"} 1' % lab["relay_ports"][1] in metrics


def test_discovery_off_keeps_to_the_configured_relays(tmp_path):
    echo = Echo()
    ports = [_free_port(), _free_port()]
    procs = []
    try:
        procs.append(_relay(ports[0], "--announce", "127.0.0.1:%d" % ports[1]))
        node, health = _connector(tmp_path, str(uuid.uuid4()), ports[:1], echo.port, discover_relays=False)
        procs.append(node)
        assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health)), node
        metrics = _get("http://127.0.0.1:%d/metrics" % health)   # registered, so the answer was seen
        assert 'higgs_relay_relay_registrations_total{relay="127.0.0.1:%d"} 1' % ports[0] in metrics
        assert "127.0.0.1:%d" % ports[1] not in metrics
    finally:
        _stop(procs)
        echo.stop()


def _post(url, body, token=""):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _register(base, node_id):
    """Register ``node_id`` with the registration token; returns the node token."""
    body = json.dumps(registration(node_id, 16)).encode()
    request = urllib.request.Request(base + "/api/v1/nodes/register", data=body,
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=2) as answer:
        assert answer.status == 201
        return json.loads(answer.read())["sessionToken"]


def _counter(text, name):
    found = re.search(r"^%s (\d+)$" % re.escape(name), text, re.MULTILINE)
    return int(found.group(1)) if found else None


def test_registration_rate_limited_waits_for_retry_after(tmp_path):
    """429 with Retry-After at registration: one refused attempt, a wait of Retry-After, then registered."""
    echo = Echo()
    port = _free_port()
    base = "http://127.0.0.1:%d" % port
    procs = []
    try:
        procs.append(_relay(port, "--node-rate", "2", "--rate-window", "6"))
        node_id = str(uuid.uuid4())
        for _ in range(2):   # use up this node's window (counted per node once the token is proven)
            assert _post(base + "/api/v1/nodes/register", {"nodeId": node_id}, TOKEN) == 400
        node, health = _connector(tmp_path, node_id, [port], echo.port)
        procs.append(node)
        assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health), timeout=20), node
        assert _counter(_get(base + "/metrics"), "boson_relay_rate_limited") == 1
        metrics = _get("http://127.0.0.1:%d/metrics" % health)
        assert 'higgs_relay_relay_rate_limited_total{relay="127.0.0.1:%d"} 1' % port in metrics
        assert 'higgs_relay_relay_registrations_total{relay="127.0.0.1:%d"} 1' % port in metrics
        node.terminate()
        out, _ = node.communicate(timeout=10)
        # the wait is what is left of the window when the connector asked (less on a loaded machine);
        # that it waited for it is the single refusal counted above: an earlier retry would be refused too
        waits = [float(w) for w in re.findall(r"rate-limited by \S+; reconnecting in ([0-9.]+) s", out)]
        assert len(waits) == 1 and 1 <= waits[0] <= 6, out
    finally:
        _stop(procs)
        echo.stop()


def test_close_1008_makes_the_node_register_again(tmp_path):
    echo = Echo()
    port = _free_port()
    base = "http://127.0.0.1:%d" % port
    node_id = str(uuid.uuid4())
    procs = []
    try:
        procs.append(_relay(port))
        node, health = _connector(tmp_path, node_id, [port], echo.port)
        procs.append(node)
        assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health)), node
        # the relay forgets the node (unregistered with a token of its registration, as the node
        # itself does) and closes its socket with 1008 "Node not online"
        token = _register(base, node_id)
        request = urllib.request.Request(base + "/api/v1/nodes/" + node_id, method="DELETE",
                                         headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, timeout=2) as answer:
            assert answer.status == 204
        assert _wait(lambda: _counter(_get(base + "/metrics"), "boson_relay_node_sockets") == 2)
        relay = _get(base + "/metrics")
        assert _counter(relay, "boson_relay_registrations") == 3
        assert _counter(relay, "boson_relay_nodes_online") == 1
        assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health)), node
        node.terminate()
        out, _ = node.communicate(timeout=10)
        assert "code 1008, Node not online" in out
    finally:
        _stop(procs)
        echo.stop()


def test_orderly_stop_unregisters(lab):
    assert _exchange(lab["client_port"], count=5) >= 5
    lab["node"].terminate()
    out, _ = lab["node"].communicate(timeout=10)
    assert lab["node"].returncode == 0, out
    assert "unregistered from" in out


def test_bad_configuration_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"node_id": "node-1", "relays": ["ftp://x"], "public_key": KEY,
                                "token_file": str(tmp_path / "missing")}))
    proc = _spawn("-m", "higgs_relay", "--config", str(path))
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 78
    assert "node_id 'node-1' is not a UUID" in out
    assert "relays[0] 'ftp://x' is not a valid relay URL" in out
    assert "token_file" in out


def test_unreachable_wireguard_port(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"node_id": str(uuid.uuid4()), "relays": ["http://127.0.0.1:9"], "public_key": KEY,
                                "wireguard_port": _free_port(socket.SOCK_DGRAM)}))
    proc = _spawn("-m", "higgs_relay", "--config", str(path))
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 69
    assert "WireGuard port unreachable" in out


def _certificates(directory):
    """A test CA and a certificate for 127.0.0.1 it signed; returns (ca.pem, cert.pem, key.pem) paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "higgs test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TLSProxy:
    """TLS termination in front of a relay (what a deployed BosonServer has): 127.0.0.1:port -> relay_port."""

    def __init__(self, relay_port, cert, key):
        import asyncio
        import ssl
        import threading

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.port = _free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", relay_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def serve():
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=context)
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(serve()),
                                                       self.loop.run_forever()), daemon=True)
        self.thread.start()
        assert started.wait(5)

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_relay_over_tls(tmp_path):
    """https:// relay behind TLS: registration and the WebSocket over TLS, verified against ca_file; a
    certificate from an unknown CA is refused and said so in the log."""
    pytest.importorskip("cryptography")   # the controller's; not on the lab images
    ca, cert, key = _certificates(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = _certificates(tmp_path / "other")
    echo = Echo()
    port = _free_port()
    procs = []
    proxy = None
    try:
        procs.append(_relay(port))
        proxy = TLSProxy(port, str(cert), str(key))
        node_id = str(uuid.uuid4())
        node, health = _connector(tmp_path, node_id, [], echo.port, relays=["https://127.0.0.1:%d" % proxy.port],
                                  ca_file=str(ca), discover_relays=False)
        procs.append(node)
        assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health)), node
        # the client reaches the same relay without TLS: datagrams cross the node's TLS WebSocket
        client_port = _free_port(socket.SOCK_DGRAM)
        procs.append(_spawn("-m", "higgs_relay.client", "--relay", "http://127.0.0.1:%d" % port,
                            "--node-id", node_id, "--listen", "127.0.0.1:%d" % client_port, "--metrics", "",
                            "--no-uvloop"))
        assert _exchange(client_port, count=20) >= 20
        assert 'higgs_relay_relay_connected{relay="127.0.0.1:%d"} 1' % proxy.port in _get(
            "http://127.0.0.1:%d/metrics" % health)

        untrusting, health = _connector(tmp_path, str(uuid.uuid4()), [], echo.port,
                                        relays=["https://127.0.0.1:%d" % proxy.port], ca_file=str(other_ca),
                                        discover_relays=False)
        procs.append(untrusting)
        time.sleep(3)
        with pytest.raises(urllib.error.HTTPError, match="503"):   # health: not connected
            _get("http://127.0.0.1:%d/health" % health)
        untrusting.terminate()
        out, _ = untrusting.communicate(timeout=10)
        assert "CERTIFICATE_VERIFY_FAILED" in out, out
    finally:
        _stop(procs)
        if proxy:
            proxy.stop()
        echo.stop()
