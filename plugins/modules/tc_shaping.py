# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tc_shaping
short_description: Node-wide caps and per-client rate limits on a tunnel interface, with tc
version_added: 0.1.0
description:
  - Takes the whole shaping of one tunnel interface, reads the live traffic control state
    (C(tc -j qdisc/filter show), C(tc -d class show)), computes the difference and applies
    it with one C(tc -batch).
  - Download (towards the clients) is shaped on the egress of O(interface); upload (from
    the clients) on an C(ifb) device that the interface's ingress is redirected to.
  - On each, an C(htb) tree holds the node-wide cap (class C(1:1)), a class for traffic of
    no listed client (C(1:2)), optionally a prioritised class for interactive traffic
    (C(1:3)), and one class per client whose ceil is the client's rate. Clients share what
    the cap leaves over equally (same quantum).
  - Clients are kept in groups of at most 250, each a class C(1:<G>) (C(G) from C(8000))
    holding a child C(htb) qdisc C(<G>:) whose class C(<G>:1) holds the clients' classes
    C(<G>:<m>). The kernel walks all classes of a qdisc for every class added to it;
    groups keep that walk short. A client keeps its number, hence its
    group and class, across runs; at most 32752 clients per interface.
  - A tree of an earlier version (every client class under C(1:1)) is rebuilt once.
  - Clients are found with two levels of C(u32) hash tables keyed on the last two bytes
    of their address leading to the group, then one table on the group's qdisc keyed on
    the last byte leading to the client, so the per-packet cost does not grow with the
    number of clients. Client networks that are not host addresses are matched one by one.
  - The full batch is persisted under O(persist_dir) for the boot unit
    C(higgs-vpn-shaping@<interface>.service), which rebuilds the shaping whenever the
    tunnel interface is re-created.
  - Next to the batch, C(<interface>.clients.json) records each client's class, addresses
    and filters (preference, protocol and hash table on each device) for the metrics collector.
  - The persisted files are world-readable (0644 in a 0755 directory; they hold client names
    and classes, nothing secret) so that the unprivileged metrics collector can read them;
    other modes are corrected.
author:
  - Higgs.net node engineering (!UNKNOWN)
options:
  state:
    description: Whether the shaping should exist. V(absent) removes the qdiscs, classes,
      filters and the ifb device the module added, and its persisted files.
    type: str
    choices: [present, absent]
    default: present
  interface:
    description: The tunnel interface clients are reached through.
    type: str
    default: wg0
  ifb_interface:
    description: Name of the ifb device shaping the upload; empty means C(ifb-<interface>)
      (cut to 15 characters).
    type: str
    default: ""
  rate_down:
    description: Node-wide cap towards the clients, e.g. V(100mbit); empty means no cap.
    type: str
    default: ""
  rate_up:
    description: Node-wide cap from the clients, e.g. V(20Mbit); empty means no cap.
    type: str
    default: ""
  client_rate_down:
    description: Download limit of a client that sets none; empty means only the cap.
    type: str
    default: ""
  client_rate_up:
    description: Upload limit of a client that sets none; empty means only the cap.
    type: str
    default: ""
  interactive_rate:
    description:
      - Rate of a prioritised class for interactive traffic (packets under 128 bytes and
        DNS), served before the clients' classes; empty turns it off.
      - Such packets bypass the per-client limits, up to this rate for all clients together.
    type: str
    default: ""
  leaf_qdisc:
    description: Queue of each class. V(default) keeps the kernel's (a pfifo).
    type: str
    choices: [fq_codel, pfifo, default]
    default: fq_codel
  persist_dir:
    description: Directory of the persisted batch read by the boot unit.
    type: path
    default: /etc/higgs-vpn/shaping
extends_documentation_fragment:
  - higgs.vpn.shaping_clients
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
notes:
  - Rates are bits per second with a unit C(bit), C(kbit), C(mbit), C(gbit) or C(tbit),
    in any case (V(500kbit), V(20Mbit), V(1gbit)); C(bps) is refused since tc reads it as
    bytes.
  - The root qdisc of O(interface) is replaced; a qdisc someone else put there is lost.
"""

EXAMPLES = r"""
- name: Cap the node at 100 Mbit/s down and 20 Mbit/s up, 10 Mbit/s per client
  higgs.vpn.tc_shaping:
    interface: wg0
    rate_down: 100mbit
    rate_up: 20mbit
    client_rate_down: 10mbit
    client_rate_up: 10mbit
    clients:
      - name: alice
        addresses: [10.66.0.2/32, "fd66::2/128"]
      - name: bob
        addresses: [10.66.0.3/32]
        rate_down: 50Mbit
        rate_up: unlimited

- name: Remove the shaping
  higgs.vpn.tc_shaping:
    interface: wg0
    state: absent
"""

RETURN = r"""
commands:
  description:
    - The tc batch lines applied (or, in check mode, that would be); the first 1,000 of them
      when there are more (a first run with 10,000 clients makes 60,000 to 80,000).
    - The full batch a fresh interface gets is the persisted C(<interface>.tc).
  returned: always
  type: list
  elements: str
  sample:
    - >-
      class change dev wg0 parent 8000:1 classid 8000:10 htb rate 1875000bit ceil 20000000bit
      burst 3046b cburst 25000b quantum 1514 prio 1
command_count:
  description: The number of tc batch lines applied (or, in check mode, that would be).
  returned: state is present
  type: int
  sample: 2
classes:
  description: The class of each client, the same on both devices.
  returned: state is present
  type: dict
  sample: {alice: "8000:10", bob: "8000:11"}
ifb_interface:
  description: The ifb device shaping the upload.
  returned: always
  type: str
  sample: ifb-wg0
persisted:
  description: Files read by the boot unit.
  returned: always
  type: list
  elements: str
  sample: [/etc/higgs-vpn/shaping/wg0.clients.json, /etc/higgs-vpn/shaping/wg0.env, /etc/higgs-vpn/shaping/wg0.tc]
"""

import json
import os
import re
import stat
import tempfile
import threading
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils import _owned, _plan, _tc
from ansible_collections.higgs.vpn.plugins.module_utils._net import ifname_error

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    interface=dict(type="str", default="wg0"),
    ifb_interface=dict(type="str", default=""),
    rate_down=dict(type="str", default=""),
    rate_up=dict(type="str", default=""),
    client_rate_down=dict(type="str", default=""),
    client_rate_up=dict(type="str", default=""),
    clients=dict(type="list", elements="dict", default=[], options=_plan.CLIENT_OPTIONS),
    interactive_rate=dict(type="str", default=""),
    leaf_qdisc=dict(type="str", choices=["fq_codel", "pfifo", "default"], default="fq_codel"),
    persist_dir=dict(type="path", default="/etc/higgs-vpn/shaping"),
)

UNLIMITED = "unlimited"
MAX_CLIENTS = _tc.LAST_CLIENT_MINOR - _tc.FIRST_CLIENT_MINOR + 1
ATTEMPTS = 5
# batch lines in the result: a long list costs the module and the controller
# more than it tells anyone (the persisted batch has them all)
LISTED = 1000
# The persisted batch names clients and classes, nothing secret: readable by the
# unprivileged metrics collector.
PERSIST_MODE = 0o644
PERSIST_DIR_MODE = 0o755
# <interface><SIDECAR>: JSON {interface, ifb, clients: [{name, classid, group, addresses,
# filters: {device: [{pref, protocol, qdisc, ht}]}}]}
SIDECAR = ".clients.json"


def ifb_name(params):
    return params["ifb_interface"] or ("ifb-" + params["interface"])[:15]


def _rate(value, option, errors, allow_unlimited=False):
    if value in (None, ""):
        return None
    if allow_unlimited and str(value).lower() == UNLIMITED:
        return UNLIMITED
    try:
        return _tc.parse_rate(value)
    except ValueError as exc:
        errors.append("%s: %s" % (option, exc))
        return None


def validate(params):
    """(spec for _tc.plan_device without minors, every problem naming its option)."""
    errors = []
    for option in ("interface", "ifb_interface"):
        value = params[option] if option == "interface" else ifb_name(params)
        why = ifname_error(value)
        if why:
            errors.append("%s: %r %s" % (option, value, why))
    if params["state"] == "absent":
        return None, errors
    spec = dict(interface=params["interface"], ifb=ifb_name(params), leaf_qdisc=params["leaf_qdisc"],
                cap_down=_rate(params["rate_down"], "rate_down", errors),
                cap_up=_rate(params["rate_up"], "rate_up", errors),
                interactive_rate=_rate(params["interactive_rate"], "interactive_rate", errors), clients=[])
    if spec["ifb"] == spec["interface"]:
        errors.append("ifb_interface: must differ from interface %r" % spec["interface"])
    defaults = {d: _rate(params["client_rate_" + d], "client_rate_" + d, errors) for d in ("down", "up")}
    names, owners = set(), {}
    for index, client in enumerate(params["clients"]):
        where = "clients[%d] (%s)" % (index, client["name"])
        if client["name"] in names:
            errors.append("%s: the name is used twice" % where)
        names.add(client["name"])
        entry = dict(name=client["name"], networks=[])
        for d in ("down", "up"):
            rate = _rate(client["rate_" + d], "%s.rate_%s" % (where, d), errors, allow_unlimited=True)
            entry[d] = None if rate == UNLIMITED else (rate if rate is not None else defaults[d])
        if not client["addresses"]:
            errors.append("%s.addresses: give at least one address" % where)
        for addr in client["addresses"]:
            try:
                net = _tc.networks([addr])[0]
            except ValueError as exc:
                errors.append("%s.addresses: %s" % (where, exc))
                continue
            if net in owners:
                errors.append("%s.addresses: %s is also %s's" % (where, net, owners[net]))
            owners[net] = client["name"]
            entry["networks"].append(net)
        spec["clients"].append(entry)
    if len(spec["clients"]) > MAX_CLIENTS:
        errors.append("clients: %d clients, at most %d per interface (class numbers 0x%x to 0x%x); "
                      "spread them over more tunnel interfaces" % (len(spec["clients"]), MAX_CLIENTS,
                                                                   _tc.FIRST_CLIENT_MINOR, _tc.LAST_CLIENT_MINOR))
    return spec, errors


# tc -batch's last words: "Command failed <file>:<line>"
_FAILED_LINE = re.compile(r"Command failed \S*:(\d+)\s*$")


class _Batch(threading.Thread):
    """``tc -batch`` of some lines, run while the module goes on.

    The lines go in a file, not a pipe: tc stops at the first failing line,
    and a pipe it no longer reads would end in a broken pipe instead of tc's
    own message.
    """

    def __init__(self, module, tc, lines):
        super().__init__(daemon=True)
        self.module, self.lines = module, lines
        fd, self.path = tempfile.mkstemp(dir=module.tmpdir, prefix="tc-", suffix=".batch")
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.argv = [tc, "-batch", self.path]
        self.rc, self.err = None, ""
        self.start()

    def run(self):
        # no fail_json from this thread: wait() hands the outcome to the module's
        try:
            self.rc, _out, self.err = self.module.run_command(
                self.argv, environ_update={"LANG": "C", "LC_ALL": "C"}, handle_exceptions=False)
        except OSError as exc:
            self.rc, self.err = -1, "%s: %s" % (self.argv[0], exc)

    def wait(self):
        """(rc, tc's message naming the line it stopped at)."""
        self.join()
        os.unlink(self.path)
        failed = _FAILED_LINE.search(self.err)
        line = int(failed.group(1)) if failed else 0
        if 0 < line <= len(self.lines):
            return self.rc, "%s: %s" % (self.lines[line - 1], self.err[:failed.start()].strip())
        return self.rc, self.err


class Host:
    """The commands the module runs."""

    def __init__(self, module):
        self.module = module
        self.tc = module.get_bin_path("tc", required=True)
        self.ip = module.get_bin_path("ip", required=True)

    def run(self, argv, ok_rc=(0,)):
        return _owned.run(self.module, argv, ok_rc=ok_rc)

    def link(self, name):
        """``ip -j link show`` entry of ``name``, or None."""
        rc, out, _err = self.run([self.ip, "-j", "-d", "link", "show", "dev", name], ok_rc=(0, 1, 255))
        if rc != 0:
            return None
        entries = json.loads(out or "[]")
        return entries[0] if entries else None

    def device(self, name, ingress):
        """The live objects of ``name`` (empty when the device does not exist)."""
        if self.link(name) is None:
            return _tc.Device(name)
        qdiscs = self.run([self.tc, "-j", "qdisc", "show", "dev", name])[1]
        classes = self.run([self.tc, "-d", "class", "show", "dev", name])[1]
        filters = self.run([self.tc, "-j", "filter", "show", "dev", name, "parent", _tc.ROOT], ok_rc=(0, 1, 2))[1]
        groups = {handle: self.run([self.tc, "-j", "filter", "show", "dev", name, "parent", handle], ok_rc=(0, 1, 2))[1]
                  or "[]" for handle in _tc.group_qdiscs(qdiscs)}
        ingress_filters = None
        if ingress:
            ingress_filters = self.run([self.tc, "-j", "filter", "show", "dev", name, "ingress"], ok_rc=(0, 1, 2))[1]
        return _tc.live_device(name, qdiscs, classes, filters or "[]", ingress_filters or "[]", groups)

    def batch(self, lines):
        if lines:
            rc, err = self.start_batch(lines).wait()
            if rc != 0:
                self.module.fail_json(msg="tc -batch failed: %s" % err.strip(), commands=lines)

    def start_batch(self, lines):
        """``tc -batch`` of ``lines`` in a thread; ``.wait()`` gives (rc, stderr)."""
        return _Batch(self.module, self.tc, lines)

    def ensure_ifb(self, name):
        link = self.link(name)
        if link is None:
            self.run([self.ip, "link", "add", name, "type", "ifb"])
        if link is None or "UP" not in link.get("flags", []):
            self.run([self.ip, "link", "set", name, "up"])


def _mode(path):
    """Permission bits of ``path``, or None when it does not exist."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def sidecar(params, devices, clients):
    """What the metrics collector reads: each client's class, addresses and filters, per device."""
    record = dict(interface=params["interface"], ifb=ifb_name(params), clients=[])
    # each device's filters by the class they lead to: one pass, whatever the number of clients
    by_class = {dev.name: {} for dev in devices}
    for dev in devices:
        for flt in dev.filters.values():
            if flt.flowid:
                by_class[dev.name].setdefault(flt.flowid, []).append(
                    {"pref": flt.pref, "protocol": _tc.PROTO.get(flt.ver, "all"), "ht": flt.where, "qdisc": flt.qdisc})
    for client in clients:
        classid = _tc.client_classid(client["minor"])
        filters = {dev.name: sorted(by_class[dev.name].get(classid, []), key=lambda f: (f["pref"], f["ht"]))
                   for dev in devices}
        record["clients"].append(dict(name=client["name"], classid=classid,
                                      group="1:%x" % _tc.group_major(client["minor"]),
                                      addresses=[str(n) for n in client["networks"]], filters=filters))
    # one client per line, compact: the C encoder (an indent would take the pure-Python one, 10x slower)
    rows = ",\n".join(json.dumps(c, sort_keys=True, separators=(",", ":")) for c in record["clients"])
    return '{"ifb":%s,"interface":%s,"clients":[\n%s\n]}\n' % (
        json.dumps(record["ifb"]), json.dumps(record["interface"]), rows)


def persisted_texts(params, devices, clients):
    batch = [line for dev in reversed(devices) for line in _tc.full_batch(dev)]
    return {
        ".tc": "# higgs.vpn shaping of %s, rebuilt by higgs-vpn-shaping@%s.service\n%s\n"
               % (params["interface"], params["interface"], "\n".join(batch)),
        ".env": "IFB=%s\n" % ifb_name(params),
        # the machine-readable record of the clients (the metrics collector reads it)
        SIDECAR: sidecar(params, devices, clients),
    }


def present(module, host, spec, result):
    params = module.params
    if host.link(spec["interface"]) is None:
        msg = "interface: %s does not exist; bring the tunnel up before shaping it" % spec["interface"]
        if module.check_mode:
            # the tunnel role before this one would have created it
            module.warn(msg)
            result.update(changed=True, commands=[], classes={})
            return
        module.fail_json(msg=msg)
    ifb_link = host.link(spec["ifb"])
    live = [host.device(spec["ifb"], False), host.device(spec["interface"], True)]
    minors = _tc.client_minors(list(live[1].filters), spec["clients"])
    for client in spec["clients"]:
        client["minor"] = minors[client["name"]]
    # Device by device, the ifb first (the tunnel's ingress leads to it): the
    # kernel's work on a batch, most of a large first run, goes on while the
    # next device and the persisted files are worked out (tc on one core, the
    # module on another).
    desired, commands, batches = [], [], []
    for live_device, direction in zip(live, ("up", "down")):
        device = _tc.plan_device(spec, direction)
        lines = _tc.diff(live_device, device)
        desired.append(device)
        commands += lines
        if lines and not module.check_mode:
            if not batches:
                host.ensure_ifb(spec["ifb"])
            batches.append(host.start_batch(lines))
    ifb_desired, tun_desired = desired
    texts = persisted_texts(params, [tun_desired, ifb_desired], spec["clients"])
    paths = {suffix: os.path.join(params["persist_dir"], params["interface"] + suffix) for suffix in texts}
    stale = [s for s in texts if _owned.read_file(paths[s]) != texts[s] or _mode(paths[s]) != PERSIST_MODE]
    stale_dir = _mode(params["persist_dir"]) not in (None, PERSIST_DIR_MODE)
    ifb_down = ifb_link is None or "UP" not in ifb_link.get("flags", [])
    result.update(commands=commands[:LISTED], command_count=len(commands),
                  classes={c["name"]: _tc.client_classid(c["minor"]) for c in spec["clients"]},
                  persisted=sorted(paths.values()), changed=bool(commands or stale or stale_dir or ifb_down))
    if module._diff:
        result["diff"] = dict(before="\n".join(line for d in live for line in d.lines()) + "\n",
                              after="\n".join(line for d in desired for line in d.lines()) + "\n")
    if not result["changed"] or module.check_mode:
        return
    if not batches:
        host.ensure_ifb(spec["ifb"])
    # The kernel releases a class a moment after the last filter pointing at
    # it, so a batch deleting both may fail at the class: then the difference
    # is read again and applied after a pause.
    errors = [err.strip() for rc, err in (b.wait() for b in batches) if rc != 0]
    pending, attempt = (commands if errors else []), 1
    while pending and attempt < ATTEMPTS:
        time.sleep(0.2 * attempt)
        after = [host.device(spec["ifb"], False), host.device(spec["interface"], True)]
        pending = _tc.diff(after[0], ifb_desired) + _tc.diff(after[1], tun_desired)
        if not pending:
            break
        attempt += 1
        rc, err = host.start_batch(pending).wait()
        if rc == 0:
            pending = []
        else:
            errors.append(err.strip())
    if pending:
        module.fail_json(msg="tc -batch failed: %s" % " / ".join(dict.fromkeys(errors)), commands=commands[:LISTED],
                         left=pending[:LISTED])
    result["attempts"] = attempt
    if stale_dir:
        os.chmod(params["persist_dir"], PERSIST_DIR_MODE)
    for suffix in stale:
        _owned.write_file(module, paths[suffix], texts[suffix], mode=PERSIST_MODE, dir_mode=PERSIST_DIR_MODE)


def absent(module, host, result):
    params = module.params
    iface, ifb = params["interface"], ifb_name(params)
    commands = []
    if host.link(iface) is not None:
        live = host.device(iface, True)
        if live.qdiscs.get("root", ("",))[0] == "htb handle 1: default %x" % _tc.DEFAULT_MINOR:
            commands.append("qdisc del dev %s root" % iface)
        if any(k.startswith("ingress ") and k.endswith(" redirect %s" % ifb) for k in live.filters):
            commands.append("qdisc del dev %s ingress" % iface)
        before = live.lines()
    else:
        before = []
    ifb_link = host.link(ifb)
    drop_ifb = ifb_link is not None and (ifb_link.get("linkinfo") or {}).get("info_kind", "ifb") == "ifb"
    paths = [os.path.join(params["persist_dir"], iface + s) for s in (".tc", ".env", SIDECAR)]
    files = [p for p in paths if os.path.exists(p)]
    result.update(commands=commands, persisted=paths, changed=bool(commands or drop_ifb or files))
    if module._diff:
        result["diff"] = dict(before="\n".join(before) + ("\n" if before else ""), after="")
    if not result["changed"] or module.check_mode:
        return
    host.batch(commands)
    if drop_ifb:
        host.run([host.ip, "link", "del", ifb])
    for path in files:
        os.unlink(path)
    if os.path.isdir(params["persist_dir"]) and not os.listdir(params["persist_dir"]):
        os.rmdir(params["persist_dir"])


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    spec, errors = validate(module.params)
    if errors:
        module.fail_json(msg="; ".join(errors), errors=errors)
    host = Host(module)
    result = dict(changed=False, ifb_interface=ifb_name(module.params))
    if module.params["state"] == "present":
        present(module, host, spec, result)
    else:
        absent(module, host, result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
