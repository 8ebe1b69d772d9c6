# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nat_facts
short_description: Report how a node behind NAT is reached - measured NAT type, port mapping, direct or relay
version_added: 0.3.0
description:
  - Returns the fact C(higgs_nat) from the state the C(nat_traversal) role's agent writes
    (C(/var/lib/higgs-nat/state.json)) after each measurement and mapping renewal, the file
    the relay connector reads for C(natType) and C(stunMappedAddress).
  - With O(probe=true) the agent measures again now (STUN behaviour discovery, the egress
    address classes) without creating or renewing any mapping; the last known mapping is
    reported with the fresh measurement.
  - The module never changes anything on the host or the router.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  path:
    description: The agent's state file.
    type: path
    default: /var/lib/higgs-nat/state.json
  read:
    description:
      - The contents of state files read already (for example RV(higgs.vpn.host_probe#module:files)), by path,
        V(null) for a missing one. When it holds O(path), the state is checked and returned on the
        controller by the module's action, and nothing runs on the host.
    type: dict
  probe:
    description: Measure now with the installed agent instead of reading the last state.
    type: bool
    default: false
  config:
    description: The agent's configuration, for O(probe=true).
    type: path
    default: /etc/higgs-vpn/nat/agent.json
  agent:
    description: The agent as the C(nat_traversal) role installs it (one zipapp), for O(probe=true).
    type: path
    default: /usr/local/lib/higgs-nat/higgs-nat.pyz
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Read how the node is reached
  higgs.vpn.nat_facts:

- name: The state the probe read already (checked on the controller, no round trip)
  higgs.vpn.nat_facts:
    read: "{{ probe.files }}"

- name: Measure again (no mapping is made or renewed)
  higgs.vpn.nat_facts:
    probe: true

- name: Say it
  ansible.builtin.debug:
    msg: "{{ higgs_nat.route }}: {{ higgs_nat.reason }}"
"""

RETURN = r"""
on_controller:
  description: V(true) when the action answered on the controller from O(read), without a round trip.
  returned: when true
  type: bool
  sample: true
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    higgs_nat:
      description: The NAT state; V(null) while the agent has not run yet (e.g. check mode on a new node).
      type: dict
      returned: always
      contains:
        route:
          description: C(direct) (clients reach RV(ansible_facts.higgs_nat.endpoint)) or C(relay) (relay only).
          type: str
          sample: direct
        endpoint:
          description: The public address:port clients use for a direct path; V(null) with the relay.
          type: str
          sample: 198.51.100.7:51820
        reason:
          description: Why this route, in words.
          type: str
        nat_type:
          description: The natType the relay connector reports (FullCone, RestrictedCone, PortRestricted, Symmetric).
          type: str
        stun_mapped_address:
          description: The stunMappedAddress the connector reports (the endpoint, or the address STUN saw).
          type: str
        mapping:
          description: Our mapping on the router (protocol, external address and port, LAN address, lease) or V(null).
          type: dict
        manual_forwarding:
          description: With the relay route, what to forward by hand on the router (protocol, port, lan_address).
          type: dict
        double_nat:
          description: The address STUN sees differs from the router's external address.
          type: bool
        behind_cgnat:
          description: The node or its router has a carrier-grade NAT (100.64/10) or other non-public outside address.
          type: bool
        ipv4:
          description: Egress address and class, STUN server and mapped address, mapping/filtering behaviour, type.
          type: dict
        ipv6:
          description: Egress address and class (public, private, none).
          type: dict
        stun_source:
          description:
            - Where the STUN servers came from, C(configured) (nat_traversal_stun_servers), C(relay) (the relay's
              announced stunServers) or C(none) (nothing measured).
          type: str
          sample: relay
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils import _nat


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": _nat.DEFAULT_PATH},
            "read": {"type": "dict"},
            "probe": {"type": "bool", "default": False},
            "config": {"type": "path", "default": "/etc/higgs-vpn/nat/agent.json"},
            "agent": {"type": "path", "default": "/usr/local/lib/higgs-nat/higgs-nat.pyz"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["probe"]:
        if not os.path.isfile(params["agent"]):
            module.fail_json(msg="the higgs-nat agent is not installed at %s (apply the nat_traversal role)"
                             % params["agent"])
        rc, out, err = module.run_command(
            [module.get_bin_path("python3", required=True), params["agent"], "probe", "--config", params["config"]],
            environ_update={"PYTHONDONTWRITEBYTECODE": "1"})
        if rc != 0:
            module.fail_json(msg="the higgs-nat probe failed: %s" % err.strip(), rc=rc)
        try:
            state = json.loads(out)
        except ValueError:
            module.fail_json(msg="the higgs-nat probe printed no JSON state")
        try:
            state = _nat.checked(state, "the probe's output")
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    else:  # read holds no contents of path (the action answers on the controller when it does)
        try:
            with open(params["path"], encoding="utf-8") as handle:
                text = handle.read(_nat.MAX_STATE + 1)
        except FileNotFoundError:
            module.exit_json(changed=False, ansible_facts={"higgs_nat": None})
        except OSError as exc:
            module.fail_json(msg="cannot read %s: %s" % (params["path"], exc))
        try:
            state = _nat.parse(text, params["path"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))
    module.exit_json(changed=False, ansible_facts={"higgs_nat": state})


if __name__ == "__main__":
    main()
