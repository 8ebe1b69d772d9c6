#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

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
  - Higgs.net node engineering
options:
  state:
    description: Whether the owned table/chains should exist.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description: Which firewall framework to program.
    type: str
    choices: [nftables, iptables]
    default: nftables
  table:
    description:
      - Name of the owned nftables table, and prefix of the owned iptables chains.
      - Lower-case letters, digits and underscores, at most 15 characters.
    type: str
    default: higgs_vpn
  tunnel_interfaces:
    description: Interfaces client traffic arrives on (the WireGuard interfaces).
    type: list
    elements: str
    default: [wg0]
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
    options:
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
    options:
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
    options:
      proto:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
        required: true
      port:
        description: Destination port.
        type: int
        required: true
  persist_dir:
    description: Directory of the persisted rulesets read by the boot units.
    type: path
    default: /etc/higgs-vpn/firewall
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
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
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.higgs.vpn.plugins.module_utils import _firewall as fw
from ansible_collections.higgs.vpn.plugins.module_utils._net import (
    cidr_errors,
    ifname_error,
    self_overlaps,
)

TABLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,14}$")
IPT = {4: ("iptables-save", "iptables-restore"), 6: ("ip6tables-save", "ip6tables-restore")}

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    backend=dict(type="str", choices=["nftables", "iptables"], default="nftables"),
    table=dict(type="str", default="higgs_vpn"),
    tunnel_interfaces=dict(type="list", elements="str", default=["wg0"]),
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
    persist_dir=dict(type="path", default="/etc/higgs-vpn/firewall"),
)


def validate(params):
    """Every problem with the parameters, each naming its option."""
    errors = []
    if not TABLE_RE.match(params["table"]):
        errors.append("table %r: use 1-15 lower-case letters, digits or _, starting with a letter"
                      % params["table"])
    if params["state"] == "absent":
        return errors
    if not params["tunnel_interfaces"]:
        errors.append("tunnel_interfaces: list at least one interface")
    for name in params["tunnel_interfaces"]:
        why = ifname_error(name)
        if why:
            errors.append("tunnel_interfaces: %r %s" % (name, why))
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


def run(module, argv, data=None, ok_rc=(0,)):
    rc, out, err = module.run_command(argv, data=data, binary_data=True,
                                      environ_update={"LANG": "C", "LC_ALL": "C"})
    if rc not in ok_rc:
        module.fail_json(msg="%s failed: %s" % (" ".join(argv[:3]), err.strip() or out.strip()),
                         rc=rc, stdout=out, stderr=err, cmd=argv)
    return rc, out, err


def read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def write_file(module, path, text):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".higgs-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    module.atomic_move(tmp, path)


def remove_file(path):
    if os.path.exists(path):
        os.unlink(path)


def remove_empty_dir(path):
    """Remove the persist directory the module created, once it holds nothing."""
    if os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)


class Nftables:
    """The nftables backend: one ``inet`` table."""

    def __init__(self, module, table, persist_dir):
        self.module = module
        self.table = table
        self.nft = module.get_bin_path("nft", required=module.params["state"] == "present")
        self.paths = {"nftables": os.path.join(persist_dir, table + ".nft")}

    def live(self):
        if self.nft is None:
            return {}
        rc, out, err = run(self.module, [self.nft, "list", "table", "inet", self.table], ok_rc=(0, 1))
        if rc == 1:
            if "No such file or directory" in err:
                return {}
            self.module.fail_json(msg="nft list table failed: %s" % err.strip(), rc=rc, stderr=err)
        return {"nftables": fw.normalize_nft(out)}

    def apply(self, rendered, live):
        run(self.module, [self.nft, "-f", "-"], data=rendered["nftables"])
        return self.live()

    def remove(self, live):
        if live:
            run(self.module, [self.nft, "delete", "table", "inet", self.table])


class Iptables:
    """The iptables backend: owned chains in filter and nat, both families."""

    def __init__(self, module, table, persist_dir):
        self.module = module
        self.table = table
        required = module.params["state"] == "present"
        self.bins = {
            v: (module.get_bin_path(s, required=required), module.get_bin_path(r, required=required))
            for v, (s, r) in IPT.items()
        }
        self.paths = {
            "ipv%d" % v: os.path.join(persist_dir, "%s.ipv%d.rules" % (table, v)) for v in IPT
        }
        # iptables-nft creates a builtin chain (an nftables base chain) when a
        # jump is first added to it; those the module caused are recorded here
        # and deleted again on removal, so the nftables view is restored too.
        self.created_path = os.path.join(persist_dir, "%s.created-chains" % table)
        self.nft = module.get_bin_path("nft")

    def saved(self, ver):
        _rc, out, _err = run(self.module, [self.bins[ver][0], "-t", "filter"])
        _rc, nat, _err = run(self.module, [self.bins[ver][0], "-t", "nat"])
        return fw.split_save(out + nat)

    def live(self):
        result = {}
        if None in self.bins[4] + self.bins[6]:
            return result
        for ver in IPT:
            owned = fw.owned_iptables(self.table, self.saved(ver))
            if owned:
                result["ipv%d" % ver] = owned
        return result

    def nft_chain_exists(self, ver, table, chain):
        family = "ip" if ver == 4 else "ip6"
        rc, _out, _err = run(self.module, [self.nft, "list", "chain", family, table, chain], ok_rc=(0, 1))
        return rc == 0

    def created_chains(self):
        text = read_file(self.created_path) or ""
        return sorted({tuple(line.split()) for line in text.splitlines() if len(line.split()) == 3})

    def apply(self, rendered, live):
        created = set(self.created_chains())
        for ver in IPT:
            body = rendered["ipv%d" % ver]
            missing = fw.missing_jumps(self.table, self.saved(ver))
            if self.nft:
                created |= {
                    ("ipv%d" % ver, table, builtin) for table, builtin, _s in missing
                    if not self.nft_chain_exists(ver, table, builtin)
                }
            text = fw.add_jumps(strip_jumps(body, self.table), self.table, missing)
            run(self.module, [self.bins[ver][1], "-w", "--noflush"], data=text)
        if created:
            write_file(self.module, self.created_path, "".join("%s %s %s\n" % c for c in sorted(created)))
        return self.live()

    def remove(self, live):
        for ver in IPT:
            text = fw.removal_iptables(self.table, self.saved(ver))
            if text:
                run(self.module, [self.bins[ver][1], "-w", "--noflush"], data=text)
        iptables = {4: "iptables", 6: "ip6tables"}
        for fam, table, chain in self.created_chains():
            ver = int(fam[-1])
            binary = self.module.get_bin_path(iptables[ver], required=True)
            _rc, rules, _err = run(self.module, [binary, "-w", "-t", table, "-S", chain])
            if all(line.startswith("-P ") for line in rules.splitlines()):
                run(self.module, [binary, "-w", "-t", table, "-X", chain])
        remove_file(self.created_path)


def strip_jumps(body, table):
    """The persisted body carries every jump (for boot); live apply adds only missing ones."""
    marks = tuple("-I %s 1 -j %s_%s" % (b, table, s) for _t, b, s in fw.JUMPS)
    return "\n".join(line for line in body.splitlines() if line not in marks) + "\n"


def render(params):
    policy = fw.Policy(params)
    if params["backend"] == "nftables":
        return {"nftables": fw.render_nft(policy)}
    every = set(fw.JUMPS)
    return {
        "ipv%d" % v: fw.add_jumps(fw.render_iptables(policy, v), params["table"], every)
        for v in IPT
    }


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    errors = validate(params)
    if errors:
        module.fail_json(msg="invalid firewall policy: " + "; ".join(errors), errors=errors)

    cls = Nftables if params["backend"] == "nftables" else Iptables
    backend = cls(module, params["table"], params["persist_dir"])
    live = backend.live()
    stored = {key: read_file(path) for key, path in backend.paths.items()}
    result = dict(changed=False, persisted=sorted(backend.paths.values()))

    if params["state"] == "absent":
        result["changed"] = bool(live) or any(v is not None for v in stored.values())
        if module._diff:
            result["diff"] = dict(before="".join(live.values()), after="")
        if result["changed"] and not module.check_mode:
            backend.remove(live)
            for path in backend.paths.values():
                remove_file(path)
            remove_empty_dir(params["persist_dir"])
        module.exit_json(**result)

    rendered = render(params)
    result["ruleset"] = rendered
    in_sync = all(
        fw.parse_persisted(stored[key]) == (fw.fingerprint(live.get(key, "")), rendered[key])
        for key in rendered
    )
    result["changed"] = not in_sync
    if module._diff:
        result["diff"] = dict(before="".join(live.values()), after="".join(rendered.values()))
    if result["changed"] and not module.check_mode:
        after = backend.apply(rendered, live)
        for key, path in backend.paths.items():
            write_file(module, path, fw.persisted(rendered[key], after.get(key, "")))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
