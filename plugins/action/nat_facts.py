# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of higgs.vpn.nat_facts (documentation: plugins/modules/nat_facts.py).

When ``read`` holds the state file's contents already (the node role's probe read them with the
other state files), the state is checked and returned here, on the controller, with the module's
checks (module_utils/_nat): no round trip. Otherwise the module reads (or probes) on the node.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.higgs.vpn.plugins.module_utils import _nat


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self._task.args
        path = args.get("path") or _nat.DEFAULT_PATH
        read = args.get("read") or {}
        if args.get("probe") or not isinstance(read, dict) or path not in read:
            result.update(self._execute_module(module_name="higgs.vpn.nat_facts", module_args=dict(args),
                                               task_vars=task_vars))
            return result
        text = read[path]
        try:
            state = None if text is None else _nat.parse(text, path)
        except ValueError as exc:
            result.update(failed=True, msg=str(exc))
            return result
        result.update(changed=False, ansible_facts={"higgs_nat": state}, on_controller=True)
        return result
