# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wg_peers
short_description: The whole peer list of a WireGuard interface, live and for the next boot
version_added: 0.1.0
description:
  - Takes every peer of a WireGuard interface at once and makes the running interface
    and a peer file match it.
  - The live peers are read with C(wg show <interface> dump) and compared with O(peers).
    Peers that are missing, different or no longer wanted are changed with a single
    C(wg set) call, whatever their number, which names only those peers. Sessions of
    the other peers, the private key and the listen port are left alone (the
    semantics of C(wg syncconf) without its reset of the interface settings).
  - The peer file O(path) (mode C(0600)) is meant to be loaded when the interface
    comes up, for example with C(PostUp = wg addconf %i /etc/wireguard/wg0.peers) in a
    C(wg-quick) configuration. It is written atomically and only when its content changes.
  - When the interface does not exist (not yet up), only the peer file is written.
  - The endpoint of a peer is compared only when O(peers[].endpoint) is set, so the
    endpoints a node learns from roaming clients are not reset.
author:
  - Higgs.net node engineering (!UNKNOWN)
requirements:
  - C(wg) from wireguard-tools on the managed node.
options:
  interface:
    description: The WireGuard interface.
    type: str
    required: true
  peers:
    description: Every peer the interface should have; peers not listed are removed.
    type: list
    elements: dict
    default: []
    suboptions:
      public_key:
        description: The peer's public key (44 characters of base64).
        type: str
        required: true
      name:
        description: A label, written as a comment in the peer file and shown in the diff.
        type: str
      allowed_ips:
        description: Networks routed to this peer, IPv4 and IPv6 mixed.
        type: list
        elements: str
        default: []
      preshared_key:
        description: Optional preshared key (44 characters of base64). Never returned or logged.
        type: str
      persistent_keepalive:
        description: Keepalive interval in seconds; V(0) turns it off.
        type: int
        default: 0
      endpoint:
        description: Fixed endpoint C(host:port) of the peer; usually unset on an exit node.
        type: str
  path:
    description:
      - The peer file to keep in step with O(peers). Not written when unset.
    type: path
  live:
    description:
      - Apply the peers to the running interface. When V(false) only O(path) is written.
    type: bool
    default: true
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff lists peers by public key with their name, allowed IPs and keepalive;
      a preshared key is shown as C(<hidden>).
  platform:
    platforms: linux
notes:
  - Changing 1,000 peers is one C(wg set) call; the preshared keys travel in files of a
    private temporary directory, never in the argument list.
seealso:
  - name: wg(8)
    description: Manual page of C(wg).
    link: https://man7.org/linux/man-pages/man8/wg.8.html
"""

EXAMPLES = r"""
- name: Apply the client list of the node
  higgs.vpn.wg_peers:
    interface: wg0
    path: /etc/wireguard/wg0.peers
    peers:
      - name: alice
        public_key: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
        allowed_ips: [10.66.0.2/32, fd66::2/128]
      - name: bob
        public_key: TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=
        allowed_ips: [10.66.0.3/32]
        persistent_keepalive: 25

- name: Remove every peer
  higgs.vpn.wg_peers:
    interface: wg0
    path: /etc/wireguard/wg0.peers
    peers: []
"""

RETURN = r"""
added:
  description: Public keys of the peers added (or, in check mode, to be added) live.
  returned: always
  type: list
  elements: str
updated:
  description: Public keys of the live peers whose settings were changed.
  returned: always
  type: list
  elements: str
removed:
  description: Public keys of the live peers removed.
  returned: always
  type: list
  elements: str
file_changed:
  description: Whether the peer file O(path) was (or would be) rewritten.
  returned: always
  type: bool
interface_up:
  description: Whether the interface existed, so that the live peers were compared.
  returned: always
  type: bool
peer_count:
  description: Number of peers wanted.
  returned: always
  type: int
  sample: 1000
"""

import os
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils import _net, _wg

ARGS = dict(
    interface=dict(type="str", required=True),
    peers=dict(
        type="list", elements="dict", default=[],
        options=dict(
            public_key=dict(type="str", required=True, no_log=False),
            name=dict(type="str"),
            allowed_ips=dict(type="list", elements="str", default=[]),
            preshared_key=dict(type="str", no_log=True),
            persistent_keepalive=dict(type="int", default=0),
            endpoint=dict(type="str"),
        ),
    ),
    path=dict(type="path"),
    live=dict(type="bool", default=True),
)


def validate(params):
    """Messages naming what is wrong in the module parameters, in input order."""
    errors = []
    if _net.ifname_error(params["interface"]):
        errors.append("interface %r %s" % (params["interface"], _net.ifname_error(params["interface"])))
    seen = {}
    for index, peer in enumerate(params["peers"]):
        where = "peers[%d]%s" % (index, " (%s)" % peer["name"] if peer.get("name") else "")
        problem = _wg.key_error(peer["public_key"])
        if problem:
            errors.append("%s.public_key %s" % (where, problem))
        elif peer["public_key"] in seen:
            errors.append("%s.public_key is also the key of peers[%d]" % (where, seen[peer["public_key"]]))
        else:
            seen[peer["public_key"]] = index
        if peer.get("preshared_key") and _wg.key_error(peer["preshared_key"]):
            errors.append("%s.preshared_key %s" % (where, _wg.key_error(peer["preshared_key"])))
        if not 0 <= (peer.get("persistent_keepalive") or 0) <= 65535:
            errors.append("%s.persistent_keepalive must be between 0 and 65535" % where)
        bad = _net.cidr_errors(peer.get("allowed_ips") or [], strict=False)
        errors += ["%s.allowed_ips %r: %s" % (where, k, v) for k, v in bad.items()]
    return errors


def read_live(module, wg, interface):
    """Live peers of ``interface``, or None when it does not exist."""
    rc, out, err = module.run_command([wg, "show", interface, "dump"], environ_update=dict(LANG="C"))
    if rc != 0:
        if "No such device" in err or "Unable to access interface" in err:
            return None
        module.fail_json(msg="wg show %s dump failed: %s" % (interface, err.strip()), rc=rc, stderr=err)
    try:
        return _wg.parse_dump(out)[1]
    except ValueError as exc:
        module.fail_json(msg="cannot parse wg show %s dump: %s" % (interface, exc))
    return None  # pragma: no cover


def read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def private_mode(path):
    """True unless ``path`` exists with a mode other than 0600 (a peer file may hold preshared keys)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode) == 0o600
    except FileNotFoundError:
        return True


def write_file(module, path, text):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".higgs-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        module.atomic_move(tmp, path)
        os.chmod(path, 0o600)  # atomic_move gives a new file the umask's mode
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def apply_live(module, wg, interface, desired, live):
    """One ``wg set`` with every change; preshared keys in files of a 0700 directory."""
    workdir = tempfile.mkdtemp(prefix="higgs-wg-")
    try:
        def psk_file(key):
            path = os.path.join(workdir, "%d.psk" % len(os.listdir(workdir)))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(desired[key]["preshared_key"] + "\n")
            return path

        args = _wg.set_args(desired, live, psk_file)
        rc, out, err = module.run_command([wg, "set", interface, *args], environ_update=dict(LANG="C"))
        if rc != 0:
            module.fail_json(msg="wg set %s failed: %s" % (interface, err.strip()), rc=rc, stdout=out, stderr=err)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    module = AnsibleModule(argument_spec=ARGS, supports_check_mode=True)
    params = module.params
    errors = validate(params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    interface = params["interface"]
    wg = module.get_bin_path("wg", required=True)
    desired = _wg.desired_peers(params["peers"])
    names = {k: v["name"] for k, v in desired.items() if v["name"]}

    file_before = read_file(params["path"]) if params["path"] else None
    file_after = _wg.render_peers(desired) if params["path"] else None
    file_changed = file_after is not None and (file_after != file_before or not private_mode(params["path"]))

    live = read_live(module, wg, interface) if params["live"] else None
    added, updated, removed = _wg.plan(desired, live) if live is not None else ([], [], [])
    live_changed = bool(added or updated or removed)

    result = dict(changed=file_changed or live_changed, added=added, updated=updated, removed=removed,
                  file_changed=file_changed, interface_up=live is not None, peer_count=len(desired))
    if module._diff:
        # live peers when the interface is up, else the peer file; only the
        # peers that differ: a diff of 5,000 unchanged peers helps nobody
        if live is not None:
            before, touched, header = live, set(added + updated + removed), "%s (live)" % interface
        else:
            before = _wg.parse_peers_file(file_before)
            touched = set().union(*_wg.plan(desired, before))
            header = params["path"] or interface
        result["diff"] = dict(
            before={k: v for k, v in _wg.public_view(before, names).items() if k in touched},
            after={k: v for k, v in _wg.public_view(desired).items() if k in touched},
            before_header=header,
            after_header=header,
        )
    if result["changed"] and not module.check_mode:
        if file_changed:
            write_file(module, params["path"], file_after)
        if live_changed:
            apply_live(module, wg, interface, desired, live)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
