# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: egress_facts
short_description: Detect the egress interface, gateway, source address and MTU of a Linux host
version_added: 0.1.0
description:
  - Detects, for IPv4 and IPv6 separately, the interface through which the host reaches the
    internet, and returns it as the fact C(higgs_egress) together with the gateway, the
    preferred source address, the MTU, the route metric, table and protocol, and the link state.
  - By default the egress is the best default route of the main routing table. When
    O(destination_ipv4) or O(destination_ipv6) is set, the route the kernel picks for that
    destination (C(ip route get)) is used instead, which honours policy routing rules.
    O(interface_ipv4) and O(interface_ipv6) skip detection altogether.
  - Among several default routes the one with the lowest metric wins (a missing metric counts
    as 0); ties are broken by the order in which C(ip) prints the routes. Default routes of
    type C(blackhole), C(unreachable), C(prohibit) or C(throw) are ignored, with a warning
    when such a route has a lower metric than the selected one (the kernel would prefer it).
  - For a multipath default route the first next hop is reported and RV(ansible_facts.higgs_egress.ipv4.multipath)
    is V(true). IPv6 default routes learned from router advertisements (C(proto ra)) are used
    like any other; their expiry time is not reported.
  - The module only reads the routing state; it never changes anything.
author:
  - Higgs.net node engineering (!UNKNOWN)
requirements:
  - iproute2 with JSON output support (C(ip -j)) on the managed node.
options:
  family:
    description:
      - Address families to detect. Families not listed are returned as V(null).
    type: list
    elements: str
    choices: [ipv4, ipv6]
    default: [ipv4, ipv6]
  required:
    description:
      - Address families whose egress must be found; the module fails when one of them has no
        usable route and no interface override.
      - Every family listed here must also be listed in O(family).
      - A family that is not required and not found is returned as V(null).
      - Defaults to V([ipv4]) when O(family) contains V(ipv4), otherwise to V([]).
    type: list
    elements: str
    choices: [ipv4, ipv6]
  destination_ipv4:
    description:
      - An IPv4 address. When set, the IPv4 egress is the route the kernel picks for this
        destination (C(ip -4 route get)) rather than the main table's default route.
      - Mutually exclusive with O(interface_ipv4).
    type: str
  destination_ipv6:
    description:
      - An IPv6 address. When set, the IPv6 egress is the route the kernel picks for this
        destination (C(ip -6 route get)) rather than the main table's default route.
      - Mutually exclusive with O(interface_ipv6).
    type: str
  interface_ipv4:
    description:
      - Use this interface as the IPv4 egress instead of detecting it (roles pass
        C(higgs_egress_interface_ipv4) here).
      - The gateway, metric, protocol and route MTU come from a main-table default route through
        this interface when there is one, otherwise they are V(null). The source address, link
        MTU and link state are always read from the interface.
      - "Must be 1 to 15 characters from C(A-Z a-z 0-9 _ . @ : -), and not C(.) or C(..)."
    type: str
  interface_ipv6:
    description:
      - Use this interface as the IPv6 egress instead of detecting it (roles pass
        C(higgs_egress_interface_ipv6) here).
      - Same rules as O(interface_ipv4).
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details: The module never changes anything, so it runs unchanged in check mode.
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: linux
notes:
  - The source address is the route's preferred source (C(src)) when it has one, otherwise the
    first global address of the interface that is not tentative, DAD-failed, deprecated or
    temporary.
  - The MTU is the route's C(mtu) metric when it has one, otherwise the link MTU.
seealso:
  - name: ip-route(8)
    description: Manual page of C(ip route), including C(ip route get).
    link: https://man7.org/linux/man-pages/man8/ip-route.8.html
"""

EXAMPLES = r"""
- name: Detect the egress (IPv4 required, IPv6 optional)
  higgs.vpn.egress_facts:

- name: Require both families
  higgs.vpn.egress_facts:
    required: [ipv4, ipv6]

- name: Follow policy routing towards the relay instead of using the main default route
  higgs.vpn.egress_facts:
    destination_ipv4: 198.51.100.7
    destination_ipv6: 2001:db8::7

- name: Let the inventory override detection
  higgs.vpn.egress_facts:
    interface_ipv4: "{{ higgs_egress_interface_ipv4 | default(omit) }}"
    interface_ipv6: "{{ higgs_egress_interface_ipv6 | default(omit) }}"

- name: Use the result
  ansible.builtin.debug:
    msg: >-
      egress {{ ansible_facts.higgs_egress.ipv4.interface }}
      via {{ ansible_facts.higgs_egress.ipv4.gateway | default('on-link', true) }}
      from {{ ansible_facts.higgs_egress.ipv4.source }}
      mtu {{ ansible_facts.higgs_egress.ipv4.mtu }}
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    higgs_egress:
      description: The egress of each address family.
      returned: always
      type: dict
      contains:
        ipv4:
          description:
            - The IPv4 egress, or V(null) when IPv4 is not in O(family), or is not required and
              was not found.
            - V(ipv6) has the same structure.
          returned: always
          type: dict
          contains:
            interface:
              description: Name of the egress interface.
              returned: when the family was found
              type: str
              sample: eth0
            gateway:
              description:
                - Next hop address of the route. It may be an IPv6 link-local address, also for
                  IPv4 (RFC 5549 next hops).
                - V(null) for on-link and point-to-point routes, and for an override interface
                  without a default route.
              returned: when the family was found
              type: str
              sample: 192.0.2.1
            source:
              description:
                - Preferred source address, the route's C(src) or else the first usable global
                  address of the interface.
                - V(null) when the interface has no such address.
              returned: when the family was found
              type: str
              sample: 192.0.2.2
            mtu:
              description: MTU of the route when it sets one, otherwise the link MTU.
              returned: when the family was found
              type: int
              sample: 1500
            metric:
              description:
                - Metric of the route (0 when C(ip) prints none).
                - V(null) for an override interface without a default route.
              returned: when the family was found
              type: int
              sample: 100
            table:
              description:
                - Routing table of the route, as printed by C(ip) (V(main) or a number or name).
                - V(null) for an override interface without a default route.
              returned: when the family was found
              type: str
              sample: main
            proto:
              description:
                - Routing protocol that installed the route, for example V(boot), V(static),
                  V(dhcp), V(kernel) or V(ra) (router advertisement).
                - V(null) when C(ip route get) does not report it (it never does for IPv4), and
                  for an override interface without a default route.
              returned: when the family was found
              type: str
              sample: dhcp
            multipath:
              description: Whether the route has several next hops; only the first is reported.
              returned: when the family was found
              type: bool
              sample: false
            detected_by:
              description:
                - How the interface was found.
                - V(default_route) from the main table's default routes, V(route_get) from
                  C(ip route get) for O(destination_ipv4)/O(destination_ipv6), V(override) from
                  O(interface_ipv4)/O(interface_ipv6).
              returned: when the family was found
              type: str
              choices: [default_route, route_get, override]
              sample: default_route
            link:
              description: The egress interface itself.
              returned: when the family was found
              type: dict
              contains:
                state:
                  description: Operational state (C(operstate)), for example V(UP), V(DOWN) or V(UNKNOWN).
                  returned: when the family was found
                  type: str
                  sample: UP
                kind:
                  description: Link kind (C(ip -d link) C(info_kind)), V(null) for physical interfaces.
                  returned: when the family was found
                  type: str
                  sample: wireguard
                mtu:
                  description: MTU of the link.
                  returned: when the family was found
                  type: int
                  sample: 1500
  sample:
    higgs_egress:
      ipv4:
        interface: eth0
        gateway: 192.0.2.1
        source: 192.0.2.2
        mtu: 1500
        metric: 100
        table: main
        proto: dhcp
        multipath: false
        detected_by: default_route
        link:
          state: UP
          kind: null
          mtu: 1500
      ipv6: null
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils import _iproute as iproute
from ansible_collections.higgs.vpn.plugins.module_utils._egress import FAMILIES, LABELS, gather
from ansible_collections.higgs.vpn.plugins.module_utils._net import ifname_error

ADDRESS_TYPES = {"ipv4": ipaddress.IPv4Address, "ipv6": ipaddress.IPv6Address}
FAMILY_LIST = {"type": "list", "elements": "str", "choices": list(FAMILIES)}

ARGUMENT_SPEC = {
    "family": {**FAMILY_LIST, "default": list(FAMILIES)},
    "required": {**FAMILY_LIST},
    "destination_ipv4": {"type": "str"},
    "destination_ipv6": {"type": "str"},
    "interface_ipv4": {"type": "str"},
    "interface_ipv6": {"type": "str"},
}
MUTUALLY_EXCLUSIVE = [
    ("destination_ipv4", "interface_ipv4"),
    ("destination_ipv6", "interface_ipv6"),
]


def check_params(params):
    """Check what the argument spec cannot express.

    Returns (families to detect, required families, error messages).
    """
    families = [f for f in FAMILIES if f in params["family"]]
    required = params["required"]
    if required is None:
        required = ["ipv4"] if "ipv4" in families else []
    errors = []
    for family in FAMILIES:
        if family in required and family not in families:
            errors.append(f"required contains {family}, which is not in family")
        destination = params[f"destination_{family}"]
        interface = params[f"interface_{family}"]
        for option, value in (("destination", destination), ("interface", interface)):
            if value is not None and family not in families:
                errors.append(f"{option}_{family} is set but {family} is not in family")
        if destination is not None:
            try:
                ADDRESS_TYPES[family](destination)
            except ValueError:
                errors.append(
                    f"destination_{family}: {destination!r} is not an {LABELS[family]} address"
                )
        if interface is not None:
            problem = ifname_error(interface)
            if problem:
                errors.append(
                    f"interface_{family}: interface name {interface!r} {problem}"
                )
    return families, set(required), errors


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    families, required, errors = check_params(module.params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    try:
        facts = gather(module, families, required, module.params)
    except iproute.IpCommandError as exc:
        module.fail_json(
            msg=str(exc), cmd=exc.cmd, rc=exc.rc, stdout=exc.stdout, stderr=exc.stderr
        )
    except iproute.IpError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, ansible_facts={"higgs_egress": facts})


if __name__ == "__main__":
    main()
