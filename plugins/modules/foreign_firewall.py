# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: foreign_firewall
short_description: Find firewall rules of others that drop the traffic of VPN clients
version_added: 0.1.0
description:
  - Reads the whole ruleset of the node (C(nft -j list ruleset), which shows nftables,
    iptables-nft, Docker, ufw and firewalld, and C(iptables-legacy-save) /
    C(ip6tables-legacy-save) when present) and returns every base chain on the forward or
    input hook, outside the collection's own table, that drops or rejects packets arriving
    on a tunnel interface whatever the collection accepts.
  - A chain blocks when its policy is drop, or when it, or a chain it jumps to without a
    condition, drops or rejects every such packet before a rule jumps into one of the
    collection's C(<table>_*) chains. Rules matching the input interface are decided for
    the tunnel interfaces; any other match counts as selective.
  - An accept in one base chain cannot override a drop in another, so a blocking chain
    cuts clients off whatever backend the collection uses, unless the iptables backend's
    jump comes first in that very chain.
  - Never changes anything.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  table:
    description: Owned nftables table, and prefix of the owned iptables chains.
    type: str
    default: higgs_vpn
  tunnel_interfaces:
    description: Interfaces client traffic arrives on.
    type: list
    elements: str
    default: [wg0]
  backend:
    description:
      - Backend the collection will use; with C(iptables) its jump goes first into the
        builtin C(INPUT) and C(FORWARD) chains, which clears a drop there (RV(unresolved)).
    type: str
    choices: [nftables, iptables]
    default: nftables
  listen_ports:
    description:
      - UDP ports the tunnels listen on (WireGuard's C(ListenPort)). A foreign input base
        chain that drops a new datagram to one of them from outside is returned in
        RV(closed_ports) and warned about; clients then reach the node through the relay
        only. An accept on the input interface, the protocol, the port, C(ct state new) or
        C(fib daddr type local) is read; any other match counts as selective.
    type: list
    elements: int
    default: []
  firewalld_zone:
    description:
      - firewalld zone the tunnel interfaces are (or will be) bound to; a zone that accepts
        them clears firewalld's chains (RV(unresolved)). Empty when none.
    type: str
    default: ""
extends_documentation_fragment:
  - higgs.vpn.no_diff
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Look for firewalls that would cut the clients off
  higgs.vpn.foreign_firewall:
    tunnel_interfaces: [wg0]
  register: __foreign

- name: Refuse to go on
  ansible.builtin.fail:
    msg: "{{ __foreign.summary | join('; ') }}"
  when: __foreign.blockers | length > 0
"""

RETURN = r"""
blockers:
  description: Blocking chains, sorted.
  returned: always
  type: list
  elements: dict
  contains:
    family:
      description: nftables family (ip, ip6, inet).
      type: str
    table:
      description: Table of the chain.
      type: str
    chain:
      description: The base chain.
      type: str
    hook:
      description: forward or input.
      type: str
    reason:
      description: policy drop, or the drop/reject rule and the chain that holds it.
      type: str
  sample: [{family: ip, table: filter, chain: FORWARD, hook: forward, reason: policy drop}]
unresolved:
  description:
    - The RV(blockers) that O(backend) and O(firewalld_zone) do not clear, each with C(fix)
      C(iptables) (use the iptables backend), C(firewalld) (bind the tunnels to a zone)
      or C(foreign) (only the owner of the chain can accept the tunnels' traffic).
  returned: always
  type: list
  elements: dict
  sample: [{family: ip, table: filter, chain: FORWARD, hook: forward, reason: policy drop, fix: iptables}]
summary:
  description: One line per blocking chain.
  returned: always
  type: list
  elements: str
  sample: ["ip filter FORWARD (hook forward, policy drop)"]
closed_ports:
  description:
    - Foreign input base chains that drop a new datagram to one of O(listen_ports) from
      outside, like RV(blockers) with the C(port).
  returned: always
  type: list
  elements: dict
  sample: [{family: ip, table: filter, chain: INPUT, hook: input, reason: policy drop, port: 51820}]
firewalld:
  description: Whether firewalld is running.
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils import _firewall as fw


def main():
    module = AnsibleModule(
        argument_spec=dict(
            table=dict(type="str", default="higgs_vpn"),
            tunnel_interfaces=dict(type="list", elements="str", default=["wg0"]),
            backend=dict(type="str", choices=["nftables", "iptables"], default="nftables"),
            listen_ports=dict(type="list", elements="int", default=[]),
            firewalld_zone=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )

    def run(argv):
        rc, out, err = module.run_command(argv, environ_update={"LANG": "C", "LC_ALL": "C"})
        if rc != 0 and argv[-1] == "ruleset":
            module.fail_json(msg="%s failed: %s" % (" ".join(argv), err.strip()), rc=rc)
        return rc, out

    blockers, closed = fw.find_blockers(fw.read_rulesets(module, run), module.params["table"],
                                        module.params["tunnel_interfaces"], module.params["listen_ports"])
    for b in closed:
        module.warn("%s: clients can reach this node through the relay only. Accept UDP port %d in that "
                    "chain's firewall (e.g. ufw allow %d/udp, firewall-cmd --permanent --add-port=%d/udp)"
                    % (fw.describe_closed(b), b["port"], b["port"], b["port"]))
    cmd = module.get_bin_path("firewall-cmd")
    firewalld = bool(cmd) and module.run_command([cmd, "--state"])[0] == 0
    zone = module.params["firewalld_zone"] if firewalld else ""
    module.exit_json(changed=False, blockers=blockers, closed_ports=closed, firewalld=firewalld,
                     unresolved=fw.unresolved(blockers, module.params["backend"], zone),
                     summary=[fw.describe_blocker(b) for b in blockers])


if __name__ == "__main__":
    main()
