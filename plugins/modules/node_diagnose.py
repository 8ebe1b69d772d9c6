# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: node_diagnose
short_description: Check that a Higgs.net exit node works and report what does not
version_added: 0.1.0
description:
  - Reads the node's state and returns one structured check per part, each with C(ok) and a
    readable C(detail), plus RV(healthy) and a RV(summary) of one line per check.
  - Checks forwarding, the owned firewall and its NAT counter, foreign firewalls (Docker,
    ufw, firewalld, hand-made rules) dropping what arrives on O(interface), the WireGuard interface and
    the last handshake of each peer, the tunnel MTU against the egress MTU, the resolver on
    the tunnel addresses, and optionally the traffic shaping and the relay connector.
  - Never changes anything. The playbook C(higgs.vpn.diagnose) prints the summary and fails
    when RV(healthy) is false.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  interface:
    description: The WireGuard interface.
    type: str
    default: wg0
  firewall_backend:
    description: Framework of the owned firewall.
    type: str
    choices: [nftables, iptables]
    default: nftables
  firewall_table:
    description: Owned table (nftables) or chain prefix (iptables) of the forwarding role.
    type: str
    default: higgs_vpn
  resolver_addresses:
    description: Addresses the node's resolver listens on; empty skips the check.
    type: list
    elements: str
    default: []
  resolver_query:
    description: Name queried (type A) to see the resolver answer.
    type: str
    default: .
  shaping:
    description: Check that the traffic shaping is installed on O(interface).
    type: bool
    default: false
  relay_health_url:
    description:
      - Health endpoint of the relay connector; empty skips the checks.
      - Two checks, C(relay connector) (a relay link is up) and C(relay requests) (no relay refused one of
        the connector's requests, rate limits aside; each refusal listed with its count and the latest
        message of the relay).
    type: str
    default: ""
  handshake_max_age:
    description: Seconds after which a peer's last handshake counts as stale (reported, not a failure).
    type: int
    default: 180
extends_documentation_fragment:
  - higgs.vpn.no_diff
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Diagnose the node
  higgs.vpn.node_diagnose:
    resolver_addresses: [10.66.0.1, "fd66::1"]
    shaping: true
  register: diagnosis

- name: Show it
  ansible.builtin.debug:
    msg: "{{ diagnosis.summary }}"
"""

RETURN = r"""
healthy:
  description: Every check passed.
  returned: always
  type: bool
checks:
  description: One entry per check.
  returned: always
  type: list
  elements: dict
  sample: [{name: wireguard, ok: true, detail: "wg0 up, 3 peers, 2 with a handshake in the last 180 s"}]
summary:
  description: One readable line per check.
  returned: always
  type: list
  elements: str
peers:
  description: WireGuard peers with their last handshake (seconds ago, null when never) and transfer.
  returned: always
  type: list
  elements: dict
"""

import json
import os
import socket
import struct
import time
import urllib.error

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.higgs.vpn.plugins.module_utils import _firewall as fw

ENV = {"LANG": "C", "LC_ALL": "C"}


def check(name, ok, detail):
    return {"name": name, "ok": bool(ok), "detail": detail}


def read_sysctl(key):
    try:
        with open(os.path.join("/proc/sys", *key.split("."))) as handle:
            return handle.read().strip()
    except OSError:
        return None


def forwarding_check(read=read_sysctl):
    v4, v6 = read("net.ipv4.ip_forward"), read("net.ipv6.conf.all.forwarding")
    return check("forwarding", "1" in (v4, v6), "ipv4 %s, ipv6 %s" % (
        "on" if v4 == "1" else "off", "on" if v6 == "1" else "off"))


def nat_packets_nft(listing):
    """Packets counted by the NAT rules of an ``nft -j list table`` listing."""
    total = 0
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        exprs = rule.get("expr", [])
        if any("masquerade" in e or "snat" in e for e in exprs):
            total += sum(e["counter"]["packets"] for e in exprs if isinstance(e.get("counter"), dict))
    return total


def nat_packets_iptables(listing):
    """Packets counted in ``iptables -t nat -L CHAIN -v -x -n`` output."""
    total = 0
    for line in listing.splitlines()[2:]:
        fields = line.split()
        if len(fields) > 2 and fields[2] in ("MASQUERADE", "SNAT"):
            total += int(fields[0])
    return total


def wg_peers(dump, now, max_age):
    """Peers of ``wg show IF dump`` with the age of their last handshake."""
    peers = []
    for line in dump.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) < 7:
            continue
        last = int(fields[4])
        peers.append({
            "public_key": fields[0], "endpoint": None if fields[2] == "(none)" else fields[2],
            "allowed_ips": fields[3], "handshake_age": None if last == 0 else now - last,
            "rx_bytes": int(fields[5]), "tx_bytes": int(fields[6]),
        })
    recent = [p for p in peers if p["handshake_age"] is not None and p["handshake_age"] <= max_age]
    return peers, recent


def dns_query(name, qid=0x4867):
    labels = [part for part in name.strip(".").split(".") if part]
    qname = b"".join(bytes([len(p)]) + p.encode("ascii") for p in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def ask(address, name, timeout=2.0, port=53):
    """The rcode name of the resolver's answer, or why there was none."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    query = dns_query(name)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (address, port))
            answer = sock.recv(4096)
        except OSError as exc:
            return None, "no answer (%s)" % (exc.strerror or exc.__class__.__name__)
    if len(answer) < 12 or answer[:2] != query[:2]:
        return None, "malformed answer"
    rcode = RCODES.get(answer[3] & 0x0F, str(answer[3] & 0x0F))
    return rcode, rcode


def run(module, argv):
    rc, out, err = module.run_command(argv, environ_update=ENV)
    return rc, out, err.strip()


def firewall_check(module, params):
    table = params["firewall_table"]
    if params["firewall_backend"] == "nftables":
        nft = module.get_bin_path("nft")
        if not nft:
            return check("firewall", False, "nft is not installed")
        rc, out, err = run(module, [nft, "-j", "list", "table", "inet", table])
        if rc != 0:
            return check("firewall", False, "table inet %s missing: %s" % (table, err))
        packets = nat_packets_nft(out)
    else:
        ipt = module.get_bin_path("iptables")
        if not ipt:
            return check("firewall", False, "iptables is not installed")
        rc, out, err = run(module, [ipt, "-w", "-t", "nat", "-L", table + "_postrouting", "-v", "-x", "-n"])
        if rc != 0:
            return check("firewall", False, "chain %s_postrouting missing: %s" % (table, err))
        packets = nat_packets_iptables(out)
    return check("firewall", True, "%s rules in place, NAT counted %d connections"
                 % (params["firewall_backend"], packets))


def read_health(url):
    """(HTTP status or why unreachable, decoded JSON body or None) of the connector's health endpoint."""
    try:
        answer = open_url(url, timeout=3)
        status, raw = answer.status, answer.read(1 << 20)
    except urllib.error.HTTPError as exc:   # 503 while no relay link is up, with the same body
        status, raw = exc.code, exc.read(1 << 20)
    except OSError as exc:
        return "unreachable (%s)" % exc, None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return status, body if isinstance(body, dict) else None


def relay_checks(status, health):
    """The relay connector's checks: a link is up, and no relay refuses its requests (429 aside)."""
    checks = [check("relay connector", status == 200, "health: %s" % status)]
    if health is None:
        return checks
    refusals, failing = [], False
    relays = health.get("relays") if isinstance(health.get("relays"), dict) else {}
    for name, relay in sorted(relays.items()):
        refused = relay.get("refused") if isinstance(relay, dict) else None
        if not isinstance(refused, dict) or not refused:
            continue
        counts = ", ".join("%s x%s" % item for item in sorted(refused.items()))
        failing = failing or any(not str(key).endswith(" 429") for key in refused)
        refusals.append("%s refused %s (latest: %s)" % (name, counts, relay.get("last_refusal", "")))
    checks.append(check("relay requests", not failing, "; ".join(refusals) or "no request refused"))
    return checks


def foreign_firewall_check(module, params, ports):
    """Every foreign forward/input base chain that drops client traffic, or the tunnel's UDP ``ports``, now.

    Catches a foreign service that inserted a drop after the converge, and the
    collection's jump or table removed behind its back on a node whose other
    firewall then drops everything (Docker's or ufw's FORWARD policy). A closed
    tunnel port fails its own check: clients then come through the relay only.
    """
    def read(argv):
        rc, out, _err = run(module, argv)
        return rc, out

    try:
        blockers, closed = fw.find_blockers(fw.read_rulesets(module, read), params["firewall_table"],
                                            [params["interface"]], ports)
    except ValueError as exc:
        return [check("foreign firewall", False, "cannot read the ruleset: %s" % exc)]
    if closed:
        port = check("tunnel port", False, "%s (only relayed clients reach the node)"
                     % "; ".join(fw.describe_closed(b) for b in closed))
    else:
        port = check("tunnel port", True, "no other firewall drops UDP port %s from outside"
                     % (", ".join(str(p) for p in ports) or "(no listening tunnel)"))
    if blockers:
        return [check("foreign firewall", False, "client traffic on %s dropped by %s"
                      % (params["interface"], "; ".join(fw.describe_blocker(b) for b in blockers))), port]
    return [check("foreign firewall", True, "no other firewall drops what arrives on %s" % params["interface"]),
            port]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            interface=dict(type="str", default="wg0"),
            firewall_backend=dict(type="str", choices=["nftables", "iptables"], default="nftables"),
            firewall_table=dict(type="str", default="higgs_vpn"),
            resolver_addresses=dict(type="list", elements="str", default=[]),
            resolver_query=dict(type="str", default="."),
            shaping=dict(type="bool", default=False),
            relay_health_url=dict(type="str", default=""),
            handshake_max_age=dict(type="int", default=180),
        ),
        supports_check_mode=True,
    )
    params = module.params
    iface = params["interface"]
    ip = module.get_bin_path("ip", required=True)
    checks = [forwarding_check(), firewall_check(module, params)]

    peers = []
    wg = module.get_bin_path("wg")
    rc, out, err = run(module, [wg, "show", iface, "dump"]) if wg else (1, "", "wg is not installed")
    port = out.splitlines()[0].split("\t")[2] if rc == 0 and out.strip() else "0"
    checks += foreign_firewall_check(module, params, [int(port)] if port.isdigit() and port != "0" else [])
    if rc != 0:
        checks.append(check("wireguard", False, "%s is not up: %s" % (iface, err)))
    else:
        peers, recent = wg_peers(out, int(time.time()), params["handshake_max_age"])
        checks.append(check("wireguard", True, "%s up, %d peers, %d with a handshake in the last %d s" % (
            iface, len(peers), len(recent), params["handshake_max_age"])))

    rc, out, _err = run(module, [ip, "-j", "link", "show", "dev", iface])
    tunnel_mtu = json.loads(out)[0]["mtu"] if rc == 0 else None
    rc, out, _err = run(module, [ip, "-j", "route", "show", "default"])
    routes = json.loads(out) if rc == 0 and out.strip() else []
    egress_mtu = None
    if routes:
        rc, out, _err = run(module, [ip, "-j", "link", "show", "dev", routes[0]["dev"]])
        egress_mtu = json.loads(out)[0]["mtu"] if rc == 0 else None
    if tunnel_mtu is None or egress_mtu is None:
        checks.append(check("mtu", False, "tunnel MTU %s, egress MTU %s" % (tunnel_mtu, egress_mtu)))
    else:
        checks.append(check("mtu", tunnel_mtu <= egress_mtu - 60,
                            "tunnel %d, egress %d (WireGuard over IPv4 needs 60 bytes)" % (tunnel_mtu, egress_mtu)))

    for address in params["resolver_addresses"]:
        rcode, detail = ask(address, params["resolver_query"])
        checks.append(check("resolver %s" % address, rcode in ("NOERROR", "NXDOMAIN"),
                            "%s for %s A" % (detail, params["resolver_query"])))

    if params["shaping"]:
        tc = module.get_bin_path("tc")
        rc, out, err = run(module, [tc, "-j", "qdisc", "show", "dev", iface]) if tc else (1, "", "no tc")
        kinds = [q.get("kind") for q in json.loads(out)] if rc == 0 and out.strip() else []
        checks.append(check("shaping", "htb" in kinds, "qdiscs on %s: %s" % (iface, ", ".join(kinds) or err)))

    if params["relay_health_url"]:
        checks.extend(relay_checks(*read_health(params["relay_health_url"])))

    summary = ["%s %-16s %s" % ("ok  " if c["ok"] else "FAIL", c["name"], c["detail"]) for c in checks]
    module.exit_json(changed=False, healthy=all(c["ok"] for c in checks), checks=checks,
                     summary=summary, peers=peers)


if __name__ == "__main__":
    main()
