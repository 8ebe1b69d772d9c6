# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of higgs.vpn.service_state (documentation: plugins/modules/service_state.py).

When ``probed`` holds what the node role's probe read of every unit earlier in the run (host_probe's
``units``) and none of them needs anything (enabled, running, not older than its files, no reload
pending) and the task asks for no reload, the answer is given here, on the controller
(module_utils/_systemd): no round trip. Otherwise the module does the work on the node.
"""

from __future__ import annotations

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

from ansible_collections.higgs.vpn.plugins.module_utils._systemd import satisfied


class ActionModule(ActionBase):
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        probed = args.pop("probed", None)
        units = args.get("units")
        try:
            reload_wanted = boolean(args.get("daemon_reload", False), strict=True)
        except TypeError:
            reload_wanted = True  # the module names the bad value
        if (isinstance(probed, dict) and not reload_wanted and isinstance(units, list) and units
                and all(satisfied(unit, probed) for unit in units)):
            result.update(changed=False, daemon_reloaded=False, enabled=[], started=[], restarted=[],
                          stale_paths={}, on_controller=True)
            return result
        result.update(self._execute_module(module_name="higgs.vpn.service_state", module_args=args,
                                           task_vars=task_vars))
        return result
