# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: stale_service
short_description: Restart a running systemd service whose files changed after it started
version_added: 0.2.0
description:
  - Handlers are lost when a run is interrupted between a changed file and the end of the
    play, and the next run finds the file as wanted and notifies nothing, leaving the
    service running the old configuration. This module makes the re-run converge from the
    host itself, not from what an earlier run meant to do.
  - Reloads the systemd manager when it reports that a unit file or drop-in of O(name)
    changed on disk (C(NeedDaemonReload)).
  - Restarts O(name) when it is active and one of O(paths) was modified after the
    service last entered the active state. An inactive service is left alone (starting
    it reads the files anyway).
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  name:
    description: The systemd unit, e.g. C(unbound.service).
    type: str
    required: true
  paths:
    description: Files the running service read when it started (configuration, unit file, drop-ins, keys).
    type: list
    elements: path
    required: true
extends_documentation_fragment:
  - higgs.vpn.no_diff
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Restart unbound if its configuration is newer than the running resolver
  higgs.vpn.stale_service:
    name: unbound.service
    paths:
      - /etc/unbound/unbound.conf.d/higgs-vpn.conf
"""

RETURN = r"""
daemon_reloaded:
  description: Whether the systemd manager was (or, in check mode, would be) reloaded.
  returned: always
  type: bool
restarted:
  description: Whether the service was (or would be) restarted.
  returned: always
  type: bool
stale_paths:
  description: The files modified after the service started.
  returned: always
  type: list
  elements: str
  sample: [/etc/unbound/unbound.conf.d/higgs-vpn.conf]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils._systemd import stale_paths

PROPERTIES = ("ActiveState", "ActiveEnterTimestampMonotonic", "NeedDaemonReload")


def unit_state(module, systemctl):
    rc, out, err = module.run_command(
        [systemctl, "show", module.params["name"], "--property", ",".join(PROPERTIES)],
        environ_update={"LANG": "C"})
    if rc:
        module.fail_json(msg="systemctl show %s failed: %s" % (module.params["name"], err.strip()),
                         rc=rc, stdout=out, stderr=err)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            paths=dict(type="list", elements="path", required=True),
        ),
        supports_check_mode=True,
    )
    systemctl = module.get_bin_path("systemctl", required=True)
    state = unit_state(module, systemctl)
    reload_daemon = state.get("NeedDaemonReload") == "yes"
    stale = []
    if state.get("ActiveState") in ("active", "reloading"):  # not "activating": a start in progress is left alone
        stale = stale_paths(module.params["paths"], state)
    result = dict(changed=bool(reload_daemon or stale), daemon_reloaded=reload_daemon,
                  restarted=bool(stale), stale_paths=stale)
    if not module.check_mode:
        for args, wanted in (([systemctl, "daemon-reload"], reload_daemon),
                             ([systemctl, "restart", module.params["name"]], bool(stale))):
            if wanted:
                rc, out, err = module.run_command(args)
                if rc:
                    module.fail_json(msg="%s failed: %s" % (" ".join(args[1:]), err.strip()),
                                     rc=rc, stdout=out, stderr=err)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
