# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: unit_file
short_description: Write a systemd unit file or drop-in only after systemd-analyze verify accepts it
version_added: 0.2.0
description:
  - systemd ignores a unit line it cannot parse (an unknown key, a bad value, a line broken
    by a newline in a variable) with a warning in the journal and starts the service
    without it. This module verifies the unit before it is installed and fails with the
    warnings instead.
  - The content is written to a temporary directory under the name of O(dest) (a unit file
    such as C(higgs-vpn-metrics.service), or a drop-in C(<unit>.d/<name>.conf)) and checked
    with C(systemd-analyze verify --man=no --recursive-errors=no), that directory first in
    the unit search path. Any warning about that file, or a failing verification, fails the
    module and leaves O(dest) as it was. Warnings about other units loaded along the way are
    not this file's and are ignored.
  - Read, compare, then write atomically; the file is written only when its content, mode or
    owner differ. Reloading systemd afterwards is the caller's (a handler).
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  dest:
    description:
      - Path of the unit file (its name must end in a unit type such as C(.service), C(.timer))
        or of a drop-in (C(/etc/systemd/system/<unit>.d/<name>.conf)).
    type: path
    required: true
  content:
    description: The whole file. Required with O(state=present).
    type: str
  mode:
    description: Permissions of the file.
    type: raw
    default: '0644'
  owner:
    description: Owner of the file; unchanged (root when created by root) when omitted.
    type: str
  group:
    description: Group of the file; unchanged when omitted.
    type: str
  state:
    description: Write the verified file (present) or remove it (absent).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: The content is verified in check mode too.
  diff_mode:
    support: full
  platform:
    support: full
    platforms: posix
notes:
  - Needs C(systemd-analyze) on the node (package systemd).
"""

EXAMPLES = r"""
- name: Install the collector unit
  higgs.vpn.unit_file:
    dest: /etc/systemd/system/higgs-vpn-metrics.service
    content: "{{ lookup('ansible.builtin.template', 'higgs-vpn-metrics.service.j2') }}"
  notify: Reload systemd

- name: Order the tunnel after the firewall (drop-in)
  higgs.vpn.unit_file:
    dest: /etc/systemd/system/wg-quick@wg0.service.d/higgs-vpn.conf
    content: |
      [Unit]
      After=nftables.service

- name: Remove a unit
  higgs.vpn.unit_file:
    dest: /etc/systemd/system/higgs-vpn-metrics.timer
    state: absent
"""

RETURN = r"""
dest:
  description: The path managed.
  returned: always
  type: str
  sample: /etc/systemd/system/higgs-vpn-metrics.service
unit:
  description: The unit systemd-analyze verified (the drop-in's unit for a drop-in).
  returned: when O(state=present)
  type: str
  sample: higgs-vpn-metrics.service
warnings_found:
  description: The lines of systemd-analyze about O(dest) (empty unless the module failed).
  returned: on failure
  type: list
  elements: str
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils._units import layout, refusal


def read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            content=dict(type="str"),
            mode=dict(type="raw", default="0644"),
            owner=dict(type="str"),
            group=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[("state", "present", ["content"])],
        supports_check_mode=True,
    )
    dest = module.params["dest"]
    try:
        unit, relative = layout(dest)
    except ValueError as exc:
        module.fail_json(msg="dest: %s" % exc)
    current = read(dest)
    result = dict(dest=dest, changed=False)

    if module.params["state"] == "absent":
        result["changed"] = current is not None
        if module._diff:
            result["diff"] = dict(before=current or "", after="", before_header=dest, after_header=dest)
        if result["changed"] and not module.check_mode:
            os.unlink(dest)
        module.exit_json(**result)

    content = module.params["content"]
    result["unit"] = unit
    refused = refusal(module, unit, relative, content)
    if refused:
        message, ours, rc, out, err = refused
        module.fail_json(msg="dest: systemd-analyze verify refuses %s, left unchanged: %s" % (dest, message),
                         warnings_found=ours, rc=rc, stdout=out, stderr=err, **result)

    result["changed"] = current != content
    if module._diff:
        result["diff"] = dict(before=current or "", after=content, before_header=dest, after_header=dest)
    if result["changed"] and not module.check_mode:
        directory = os.path.dirname(dest)
        if not os.path.isdir(directory):  # a drop-in's <unit>.d
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(dest), dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        module.atomic_move(tmp, dest)
    file_args = module.load_file_common_arguments(dict(path=dest, mode=module.params["mode"],
                                                       owner=module.params["owner"], group=module.params["group"]))
    if current is None and module.check_mode:
        module.exit_json(**result)
    result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
