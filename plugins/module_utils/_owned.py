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
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

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
)
_COUNTER_RE = re.compile(r"counter packets \d+ bytes \d+")
_IPT_COUNTS_RE = re.compile(r"\[\d+:\d+\]")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,14}")


def name_error(name):
    """Why ``name`` cannot name an owned table / chain prefix, or None."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return "use 1-15 lower-case letters, digits or _, starting with a letter"
    return None


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


def _targets_owned(parts, mark):
    return "-j" in parts and parts.index("-j") + 1 < len(parts) and parts[parts.index("-j") + 1].startswith(mark)


def owned_lines(prefix, saved):
    """The ``iptables-save`` lines of the owned chains and the jumps into them."""
    mark = prefix + "_"
    keep = []
    for table in sorted(saved):
        for line in saved[table]:
            parts = line.split()
            if parts[0].startswith(":" + mark):
                keep.append("%s %s" % (table, _IPT_COUNTS_RE.sub("", line).strip()))
            elif parts[0] == "-A" and (parts[1].startswith(mark) or _targets_owned(parts, mark)):
                keep.append("%s %s" % (table, line))
    return "\n".join(keep) + ("\n" if keep else "")


def missing_jumps(prefix, saved):
    return {
        (t, b, s) for t, b, s in JUMPS
        if "-A %s -j %s_%s" % (b, prefix, s) not in saved.get(t, [])
    }


def removal_text(prefix, saved):
    """Restore text deleting the jumps into, and the owned chains themselves."""
    mark = prefix + "_"
    out = []
    for table in sorted(saved):
        owned = [line.split()[0][1:] for line in saved[table] if line.startswith(":" + mark)]
        if not owned:
            continue
        out.append("*%s" % table)
        for line in saved[table]:
            parts = line.split()
            if parts[0] == "-A" and not parts[1].startswith(mark) and _targets_owned(parts, mark):
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
        self.paths = {"nftables": os.path.join(persist_dir, name + ".nft")}

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
        self.paths = {"ipv%d" % v: os.path.join(persist_dir, "%s.ipv%d.rules" % (name, v)) for v in IPT_BINS}
        self.created_path = os.path.join(persist_dir, "%s.created-chains" % name)

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
            owned = owned_lines(self.name, self.saved(ver))
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
                text = removal_text(self.name, self.saved(ver))
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
