# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: sysctl_conf
short_description: Persistent and live kernel parameters in one sysctl.d file, reversibly
version_added: 0.1.0
description:
  - Owns one file in C(/etc/sysctl.d) holding a set of kernel parameters and sets the
    same values live.
  - The value each parameter had before the file was first written is recorded in the
    file, and restored live when O(state=absent) removes the file, so removal leaves
    the kernel as it was found.
  - Only C(net.*) parameters are accepted, because they are per network namespace and
    so a node in a container never changes its host.
  - Live values are set in the order of O(settings) and restored in the reverse
    order, so that for example C(accept_ra=2) can be set before forwarding is
    switched on (switching it on purges router-advertised default routes of every
    interface whose C(accept_ra) is not 2).
  - Interface parameters name the interface as sysctl.conf does, a dot inside the
    name written as C(/) (C(net.ipv4.conf.eth0/100.forwarding)). A parameter of an
    interface that does not exist yet is written to the file and applied by the
    kernel's defaults when it appears; it is reported in RV(pending).
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  path:
    description: The sysctl.d file the module owns.
    type: path
    required: true
  settings:
    description: Parameter names mapped to their values.
    type: dict
    default: {}
  state:
    description: Whether the file and the live values should be in place.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: full
    platforms: posix
"""

EXAMPLES = r"""
- name: Forward between interfaces, keep router advertisements on the uplink
  higgs.vpn.sysctl_conf:
    path: /etc/sysctl.d/60-higgs-vpn-forwarding.conf
    settings:
      net.ipv4.ip_forward: 1
      net.ipv6.conf.all.forwarding: 1
      net.ipv6.conf.eth0.accept_ra: 2

- name: Remove the file and restore the values found before
  higgs.vpn.sysctl_conf:
    path: /etc/sysctl.d/60-higgs-vpn-forwarding.conf
    state: absent
"""

RETURN = r"""
live_changes:
  description: Parameters whose live value was (or, in check mode, would be) changed.
  returned: always
  type: dict
  sample: {net.ipv4.ip_forward: {before: "0", after: "1"}}
pending:
  description: Parameters of interfaces that do not exist yet.
  returned: always
  type: list
  elements: str
  sample: [net.ipv4.conf.wg0.forwarding]
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

HEADER = "# Managed by higgs.vpn (sysctl_conf). Values found before, restored on removal:"
PREVIOUS_RE = re.compile(r"^# previous (\S+) = (.*)$")
KEY_RE = re.compile(r"net(\.[A-Za-z0-9_/:@-]+)+")


def proc_path(key):
    """/proc/sys path of a dotted key, '/' standing for a dot inside a name."""
    return os.path.join("/proc/sys", *[part.replace("/", ".") for part in key.split(".")])


def read_live(key):
    try:
        with open(proc_path(key)) as handle:
            return " ".join(handle.read().split())
    except FileNotFoundError:
        return None


def write_live(module, key, value):
    try:
        with open(proc_path(key), "w") as handle:
            handle.write(value)
    except OSError as exc:
        module.fail_json(msg="cannot set %s=%s live: %s" % (key, value, exc))


def parse_previous(text):
    previous = {}
    for line in (text or "").splitlines():
        match = PREVIOUS_RE.match(line)
        if match:
            previous[match.group(1)] = match.group(2)
    return previous


def restorations(previous, keys):
    """Live changes that put ``keys`` back to the values recorded before."""
    changes = {}
    for key in reversed([k for k in previous if k in keys]):
        now = read_live(key)
        if now is not None and previous[key] not in ("absent", now):
            changes[key] = dict(before=now, after=previous[key])
    return changes


def render(settings, previous):
    lines = [HEADER]
    lines += ["# previous %s = %s" % (k, previous[k]) for k in previous]
    lines += ["%s = %s" % (k, settings[k]) for k in settings]
    return "\n".join(lines) + "\n"


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            settings=dict(type="dict", default={}),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    settings = {str(k): " ".join(str(v).split()) for k, v in module.params["settings"].items()}
    bad = sorted(k for k in settings if not KEY_RE.fullmatch(k) or ".." in k)
    if bad:
        module.fail_json(msg="settings: only net.* parameters are managed; refused: %s" % ", ".join(bad))

    try:
        with open(path) as handle:
            current_text = handle.read()
    except FileNotFoundError:
        current_text = None
    previous = parse_previous(current_text)
    live_changes = {}
    pending = []

    if module.params["state"] == "absent":
        live_changes = restorations(previous, previous)
        changed = current_text is not None
        desired_text = ""
    else:
        for key, value in settings.items():
            now = read_live(key)
            if key not in previous:
                previous[key] = now if now is not None else "absent"
            if now is None:
                pending.append(key)
            elif now != value:
                live_changes[key] = dict(before=now, after=value)
        # parameters dropped from settings go back to their recorded values
        dropped = set(previous) - set(settings)
        live_changes.update(restorations(previous, dropped))
        for key in dropped:
            del previous[key]
        desired_text = render(settings, previous)
        changed = desired_text != current_text

    changed = changed or bool(live_changes)
    result = dict(changed=changed, live_changes=live_changes, pending=pending)
    if module._diff:
        result["diff"] = dict(before=current_text or "", after=desired_text,
                              before_header=path, after_header=path)
    if changed and not module.check_mode:
        for key, change in live_changes.items():
            write_live(module, key, change["after"])
        if module.params["state"] == "absent":
            os.unlink(path)
        elif desired_text != current_text:
            directory = os.path.dirname(path)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".higgs-")
            with os.fdopen(fd, "w") as handle:
                handle.write(desired_text)
            os.chmod(tmp, 0o644)
            module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
