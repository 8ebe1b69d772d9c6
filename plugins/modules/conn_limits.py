# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: conn_limits
short_description: Per-client connection limits for VPN clients, in firewall objects the collection owns
version_added: 0.1.0
description:
  - Limits, per client, the number of concurrent connections and the number of new
    connections per second that clients may open through the node (connections arriving
    on O(tunnel_interfaces) and forwarded).
  - A connection over a limit is refused, TCP with a reset, anything else dropped.
  - With O(backend=nftables) one verdict map lookup sends a limited
    client's new connections to the client's own chain, whose stateful rules
    (C(ct count over), C(limit rate over)) count them; the per-packet cost does not grow
    with the number of clients. With O(backend=iptables) clients are grouped by their
    limits, which use C(connlimit) and C(hashlimit) per source address; clients whose limits
    differ from the defaults are matched one rule each.
  - The ruleset is one owned table C(inet <table>) (or chains C(<table>_*)), applied,
    persisted and removed through the shared owned-firewall engine; the boot units
    C(higgs-vpn-nft@<table>) / C(higgs-vpn-iptables@<table>) restore it.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  table:
    description: Name of the owned nftables table and prefix of the owned iptables chains
      (at most 15 lower-case letters, digits, underscores).
    type: str
    default: higgs_vpn_conn
  max_connections:
    description: Default concurrent connections per client address; V(0) means no limit.
    type: int
    default: 0
  new_connections_per_second:
    description: Default new connections per second per client address; V(0) means no limit.
    type: int
    default: 0
extends_documentation_fragment:
  - higgs.vpn.shaping_clients
  - ansible.builtin.action_common_attributes
  - higgs.vpn.owned_firewall
notes:
  - The new-connection rate allows a burst of as many connections as the per-second limit.
  - With O(backend=nftables) a client's limits count all its addresses together and
    addresses not in O(clients) are not limited; with O(backend=iptables) limits count per
    address and addresses not in O(clients) get the defaults.
"""

EXAMPLES = r"""
- name: At most 200 connections and 20 new ones per second per client, 1000 for bob
  higgs.vpn.conn_limits:
    max_connections: 200
    new_connections_per_second: 20
    clients:
      - name: bob
        addresses: [10.66.0.3/32]
        max_connections: 1000

- name: Remove the limits
  higgs.vpn.conn_limits:
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
  sample: {nftables: "table inet higgs_vpn_conn ..."}
groups:
  description: The limit groups, as C([max_connections, new_connections_per_second]) by group name.
  returned: state is present
  type: dict
  sample: {g0: [200, 20], g1: [1000, 20]}
persisted:
  description: Files holding the persisted ruleset.
  returned: always
  type: list
  elements: str
  sample: [/etc/higgs-vpn/firewall/higgs_vpn_conn.nft]
"""

import hashlib
import ipaddress
import json

from ansible_collections.higgs.vpn.plugins.module_utils import _owned, _plan

ARGUMENT_SPEC = dict(
    **_owned.ARGUMENT_SPEC,
    table=dict(type="str", default="higgs_vpn_conn"),
    max_connections=dict(type="int", default=0),
    new_connections_per_second=dict(type="int", default=0),
    clients=dict(type="list", elements="dict", default=[], options=_plan.CLIENT_OPTIONS),
)

FAMILIES = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
SET_SIZE = 65535


def validate(params):
    """Every problem with the parameters, each naming its option."""
    errors = []
    if params["state"] == "absent":
        return errors
    for option in ("max_connections", "new_connections_per_second"):
        if params[option] < 0:
            errors.append("%s: %d is negative; use 0 for no limit" % (option, params[option]))
    names, owners = set(), {}
    for index, client in enumerate(params["clients"]):
        where = "clients[%d] (%s)" % (index, client["name"])
        if client["name"] in names:
            errors.append("%s: the name is used twice" % where)
        names.add(client["name"])
        for option in ("max_connections", "new_connections_per_second"):
            if (client[option] or 0) < 0:
                errors.append("%s.%s: %d is negative; use 0 for no limit" % (where, option, client[option]))
        for addr in client["addresses"]:
            try:
                net = ipaddress.ip_network(str(addr), strict=False)
            except ValueError:
                errors.append("%s.addresses: %r is not an address or network" % (where, addr))
                continue
            if net in owners:
                errors.append("%s.addresses: %s is also %s's" % (where, net, owners[net]))
            owners[net] = client["name"]
    return errors


def groups_of(params):
    """(groups {name: (max, rate)}, members {name: [networks]}); g0 holds the defaults."""
    default = (params["max_connections"], params["new_connections_per_second"])
    limits = {}
    for client in params["clients"]:
        own = tuple(default[i] if client[k] is None else client[k]
                    for i, k in enumerate(("max_connections", "new_connections_per_second")))
        if own != default:
            for addr in client["addresses"]:
                limits[ipaddress.ip_network(str(addr), strict=False)] = own
    names = {default: "g0"}
    for value in sorted(set(limits.values())):
        names[value] = "g%d" % len(names)
    groups = {name: value for value, name in names.items()}
    members = {name: sorted((n for n, v in limits.items() if names[v] == name),
                            key=lambda n: (n.version, int(n.network_address), n.prefixlen))
               for name in groups}
    return groups, members


def chain_name(client_name):
    """A stable chain name per client, whatever characters its name has."""
    return "c_" + hashlib.sha256(client_name.encode("utf-8")).hexdigest()[:12]


def limited_clients(params):
    """[(name, chain, max, rate, networks)] of the clients with at least one limit."""
    out = []
    for client in params["clients"]:
        conns, rate = (params[k] if client[k] is None else client[k]
                       for k in ("max_connections", "new_connections_per_second"))
        if conns or rate:
            nets = [ipaddress.ip_network(str(a), strict=False) for a in client["addresses"]]
            out.append((client["name"], chain_name(client["name"]), conns, rate, nets))
    return sorted(out, key=lambda c: c[1])


def render_nft(params):
    """One chain per limited client, reached by one verdict map lookup.

    The limits are stateful statements of the client's own rules, so they count
    the client's connections (all its addresses together) without dynamic sets,
    whose elements would make the listing change with traffic.
    """
    t = params["table"]
    clients = limited_clients(params)
    tun = "{ %s }" % ", ".join('"%s"' % n for n in sorted(set(params["tunnel_interfaces"])))
    lines = ["table inet %s" % t, "delete table inet %s" % t, "table inet %s {" % t]
    for ver, (_sel, addr_type) in FAMILIES.items():
        entries = sorted(((n, chain) for _name, chain, _c, _r, nets in clients for n in nets if n.version == ver),
                         key=lambda e: (int(e[0].network_address), e[0].prefixlen))
        lines += ["\tmap clients%d {" % ver, "\t\ttype %s : verdict" % addr_type, "\t\tflags interval"]
        if entries:
            lines.append("\t\telements = { %s }" % ", ".join(
                "%s : goto %s" % (n.with_prefixlen if n.prefixlen != n.max_prefixlen else n.network_address, c)
                for n, c in entries))
        lines.append("\t}")
    lines += ["\tchain forward {",
              "\t\ttype filter hook forward priority filter - 5; policy accept;",
              "\t\tiifname %s ct state new jump clients" % tun,
              "\t}",
              "\tchain clients {",
              "\t\tip saddr vmap @clients4",
              "\t\tip6 saddr vmap @clients6",
              "\t}"]
    for name, chain, conns, rate, _nets in clients:
        lines.append("\tchain %s {" % chain)
        lines.append("\t\tcomment %s" % json.dumps(name))
        if conns:
            lines += ["\t\tmeta l4proto tcp ct count over %d counter reject with tcp reset" % conns,
                      "\t\tct count over %d counter drop" % conns]
        if rate:
            lines += ["\t\tmeta l4proto tcp limit rate over %d/second burst %d packets counter reject with tcp reset"
                      % (rate, rate),
                      "\t\tlimit rate over %d/second burst %d packets counter drop" % (rate, rate)]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_iptables(params, ver):
    t = params["table"]
    groups, members = groups_of(params)
    host = 32 if ver == 4 else 128
    forward = ["-i %s -m conntrack --ctstate NEW -j %s_clients" % (i, t)
               for i in sorted(set(params["tunnel_interfaces"]))]
    clients = ["-s %s -g %s_%s" % (n.with_prefixlen, t, g)
               for g in sorted(members) for n in members[g] if n.version == ver]
    clients.append("-g %s_g0" % t)
    chains = {"forward": forward, "clients": clients}
    for gname, (conns, rate) in sorted(groups.items()):
        rules = []
        if conns:
            match = "-m connlimit --connlimit-above %d --connlimit-mask %d --connlimit-saddr" % (conns, host)
            rules += ["-p tcp %s -j REJECT --reject-with tcp-reset" % match, "%s -j DROP" % match]
        if rate:
            match = ("-m hashlimit --hashlimit-above %d/sec --hashlimit-burst %d --hashlimit-mode srcip "
                     "--hashlimit-name %s_%s" % (rate, rate, t[:11], gname))
            rules += ["-p tcp %s -j REJECT --reject-with tcp-reset" % match, "%s -j DROP" % match]
        chains[gname] = rules
    return _owned.iptables_restore(t, {"filter": chains})


def render(params):
    if params["backend"] == "nftables":
        return {"nftables": render_nft(params)}
    return _owned.for_jumps({"ipv4": render_iptables(params, 4), "ipv6": render_iptables(params, 6)},
                            params["table"])


def main():
    module, result = _owned.run_module(ARGUMENT_SPEC, validate, render, "connection limits")
    if "ruleset" in result:
        result["groups"] = {name: list(value) for name, value in groups_of(module.params)[0].items()}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
