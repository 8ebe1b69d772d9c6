# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_state
short_description: Enable and start a part's systemd units, and restart those older than their files, in one call
version_added: 0.3.0
description:
  - One call per part of a node instead of one C(systemd_service) task per unit plus one
    M(higgs.vpn.stale_service) per unit; the units are read with one C(systemctl show).
  - Reloads the systemd manager first when O(daemon_reload) is set or a unit reports that
    its unit file or a drop-in changed on disk (C(NeedDaemonReload)).
  - Enables every unit with O(units[].enabled) that is not enabled, starts every unit with
    O(units[].started) that is not active, and restarts an active unit when one of its
    O(units[].paths) was modified after it last entered the active state (a run
    interrupted before its handler). A unit started by this call is not restarted.
  - RV(started) and RV(restarted) name the units, so that a handler restarts only a unit
    this call did not already (re)start.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  units:
    description: The units of the part, handled in this order.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The unit, e.g. C(unbound.service) or C(higgs-vpn-metrics.timer).
        type: str
        required: true
      enabled:
        description: Enable the unit (start it at boot).
        type: bool
        default: true
      started:
        description: Start the unit when it is not active.
        type: bool
        default: true
      paths:
        description: Files the running unit read when it started (configuration, unit file, drop-ins, keys).
        type: list
        elements: path
        default: []
  daemon_reload:
    description: Reload the systemd manager before anything else (a unit file was just written).
    type: bool
    default: false
  probed:
    description:
      - What was read of these units earlier in the same run, by name, as
        RV(higgs.vpn.host_probe#module:units) returns it (the node role passes what its probe read).
      - When none of the units needs anything according to it (for the same O(units[].paths)) and
        O(daemon_reload) is not set, the action answers on the controller without a round trip.
        Otherwise the module reads and acts on the node as without it.
      - Give it only when nothing in the run since the probe may have changed these units or their
        files (the node role gives it to a part whose files and program did not change in the run).
    type: dict
extends_documentation_fragment:
  - higgs.vpn.no_diff
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
    details: Answers on the controller when O(probed) shows that no unit needs anything.
  async:
    support: none
  bypass_host_loop:
    support: none
"""

EXAMPLES = r"""
- name: Run the collector on schedule and the exporter, restarting what runs older files
  higgs.vpn.service_state:
    daemon_reload: "{{ __units is changed }}"
    units:
      - name: higgs-vpn-metrics.timer
      - name: prometheus-node-exporter.service
        paths: [/etc/systemd/system/prometheus-node-exporter.service.d/higgs-vpn.conf]
"""

RETURN = r"""
on_controller:
  description: V(true) when the action answered on the controller from O(probed), without a round trip.
  returned: when true
  type: bool
  sample: true
daemon_reloaded:
  description: Whether the systemd manager was (or, in check mode, would be) reloaded.
  returned: always
  type: bool
enabled:
  description: The units enabled by this call.
  returned: always
  type: list
  elements: str
started:
  description: The units started by this call.
  returned: always
  type: list
  elements: str
  sample: [unbound.service]
restarted:
  description: The active units restarted because a file of theirs was newer.
  returned: always
  type: list
  elements: str
stale_paths:
  description: Per restarted unit, the files modified after it started.
  returned: always
  type: dict
  sample: {unbound.service: [/etc/unbound/unbound.conf.d/higgs-vpn.conf]}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils._systemd import plan, show


def main():
    module = AnsibleModule(
        argument_spec=dict(
            units=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                enabled=dict(type="bool", default=True),
                started=dict(type="bool", default=True),
                paths=dict(type="list", elements="path", default=[]),
            )),
            daemon_reload=dict(type="bool", default=False),
            # used by the action only (it does not reach the module)
            probed=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    units = module.params["units"]
    if not units:
        module.fail_json(msg="units: name at least one unit")
    systemctl = module.get_bin_path("systemctl", required=True)
    states = show(module, systemctl, [u["name"] for u in units])
    reload_daemon = module.params["daemon_reload"] or any(s.get("NeedDaemonReload") == "yes" for s in states)
    enable, start, stale = plan(units, states)
    result = dict(changed=bool(reload_daemon or enable or start or stale), daemon_reloaded=reload_daemon,
                  enabled=enable, started=start, restarted=list(stale), stale_paths=stale)
    if module.check_mode:
        module.exit_json(**result)
    commands = ([["daemon-reload"]] if reload_daemon else []) + [["enable", "--", *enable]] * bool(enable)
    commands += [["start", "--", name] for name in start] + [["restart", "--", name] for name in stale]
    for args in commands:
        rc, out, err = module.run_command([systemctl, *args])
        if rc:
            module.fail_json(msg="systemctl %s failed: %s" % (" ".join(args), err.strip()),
                             rc=rc, stdout=out, stderr=err, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
