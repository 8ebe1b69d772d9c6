# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node plan filters: the inventory of a node as one validated record.

Documentation of each filter is in the sidecar file ``<filter name>.yml``.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.higgs.vpn.plugins.module_utils import _plan


def node_plan_errors(inventory, previous=None):
    """Every problem of the node's inventory, each naming the variable; see node_plan_errors.yml."""
    try:
        _plan.node_plan(inventory, previous)
    except _plan.PlanError as exc:
        return exc.errors
    return []


def node_plan(inventory, previous=None):
    """The node record of the inventory; see node_plan.yml."""
    try:
        return _plan.node_plan(inventory, previous)
    except _plan.PlanError as exc:
        raise AnsibleFilterError("\n".join(exc.errors)) from None


def without_defaults(options):
    """Role argument spec options without their defaults (templates there would be checked untemplated)."""
    out = {}
    for name, given in (options or {}).items():
        spec = {k: v for k, v in given.items() if k != "default"}
        if "options" in spec:
            spec["options"] = without_defaults(spec["options"])
        out[name] = spec
    return out


class FilterModule:
    """higgs.vpn node plan filters."""

    def filters(self):
        return {"node_plan": node_plan, "node_plan_errors": node_plan_errors, "without_defaults": without_defaults}
