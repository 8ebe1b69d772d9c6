"""The collection's relay validates the reference server's request shapes (server_validation_cases.yml).

In process: ``Relay.rest`` with the bodies as the HTTP layer hands them over.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("websockets")
from higgs_relay import server

CASES = yaml.safe_load((Path(__file__).parent / "server_validation_cases.yml").read_text())
TOKEN = "registration-token-for-tests"
NODE = "0d6c2a53-7f1e-4c4b-9a8e-45a1e1a5e045"
VALID = {
    "register": {
        "nodeId": NODE, "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
        "networkInfo": {"ipv4": "192.0.2.1", "ipv6": None, "natType": "Symmetric", "stunMappedAddress": None,
                        "localPort": 51820},
        "capabilities": {"maxConnections": 8, "bandwidth": {"up": 10, "down": 10}, "routing": True, "natting": True},
        "location": {"country": "DE", "region": "lab", "coordinates": [52.5, 13.4]},
    },
    "heartbeat": {"metrics": {"latency": 1.5, "jitter": 0, "packetLoss": 0, "cpuUsage": 3, "memoryUsage": 40,
                              "activeConnections": 2, "bandwidth": {"up": 1, "down": 2}}},
    "metrics": {"nodeId": NODE, "timestamp": 1700000000000, "metrics": {
        "network": {"latency": 1, "jitter": 0, "packetLoss": 0, "bandwidth": {"up": 1, "down": 1}},
        "system": {"cpuUsage": 1, "memoryUsage": 2, "diskUsage": 3, "loadAverage": 0.5},
        "wireguard": {"packets": {"sent": 1, "received": 2, "errors": 0}, "bytes": {"sent": 10, "received": 20}},
        "connections": {"active": 1, "total": 3, "failed": 0}}},
    "routing": {"clientId": "3b241101-e2bb-4255-8caf-4136c566a962", "targetNodeId": NODE,
                "clientNetworkInfo": {"ipv4": "203.0.113.5", "natType": "PortRestricted"}},
}
ABSENT = "<absent>"
SPECIAL = {"<1MB>": "x" * (1 << 20)}


def _relay():
    return server.Relay(server.parse_args(["--auth-token-file", "unused", "--public-host", "relay.test"]), TOKEN)


def _patched(body, patch):
    body = copy.deepcopy(body)
    for dotted, value in (patch or {}).items():
        *parents, last = dotted.split(".")
        target = body
        for key in parents:
            target = target.setdefault(key, {})
        if value == ABSENT:
            target.pop(last, None)
        else:
            target[last] = SPECIAL.get(value, value) if isinstance(value, str) else value
    return body


def _online_node(relay):
    status, answer = relay.rest("POST", "/api/v1/nodes/register", {"authorization": "Bearer " + TOKEN},
                                json.dumps(VALID["register"]).encode(), "127.0.0.1")
    assert status == 201, answer
    relay.nodes[NODE].ws = object()   # a node socket, for routing without a target
    return answer["sessionToken"]


def _call(relay, endpoint, raw, token):
    node_token = {"authorization": "Bearer " + token}
    if endpoint == "register":
        return relay.rest("POST", "/api/v1/nodes/register", {"authorization": "Bearer " + TOKEN}, raw, "127.0.0.1")
    if endpoint == "heartbeat":
        return relay.rest("POST", "/api/v1/nodes/%s/heartbeat" % NODE, node_token, raw, "127.0.0.1")
    if endpoint == "metrics":
        return relay.rest("POST", "/api/v1/metrics", node_token, raw, "127.0.0.1")
    return relay.rest("POST", "/api/v1/routing/request", {}, raw, "127.0.0.1")


@pytest.mark.parametrize(("endpoint", "case"), [(e, c) for e, cases in CASES.items() for c in cases],
                         ids=["%s: %s" % (e, c["name"]) for e, cases in CASES.items() for c in cases])
def test_request_shapes(endpoint, case):
    relay = _relay()
    token = _online_node(relay)
    if "raw" in case:
        raw = ("[" * 5000 + "]" * 5000) if case["raw"] == "<nested>" else case["raw"]
        raw = raw.encode()
    else:
        raw = json.dumps(_patched(VALID[endpoint], case.get("patch"))).encode()
    status, answer = _call(relay, endpoint, raw, token)
    assert status == case["status"], answer
    if "message" in case:
        assert answer == {"error": {"message": answer["error"]["message"], "statusCode": status}}
        assert case["message"] in answer["error"]["message"]


def test_register_answers_the_reference_shape():
    relay = _relay()
    status, answer = relay.rest("POST", "/api/v1/nodes/register", {"authorization": "Bearer " + TOKEN},
                                json.dumps(VALID["register"]).encode(), "127.0.0.1")
    assert status == 201
    assert answer["nodeId"] == NODE and answer["status"] == "registered"
    assert answer["relayServers"][0]["host"] == "relay.test"
    assert len(answer["sessionToken"]) >= 32 and answer["expiresAt"] > 0


def test_delete_answers_204_and_forgets_the_node():
    relay = _relay()
    token = _online_node(relay)
    relay.nodes[NODE].ws = None
    assert relay.rest("DELETE", "/api/v1/nodes/" + NODE, {"authorization": "Bearer " + token}, b"",
                      "127.0.0.1") == (204, None)
    assert NODE not in relay.nodes


def test_stored_registration_keeps_only_checked_fields():
    """Unknown keys are not stored (a megabyte of them would stay in memory for as long as the node)."""
    relay = _relay()
    body = dict(VALID["register"], junk="x" * 10000)
    body["location"] = dict(body["location"], more="y" * 10000)
    relay.rest("POST", "/api/v1/nodes/register", {"authorization": "Bearer " + TOKEN}, json.dumps(body).encode(),
               "127.0.0.1")
    stored = json.dumps(relay.nodes[NODE].info)
    assert "junk" not in stored and "more" not in stored and len(stored) < 1000


def test_rate_counters_are_pruned_and_bounded(monkeypatch):
    """Counters of ended windows go; at --max-rate-keys new keys wait instead of growing the table."""
    relay = server.Relay(server.parse_args(["--no-auth", "--max-rate-keys", "100", "--rate-window", "60"]))
    now = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: now[0])
    for index in range(100):
        assert relay.limited(("src", "198.51.100.%d" % index), 5) == 0
    assert relay.limited(("src", "203.0.113.1"), 5) == 60   # table full: refused, not stored
    assert len(relay.hits) == 100
    now[0] += 61
    relay.prune(now[0])
    assert relay.hits == {}
    assert relay.limited(("src", "203.0.113.1"), 5) == 0


def test_metrics_refused_to_other_addresses():
    relay = _relay()
    assert relay.rest("GET", "/metrics", {}, b"", "192.0.2.1")[0] == 403
    assert relay.rest("GET", "/metrics", {}, b"", "::1")[0] == 200
