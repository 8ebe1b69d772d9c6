# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Firewall objects the collection owns: apply, persist, detect drift, remove.

Every module that programs the firewall (client forwarding, DNS interception,
connection limits) renders its whole ruleset and hands it to :func:`sync`:

* nftables: the ruleset is one ``table inet <name>`` in a file that creates,
  empties and refills the table, so ``nft -f`` applies it atomically;
* iptables: chains ``<name>_*`` in the filter and nat tables of iptables and
  ip6tables, reached by one jump each from INPUT, FORWARD, nat PREROUTING and
  nat POSTROUTING, applied with ``iptables-restore --noflush``. A jump is
  inserted first when missing and never moved otherwise.

Drift detection does not depend on how a given nft/iptables version prints
rules: after every apply the live listing of the owned objects is hashed and
stored in the first line of the persisted file. The firewall is in sync when
the persisted ruleset equals the rendered one and the live listing still
hashes to the stored value. The persisted files are what the boot units
``higgs-vpn-nft@<name>`` / ``higgs-vpn-iptables@<name>`` load.

The boot restore is this engine's too (:func:`boot_sync`): one template unit
per backend, the same for every owned table, and per table an instance drop-in
naming its persisted files and the tables it is restored after, enabled in
``sysinit.target.wants``. Removing a table removes its instance only; the
template goes with the last instance of it (the enabled instances are the list
of owned tables).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.higgs.vpn.plugins.module_utils._net import ifname_error

FINGERPRINT_PREFIX = "# higgs-vpn live-sha256: "
BACKENDS = ("nftables", "iptables")
# (table, builtin chain, owned chain suffix): the jumps into every owned set.
JUMPS = (
    ("filter", "INPUT", "input"),
    ("filter", "FORWARD", "forward"),
    ("nat", "PREROUTING", "prerouting"),
    ("nat", "POSTROUTING", "postrouting"),
)
IPT_BINS = {4: ("iptables", "iptables-save", "iptables-restore"),
            6: ("ip6tables", "ip6tables-save", "ip6tables-restore")}
# Options every owned-firewall module takes (documented in the
# higgs.vpn.owned_firewall doc fragment).
ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    backend=dict(type="str", choices=list(BACKENDS), default="nftables"),
    tunnel_interfaces=dict(type="list", elements="str", default=["wg0"]),
    persist_dir=dict(type="path", default="/etc/higgs-vpn/firewall"),
    restore_after=dict(type="list", elements="str", default=[]),
    remove_other_backend=dict(type="bool", default=False),
)
UNIT_DIR = "/etc/systemd/system"
WANTS = "sysinit.target.wants"
TEMPLATES = {"nftables": "higgs-vpn-nft@.service", "iptables": "higgs-vpn-iptables@.service"}
DROPIN = "higgs-vpn.conf"
_COUNTER_RE = re.compile(r"counter packets \d+ bytes \d+")
_IPT_COUNTS_RE = re.compile(r"\[\d+:\d+\]")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,14}")


def name_error(name):
    """Why ``name`` cannot name an owned table / chain prefix, or None."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return "use 1-15 lower-case letters, digits or _, starting with a letter"
    return None


def common_errors(params):
    """Problems with the options every owned-firewall module takes, each naming its option."""
    errors = []
    for option, names in (("table", [params["table"]]), ("restore_after", params["restore_after"])):
        for name in names:
            why = name_error(name)
            if why:
                errors.append("%s %r: %s" % (option, name, why))
    if params["table"] in params["restore_after"]:
        errors.append("restore_after: lists the table %r itself" % params["table"])
    if params["state"] == "absent":
        return errors
    if not params["tunnel_interfaces"]:
        errors.append("tunnel_interfaces: list at least one interface")
    for name in params["tunnel_interfaces"]:
        why = ifname_error(name)
        if why:
            errors.append("tunnel_interfaces: %r %s" % (name, why))
    return errors


# ---------------------------------------------------------------------------
# Pure helpers (rendering and parsing)
# ---------------------------------------------------------------------------


def iptables_restore(prefix, chains):
    """``iptables-restore --noflush`` text for owned chains, without jumps.

    ``chains`` maps a table (filter, nat) to {chain suffix: [rule args]}; the
    chains the jumps lead to are always declared, empty when not given.
    """
    out = []
    for table in ("filter", "nat"):
        given = dict(chains.get(table, {}))
        for jtable, _builtin, suffix in JUMPS:
            if jtable == table:
                given.setdefault(suffix, [])
        names = sorted(given)
        out.append("*%s" % table)
        out += [":%s_%s - [0:0]" % (prefix, s) for s in names]
        out += ["-F %s_%s" % (prefix, s) for s in names]
        for suffix in names:
            out += ["-A %s_%s %s" % (prefix, suffix, rule) for rule in given[suffix]]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def jump_line(prefix, builtin, suffix):
    return "-I %s 1 -j %s_%s" % (builtin, prefix, suffix)


def add_jumps(restore_text, prefix, jumps):
    """Insert the ``-I`` lines of ``jumps`` before each table's COMMIT."""
    out = []
    current = None
    for line in restore_text.splitlines():
        if line.startswith("*"):
            current = line[1:]
        if line == "COMMIT":
            out += [jump_line(prefix, b, s) for t, b, s in JUMPS if t == current and (t, b, s) in jumps]
        out.append(line)
    return "\n".join(out) + "\n"


def strip_jumps(text, prefix):
    marks = {jump_line(prefix, b, s) for _t, b, s in JUMPS}
    return "\n".join(line for line in text.splitlines() if line not in marks) + "\n"


def split_save(text):
    """``iptables-save`` output as {table: its lines}, comments dropped."""
    tables = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = []
        elif current and line and not line.startswith("#"):
            tables[current].append(line)
    return tables


def _is_owned(chain, prefix, others=()):
    """Whether ``chain`` is one of ``prefix``'s: not of an owned table named ``prefix_...`` in ``others``."""
    return chain.startswith(prefix + "_") and not any(chain.startswith(o + "_") for o in others)


def _target(parts):
    return parts[parts.index("-j") + 1] if "-j" in parts and parts.index("-j") + 1 < len(parts) else ""


def owned_lines(prefix, saved, others=()):
    """The ``iptables-save`` lines of the owned chains and the jumps into them.

    ``others``: the other owned tables, whose chains may start with ``prefix_``
    too (``higgs_vpn_dns_forward`` is not a chain of ``higgs_vpn``).
    """
    def mine(chain):
        return _is_owned(chain, prefix, others)

    keep = []
    for table in sorted(saved):
        for line in saved[table]:
            parts = line.split()
            if parts[0].startswith(":") and mine(parts[0][1:]):
                keep.append("%s %s" % (table, _IPT_COUNTS_RE.sub("", line).strip()))
            elif parts[0] == "-A" and (mine(parts[1]) or mine(_target(parts))):
                keep.append("%s %s" % (table, line))
    return "\n".join(keep) + ("\n" if keep else "")


def missing_jumps(prefix, saved):
    return {
        (t, b, s) for t, b, s in JUMPS
        if "-A %s -j %s_%s" % (b, prefix, s) not in saved.get(t, [])
    }


def removal_text(prefix, saved, others=()):
    """Restore text deleting the jumps into, and the owned chains themselves (not those of ``others``)."""
    def mine(chain):
        return _is_owned(chain, prefix, others)

    out = []
    for table in sorted(saved):
        owned = [line.split()[0][1:] for line in saved[table] if line.startswith(":") and mine(line.split()[0][1:])]
        if not owned:
            continue
        out.append("*%s" % table)
        for line in saved[table]:
            parts = line.split()
            if parts[0] == "-A" and not mine(parts[1]) and mine(_target(parts)):
                out.append("-D " + " ".join(parts[1:]))
        out += ["-F %s" % c for c in owned] + ["-X %s" % c for c in owned] + ["COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def normalize_nft(listing):
    """An ``nft list table`` listing without packet and byte counts."""
    return _COUNTER_RE.sub("counter", listing)


def fingerprint(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def persisted(body, live):
    """The persisted file: the live fingerprint line, then the ruleset."""
    return FINGERPRINT_PREFIX + fingerprint(live) + "\n" + body


def parse_persisted(text):
    """(fingerprint, body) of a persisted file, (None, None) when unreadable."""
    if not text or not text.startswith(FINGERPRINT_PREFIX):
        return None, None
    first, _sep, body = text.partition("\n")
    return first[len(FINGERPRINT_PREFIX):], body


# ---------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------


def run(module, argv, data=None, ok_rc=(0,)):
    rc, out, err = module.run_command(argv, data=data, binary_data=True,
                                      environ_update={"LANG": "C", "LC_ALL": "C"})
    if rc not in ok_rc:
        module.fail_json(msg="%s failed: %s" % (" ".join(argv[:4]), err.strip() or out.strip()),
                         rc=rc, stdout=out, stderr=err, cmd=argv)
    return rc, out, err


def read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def persist_paths(backend, name, persist_dir):
    """{ruleset key: persisted file} of the owned objects ``name`` of ``backend``."""
    if backend == "nftables":
        return {"nftables": os.path.join(persist_dir, name + ".nft")}
    return {"ipv%d" % v: os.path.join(persist_dir, "%s.ipv%d.rules" % (name, v)) for v in IPT_BINS}


def other_tables(name, persist_dir):
    """The other owned tables whose name starts with ``name_`` (persisted, or restored at boot)."""
    try:
        persisted_names = {entry.split(".")[0] for entry in os.listdir(persist_dir)}
    except FileNotFoundError:
        persisted_names = set()
    known = persisted_names.union(*(enabled_tables(b) for b in BACKENDS))
    return sorted(t for t in known if t.startswith(name + "_"))


def write_file(module, path, text, mode=0o600, dir_mode=0o700):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=dir_mode)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".higgs-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    module.atomic_move(tmp, path)


class Nftables:
    """One ``inet`` table; ``rendered`` is {"nftables": nft file text}."""

    def __init__(self, module, name, persist_dir, required):
        self.module = module
        self.name = name
        self.nft = module.get_bin_path("nft", required=required)
        self.paths = persist_paths("nftables", name, persist_dir)

    def live(self):
        if self.nft is None:
            return {}
        rc, out, err = run(self.module, [self.nft, "list", "table", "inet", self.name], ok_rc=(0, 1))
        if rc == 1:
            if "No such file or directory" in err:
                return {}
            self.module.fail_json(msg="nft list table failed: %s" % err.strip(), rc=rc, stderr=err)
        return {"nftables": normalize_nft(out)}

    def apply(self, rendered):
        run(self.module, [self.nft, "-f", "-"], data=rendered["nftables"])

    def remove(self):
        if self.live():
            run(self.module, [self.nft, "delete", "table", "inet", self.name])


class Iptables:
    """Owned chains in iptables and ip6tables; ``rendered`` is {"ipv4": text, "ipv6": text}.

    iptables-nft creates a table and a builtin chain (an nftables base chain)
    when a chain or jump is first added to it; the ones this caused are
    recorded (``fam table chain`` and ``fam table`` lines) and deleted again on
    removal once empty, so that the nftables view of the host is restored too.
    """

    def __init__(self, module, name, persist_dir, required):
        self.module = module
        self.name = name
        self.bins = {v: [module.get_bin_path(b, required=required) for b in bins]
                     for v, bins in IPT_BINS.items()}
        self.nft = module.get_bin_path("nft")
        self.paths = persist_paths("iptables", name, persist_dir)
        self.created_path = os.path.join(persist_dir, "%s.created-chains" % name)
        self.others = other_tables(name, persist_dir)

    def saved(self, ver):
        tables = {}
        for table in ("filter", "nat"):
            _rc, out, _err = run(self.module, [self.bins[ver][1], "-t", table])
            tables.update(split_save(out))
        return tables

    def live(self):
        if None in self.bins[4] + self.bins[6]:
            return {}
        result = {}
        for ver in IPT_BINS:
            owned = owned_lines(self.name, self.saved(ver), self.others)
            if owned:
                result["ipv%d" % ver] = owned
        return result

    def created(self, size):
        """Recorded base chains (``size`` 3) or tables (``size`` 2) iptables-nft made for us."""
        text = read_file(self.created_path) or ""
        return sorted({tuple(line.split()) for line in text.splitlines() if len(line.split()) == size})

    def _nft_exists(self, ver, *what):
        family = "ip" if ver == 4 else "ip6"
        kind = "chain" if len(what) == 2 else "table"
        rc, _out, _err = run(self.module, [self.nft, "list", kind, family, *what], ok_rc=(0, 1))
        return rc == 0

    def apply(self, rendered):
        created = set(self.created(3)) | set(self.created(2))
        for ver in IPT_BINS:
            missing = missing_jumps(self.name, self.saved(ver))
            if self.nft:
                created |= {("ipv%d" % ver, t) for t in ("filter", "nat") if not self._nft_exists(ver, t)}
                created |= {("ipv%d" % ver, t, b) for t, b, _s in missing if not self._nft_exists(ver, t, b)}
            text = add_jumps(strip_jumps(rendered["ipv%d" % ver], self.name), self.name, missing)
            run(self.module, [self.bins[ver][2], "-w", "--noflush"], data=text)
        if created:
            write_file(self.module, self.created_path, "".join(" ".join(c) + "\n" for c in sorted(created)))

    def remove(self):
        if None not in self.bins[4] + self.bins[6]:
            for ver in IPT_BINS:
                text = removal_text(self.name, self.saved(ver), self.others)
                if text:
                    run(self.module, [self.bins[ver][2], "-w", "--noflush"], data=text)
        for fam, table, chain in self.created(3):
            binary = self.bins[int(fam[-1])][0]
            _rc, rules, _err = run(self.module, [binary, "-w", "-t", table, "-S", chain])
            if all(line.startswith("-P ") for line in rules.splitlines()):
                run(self.module, [binary, "-w", "-t", table, "-X", chain])
        for fam, table in self.created(2) if self.nft else ():
            family = "ip" if fam == "ipv4" else "ip6"
            rc, listing, _err = run(self.module, [self.nft, "list", "table", family, table], ok_rc=(0, 1))
            if rc == 0 and "\tchain " not in listing:
                run(self.module, [self.nft, "delete", "table", family, table])
        if os.path.exists(self.created_path):
            os.unlink(self.created_path)


def for_jumps(rendered_by_family, name):
    """Persisted iptables bodies carry every jump: the boot unit deletes them first."""
    return {key: add_jumps(text, name, set(JUMPS)) for key, text in rendered_by_family.items()}


# ---------------------------------------------------------------------------
# Boot restore
# ---------------------------------------------------------------------------

_TEMPLATE = """\
# Managed by higgs.vpn (module_utils/_owned.py), shared by every owned firewall
# table of the %(backend)s backend: restores the table %%i before any network
# interface, so that forwarding never runs without its firewall. The files it
# loads and its order are in the instance's drop-in %(dropin)s.
# Removed with the last owned table.
[Unit]
Description=higgs.vpn owned firewall %%i (%(backend)s)
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
%(pre)s
[Install]
WantedBy=sysinit.target
"""


def instance(backend, name):
    return TEMPLATES[backend].replace("@", "@" + name)


def template_text(backend):
    """The template unit of ``backend``: the same for every table and persist directory."""
    pre = ""
    if backend == "iptables":
        # the jumps are deleted first, so that a restart never duplicates them
        pre = "".join(
            "ExecStartPre=-/usr/sbin/%s -w%s -D %s -j %%i_%s\n"
            % (binary, "" if table == "filter" else " -t " + table, builtin, suffix)
            for binary in ("iptables", "ip6tables") for table, builtin, suffix in JUMPS)
    return _TEMPLATE % dict(backend=backend, dropin=DROPIN, pre=pre)


def dropin_text(backend, paths, after):
    """The instance drop-in: the persisted files to load, and the tables restored before."""
    lines = ["# Managed by higgs.vpn (module_utils/_owned.py).", "[Unit]",
             "ConditionPathExists=%s" % sorted(paths.values())[0]]
    if after:
        # iptables jumps are inserted first: a table restored later is matched earlier
        lines.append("After=%s" % " ".join(instance(b, t) for t in after for b in BACKENDS))
    lines += ["", "[Service]"]
    if backend == "nftables":
        lines.append("ExecStart=/usr/sbin/nft -f %s" % paths["nftables"])
    else:
        lines += ["ExecStart=/usr/sbin/%s -w --noflush %s" % (IPT_BINS[v][2], paths["ipv%d" % v]) for v in IPT_BINS]
    return "\n".join(lines) + "\n"


def boot_paths(backend, name):
    """(template, drop-in, wants link) paths of the boot restore of table ``name``."""
    unit = instance(backend, name)
    return (os.path.join(UNIT_DIR, TEMPLATES[backend]), os.path.join(UNIT_DIR, unit + ".d", DROPIN),
            os.path.join(UNIT_DIR, WANTS, unit))


def enabled_tables(backend):
    """The owned tables whose boot restore of ``backend`` is enabled."""
    head, _at, tail = TEMPLATES[backend].partition("@")
    try:
        entries = os.listdir(os.path.join(UNIT_DIR, WANTS))
    except FileNotFoundError:
        return []
    return sorted(e[len(head) + 1:-len(tail)] for e in entries
                  if e.startswith(head + "@") and e.endswith(tail) and e != TEMPLATES[backend])


def _systemctl(module, *args):
    """Run systemctl when systemd runs on the host (not in a chroot or an image build)."""
    systemctl = module.get_bin_path("systemctl")
    if systemctl and os.path.isdir("/run/systemd/system"):
        module.run_command([systemctl, *args])


def boot_sync(module, backend, name, paths, after, state):
    """Enable (or remove) the boot restore of table ``name``; True when anything changed."""
    template, dropin, link = boot_paths(backend, name)
    if state == "absent":
        others = [t for t in enabled_tables(backend) if t != name]
        stale = [p for p in (dropin, link) if os.path.lexists(p)]
        if not others and os.path.exists(template):
            stale.append(template)
        if stale and not module.check_mode:
            if os.path.lexists(link):
                _systemctl(module, "stop", os.path.basename(link))
            for path in stale:
                os.unlink(path)
            if os.path.isdir(os.path.dirname(dropin)) and not os.listdir(os.path.dirname(dropin)):
                os.rmdir(os.path.dirname(dropin))
            _systemctl(module, "daemon-reload")
        return bool(stale)
    texts = {template: template_text(backend), dropin: dropin_text(backend, paths, after)}
    stale = [p for p, text in texts.items() if read_file(p) != text]
    relink = not os.path.islink(link) or os.readlink(link) != template
    if module.check_mode:
        return bool(stale) or relink
    for path in stale:
        write_file(module, path, texts[path], mode=0o644, dir_mode=0o755)
    if relink:
        if os.path.lexists(link):
            os.unlink(link)
        if not os.path.isdir(os.path.dirname(link)):
            os.makedirs(os.path.dirname(link), mode=0o755)
        os.symlink(template, link)
    if stale:
        _systemctl(module, "daemon-reload")
    return bool(stale) or relink


def run_module(argument_spec, validate, render, what):
    """The whole run of an owned-firewall module: validate, render, sync, boot restore.

    ``validate(params)`` lists the problems, ``render(params)`` returns the
    ruleset per persisted file; ``what`` names the policy in the error message.
    Returns (module, result) for the module to add its own fields and exit.
    """
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    errors = common_errors(params) + validate(params)
    if errors:
        module.fail_json(msg="invalid %s: %s" % (what, "; ".join(errors)), errors=errors)
    rendered = render(params) if params["state"] == "present" else None
    removed = None
    if params["remove_other_backend"] and params["state"] == "present":
        # first, as a task with state=absent and the other backend would: a switch of backend in one call
        other = next(b for b in BACKENDS if b != params["backend"])
        removed = converge(module, other, params["table"], params["persist_dir"], None, [], "absent")
    result = converge(module, params["backend"], params["table"], params["persist_dir"], rendered,
                      params["restore_after"], params["state"])
    if removed is not None:
        result["other_backend_removed"] = removed["changed"]
        result["changed"] = result["changed"] or removed["changed"]
        if module._diff and removed["changed"]:
            result["diff"] = [removed["diff"], result["diff"]]
    if rendered is not None:
        result["ruleset"] = rendered
    return module, result


def converge(module, backend, name, persist_dir, rendered, after, state):
    """The owned objects ``name`` of ``backend`` and their boot restore (:func:`sync`, :func:`boot_sync`)."""
    result = sync(module, backend, name, persist_dir, rendered, state)
    if boot_sync(module, backend, name, persist_paths(backend, name, persist_dir), after, state):
        result["changed"] = True
    return result


def sync(module, backend, name, persist_dir, rendered=None, state="present"):
    """Bring the owned objects ``name`` of ``backend`` to ``rendered`` (or remove them).

    Returns the result dict (changed, diff, persisted); honours check mode.
    """
    cls = Nftables if backend == "nftables" else Iptables
    owner = cls(module, name, persist_dir, required=state == "present")
    live = owner.live()
    stored = {key: read_file(path) for key, path in owner.paths.items()}
    result = dict(changed=False, persisted=sorted(owner.paths.values()))
    if state == "absent":
        leftovers = bool(live) or any(v is not None for v in stored.values()) \
            or (backend == "iptables" and os.path.exists(owner.created_path))
        result["changed"] = leftovers
        if module._diff:
            result["diff"] = dict(before="".join(live.values()), after="")
        if leftovers and not module.check_mode:
            owner.remove()
            for path in owner.paths.values():
                if os.path.exists(path):
                    os.unlink(path)
            if os.path.isdir(persist_dir) and not os.listdir(persist_dir):
                os.rmdir(persist_dir)
        return result
    in_sync = all(
        parse_persisted(stored[key]) == (fingerprint(live.get(key, "")), rendered[key])
        for key in rendered
    )
    result["changed"] = not in_sync
    if module._diff:
        result["diff"] = dict(before="".join(live.values()), after="".join(rendered.values()))
    if not in_sync and not module.check_mode:
        owner.apply(rendered)
        after = owner.live()
        for key, path in owner.paths.items():
            write_file(module, path, persisted(rendered[key], after.get(key, "")))
    return result
