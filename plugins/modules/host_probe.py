# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_probe
short_description: Read what a converge needs to know of a host in one call (packages, accounts, paths, small files)
version_added: 0.3.0
description:
  - One round trip instead of one task per question. The node role asks it, before its package
    transaction, what its parts would otherwise find out one task at a time. It reports the missing
    packages (the transaction runs only when one is missing), the system accounts that already exist
    (a part creates its account only when it is missing or differs), the paths that exist and the
    contents of small state files.
  - It only reads; it never changes the host.
author:
  - Higgs.net node engineering (!UNKNOWN)
requirements:
  - C(dpkg-query) on the managed node when O(packages) is not empty.
options:
  packages:
    description: Debian packages whose state is wanted; the ones not installed are in RV(missing_packages).
    type: list
    elements: str
    default: []
  users:
    description: Accounts whose home and shell are wanted (RV(users)).
    type: list
    elements: str
    default: []
  paths:
    description: Paths whose existence is wanted (RV(paths)); a dangling link counts as existing.
    type: list
    elements: path
    default: []
  files:
    description:
      - Small text files whose contents are wanted (RV(files)), at most 64 KiB each.
      - Give no secret file here, as its contents are returned.
    type: list
    elements: path
    default: []
extends_documentation_fragment:
  - higgs.vpn.no_diff
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Read which packages, accounts and state files the parts need
  higgs.vpn.host_probe:
    packages: [nftables, unbound]
    users: [higgs-relay]
    paths: [/etc/higgs-vpn/metrics/exporter-before.json]
    files: [/etc/higgs-vpn/relay/node-id]
  register: probe
"""

RETURN = r"""
missing_packages:
  description: The ones of O(packages) that are not installed (unknown to dpkg, removed, or half-installed).
  returned: always
  type: list
  elements: str
  sample: [python3-miniupnpc]
users:
  description: The existing accounts of O(users), by name, with their home directory and login shell.
  returned: always
  type: dict
  sample: {higgs-relay: {home: /nonexistent, shell: /usr/sbin/nologin}}
paths:
  description: The ones of O(paths) that exist.
  returned: always
  type: list
  elements: str
  sample: [/etc/higgs-vpn/metrics/exporter-before.json]
files:
  description: The contents of each of O(files), V(null) for a missing one.
  returned: always
  type: dict
  sample: {/etc/higgs-vpn/relay/node-id: "5b0d3c1e-8a43-4a8e-9d1c-6f1e2b3a4c5d\n"}
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule

MAX_FILE = 1 << 16
# the status in three letters (desired, status, error flag), then the name
DPKG_FORMAT = "${db:Status-Abbrev}${Package}\n"


def installed(lines):
    """The names of the installed packages in dpkg-query lines (status letter i, no error flag)."""
    return {line[3:] for line in lines if len(line) > 3 and line[1] == "i" and line[2] == " "}


def read_small(module, path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        module.fail_json(msg="cannot read %s: %s" % (path, exc))
    if len(text) > MAX_FILE:
        module.fail_json(msg="%s is larger than %d bytes" % (path, MAX_FILE))
    return text


def account(name):
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return {"home": entry.pw_dir, "shell": entry.pw_shell}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            packages=dict(type="list", elements="str", default=[]),
            users=dict(type="list", elements="str", default=[]),
            paths=dict(type="list", elements="path", default=[]),
            files=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    missing = []
    if params["packages"]:
        wanted = list(dict.fromkeys(params["packages"]))
        # rc 1 when dpkg never heard of a package: that one is missing like one not installed
        rc, out, err = module.run_command([module.get_bin_path("dpkg-query", required=True), "-W", "-f",
                                           DPKG_FORMAT, "--", *wanted], environ_update={"LC_ALL": "C"})
        if rc not in (0, 1):
            module.fail_json(msg="dpkg-query failed: %s" % err.strip(), rc=rc)
        have = installed(out.splitlines())
        missing = [name for name in wanted if name not in have]
    accounts = {name: account(name) for name in params["users"]}
    module.exit_json(
        changed=False,
        missing_packages=missing,
        users={name: found for name, found in accounts.items() if found is not None},
        paths=[path for path in params["paths"] if os.path.lexists(path)],
        files={path: read_small(module, path) for path in params["files"]},
    )


if __name__ == "__main__":
    main()
