# -*- coding: utf-8 -*-
# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render, read and fingerprint the client-traffic firewall of a node.

The firewall lives in objects the collection owns and nothing else:

* nftables: one table ``inet <table>`` with its own base chains;
* iptables: chains ``<table>_*`` in the filter and nat tables of iptables and
  ip6tables, reached by one jump each from INPUT, FORWARD, nat PREROUTING and
  nat POSTROUTING.

Drift detection does not depend on how a given ``nft``/``iptables`` version
prints rules: after every apply the live listing of the owned objects is
hashed and stored beside the ruleset in the persisted file.  The firewall is
in sync when the persisted ruleset equals the rendered one and the live
listing still hashes to the stored value.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import re

from ansible_collections.higgs.vpn.plugins.module_utils._net import collapse

FINGERPRINT_PREFIX = "# higgs-vpn live-sha256: "
JUMPS = (
    # (table, builtin chain, owned chain suffix)
    ("filter", "INPUT", "input"),
    ("filter", "FORWARD", "forward"),
    ("nat", "PREROUTING", "prerouting"),
    ("nat", "POSTROUTING", "postrouting"),
)
IPT_CHAINS = {
    "filter": ("input", "forward", "from_clients", "client", "to_clients"),
    "nat": ("prerouting", "postrouting"),
}
FAMILIES = (("ipv4", 4), ("ipv6", 6))
_COUNTER_RE = re.compile(r"counter packets \d+ bytes \d+")
_IPT_COUNTS_RE = re.compile(r"\[\d+:\d+\]")


class Policy:
    """The desired policy, from validated module parameters."""

    def __init__(self, params):
        self.table = params["table"]
        self.tunnels = sorted(set(params["tunnel_interfaces"]))
        self.clients = {v: collapse(params["client_subnets"], v) for v in (4, 6)}
        self.blocked = {v: collapse(params["blocked_destinations"], v) for v in (4, 6)}
        self.allowed = {v: collapse(params["allowed_destinations"], v) for v in (4, 6)}
        self.egress = {}
        for fam, ver in FAMILIES:
            spec = params.get("egress_" + fam) or {}
            if spec.get("interface") and self.clients[ver]:
                self.egress[ver] = spec
        self.masquerade = {4: True, 6: params["nat66"]}
        self.client_to_client = params["client_to_client"]
        self.mss_clamp = params["mss_clamp"]
        self.services = sorted(
            {(s["proto"], int(s["port"])) for s in params["node_services"]}
        )


def _quote(names):
    return "{ %s }" % ", ".join('"%s"' % n for n in names)


def _set(name, kind, elements):
    lines = ["\tset %s {" % name, "\t\ttype %s" % kind, "\t\tflags interval"]
    if elements:
        lines.append("\t\telements = { %s }" % ", ".join(elements))
    lines.append("\t}")
    return lines


def render_nft(policy):
    """The nftables ruleset: one atomic, re-loadable ``nft -f`` file."""
    t = policy.table
    tun = _quote(policy.tunnels)
    lines = ["table inet %s" % t, "delete table inet %s" % t, "table inet %s {" % t]
    for ver, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += _set("clients_v%d" % ver, kind, policy.clients[ver])
        lines += _set("blocked_v%d" % ver, kind, policy.blocked[ver])
        lines += _set("allowed_v%d" % ver, kind, policy.allowed[ver])
    clamp = ["\t\ttcp flags syn / syn,rst tcp option maxseg size set rt mtu"] if policy.mss_clamp else []
    lines += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        "\t\tiifname %s jump clients_to_node" % tun,
        "\t}",
        "\tchain clients_to_node {",
        "\t\tct state established,related accept",
        "\t\tmeta l4proto { icmp, ipv6-icmp } accept",
    ]
    for proto, port in policy.services:
        lines.append("\t\t%s dport %d accept" % (proto, port))
    lines += [
        "\t\tcounter drop",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tiifname %s jump from_clients" % tun,
        "\t\toifname %s jump to_clients" % tun,
        "\t}",
        "\tchain from_clients {",
        *clamp,
        "\t\tmeta nfproto ipv4 ip saddr != @clients_v4 counter drop",
        "\t\tmeta nfproto ipv6 ip6 saddr != @clients_v6 counter drop",
    ]
    if policy.client_to_client:
        lines += [
            "\t\toifname %s ip daddr @clients_v4 accept" % tun,
            "\t\toifname %s ip6 daddr @clients_v6 accept" % tun,
        ]
    lines += [
        "\t\tip daddr @allowed_v4 accept",
        "\t\tip6 daddr @allowed_v6 accept",
        "\t\tip daddr @blocked_v4 counter drop",
        "\t\tip6 daddr @blocked_v6 counter drop",
    ]
    for ver, proto in ((4, "ipv4"), (6, "ipv6")):
        if ver in policy.egress:
            lines.append('\t\toifname "%s" meta nfproto %s counter accept'
                         % (policy.egress[ver]["interface"], proto))
    lines += [
        "\t\tcounter drop",
        "\t}",
        "\tchain to_clients {",
        *clamp,
        "\t\tct state established,related accept",
        "\t\tcounter drop",
        "\t}",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    for ver, sel in ((4, "ip"), (6, "ip6")):
        spec = policy.egress.get(ver)
        if not spec or not policy.masquerade[ver]:
            continue
        action = "snat %s to %s" % (sel, spec["snat"]) if spec.get("snat") else "masquerade"
        lines.append('\t\toifname "%s" %s saddr @clients_v%d counter %s'
                     % (spec["interface"], sel, ver, action))
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def _chain(policy, suffix):
    return "%s_%s" % (policy.table, suffix)


def render_iptables(policy, ver):
    """Rules of one family for ``iptables-restore --noflush``, without jumps."""
    def c(suffix):
        return _chain(policy, suffix)

    out = []
    filt = []
    if policy.mss_clamp:
        clamp = "-p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
        filt += ["-A %s %s" % (c("from_clients"), clamp), "-A %s %s" % (c("to_clients"), clamp)]
    for tun in policy.tunnels:
        filt.append("-A %s -i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % (c("input"), tun))
        icmp = "icmp" if ver == 4 else "ipv6-icmp"
        filt.append("-A %s -i %s -p %s -j ACCEPT" % (c("input"), tun, icmp))
        for proto, port in policy.services:
            filt.append("-A %s -i %s -p %s -m %s --dport %d -j ACCEPT" % (c("input"), tun, proto, proto, port))
        filt.append("-A %s -i %s -j DROP" % (c("input"), tun))
        filt.append("-A %s -i %s -j %s" % (c("forward"), tun, c("from_clients")))
        filt.append("-A %s -o %s -j %s" % (c("forward"), tun, c("to_clients")))
    for net in policy.clients[ver]:
        filt.append("-A %s -s %s -j %s" % (c("from_clients"), net, c("client")))
    filt.append("-A %s -j DROP" % c("from_clients"))
    if policy.client_to_client:
        for tun in policy.tunnels:
            for net in policy.clients[ver]:
                filt.append("-A %s -d %s -o %s -j ACCEPT" % (c("client"), net, tun))
    filt += ["-A %s -d %s -j ACCEPT" % (c("client"), net) for net in policy.allowed[ver]]
    filt += ["-A %s -d %s -j DROP" % (c("client"), net) for net in policy.blocked[ver]]
    spec = policy.egress.get(ver)
    if spec:
        filt.append("-A %s -o %s -j ACCEPT" % (c("client"), spec["interface"]))
    filt.append("-A %s -j DROP" % c("client"))
    filt.append("-A %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % c("to_clients"))
    filt.append("-A %s -j DROP" % c("to_clients"))
    nat = []
    if spec and policy.masquerade[ver]:
        action = "SNAT --to-source %s" % spec["snat"] if spec.get("snat") else "MASQUERADE"
        for net in policy.clients[ver]:
            nat.append("-A %s -s %s -o %s -j %s" % (c("postrouting"), net, spec["interface"], action))
    for table, rules in (("filter", filt), ("nat", nat)):
        out.append("*%s" % table)
        out += [":%s - [0:0]" % c(s) for s in IPT_CHAINS[table]]
        out += ["-F %s" % c(s) for s in IPT_CHAINS[table]]
        out += rules
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def add_jumps(restore_text, table_prefix, missing):
    """Insert ``-I`` lines for the jumps in ``missing`` before each COMMIT."""
    out = []
    current = None
    for line in restore_text.splitlines():
        if line.startswith("*"):
            current = line[1:]
        if line == "COMMIT":
            for table, builtin, suffix in JUMPS:
                if table == current and (table, builtin, suffix) in missing:
                    out.append("-I %s 1 -j %s_%s" % (builtin, table_prefix, suffix))
        out.append(line)
    return "\n".join(out) + "\n"


def removal_iptables(table_prefix, saved):
    """Restore text that removes jumps and owned chains found in ``saved``."""
    out = []
    for table, chains in IPT_CHAINS.items():
        owned = [
            "%s_%s" % (table_prefix, s) for s in chains
            if ":%s_%s " % (table_prefix, s) in saved.get(table, "")
        ]
        if not owned:
            continue
        out.append("*%s" % table)
        for line in saved.get(table, "").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "-A" and parts[2] == "-j" and parts[3] in owned \
                    and not parts[1].startswith(table_prefix + "_"):
                out.append("-D %s -j %s" % (parts[1], parts[3]))
        out += ["-F %s" % ch for ch in owned]
        out += ["-X %s" % ch for ch in owned]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def missing_jumps(table_prefix, saved):
    """Jumps from builtin chains to owned chains absent in ``saved``."""
    missing = set()
    for table, builtin, suffix in JUMPS:
        jump = "-A %s -j %s_%s" % (builtin, table_prefix, suffix)
        if jump not in saved.get(table, "").splitlines():
            missing.add((table, builtin, suffix))
    return missing


def split_save(text):
    """``iptables-save`` output as {table: text of that table}."""
    tables = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif current and not line.startswith("#"):
            tables[current].append(line)
    return {t: "\n".join(lines) + "\n" for t, lines in tables.items()}


def owned_iptables(table_prefix, saved):
    """The lines of ``iptables-save`` that belong to the owned chains."""
    mark = table_prefix + "_"
    keep = []
    for table in sorted(saved):
        for line in saved[table].splitlines():
            parts = line.split()
            if not parts:
                continue
            if parts[0].startswith(":" + mark):
                keep.append("%s %s" % (table, _IPT_COUNTS_RE.sub("", line).strip()))
            elif parts[0] == "-A" and (parts[1].startswith(mark) or mark in line.split("-j ")[-1]):
                keep.append("%s %s" % (table, line))
    return "\n".join(keep) + ("\n" if keep else "")


def normalize_nft(listing):
    """An ``nft list table`` listing without packet and byte counts."""
    return _COUNTER_RE.sub("counter", listing)


def fingerprint(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def persisted(body, live):
    """The persisted file: the live fingerprint line, then the ruleset."""
    return FINGERPRINT_PREFIX + fingerprint(live) + "\n" + body


def parse_persisted(text):
    """(fingerprint, body) of a persisted file, (None, None) when unreadable."""
    if not text or not text.startswith(FINGERPRINT_PREFIX):
        return None, None
    first, _, body = text.partition("\n")
    return first[len(FINGERPRINT_PREFIX):], body
