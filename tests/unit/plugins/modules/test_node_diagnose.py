"""The readers of higgs.vpn.node_diagnose, on captured command output."""

from __future__ import annotations

import json
import socket
import struct
import threading

from ansible_collections.higgs.vpn.plugins.modules import node_diagnose as nd

NFT_JSON = json.dumps({"nftables": [
    {"metainfo": {"json_schema_version": 1}},
    {"table": {"family": "inet", "name": "higgs_vpn"}},
    {"rule": {"chain": "forward", "expr": [{"counter": {"packets": 99, "bytes": 1}}, {"accept": None}]}},
    {"rule": {"chain": "postrouting", "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
        {"counter": {"packets": 7, "bytes": 420}}, {"masquerade": None}]}},
    {"rule": {"chain": "postrouting", "expr": [{"counter": {"packets": 2, "bytes": 120}},
                                               {"snat": {"addr": "198.51.100.7"}}]}},
]})

IPT = """Chain higgs_vpn_postrouting (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       5      300 MASQUERADE  all  --  *      eth0    10.66.0.0/24         0.0.0.0/0
       1       60 RETURN      all  --  *      *       0.0.0.0/0            0.0.0.0/0
"""

DUMP = "\t".join(["PRIV", "PUB", "51820", "off"]) + "\n" + "\n".join([
    "\t".join(["peerA", "(none)", "10.0.0.5:4000", "10.66.0.2/32", "1000", "10", "20", "off"]),
    "\t".join(["peerB", "(none)", "(none)", "10.66.0.3/32", "0", "0", "0", "off"]),
    "\t".join(["peerC", "(none)", "10.0.0.6:4000", "10.66.0.4/32", "700", "1", "2", "25"]),
])


def test_nat_packets_count_only_nat_rules():
    assert nd.nat_packets_nft(NFT_JSON) == 9
    assert nd.nat_packets_iptables(IPT) == 5


def test_wg_peers_handshake_ages():
    peers, recent = nd.wg_peers(DUMP, now=1100, max_age=180)
    assert [p["handshake_age"] for p in peers] == [100, None, 400]
    assert [p["public_key"] for p in recent] == ["peerA"]
    assert peers[1]["endpoint"] is None and peers[0]["rx_bytes"] == 10


def test_forwarding_check_reads_both_families():
    values = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0"}
    result = nd.forwarding_check(values.get)
    assert result == {"name": "forwarding", "ok": True, "detail": "ipv4 on, ipv6 off"}
    assert nd.forwarding_check({}.get)["ok"] is False


def test_dns_query_wire_format():
    query = nd.dns_query("lab.example.")
    assert query[:4] == struct.pack("!HH", 0x4867, 0x0100)
    assert query[12:] == b"\x03lab\x07example\x00" + struct.pack("!HH", 1, 1)
    assert nd.dns_query(".")[12:] == b"\x00\x00\x01\x00\x01"


def serve_once(sock, rcode):
    data, peer = sock.recvfrom(512)
    sock.sendto(data[:2] + bytes([0x81, 0x80 | rcode]) + data[4:], peer)


def test_ask_reads_the_rcode_from_a_local_resolver():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        for rcode, name in ((0, "NOERROR"), (5, "REFUSED")):
            worker = threading.Thread(target=serve_once, args=(server, rcode))
            worker.start()
            assert nd.ask("127.0.0.1", "lab.example", port=port) == (name, name)
            worker.join()


def test_ask_without_answer():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        rcode, detail = nd.ask("127.0.0.1", "lab.example", timeout=0.2, port=silent.getsockname()[1])
    assert rcode is None and detail.startswith("no answer")


def test_relay_checks_show_refused_requests():
    """Issue 13 item 2: a relay refusing the connector's requests shows in diagnose (429 alone is no failure)."""
    health = {"status": "ok", "relays": {
        "relay.example.net:443": {"connected": True, "refused": {"metrics 400": 3, "heartbeat 429": 1},
                                  "last_refusal": "metrics: HTTP 400 Invalid input"},
        "r2.example.net:443": {"connected": False, "refused": {}, "last_refusal": ""}}}
    link, requests = nd.relay_checks(200, health)
    assert link["ok"] and not requests["ok"]
    assert requests["detail"] == ("relay.example.net:443 refused heartbeat 429 x1, metrics 400 x3"
                                  " (latest: metrics: HTTP 400 Invalid input)")
    health["relays"]["relay.example.net:443"]["refused"] = {"heartbeat 429": 2}
    assert nd.relay_checks(200, health)[1]["ok"]
    down, requests = nd.relay_checks(503, {"status": "down", "relays": {}})
    assert not down["ok"] and requests == {"name": "relay requests", "ok": True, "detail": "no request refused"}
    assert nd.relay_checks("unreachable (refused)", None) == [
        {"name": "relay connector", "ok": False, "detail": "health: unreachable (refused)"}]
