# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wg_key
short_description: A WireGuard private key that is created on the host and never leaves it
version_added: 0.1.0
description:
  - Creates a WireGuard private key in O(path) once (C(wg genkey)), owned by root with
    mode C(0600), in a directory of mode C(0700), written atomically. Returns its public
    key (C(wg pubkey)); the private key itself is never returned, logged or shown in a diff.
  - Re-runs never change an existing valid key. O(force=true) replaces it on purpose
    (key rotation); O(state=absent) removes it.
  - An existing file that does not hold a valid key makes the module fail unless O(force=true),
    so a damaged key is never silently replaced.
  - Ownership and mode of an existing key are corrected (reported as a change).
  - Missing directories above a new key are made, each with mode 0700 (a key's directory is private).
  - When the C(wg) command is missing (for example on a controller generating client keys),
    the keys are computed with the Python C(cryptography) library (X25519), which gives the
    same result.
author:
  - Higgs.net node engineering (!UNKNOWN)
requirements:
  - C(wg) from wireguard-tools, or the Python C(cryptography) library, on the managed node.
  - O(paths) handles many keys in one call (for example the keys of a node's clients, made on the
    controller), each as O(path) would be.
options:
  path:
    description:
      - The private key file, for example C(/etc/wireguard/wg0.key).
      - Exactly one of O(path) and O(paths) is required.
    type: path
  paths:
    description:
      - Many private key files, each handled as O(path) would be, in one call.
      - Their public keys are in RV(public_keys).
    type: list
    elements: path
    version_added: 0.3.0
  state:
    description: Whether the key file should exist.
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Replace an existing key with a new one (key rotation). Every run with V(true) changes
        the key, so use it in a rotation playbook, not in a role's regular run.
    type: bool
    default: false
  owner:
    description: Owner of the key file.
    type: str
    default: root
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode a key that would be created has no public key yet (RV(public_key) is empty).
  diff_mode:
    support: full
    details: The diff shows the path, mode and public key, never the private key.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Private key of the node's wg0 interface
  higgs.vpn.wg_key:
    path: /etc/wireguard/wg0.key
  register: node_key

- name: Show the public key
  ansible.builtin.debug:
    msg: "{{ node_key.public_key }}"

- name: Keys of the clients, made on the controller in one call
  higgs.vpn.wg_key:
    paths:
      - profiles/node1/alice.key
      - profiles/node1/bob.key
  delegate_to: localhost
  become: false
  register: client_keys

- name: Rotate the key
  higgs.vpn.wg_key:
    path: /etc/wireguard/wg0.key
    force: true

- name: Remove the key
  higgs.vpn.wg_key:
    path: /etc/wireguard/wg0.key
    state: absent
"""

RETURN = r"""
public_key:
  description: Public key of the private key in O(path); empty when O(state=absent) or when
    check mode would create the key.
  returned: with O(path)
  type: str
  sample: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
created:
  description: Whether a new key was (or would be) generated, by a first run or by O(force).
  returned: with O(path)
  type: bool
previous_public_key:
  description: The public key of the key that O(force) or O(state=absent) replaced or removed.
  returned: when a key was replaced or removed, with O(path)
  type: str
public_keys:
  description: Path to public key, as RV(public_key) for each of O(paths).
  returned: with O(paths)
  type: dict
  sample: {/srv/profiles/node1/alice.key: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=}
created_paths:
  description: The ones of O(paths) whose key was (or would be) generated.
  returned: with O(paths)
  type: list
  elements: str
"""

import base64
import os
import pwd
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils import _wg


class KeyTool:
    """``wg genkey``/``wg pubkey`` through run_command, or X25519 from cryptography."""

    def __init__(self, module):
        self.module = module
        self.wg = module.get_bin_path("wg")
        if self.wg is None:
            try:
                from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: F401
            except ImportError:
                module.fail_json(msg="neither the wg command (install wireguard-tools) nor the Python "
                                     "cryptography library is available on %s" % os.uname()[1])

    def _wg(self, args, data=None):
        rc, out, err = self.module.run_command([self.wg, *args], data=data, binary_data=False,
                                               environ_update=dict(LANG="C"))
        if rc != 0:
            # stdout may hold key material: never include it
            self.module.fail_json(msg="wg %s failed: %s" % (args[0], err.strip()), rc=rc)
        return out.strip()

    def genkey(self):
        if self.wg:
            return self._wg(["genkey"])
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        raw = x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return base64.b64encode(raw).decode()

    def pubkey(self, private):
        if self.wg:
            return self._wg(["pubkey"], data=private)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        key = x25519.X25519PrivateKey.from_private_bytes(base64.b64decode(private))
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()


def read_key(path):
    """(private key text or None, stat or None)."""
    try:
        with open(path) as handle:
            st = os.fstat(handle.fileno())
            return handle.read().strip(), st
    except FileNotFoundError:
        return None, None


def private_dirs(directory):
    """Make the missing directories down to directory, each 0700 whatever the umask."""
    if os.path.isdir(directory):
        return
    private_dirs(os.path.dirname(directory))
    try:
        os.mkdir(directory)
    except FileExistsError:
        return  # made meanwhile by the run of another node (client keys share the controller's directory)
    os.chmod(directory, 0o700)


def write_key(module, path, private, uid):
    directory = os.path.dirname(os.path.abspath(path))
    private_dirs(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".higgs-key-")
    try:
        os.fchmod(fd, 0o600)
        if os.geteuid() == 0:
            os.fchown(fd, uid, -1)
        with os.fdopen(fd, "w") as handle:
            handle.write(private + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        module.atomic_move(tmp, path, unsafe_writes=False, keep_dest_attrs=False)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    os.chmod(path, 0o600)


ARGS = dict(
    path=dict(type="path"),
    paths=dict(type="list", elements="path"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    force=dict(type="bool", default=False),
    owner=dict(type="str", default="root"),
)


def one(module, tool, path, uid):
    """The result and the diff of one key file (which check mode leaves as it is)."""
    state = module.params["state"]
    private, st = read_key(path)
    current_pub = ""
    if private is not None:
        if _wg.key_error(private) and not (state == "absent" or module.params["force"]):
            module.fail_json(msg="%s does not hold a WireGuard private key (it %s); move it away, or set "
                                 "force: true to replace it with a new key" % (path, _wg.key_error(private)))
        if not _wg.key_error(private):
            current_pub = tool.pubkey(private)
    before = dict(path=path, exists=private is not None, public_key=current_pub,
                  mode="%04o" % stat.S_IMODE(st.st_mode) if st else None)

    result = dict(changed=False, public_key=current_pub, created=False)
    if state == "absent":
        result["changed"] = private is not None
        result["public_key"] = ""
        after = dict(path=path, exists=False, public_key="", mode=None)
        if private is not None:
            result["previous_public_key"] = current_pub
            if not module.check_mode:
                os.unlink(path)
    else:
        create = private is None or module.params["force"]
        fix_perms = not create and (stat.S_IMODE(st.st_mode) != 0o600 or (os.geteuid() == 0 and st.st_uid != uid))
        result["changed"] = create or fix_perms
        result["created"] = create
        if create and private is not None:
            result["previous_public_key"] = current_pub
        after = dict(path=path, exists=True, mode="0600",
                     public_key="(new key)" if create else current_pub)
        if not module.check_mode:
            if create:
                private = tool.genkey()
                write_key(module, path, private, uid)
                result["public_key"] = tool.pubkey(private)
                after["public_key"] = result["public_key"]
            elif fix_perms:
                os.chmod(path, 0o600)
                if os.geteuid() == 0:
                    os.chown(path, uid, -1)
        elif create:
            result["public_key"] = ""
    del private
    return result, dict(before=before, after=after, before_header=path, after_header=path)


def main():
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True,
                           mutually_exclusive=[("path", "paths")], required_one_of=[("path", "paths")])
    try:
        uid = pwd.getpwnam(module.params["owner"]).pw_uid
    except KeyError:
        module.fail_json(msg="owner: no user %r on this host" % module.params["owner"])
    tool = KeyTool(module)
    if module.params["path"]:
        result, diff = one(module, tool, module.params["path"], uid)
        if module._diff:
            result["diff"] = diff
        module.exit_json(**result)
    result = dict(changed=False, public_keys={}, created_paths=[])
    diffs = []
    for path in module.params["paths"]:
        key, diff = one(module, tool, path, uid)
        result["changed"] = result["changed"] or key["changed"]
        result["public_keys"][path] = key["public_key"]
        if key["created"]:
            result["created_paths"].append(path)
        if key["changed"]:
            diffs.append(diff)
    if module._diff:
        result["diff"] = diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
