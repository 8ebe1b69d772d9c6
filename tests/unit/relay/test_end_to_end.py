"""End to end on loopback: relay, node connector and client connector as processes.

Needs the websockets library (python3-websockets on Debian); skipped without it.
Run it on a lab image to cover each Debian release (the lab images have no
pytest; the controller's pure-Python one works on both):
``docker run --rm -v $PWD:/c:ro -w /c -e PYTHONPATH=/c/.venv/lib/python3.11/site-packages
--entrypoint python3 higgs-lab:trixie -m pytest -q -p no:cacheprovider tests/unit/relay``
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PATHS = [str(ROOT / "roles" / "relay_connector" / "files"), str(ROOT / "tools")]
pytest.importorskip("websockets")

KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def _free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(PATHS), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _get(url):
    with urllib.request.urlopen(url, timeout=2) as answer:
        return answer.read().decode()


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
def lab(tmp_path):
    procs = []
    echo = Echo()
    relay_ports = [_free_port(), _free_port()]
    node_id = str(uuid.uuid4())
    for port in relay_ports:
        procs.append(_spawn("-m", "boson_relay.server", "--listen", "127.0.0.1:%d" % port, "--heartbeat", "2",
                            "--no-uvloop"))
    assert _wait(lambda: all("ok" in _get("http://127.0.0.1:%d/health" % p) for p in relay_ports))
    health = _free_port()
    cfg = {
        "node_id": node_id, "public_key": KEY,
        "relays": ["http://127.0.0.1:%d" % p for p in relay_ports], "relay_mode": "failover",
        "wireguard_port": echo.port, "listen": "127.0.0.1:%d" % health,
        "ping_interval": 1, "ping_timeout": 3, "backoff_base": 0.2, "backoff_cap": 1,
        "heartbeat_interval": 5, "uvloop": False,
    }
    path = tmp_path / "connector.json"
    path.write_text(json.dumps(cfg))
    node = _spawn("-m", "higgs_relay", "--config", str(path))
    procs.append(node)
    assert _wait(lambda: '"status": "ok"' in _get("http://127.0.0.1:%d/health" % health)), node
    client_port = _free_port(socket.SOCK_DGRAM)
    relays = [arg for url in cfg["relays"] for arg in ("--relay", url)]
    client = _spawn("-m", "boson_relay.client", *relays,
                    "--node-id", node_id, "--listen", "127.0.0.1:%d" % client_port, "--metrics", "",
                    "--ping-interval", "1", "--ping-timeout", "3", "--no-uvloop")
    procs.append(client)
    yield {"client_port": client_port, "relay_ports": relay_ports, "procs": procs, "health": health,
           "node": node}
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
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


def test_datagrams_round_trip_and_failover(lab):
    assert _exchange(lab["client_port"]) >= 50
    metrics = _get("http://127.0.0.1:%d/metrics" % lab["health"])
    assert 'higgs_relay_relay_protocol{relay="127.0.0.1:%d"} 2' % lab["relay_ports"][0] in metrics
    # the first relay dies: node and client move to the second
    lab["procs"][0].kill()
    assert _exchange(lab["client_port"], count=20, timeout=20) >= 20
    metrics = _get("http://127.0.0.1:%d/metrics" % lab["health"])
    assert 'higgs_relay_relay_connected{relay="127.0.0.1:%d"} 1' % lab["relay_ports"][1] in metrics


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
