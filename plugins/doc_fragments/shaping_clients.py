# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The clients option of the shaping modules (tc_shaping, conn_limits): module_utils _plan.CLIENT_OPTIONS."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  clients:
    description:
      - The clients, one entry each with its limits (the node role builds them from
        C(wireguard_clients)). The same list serves M(higgs.vpn.tc_shaping) (the rates) and
        M(higgs.vpn.conn_limits) (the connection limits); each module ignores the other's keys.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Unique client name.
        type: str
        required: true
      addresses:
        description: The client's tunnel addresses, e.g. V(10.66.0.2/32), V(fd66::2/128).
        type: list
        elements: str
        required: true
      rate_down:
        description: Download limit; unset uses O(higgs.vpn.tc_shaping#module:client_rate_down),
          V(unlimited) only the cap.
        type: str
      rate_up:
        description: Upload limit; unset uses O(higgs.vpn.tc_shaping#module:client_rate_up),
          V(unlimited) only the cap.
        type: str
      max_connections:
        description: Concurrent connections per address; unset uses
          O(higgs.vpn.conn_limits#module:max_connections), V(0) no limit.
        type: int
      new_connections_per_second:
        description: New connections per second per address; unset uses
          O(higgs.vpn.conn_limits#module:new_connections_per_second), V(0) no limit.
        type: int
"""
