# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: firewall
short_description: Client-traffic firewall and NAT of a VPN node, in objects the collection owns
version_added: 0.1.0
description:
  - Takes the whole desired policy for traffic from VPN clients (forwarding to the
    egress interface, NAT, isolation of the node's networks, MSS clamping, services
    of the node clients may use), renders it, compares it with the live ruleset and
    applies the difference as one atomic transaction.
  - With O(backend=nftables) everything lives in one table C(inet <table>) with its
    own base chains; other tables are never touched or reordered.
  - With O(backend=iptables) the rules live in chains C(<table>_*) of the filter and
    nat tables of iptables and ip6tables, reached by one jump each from C(INPUT),
    C(FORWARD), nat C(PREROUTING) and nat C(POSTROUTING), inserted first when missing
    and never moved otherwise.
  - The applied ruleset is persisted under O(persist_dir) together with a fingerprint
    of the live listing, so drift (rules changed or removed by hand, a lost ruleset)
    is detected and repaired on the next run, and a boot unit can restore it.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  table:
    description:
      - Name of the owned nftables table, and prefix of the owned iptables chains.
      - Lower-case letters, digits and underscores, at most 15 characters.
    type: str
    default: higgs_vpn
  client_subnets:
    description:
      - Networks VPN clients use as source addresses, IPv4 and IPv6 mixed.
      - Traffic from a tunnel interface with any other source is dropped.
    type: list
    elements: str
    default: []
  egress_ipv4:
    description:
      - Egress of IPv4 client traffic. Without it IPv4 from clients is not forwarded.
    type: dict
    suboptions:
      interface:
        description: Egress interface name.
        type: str
        required: true
      snat:
        description: Static source address; MASQUERADE is used when omitted.
        type: str
  egress_ipv6:
    description:
      - Egress of IPv6 client traffic. Without it IPv6 from clients is not forwarded.
    type: dict
    suboptions:
      interface:
        description: Egress interface name.
        type: str
        required: true
      snat:
        description: Static source address; MASQUERADE is used when omitted.
        type: str
  nat66:
    description:
      - Masquerade (or SNAT) IPv6 client traffic. Turn off when the client prefix is
        routed to the node.
    type: bool
    default: true
  blocked_destinations:
    description:
      - Networks clients must not reach (the node owner's LAN, private ranges, the
        node's own networks and addresses).
    type: list
    elements: str
    default: []
  allowed_destinations:
    description: Exceptions to O(blocked_destinations) that clients may reach.
    type: list
    elements: str
    default: []
  client_to_client:
    description: Let clients reach each other through the node.
    type: bool
    default: false
  mss_clamp:
    description: Clamp the TCP MSS of forwarded SYNs to the path MTU.
    type: bool
    default: true
  node_services:
    description:
      - Services on the node itself that clients may reach through a tunnel
        interface (ICMP and replies are always allowed, everything else is dropped).
    type: list
    elements: dict
    default: []
    suboptions:
      proto:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
        required: true
      port:
        description: Destination port.
        type: int
        required: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - higgs.vpn.owned_firewall
notes:
  - Rendering is validated before anything changes; invalid interface names or
    networks fail with the option that holds them.
  - Forwarding sysctls are not managed here (see M(higgs.vpn.sysctl_conf)).
"""

EXAMPLES = r"""
- name: NAT clients of wg0 out of eth0, keep them off the LAN
  higgs.vpn.firewall:
    tunnel_interfaces: [wg0]
    client_subnets: [10.66.0.0/24, fd66::/64]
    egress_ipv4:
      interface: eth0
    egress_ipv6:
      interface: eth0
    blocked_destinations: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7]
    node_services:
      - {proto: udp, port: 53}
      - {proto: tcp, port: 53}

- name: Same policy with iptables and a static source address
  higgs.vpn.firewall:
    backend: iptables
    client_subnets: [10.66.0.0/24]
    egress_ipv4:
      interface: eth0
      snat: 198.51.100.7

- name: Remove everything the firewall module added
  higgs.vpn.firewall:
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
  sample: {nftables: "table inet higgs_vpn ..."}
persisted:
  description: Files holding the persisted ruleset.
  returned: always
  type: list
  elements: str
  sample: [/etc/higgs-vpn/firewall/higgs_vpn.nft]
"""

import ipaddress

from ansible_collections.higgs.vpn.plugins.module_utils import _firewall as fw
from ansible_collections.higgs.vpn.plugins.module_utils import _owned
from ansible_collections.higgs.vpn.plugins.module_utils._net import (
    cidr_errors,
    ifname_error,
    self_overlaps,
)

ARGUMENT_SPEC = dict(
    **_owned.ARGUMENT_SPEC,
    table=dict(type="str", default="higgs_vpn"),
    client_subnets=dict(type="list", elements="str", default=[]),
    egress_ipv4=dict(type="dict", options=dict(
        interface=dict(type="str", required=True), snat=dict(type="str"))),
    egress_ipv6=dict(type="dict", options=dict(
        interface=dict(type="str", required=True), snat=dict(type="str"))),
    nat66=dict(type="bool", default=True),
    blocked_destinations=dict(type="list", elements="str", default=[]),
    allowed_destinations=dict(type="list", elements="str", default=[]),
    client_to_client=dict(type="bool", default=False),
    mss_clamp=dict(type="bool", default=True),
    node_services=dict(type="list", elements="dict", default=[], options=dict(
        proto=dict(type="str", choices=["tcp", "udp"], required=True),
        port=dict(type="int", required=True))),
)


def validate(params):
    """Every problem with the parameters, each naming its option."""
    errors = []
    if params["state"] == "absent":
        return errors
    for option in ("client_subnets", "blocked_destinations", "allowed_destinations"):
        strict = option == "client_subnets"
        for value, why in cidr_errors(params[option], strict=strict).items():
            errors.append("%s: %r is not a valid network (%s)" % (option, value, why))
    if not cidr_errors(params["client_subnets"]):
        for a, b in self_overlaps(params["client_subnets"]):
            errors.append("client_subnets: %s overlaps %s; give each client network once" % (a, b))
    for fam, ver in fw.FAMILIES:
        spec = params.get("egress_" + fam)
        if not spec:
            continue
        why = ifname_error(spec["interface"])
        if why:
            errors.append("egress_%s.interface: %r %s" % (fam, spec["interface"], why))
        if spec["interface"] in params["tunnel_interfaces"]:
            errors.append("egress_%s.interface: %r is a tunnel interface; name the uplink"
                          % (fam, spec["interface"]))
        if spec.get("snat"):
            try:
                addr = ipaddress.ip_address(spec["snat"])
            except ValueError:
                addr = None
            if addr is None or addr.version != ver:
                errors.append("egress_%s.snat: %r is not an %s address" % (fam, spec["snat"], fam))
    for svc in params["node_services"]:
        if not 1 <= svc["port"] <= 65535:
            errors.append("node_services: port %d is outside 1-65535" % svc["port"])
    return errors


def render(params):
    """The ruleset to persist, per backend file."""
    policy = fw.Policy(params)
    if params["backend"] == "nftables":
        return {"nftables": fw.render_nft(policy)}
    return _owned.for_jumps({"ipv%d" % v: fw.render_iptables(policy, v) for v in (4, 6)}, params["table"])


def main():
    module, result = _owned.run_module(ARGUMENT_SPEC, validate, render, "firewall policy")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
