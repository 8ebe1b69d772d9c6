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
  restore_after:
    description:
      - Owned tables whose boot restore must come before this one's (ordering of the boot units).
      - With iptables a table restored later is matched first, as its jumps are inserted first.
    type: list
    elements: str
    default: []
  remove_other_backend:
    description:
      - With O(state=present), first remove what the other backend left of this table (its rules, persisted
        files and boot restore), as a call with O(state=absent) and that backend would. A role switching
        backend does both in one call; the result tells it in RV(other_backend_removed).
    type: bool
    default: false
    version_added: 0.3.0
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
    atomically, persisted, repaired when changed by hand, and removed exactly with O(state=absent).
  - The module also owns their boot restore. It installs the template unit C(higgs-vpn-nft@.service)
    (or C(higgs-vpn-iptables@.service)), shared by every owned table, and enables the instance
    C(higgs-vpn-nft@<table>.service) with a drop-in naming the persisted files.
    O(state=absent) removes that instance, and the template only with the last table using it.
"""
