"""Detection of foreign firewalls that drop client traffic (issue 15).

The rulesets are ``nft -j list ruleset`` of the lab image with Debian's ufw
enabled, firewalld running and Docker's rules (lab/higgs_lab/fixtures/docker.sh).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ansible_collections.higgs.vpn.plugins.module_utils import _firewall as fw

HERE = Path(__file__).parent / "firewall_foreign"


def ruleset(name):
    return json.loads((HERE / (name + ".json")).read_text())


def found(rules, tunnels=("wg0",)):
    return {(b["family"], b["table"], b["chain"], b["hook"]): b["reason"]
            for b in fw.blocking_chains(rules, "higgs_vpn", list(tunnels))}


def iptables_jump(family, chain):
    """The rule iptables-nft lists for ``-I <chain> 1 -j higgs_vpn_<hook>``."""
    return {"rule": {"family": family, "table": "filter", "chain": chain, "handle": 999, "expr": [
        {"counter": {"packets": 0, "bytes": 0}}, {"jump": {"target": "higgs_vpn_" + chain.lower()}}]}}


def with_first(rules, extra):
    """``rules`` with ``extra`` inserted before the first rule of its chain."""
    out = copy.deepcopy(rules)
    items = out["nftables"]
    key = (extra["rule"]["family"], extra["rule"]["table"], extra["rule"]["chain"])
    at = next((i for i, item in enumerate(items) if "rule" in item
               and (item["rule"]["family"], item["rule"]["table"], item["rule"]["chain"]) == key), len(items))
    items.insert(at, extra)
    return out


def test_docker_forward_policy_drop_blocks_both_families():
    assert found(ruleset("docker")) == {
        ("ip", "filter", "FORWARD", "forward"): "policy drop",
        ("ip6", "filter", "FORWARD", "forward"): "policy drop",
    }


def test_ufw_drops_forward_and_input_in_both_families():
    assert found(ruleset("ufw")) == {
        ("ip", "filter", "FORWARD", "forward"): "policy drop",
        ("ip", "filter", "INPUT", "input"): "drop rule in ufw-not-local",
        ("ip6", "filter", "FORWARD", "forward"): "policy drop",
        ("ip6", "filter", "INPUT", "input"): "policy drop",
    }


def test_firewalld_default_zone_rejects_the_tunnel():
    """wg0 is in no zone: firewalld sends it to the default zone (public), which rejects."""
    assert found(ruleset("firewalld")) == {
        ("inet", "firewalld", "filter_FORWARD", "forward"): "reject rule in filter_FWD_public",
        ("inet", "firewalld", "filter_INPUT", "input"): "reject rule in filter_IN_public",
    }


def test_iptables_backend_jump_first_in_the_foreign_chain_clears_it():
    rules = ruleset("ufw")
    for fam in ("ip", "ip6"):
        for chain in ("FORWARD", "INPUT"):
            rules = with_first(rules, iptables_jump(fam, chain))
    assert found(rules) == {}


def test_a_jump_after_the_drop_does_not_clear_it():
    rules = copy.deepcopy(ruleset("firewalld"))
    rules["nftables"].append({"rule": {"family": "inet", "table": "firewalld", "chain": "filter_FORWARD",
                                       "handle": 999, "expr": [{"accept": None}]}})
    assert ("inet", "firewalld", "filter_FORWARD", "forward") in found(rules)


def test_firewalld_trusted_zone_for_the_tunnel_clears_forward():
    rules = with_first(ruleset("firewalld"), {"rule": {
        "family": "inet", "table": "firewalld", "chain": "filter_FORWARD", "handle": 998, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": {"set": ["wg1", "wg0"]}}},
            {"accept": None}]}})
    assert ("inet", "firewalld", "filter_FORWARD", "forward") not in found(rules)
    # the same rule for another interface does not help wg0's clients
    assert ("inet", "firewalld", "filter_FORWARD", "forward") in found(rules, tunnels=["wg9"])


def test_own_table_and_accepting_chains_are_not_foreign():
    rules = {"nftables": [
        {"chain": {"family": "inet", "table": "higgs_vpn", "name": "input", "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "higgs_vpn", "chain": "input", "expr": [{"drop": None}]}},
        {"chain": {"family": "inet", "table": "foreign", "name": "fwd", "type": "filter",
                   "hook": "forward", "prio": 10, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "foreign", "chain": "fwd", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "192.0.2.0", "len": 24}}}}, {"drop": None}]}},
    ]}
    assert found(rules) == {}


@pytest.mark.parametrize("verdict", [{"drop": None}, {"reject": None},
                                     {"xt": {"type": "target", "name": "REJECT"}}])
def test_hand_made_drop_reached_through_a_jump(verdict):
    rules = {"nftables": [
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "expr": [
            {"counter": {"packets": 1, "bytes": 2}}, {"jump": {"target": "lockdown"}}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "lockdown", "expr": [
            {"xt": {"type": "match", "name": "comment"}}, verdict]}},
    ]}
    assert found(rules) == {("ip", "filter", "FORWARD", "forward"): "%s rule in lockdown"
                            % ("drop" if "drop" in verdict else "reject")}


@pytest.mark.parametrize("name", ["docker", "ufw"])
def test_iptables_save_text_gives_the_same_verdict_as_nftables(name):
    """iptables-legacy has no nftables view: its iptables-save text is analysed the same way."""
    saved = fw.from_iptables_save((HERE / (name + ".ipv4.save")).read_text(), "ip")
    nft = {k: v for k, v in found(ruleset(name)).items() if k[0] == "ip"}
    assert found(saved) == nft


def test_iptables_save_jump_first_clears_and_interface_rules_are_decided():
    text = "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":higgs_vpn_forward - [0:0]",
        "-A FORWARD -i eth1 -j DROP",
        "-A FORWARD ! -i wg0 -j ACCEPT",
        '-A INPUT -m comment --comment "lock down" -j REJECT --reject-with icmp-port-unreachable',
        "COMMIT", ""])
    assert found(fw.from_iptables_save(text, "ip")) == {
        ("ip", "filter", "FORWARD", "forward"): "policy drop",
        ("ip", "filter", "INPUT", "input"): "reject rule in INPUT"}
    cleared = text.replace("-A FORWARD -i eth1", "-A FORWARD -j higgs_vpn_forward\n-A FORWARD -i eth1")
    assert ("ip", "filter", "FORWARD", "forward") not in found(fw.from_iptables_save(cleared, "ip"))


def test_firewalld_with_the_tunnel_in_the_trusted_zone_is_clear():
    """Captured after ``firewall-cmd --zone=trusted --add-interface=wg0``."""
    assert found(ruleset("firewalld-trusted")) == {}
    assert found(ruleset("firewalld-trusted"), tunnels=["wg1"]) != {}


@pytest.mark.parametrize("name, backend, zone, fixes", [
    ("docker", "nftables", "", {"iptables"}),
    ("docker", "iptables", "", set()),
    ("ufw", "nftables", "", {"iptables"}),
    ("ufw", "iptables", "", set()),
    ("firewalld", "iptables", "", {"firewalld"}),
    ("firewalld", "nftables", "trusted", set()),
])
def test_unresolved_names_the_fix(name, backend, zone, fixes):
    blockers = fw.blocking_chains(ruleset(name), "higgs_vpn", ["wg0"])
    assert {b["fix"] for b in fw.unresolved(blockers, backend, zone)} == fixes


def test_a_hand_made_nft_drop_only_its_owner_can_clear():
    blockers = [dict(family="inet", table="lockdown", chain="fwd", hook="forward", reason="policy drop")]
    assert fw.unresolved(blockers, "iptables", "trusted") == [dict(blockers[0], fix="foreign")]


def test_only_the_forwarding_chains_count_as_the_collections_jump():
    """Another owned set (conn limits: higgs_vpn_conn_forward) does not accept client traffic."""
    rules = with_first(ruleset("docker"), {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD",
                                                    "expr": [{"jump": {"target": "higgs_vpn_conn_forward"}}]}})
    assert ("ip", "filter", "FORWARD", "forward") in found(rules)


# The tunnel's own UDP port on the input hook ------------------------------------------------
def closed(rules, port=51820):
    return {(b["family"], b["table"], b["chain"]): b["reason"]
            for b in fw.blocking_chains(rules, "higgs_vpn", ["wg0"], ("input",), port)}


@pytest.mark.parametrize("name, port, expected", [
    # captured after `ufw allow 51820/udp` / `firewall-cmd --permanent --add-port=51820/udp`
    ("ufw-port", 51820, {}),
    ("ufw-port", 51821, {("ip", "filter", "INPUT"): "drop rule in ufw-skip-to-policy-input",
                         ("ip6", "filter", "INPUT"): "policy drop"}),
    ("firewalld-port", 51820, {}),
    ("firewalld-port", 51821, {("inet", "firewalld", "filter_INPUT"): "reject rule in filter_IN_public"}),
    ("ufw", 51820, {("ip", "filter", "INPUT"): "drop rule in ufw-skip-to-policy-input",
                    ("ip6", "filter", "INPUT"): "policy drop"}),
    ("docker", 51820, {}),
])
def test_the_tunnel_port_from_outside(name, port, expected):
    assert closed(ruleset(name), port) == expected


def _input(*rules, policy="drop"):
    return {"nftables": [{"chain": {"family": "inet", "table": "hand", "name": "in", "type": "filter",
                                    "hook": "input", "prio": 0, "policy": policy}}]
            + [{"rule": {"family": "inet", "table": "hand", "chain": "in", "expr": expr}} for expr in rules]}


def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


IIF = {"meta": {"key": "iifname"}}
DPORT = {"payload": {"protocol": "udp", "field": "dport"}}
CT = {"ct": {"key": "state"}}


@pytest.mark.parametrize("rules, is_closed", [
    ([[_m(IIF, "eth0"), _m(DPORT, 51820), {"accept": None}]], False),        # on the egress: open
    ([[_m(IIF, "wg0"), _m(DPORT, 51820), {"accept": None}]], True),          # on the tunnel only
    ([[_m(IIF, "lo"), {"accept": None}]], True),
    ([[_m(IIF, {"set": ["lo", "wg0"]}, "!="), _m(DPORT, {"set": [{"range": [50000, 60000]}]}), {"accept": None}]],
     False),
    ([[_m(CT, ["established", "related"], "in"), {"accept": None}]], True),  # a new datagram is not related
    ([[_m(CT, "new", "in"), _m({"meta": {"key": "l4proto"}}, "udp"), {"accept": None}]], False),
    ([[_m({"meta": {"key": "l4proto"}}, "tcp"), {"accept": None}]], True),
    ([[_m(DPORT, 51820), {"drop": None}]], True),
    ([[_m(DPORT, 51821), {"drop": None}]], False),
    ([[_m({"payload": {"protocol": "ip", "field": "saddr"}}, "192.0.2.1"), {"accept": None}]], True),  # selective
])
def test_hand_made_input_rules_for_the_tunnel_port(rules, is_closed):
    policy = "accept" if rules[0][-1] == {"drop": None} else "drop"
    assert bool(closed(_input(*rules, policy=policy))) is is_closed


def test_iptables_save_port_rules_are_read():
    text = "\n".join([
        "*filter", ":INPUT DROP [0:0]", ":FORWARD ACCEPT [0:0]",
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A INPUT -i eth0 -p udp -m multiport --dports 53,51000:52000 -j ACCEPT",
        "COMMIT", ""])
    assert closed(fw.from_iptables_save(text, "ip")) == {}
    assert closed(fw.from_iptables_save(text, "ip"), 53000) == {("ip", "filter", "INPUT"): "policy drop"}
    tcp = text.replace("-p udp", "-p tcp")
    assert closed(fw.from_iptables_save(tcp, "ip")) == {("ip", "filter", "INPUT"): "policy drop"}


def test_find_blockers_reports_both_kinds():
    blockers, ports = fw.find_blockers([ruleset("ufw")], "higgs_vpn", ["wg0"], [51820])
    assert {b["hook"] for b in blockers} == {"forward", "input"}
    assert [(b["family"], b["port"]) for b in ports] == [("ip", 51820), ("ip6", 51820)]
