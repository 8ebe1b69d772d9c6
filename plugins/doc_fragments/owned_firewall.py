# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options and attributes of every module that programs an owned firewall table."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
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
  tunnel_interfaces:
    description: Interfaces client traffic arrives on (the WireGuard interfaces).
    type: list
    elements: str
    default: [wg0]
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
    support: full
    platforms: posix
notes:
  - The rules live in objects the module owns (see M(higgs.vpn.firewall)); they are applied
    atomically, persisted for the boot units C(higgs-vpn-nft@<table>) / C(higgs-vpn-iptables@<table>),
    repaired when changed by hand, and removed exactly with O(state=absent).
"""
