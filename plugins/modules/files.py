# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: files
short_description: Write, create or remove many files and directories in one call
version_added: 0.3.0
description:
  - One round trip for the files of a part instead of one C(template)/C(copy)/C(file) task per
    file. The contents are rendered on the controller (for example with
    C(lookup('ansible.builtin.template', ...))).
  - The entries of O(secret_files), then those of O(files), in the order given, as a series of
    C(template)/C(file) tasks would, each read, compared with the wanted content, checked by its
    O(files[].validate) command when it would change, and only then written (atomically). A
    refused entry fails the call and leaves itself and the entries after it as they were.
  - Entries of O(secret_files) are handled like those of O(files), but their contents are
    never logged nor shown in a diff. They come first, so that a checked configuration can
    name a key or token written by the same call.
  - Entries with O(files[].unit=true) are systemd units or drop-ins, verified with
    C(systemd-analyze verify) as M(higgs.vpn.unit_file) does, when they would change; a
    refusal fails the call with the warnings about that file and leaves it as it was.
  - The missing parent directories of a file are created (mode 0755).
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  files:
    description: Files and directories, handled in this order after O(secret_files).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description:
          - A regular file with O(files[].content), a directory, a symbolic link to O(files[].src)
            (which replaces a file or link at that path, not a directory), or nothing at that path.
        type: str
        choices: [file, directory, link, absent]
        default: file
      content:
        description: The whole file. Required with O(files[].state=file).
        type: str
      src:
        description: Where the link points. Required with O(files[].state=link).
        type: str
      unit:
        description:
          - The file is a systemd unit (C(<name>.service), C(.timer), ...) or drop-in
            (C(<unit>.d/<name>.conf)), verified by C(systemd-analyze verify) before it is written.
            Reloading systemd afterwards is the caller's (see RV(changed_paths)).
        type: bool
        default: false
      owner:
        description: Owner; unchanged (root when created by root) when omitted.
        type: str
      group:
        description: Group; unchanged when omitted.
        type: str
      mode:
        description: Permissions, e.g. C('0644'); unchanged for an existing file when omitted.
        type: raw
      validate:
        description:
          - Command run on a temporary copy of a changed file before it is written;
            C(%s) stands for the copy's path. It runs without a shell.
        type: str
  secret_files:
    description: Like O(files), for files whose contents are secret (keys, tokens); handled first.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description: A regular file with O(secret_files[].content), or nothing at that path.
        type: str
        choices: [file, absent]
        default: file
      content:
        description: The whole file. Required with O(secret_files[].state=file).
        type: str
      owner:
        description: Owner; unchanged (root when created by root) when omitted.
        type: str
      group:
        description: Group; unchanged when omitted.
        type: str
      mode:
        description: Permissions, e.g. C('0640'); unchanged for an existing file when omitted.
        type: raw
      validate:
        description: As O(files[].validate).
        type: str
  probed:
    description:
      - What was read of these paths earlier in the same run, by path, as
        RV(higgs.vpn.host_probe#module:stats) returns it (the node role passes what its probe read).
      - When every entry is as wanted according to it, the action answers on the controller without
        a round trip. Otherwise, or for an entry whose path it does not hold, the module reads and
        writes on the node as without it.
      - Give only what was read in this run before any task that may change these paths.
    type: dict
  probed_key:
    description: The RV(higgs.vpn.host_probe#module:stats) key O(probed) was read with, if any. Never logged.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
    details: Answers on the controller when O(probed) shows every entry as wanted.
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: The O(files[].validate) commands and the unit verification run in check mode too.
  diff_mode:
    support: full
    details: No diff for O(secret_files).
  platform:
    support: full
    platforms: posix
notes:
  - O(files[].unit) needs C(systemd-analyze) on the node (package systemd).
"""

EXAMPLES = r"""
- name: Write the connector's configuration, token and directory in one call
  higgs.vpn.files:
    files:
      - path: /etc/higgs-vpn/relay
        state: directory
        mode: "0755"
      - path: /etc/higgs-vpn/relay/connector.json
        content: "{{ lookup('ansible.builtin.template', 'connector.json.j2') }}"
        mode: "0644"
        validate: /usr/bin/python3 -m json.tool %s
      - path: /etc/systemd/system/higgs-vpn-relay.service
        content: "{{ lookup('ansible.builtin.template', 'higgs-vpn-relay.service.j2') }}"
        unit: true
      - path: /var/lib/prometheus/node-exporter/higgs_vpn.prom
        state: link
        src: /run/higgs-vpn-metrics/higgs_vpn.prom
      - path: /etc/higgs-vpn/relay/ca.pem
        state: absent
    secret_files:
      - path: /etc/higgs-vpn/relay/token
        content: "{{ relay_connector_auth_token }}\n"
        group: higgs-relay
        mode: "0640"
    # read by host_probe earlier in the run (its stats): no round trip when nothing differs
    probed: "{{ probe.stats }}"
    probed_key: "{{ stats_key }}"
  notify: relay_connector changed
"""

RETURN = r"""
on_controller:
  description: V(true) when the action answered on the controller from O(probed), without a round trip.
  returned: when true
  type: bool
  sample: true
changed_paths:
  description: The paths written, created or removed (or that would be, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: [/etc/higgs-vpn/relay/connector.json]
"""

import os
import shlex
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils._units import layout, refusal

ENTRY = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", choices=["file", "directory", "link", "absent"], default="file"),
    content=dict(type="str"),
    src=dict(type="str"),
    unit=dict(type="bool", default=False),
    owner=dict(type="str"),
    group=dict(type="str"),
    mode=dict(type="raw"),
    validate=dict(type="str"),
)
SECRET_ENTRY = dict(ENTRY, state=dict(type="str", choices=["file", "absent"], default="file"),
                    content=dict(type="str", no_log=True))
del SECRET_ENTRY["src"], SECRET_ENTRY["unit"]


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def validate(module, entry, data):
    """(rc, output) of the entry's check run on a temporary copy of ``data``."""
    fd, tmp = tempfile.mkstemp(prefix="higgs-files-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        argv = [arg.replace("%s", tmp) for arg in shlex.split(entry["validate"])]
        rc, out, err = module.run_command(argv)
    finally:
        os.unlink(tmp)
    return rc, (err or out).strip()


def check_unit(module, entry, changed_paths):
    """Fail, leaving the entry as it was, when systemd-analyze refuses the unit."""
    unit, relative = layout(entry["path"])
    refused = refusal(module, unit, relative, entry["content"])
    if refused:
        message, ours, rc, out, err = refused
        module.fail_json(msg="%s: systemd-analyze verify refuses the new content, left as it was: %s"
                         % (entry["path"], message), warnings_found=ours, rc=rc, stdout=out, stderr=err,
                         changed=bool(changed_paths), changed_paths=changed_paths)


def link(path, src):
    """Point ``path`` at ``src`` (atomically: a new link renamed over the old file or link)."""
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), 0o755)
    tmp = os.path.join(os.path.dirname(path), ".%s.%d.link" % (os.path.basename(path), os.getpid()))
    os.symlink(src, tmp)
    os.replace(tmp, path)


def write(module, path, data):
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path), 0o755)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    module.atomic_move(tmp, path)


def entry_errors(entries, option):
    errors = []
    for i, entry in enumerate(entries):
        if not os.path.isabs(entry["path"]):
            errors.append("%s[%d].path: %s is not an absolute path" % (option, i, entry["path"]))
        if entry["state"] == "file" and entry["content"] is None:
            errors.append("%s[%d].content: %s needs a content (or state: directory / link / absent)"
                          % (option, i, entry["path"]))
        if entry["state"] == "link" and not entry.get("src"):
            errors.append("%s[%d].src: %s needs the path the link points to" % (option, i, entry["path"]))
        if entry.get("unit"):
            try:
                layout(entry["path"])
            except ValueError as exc:
                errors.append("%s[%d].path: %s" % (option, i, exc))
    return errors


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", default=[], options=ENTRY),
            # the paths are no secret; each entry's content is (no_log in SECRET_ENTRY)
            secret_files=dict(type="list", elements="dict", default=[], options=SECRET_ENTRY, no_log=False),
            # used by the action only (they do not reach the module)
            probed=dict(type="dict"),
            probed_key=dict(type="str", no_log=True),
        ),
        supports_check_mode=True,
    )
    entries = [(e, True) for e in module.params["secret_files"]] + [(e, False) for e in module.params["files"]]
    errors = entry_errors(module.params["secret_files"], "secret_files") + entry_errors(module.params["files"],
                                                                                        "files")
    if errors:
        module.fail_json(msg="; ".join(errors))

    changed_paths, diffs = [], []
    for entry, secret in entries:
        path = entry["path"]
        state = entry["state"]
        attributes = module.load_file_common_arguments(
            dict(path=path, mode=entry["mode"], owner=entry["owner"], group=entry["group"]))
        if state == "absent":
            changed = os.path.lexists(path)
            if changed and not module.check_mode:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            if changed and not secret:
                diffs.append(dict(before_header=path, after_header=path, before="present\n", after="absent\n"))
        elif state == "link":
            if os.path.isdir(path) and not os.path.islink(path):
                module.fail_json(msg="%s: is a directory, not replaced by a link to %s" % (path, entry["src"]),
                                 changed=bool(changed_paths), changed_paths=changed_paths)
            before = os.readlink(path) if os.path.islink(path) else None
            changed = before != entry["src"]
            if changed:
                diffs.append(dict(before_header=path, after_header=path, after="-> %s\n" % entry["src"],
                                  before=("-> %s\n" % before) if before else
                                  ("present\n" if os.path.lexists(path) else "absent\n")))
            if changed and not module.check_mode:
                link(path, entry["src"])
        elif state == "directory":
            exists = os.path.isdir(path)
            changed = not exists
            if changed and not module.check_mode:
                os.makedirs(path)
            if exists or not module.check_mode:
                changed = module.set_fs_attributes_if_different(attributes, changed)
        else:
            data = entry["content"].encode("utf-8")
            current = read(path)
            changed = current != data
            if changed and entry.get("unit"):
                check_unit(module, entry, changed_paths)
            if changed and entry["validate"]:
                rc, output = validate(module, entry, data)
                if rc:
                    module.fail_json(msg="%s: the check (validate) refuses the new content, left as it was: %s"
                                     % (path, output), rc=rc, changed=bool(changed_paths),
                                     changed_paths=changed_paths)
            if changed and not secret:
                diffs.append(dict(before_header=path, after_header=path,
                                  before=(current or b"").decode("utf-8", "replace"), after=entry["content"]))
            if changed and not module.check_mode:
                write(module, path, data)
            if current is not None or not module.check_mode:
                changed = module.set_fs_attributes_if_different(attributes, changed)
        if changed:
            changed_paths.append(path)
    result = dict(changed=bool(changed_paths), changed_paths=changed_paths)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
