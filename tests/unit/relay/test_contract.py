"""Contract: the connector against the collection's strict relay (higgs_relay.server), every request type.

The relay validates exactly the reference BosonServer's request shapes
(/work/shared/boson-protocol.md, "Exact request shapes"), so what it accepts
here is what a deployed BosonServer accepts.  The first test drives the
connector's own calls (register, node socket, heartbeat, metrics, DELETE)
and records the status of each; the second proves that each shape the
connector used to send, or a value it used to accept, is refused.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from higgs_relay import config, connector, wsio

pytest.importorskip("websockets")
ROOT = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((Path(__file__).parent / "config_cases.yml").read_text())["base"]
TOKEN = "contract-registration-token"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    token = tmp_path_factory.mktemp("relay") / "token"
    token.write_text(TOKEN + "\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "higgs_relay.server", "--listen", "127.0.0.1:%d" % port,
                             "--public-host", "127.0.0.1", "--public-port", str(port), "--no-uvloop",
                             "--auth-token-file", str(token)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % port
    end = time.monotonic() + 15
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    yield url, str(token)
    proc.terminate()
    proc.wait(10)


def _config(url, token_file, **settings):
    raw = copy.deepcopy(BASE)
    raw.update(relays=[url], token_file=token_file, listen="", uvloop=False, ping_interval=1,
               location={"country": "DE", "region": "Hessen", "coordinates": [50.1, 8.7]},
               network={"ipv4": "192.0.2.10", "ipv6": None, "nat_type": "PortRestricted", "local_port": 51820})
    raw.update(settings)
    return config.validate(raw)


@pytest.fixture
def recorded(monkeypatch):
    """(method, path, status, sent body) of every REST request the connector makes."""
    calls = []
    request, getresponse = http.client.HTTPConnection.request, http.client.HTTPConnection.getresponse

    def record_request(self, method, url, body=None, headers=None, **kwargs):
        self._contract = [method, url, json.loads(body) if body else None]
        return request(self, method, url, body=body, headers=headers, **kwargs)

    def record_response(self):
        response = getresponse(self)
        method, url, body = self._contract
        calls.append((method, url, response.status, body))
        return response
    monkeypatch.setattr(http.client.HTTPConnection, "request", record_request)
    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", record_response)
    return calls


def test_every_request_type_is_accepted(relay, recorded):
    url, token_file = relay

    async def scenario():
        daemon = connector.Daemon(_config(url, token_file))
        link = daemon.links[0]
        serving = asyncio.get_running_loop().create_task(link.serve())      # register + node socket
        end = time.monotonic() + 15
        while time.monotonic() < end and not (link.stats["connected"] and len(link.rtts) >= 2):
            await asyncio.sleep(0.05)
        assert link.stats["connected"] == 1 and link.version == 2, "node socket not accepted"
        await link.heartbeat()
        await link.send_metrics()
        link.ws.close(1000, "contract done")
        with pytest.raises(connector.LinkDown):
            await asyncio.wait_for(serving, 10)
        await link.unregister()
        return link
    link = asyncio.run(scenario())
    statuses = {(method, path.replace(BASE["node_id"], "{id}")): status for method, path, status, _ in recorded}
    assert statuses == {
        ("POST", "/api/v1/nodes/register"): 201,
        ("POST", "/api/v1/nodes/{id}/heartbeat"): 200,
        ("POST", "/api/v1/metrics"): 200,
        ("DELETE", "/api/v1/nodes/{id}"): 204,
    }, recorded
    assert link.stats["refused"] == {}
    heartbeat = next(body for method, path, _, body in recorded if path.endswith("/heartbeat"))
    assert "status" not in heartbeat and set(heartbeat["metrics"]) == {
        "latency", "jitter", "packetLoss", "cpuUsage", "memoryUsage", "activeConnections", "bandwidth"}
    for method, path, status, body in recorded:
        print("%-6s %-32s %d %s" % (method, path.replace(BASE["node_id"], "{id}"), status,
                                    json.dumps(body, sort_keys=True)[:300] if body else ""))


def _post(url, path, body, token=None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": "Bearer " + token} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


OLD_REGISTRATIONS = {
    # what the connector used to send (or accept and then send) at registration
    "heartbeatInterval 5 (old minimum)": lambda b: b.update(heartbeatInterval=5),
    "empty publicKey (public_key was optional)": lambda b: b.update(publicKey=""),
    "coordinates a number": lambda b: b["location"].update(coordinates=5),
    "coordinates three numbers": lambda b: b["location"].update(coordinates=[1, 2, 3]),
    "country of three letters": lambda b: b["location"].update(country="DEU"),
    "ipv4 not an address": lambda b: b["networkInfo"].update(ipv4="300.1.1.1"),
    "localPort text": lambda b: b["networkInfo"].update(localPort="abc"),
    "bandwidth text": lambda b: b["capabilities"]["bandwidth"].update(up="fast"),
    "metrics claimed before measured (old zeros are valid; a jitter of -1 is not)":
        lambda b: b.update(metrics={"latency": 0, "jitter": -1, "packetLoss": 0, "cpuUsage": 0, "memoryUsage": 0}),
}


@pytest.mark.parametrize("change", list(OLD_REGISTRATIONS), ids=list(OLD_REGISTRATIONS))
def test_each_fixed_registration_mismatch_is_refused(relay, change):
    url, token_file = relay

    async def body():
        daemon = connector.Daemon(_config(url, token_file))
        return daemon.registration(daemon.links[0])
    good = asyncio.run(body())
    assert _post(url, "/api/v1/nodes/register", good, TOKEN)[0] == 201
    bad = copy.deepcopy(good)
    OLD_REGISTRATIONS[change](bad)
    status, answer = _post(url, "/api/v1/nodes/register", bad, TOKEN)
    assert status == 400, answer


def test_old_metrics_body_is_refused(relay):
    """The metrics body the connector sent before: 400 from the strict relay (the reference answered the same)."""
    url, _ = relay

    async def body():
        daemon = connector.Daemon(_config(url, relay[1]))
        return daemon.registration(daemon.links[0])
    status, answer = _post(url, "/api/v1/nodes/register", asyncio.run(body()), TOKEN)
    assert status == 201
    old = {"nodeId": BASE["node_id"], "timestamp": int(time.time() * 1000), "metrics": {
        "network": {"bytesIn": 1, "bytesOut": 2, "latency": 0}, "system": {"cpuUsage": 1, "memoryUsage": 2},
        "wireguard": {"packets": 3, "bytes": 4}, "connections": 0}}
    status, text = _post(url, "/api/v1/metrics", old, answer["sessionToken"])
    assert status == 400, text


def test_node_socket_without_the_registration_token_is_refused(relay):
    url, _ = relay

    async def scenario():
        ws = await wsio.connect(url.replace("http", "ws") + "/relay/" + BASE["node_id"], timeout=5)
        ws.start()
        return await asyncio.wait_for(ws.closed, 5)
    try:
        code, _ = asyncio.run(scenario())
    except (OSError, ConnectionError) as exc:   # refused at the upgrade
        code = str(exc)
    assert code != 1000
