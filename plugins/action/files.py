# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of higgs.vpn.files (documentation: plugins/modules/files.py).

When ``probed`` holds what the node role's probe read of every entry's path earlier in the run
(host_probe's ``stats``) and each entry is as wanted according to it, the answer is given here, on
the controller (module_utils/_probed): no round trip. Otherwise the module does the work on the
node, as without ``probed``.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.higgs.vpn.plugins.module_utils._probed import entry_satisfied


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_diff = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        probed = args.pop("probed", None)
        key = args.pop("probed_key", None)
        entries = [*(args.get("secret_files") or []), *(args.get("files") or [])]
        if (isinstance(probed, dict) and isinstance(args.get("files", []), list)
                and isinstance(args.get("secret_files", []), list)
                and all(entry_satisfied(entry, probed, key) for entry in entries)):
            result.update(changed=False, changed_paths=[], on_controller=True)
            if self._task.diff:
                result["diff"] = []
            return result
        result.update(self._execute_module(module_name="higgs.vpn.files", module_args=args, task_vars=task_vars))
        return result
