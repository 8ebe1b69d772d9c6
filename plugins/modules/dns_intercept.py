# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dns_intercept
short_description: Keep the DNS of VPN clients on the node's resolver, in firewall objects the collection owns
version_added: 0.1.0
description:
  - Takes the whole DNS leak policy for traffic arriving on the tunnel interfaces,
    renders it, compares it with the live ruleset and applies the difference as one
    atomic transaction.
  - With O(mode=redirect), DNS (UDP and TCP port 53) from clients to any address other
    than the node's resolver is rewritten (DNAT) to the resolver, so a client with a
    hard-coded resolver still gets its answers from the node. A family without a
    resolver address is refused instead, so nothing leaks around the node.
  - With O(mode=refuse), such DNS is rejected (ICMP port unreachable for UDP, TCP reset
    for TCP) instead of forwarded.
  - With O(block_dot=true), DNS over TLS and DNS over QUIC (TCP and UDP port 853) to any
    other resolver are rejected as well.
  - With O(backend=nftables) everything lives in one table C(inet <table>) with its own
    base chains; other tables are never touched. With O(backend=iptables) the rules live
    in chains C(<table>_*) of the nat and filter tables, reached by one jump each.
  - The applied ruleset is persisted under O(persist_dir) with a fingerprint of the live
    listing, so drift is detected and repaired and the boot units of the
    M(higgs.vpn.firewall) family (C(higgs-vpn-nft@<table>), C(higgs-vpn-iptables@<table>))
    restore it.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  table:
    description:
      - Name of the owned nftables table, and prefix of the owned iptables chains.
      - Lower-case letters, digits and underscores, at most 15 characters.
    type: str
    default: higgs_vpn_dns
  mode:
    description:
      - V(redirect) rewrites client DNS to any other address to the node's resolver.
      - V(refuse) rejects client DNS to any other address.
    type: str
    choices: [redirect, refuse]
    default: redirect
  resolver_addresses:
    description:
      - Addresses the node's resolver listens on (its tunnel addresses), IPv4 and IPv6
        mixed. DNS is redirected to the first address of the family it arrives in.
      - Required with O(mode=redirect).
    type: list
    elements: str
    default: []
  block_dot:
    description: Also reject TCP and UDP port 853 (DNS over TLS/QUIC) to other resolvers.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - higgs.vpn.owned_firewall
notes:
  - Redirected DNS arrives at the node itself, so the node's input filter must let
    clients reach port 53 (the default of the M(higgs.vpn.firewall) O(higgs.vpn.firewall#module:node_services)).
  - Only traffic arriving on O(tunnel_interfaces) is affected; the node's own DNS and
    the upstream queries of its resolver are not.
"""

EXAMPLES = r"""
- name: Answer every client DNS query from the node's resolver
  higgs.vpn.dns_intercept:
    tunnel_interfaces: [wg0]
    resolver_addresses: [10.66.0.1, "fd66::1"]

- name: Refuse DNS to other resolvers and block DNS over TLS, with iptables
  higgs.vpn.dns_intercept:
    backend: iptables
    mode: refuse
    block_dot: true

- name: Remove the interception rules
  higgs.vpn.dns_intercept:
    state: absent
"""

RETURN = r"""
other_backend_removed:
  description: Whether the other backend's rules, files or boot restore were (or would be) removed.
  returned: O(remove_other_backend=true) and O(state=present)
  type: bool
  sample: false
ruleset:
  description: The rendered ruleset (nft file, or iptables-restore text per family).
  returned: state is present
  type: dict
  sample: {nftables: "table inet higgs_vpn_dns ..."}
persisted:
  description: Files holding the persisted ruleset.
  returned: always
  type: list
  elements: str
  sample: [/etc/higgs-vpn/firewall/higgs_vpn_dns.nft]
"""

import ipaddress

from ansible_collections.higgs.vpn.plugins.module_utils import _owned

ARGUMENT_SPEC = dict(
    **_owned.ARGUMENT_SPEC,
    table=dict(type="str", default="higgs_vpn_dns"),
    mode=dict(type="str", choices=["redirect", "refuse"], default="redirect"),
    resolver_addresses=dict(type="list", elements="str", default=[]),
    block_dot=dict(type="bool", default=False),
)

DNS = 53
DOT = 853
FAMILIES = {4: ("ipv4", "ip"), 6: ("ipv6", "ip6")}


def validate(params):
    """Every problem with the parameters, each naming its option."""
    errors = []
    if params["state"] == "absent":
        return errors
    for value in params["resolver_addresses"]:
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            errors.append("resolver_addresses: %r is not an IP address (no prefix length)" % value)
    if params["mode"] == "redirect" and not params["resolver_addresses"]:
        errors.append("resolver_addresses: mode=redirect needs the node's resolver address(es); "
                      "give them, or use mode=refuse")
    return errors


class Policy:
    """The desired interception, from validated parameters."""

    def __init__(self, params):
        self.table = params["table"]
        self.tunnels = sorted(set(params["tunnel_interfaces"]))
        addrs = [ipaddress.ip_address(str(a)) for a in params["resolver_addresses"]]
        self.resolvers = {v: [a.compressed for a in addrs if a.version == v] for v in FAMILIES}
        self.mode = params["mode"]
        self.block_dot = params["block_dot"]

    def redirected(self, ver):
        """The address DNS of family ``ver`` is rewritten to, or None (refused)."""
        if self.mode == "redirect" and self.resolvers[ver]:
            return self.resolvers[ver][0]
        return None


def render_nft(policy):
    """The nftables ruleset: one atomic, re-loadable ``nft -f`` file."""
    t = policy.table
    tun = "{ %s }" % ", ".join('"%s"' % n for n in policy.tunnels)
    lines = ["table inet %s" % t, "delete table inet %s" % t, "table inet %s {" % t]
    lines += [
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tiifname %s jump redirect_dns" % tun,
        "\t}",
        "\tchain redirect_dns {",
    ]
    for ver, (_fam, sel) in FAMILIES.items():
        target = policy.redirected(ver)
        if target is None:
            continue
        others = "{ %s }" % ", ".join(policy.resolvers[ver])
        for proto in ("udp", "tcp"):
            lines.append("\t\t%s daddr != %s %s dport %d counter dnat %s to %s"
                         % (sel, others, proto, DNS, sel, target))
    lines += [
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tiifname %s jump leaks" % tun,
        "\t}",
        "\tchain leaks {",
    ]
    for ver, (fam, _sel) in FAMILIES.items():
        if policy.redirected(ver) is None:
            lines += ["\t\tmeta nfproto %s udp dport %d counter reject" % (fam, DNS),
                      "\t\tmeta nfproto %s tcp dport %d counter reject with tcp reset" % (fam, DNS)]
    if policy.block_dot:
        lines += ["\t\tudp dport %d counter reject" % DOT,
                  "\t\ttcp dport %d counter reject with tcp reset" % DOT]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def render_iptables(policy, ver):
    """Owned chains of one family, as ``iptables-restore --noflush`` text without jumps."""
    prerouting, forward = [], []
    target = policy.redirected(ver)
    unreachable = "icmp-port-unreachable" if ver == 4 else "icmp6-port-unreachable"
    host = 32 if ver == 4 else 128
    for tun in policy.tunnels:
        for proto in ("udp", "tcp"):
            match = "-i %s -p %s -m %s --dport %%d" % (tun, proto, proto)
            reject = "REJECT --reject-with " + (unreachable if proto == "udp" else "tcp-reset")
            if target is not None:
                skip = ["-d %s/%d -j RETURN" % (addr, host) for addr in policy.resolvers[ver]]
                prerouting += ["%s %s" % (match % DNS, s) for s in skip]
                prerouting.append("%s -j DNAT --to-destination %s" % (match % DNS, target))
            else:
                forward.append("%s -j %s" % (match % DNS, reject))
            if policy.block_dot:
                forward.append("%s -j %s" % (match % DOT, reject))
    return _owned.iptables_restore(policy.table, {"filter": {"forward": forward},
                                                  "nat": {"prerouting": prerouting}})


def render(params):
    """The ruleset to persist, per backend file."""
    policy = Policy(params)
    if params["backend"] == "nftables":
        return {"nftables": render_nft(policy)}
    return _owned.for_jumps({"ipv%d" % v: render_iptables(policy, v) for v in FAMILIES}, params["table"])


def main():
    module, result = _owned.run_module(ARGUMENT_SPEC, validate, render, "DNS interception")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
