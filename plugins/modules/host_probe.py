# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_probe
short_description: Read what a converge needs to know of a host in one call (facts, packages, accounts, files)
version_added: 0.3.0
description:
  - One round trip instead of one task per question. The node role asks it twice. In its preflight,
    for the few facts its checks need (instead of the C(setup) module), the egress (instead of
    M(higgs.vpn.egress_facts)), whether the kernel features
    a node needs exist, and the client addresses handed out before. Before its package transaction,
    for what its parts would otherwise find out one task at a time. It reports the missing packages (the
    transaction runs only when one is missing), the system accounts that already exist (a part
    creates its account only when it is missing or differs), the paths that exist, the contents
    of state files and the state of the files the parts write (which spares their file tasks a
    round trip when nothing differs).
  - It only reads; it never changes the host.
author:
  - Higgs.net node engineering (!UNKNOWN)
requirements:
  - C(dpkg-query) on the managed node when O(packages) is not empty.
  - C(systemctl) on the managed node when O(units) is not empty.
  - iproute2 with JSON output support (C(ip -j)) on the managed node when O(facts=true) or O(egress=true).
options:
  facts:
    description:
      - Return, as facts under the names and in the form the C(setup) module gives them, the
        distribution (C(distribution), C(distribution_version), C(distribution_major_version),
        C(distribution_release), read as C(setup) reads them), C(memtotal_mb), every address of the
        host (C(all_ipv4_addresses) without 127.0.0.0/8, C(all_ipv6_addresses) without C(::1)), and
        the interfaces with their addresses (C(interfaces); per interface, named with C(-) and C(.)
        as C(_), C(ipv4) and C(ipv4_secondaries) with address and netmask, C(ipv6) with address,
        prefix and scope), the part of the network facts the roles read.
      - About a second less than C(setup) with the distribution, hardware and network subsets.
    type: bool
    default: false
  egress:
    description:
      - Return the egress of each address family, as M(higgs.vpn.egress_facts) with its defaults and
        no family required detects it from the main table's default routes, as the fact
        C(higgs_egress) (V(null) for a family without a default route).
    type: bool
    default: false
  packages:
    description: Debian packages whose state is wanted; the ones not installed are in RV(missing_packages).
    type: list
    elements: str
    default: []
  modules:
    description:
      - Kernel modules whose state is wanted (RV(modules)), for example C(wireguard).
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
      - Text files whose contents are wanted (RV(files)), at most 4 MiB each.
      - Give no secret file here, as its contents are returned.
    type: list
    elements: path
    default: []
  stats:
    description:
      - Paths whose state is wanted (RV(stats)), for example every file the parts of a node write.
        The actions of M(higgs.vpn.files) and M(higgs.vpn.program) compare their files with it on
        the controller (their O(higgs.vpn.files#module:probed) option) and make no round trip for
        files that are as wanted.
      - Only a digest of a file is returned, never its contents. Give O(stats_key) when a secret file
        is among them.
    type: list
    elements: path
    default: []
  units:
    description:
      - systemd units whose state is wanted (RV(units)), read with one C(systemctl show), for example
        every unit the parts of a node run. The action of M(higgs.vpn.service_state) compares its
        units with it on the controller (its O(higgs.vpn.service_state#module:probed) option).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The unit, e.g. C(unbound.service).
        type: str
        required: true
      paths:
        description: Its files, as M(higgs.vpn.service_state) is given them (a running unit older than one is stale).
        type: list
        elements: path
        default: []
  stats_key:
    description:
      - With it, a file's digest in RV(stats) is an HMAC-SHA256 with this key instead of its SHA-256, so
        that the digest of a secret file, in a logged result, cannot be checked against guesses. The
        node role makes one per run. Never logged.
    type: str
extends_documentation_fragment:
  - higgs.vpn.no_diff
  - ansible.builtin.action_common_attributes
"""

EXAMPLES = r"""
- name: Read the facts the checks need, the egress, the kernel features and the client addresses handed out before
  higgs.vpn.host_probe:
    facts: true
    egress: true
    paths: [/proc/sys/net/ipv4/ip_forward, /dev/net/tun]
    files: [/etc/wireguard/wg0.clients.json]
  register: host

- name: Read which packages, accounts and state files the parts need
  higgs.vpn.host_probe:
    packages: [nftables, unbound]
    users: [higgs-relay]
    paths: [/etc/higgs-vpn/metrics/exporter-before.json]
    files: [/etc/higgs-vpn/relay/node-id]
    stats: [/etc/higgs-vpn/relay, /etc/higgs-vpn/relay/connector.json]
    units:
      - name: higgs-relay-connector.service
        paths: [/etc/higgs-vpn/relay/connector.json]
  register: probe
"""

RETURN = r"""
ansible_facts:
  description:
    - With O(facts=true), the facts named there.
    - With O(egress=true), C(higgs_egress) as M(higgs.vpn.egress_facts) returns it.
  returned: when O(facts=true) or O(egress=true)
  type: dict
  sample:
    distribution: Debian
    distribution_version: "12.11"
    distribution_major_version: "12"
    distribution_release: bookworm
    memtotal_mb: 1987
    all_ipv4_addresses: [192.0.2.10]
    all_ipv6_addresses: ["2001:db8::10", "fe80::1"]
    interfaces: [lo, eth0]
    eth0:
      device: eth0
      ipv4: {address: 192.0.2.10, netmask: 255.255.255.0}
      ipv4_secondaries: []
      ipv6:
        - {address: "2001:db8::10", prefix: "64", scope: global}
        - {address: "fe80::1", prefix: "64", scope: link}
missing_packages:
  description: The ones of O(packages) that are not installed (unknown to dpkg, removed, or half-installed).
  returned: always
  type: list
  elements: str
  sample: [python3-miniupnpc]
modules:
  description:
    - The state of each of O(modules) - V(loaded) (loaded or built in, C(/sys/module/<name>) exists),
      V(loadable) (C(modprobe --dry-run) finds it) or V(none).
  returned: always
  type: dict
  sample: {wireguard: loadable}
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
units:
  description:
    - Per unit of O(units), what M(higgs.vpn.service_state) would act on - C(enabled) (enabled, static
      or otherwise started at boot), C(active) (active, activating or reloading), C(need_reload) (its
      unit file changed on disk since systemd read it), C(stale) (the ones of C(paths) modified after
      an active unit started) and the C(paths) checked.
  returned: always
  type: dict
  sample:
    higgs-relay-connector.service:
      enabled: true
      active: true
      need_reload: false
      paths: [/etc/higgs-vpn/relay/connector.json]
      stale: []
stats:
  description:
    - The state of each of O(stats), V(null) when nothing is there (a last symbolic link is not
      followed). C(type) (V(file), V(directory), V(link) or V(other)), C(mode) (four octal digits),
      C(uid), C(gid), C(owner) and C(group) (names, V(null) when unknown); a file's C(sha256)
      (of its contents, an HMAC-SHA256 with O(stats_key); V(null) above 64 MiB), a link's C(src).
  returned: always
  type: dict
  sample:
    /etc/higgs-vpn/relay: {type: directory, mode: "0755", uid: 0, gid: 0, owner: root, group: root}
    /etc/higgs-vpn/relay/connector.json:
      type: file
      mode: "0644"
      uid: 0
      gid: 0
      owner: root
      group: root
      sha256: 9f2c4b7a1de0c3f5a8b6e4d2c1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2
"""

import ipaddress
import json
import os
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.facts.system.distribution import DistributionFactCollector

from ansible_collections.higgs.vpn.plugins.module_utils import _iproute as iproute
from ansible_collections.higgs.vpn.plugins.module_utils._egress import FAMILIES, gather
from ansible_collections.higgs.vpn.plugins.module_utils._probed import stat
from ansible_collections.higgs.vpn.plugins.module_utils._systemd import record, show

MAX_FILE = 4 << 20
MEMINFO = "/proc/meminfo"
SYS_MODULE = "/sys/module"
DISTRIBUTION_FACTS = ("distribution", "distribution_version", "distribution_major_version", "distribution_release")
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


def module_state(module, name):
    """loaded (or built in), loadable (modprobe finds it) or none."""
    if os.path.isdir(os.path.join(SYS_MODULE, name)):
        return "loaded"
    modprobe = module.get_bin_path("modprobe")
    if modprobe and module.run_command([modprobe, "--dry-run", "--quiet", "--", name])[0] == 0:
        return "loadable"
    return "none"


def account(name):
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return {"home": entry.pw_dir, "shell": entry.pw_shell}


def memtotal_mb(module):
    try:
        with open(MEMINFO, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError) as exc:
        module.fail_json(msg="cannot read MemTotal from %s: %s" % (MEMINFO, exc))
    module.fail_json(msg="%s has no MemTotal line" % MEMINFO)


def network_facts(links):
    """The network facts of setup's network subset that the roles read, from ``ip -j addr show``.

    ``all_ipv4_addresses`` (no 127.0.0.0/8), ``all_ipv6_addresses`` (no ::1), ``interfaces`` and,
    per interface (named as setup names it, - and . as _), ``ipv4`` (the first address) and
    ``ipv4_secondaries`` as address and netmask, ``ipv6`` as address, prefix and scope.
    """
    facts = {"all_ipv4_addresses": [], "all_ipv6_addresses": [], "interfaces": []}
    for link in links:
        name = link["ifname"]
        facts["interfaces"].append(name)
        v4, v6 = [], []
        for entry in link.get("addr_info", []):
            if entry.get("family") == "inet":
                netmask = str(ipaddress.IPv4Network("0.0.0.0/%d" % entry["prefixlen"]).netmask)
                v4.append({"address": entry["local"], "netmask": netmask})
            elif entry.get("family") == "inet6":
                v6.append({"address": entry["local"], "prefix": str(entry["prefixlen"]), "scope": entry["scope"]})
        facts["all_ipv4_addresses"] += [e["address"] for e in v4 if not e["address"].startswith("127.")]
        facts["all_ipv6_addresses"] += [e["address"] for e in v6 if e["address"] != "::1"]
        info = {"device": name}
        if v4:
            info.update(ipv4=v4[0], ipv4_secondaries=v4[1:])
        if v6:
            info["ipv6"] = v6
        facts[name.replace("-", "_").replace(".", "_")] = info
    return facts


def host_facts(module):
    distribution = DistributionFactCollector().collect(module=module)
    facts = {name: distribution.get(name) for name in DISTRIBUTION_FACTS}
    facts["memtotal_mb"] = memtotal_mb(module)
    rc, out, err = module.run_command([module.get_bin_path("ip", required=True), "-j", "addr", "show"])
    if rc != 0:
        module.fail_json(msg="ip addr show failed: %s" % err.strip(), rc=rc)
    try:
        facts.update(network_facts(json.loads(out)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        module.fail_json(msg="cannot read the output of ip -j addr show: %r" % exc)
    return facts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            facts=dict(type="bool", default=False),
            egress=dict(type="bool", default=False),
            packages=dict(type="list", elements="str", default=[]),
            modules=dict(type="list", elements="str", default=[]),
            users=dict(type="list", elements="str", default=[]),
            paths=dict(type="list", elements="path", default=[]),
            files=dict(type="list", elements="path", default=[]),
            stats=dict(type="list", elements="path", default=[]),
            stats_key=dict(type="str", no_log=True),
            units=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                paths=dict(type="list", elements="path", default=[]),
            )),
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
    result = dict(
        changed=False,
        missing_packages=missing,
        modules={name: module_state(module, name) for name in params["modules"]},
        users={name: found for name, found in accounts.items() if found is not None},
        paths=[path for path in params["paths"] if os.path.lexists(path)],
        files={path: read_small(module, path) for path in params["files"]},
        stats={},
        units={},
    )
    if params["units"]:
        states = show(module, module.get_bin_path("systemctl", required=True), [u["name"] for u in params["units"]])
        result["units"] = {u["name"]: record(u["paths"], state) for u, state in zip(params["units"], states)}
    for path in params["stats"]:
        try:
            result["stats"][path] = stat(path, params["stats_key"])
        except OSError as exc:
            module.fail_json(msg="cannot read %s: %s" % (path, exc))
    if params["facts"]:
        result["ansible_facts"] = host_facts(module)
    if params["egress"]:
        try:
            egress = gather(module, FAMILIES, required=set())
        except iproute.IpCommandError as exc:
            module.fail_json(msg=str(exc), cmd=exc.cmd, rc=exc.rc, stdout=exc.stdout, stderr=exc.stderr)
        except iproute.IpError as exc:
            module.fail_json(msg=str(exc))
        result.setdefault("ansible_facts", {})["higgs_egress"] = egress
    module.exit_json(**result)


if __name__ == "__main__":
    main()
