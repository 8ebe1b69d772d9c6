# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Traffic control (``tc``) for the tunnel: rates, the class tree, the diff.

The shaping of one tunnel interface is a set of objects on two devices: the
tunnel itself (download: traffic towards the clients leaves through it) and an
``ifb`` device that the tunnel's ingress is redirected to (upload). On each:

* root ``htb`` qdisc ``1:`` (default class ``1:2``), class ``1:1`` holding the
  node-wide cap, ``1:2`` for traffic of no listed client, ``1:3`` for
  prioritised interactive traffic when asked for;
* clients in groups of at most ``GROUP_SIZE``: client number ``m`` (from 0x10,
  below 0x8000, kept across runs) belongs to group ``g = (m - 0x10) // 250``,
  so adding a client never moves another. Group ``g`` is class ``1:<G>``
  (``G = 0x8000 + g``) under ``1:1`` holding a child ``htb`` qdisc ``<G>:``,
  whose class ``<G>:1`` (the cap: a class at the top of a qdisc cannot borrow)
  holds the client's class ``<G>:<m>`` (ceil: the client's rate) with a leaf
  qdisc ``<m>:``. The kernel walks every class of a qdisc for each class
  added to it: groups keep that walk short (what still grows with every
  class is the kernel's: its list of all blocks for indirect offload and the
  16 buckets of a device's qdisc hash);
* ``u32`` filters that find a client's class in constant time, whatever the
  number of clients: on ``1:`` a filter hashes the second-to-last byte of the
  address into table ``0x10`` (IPv4) / ``0x11`` (IPv6), whose buckets link to
  one table per value of that byte (``0x100 + b`` / ``0x200 + b``) hashed on
  the last byte, whose buckets hold the exact-match entries leading to the
  group class; on each group qdisc, one table (``0x10`` / ``0x11``) hashed
  on the last byte holds the exact-match entries leading to the client's
  class. Client networks that are not host addresses are matched one by one
  after those lookups.

Every object is reduced to a canonical identity string, for the live state
(``tc -j`` where ``tc`` can print JSON; ``htb`` classes only print text) and
for the desired state alike: the difference of the two sets is the batch.
Nothing here runs a command: the module does, and feeds the output in.
"""

from __future__ import annotations

import ipaddress
import json
import re

UNITS = {"bit": 1, "kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9, "tbit": 10 ** 12}
# spaces only (no tab, newline or other control character), whole string
_RATE_RE = re.compile(r" *(\d+(?:\.\d+)?) *([a-zA-Z]+) *")
MAX_RATE = 10 ** 13

ROOT = "1:"
NODE_CLASS = "1:1"
DEFAULT_MINOR = 2
INTERACTIVE_MINOR = 3
FIRST_CLIENT_MINOR = 0x10
# client numbers stay below the group majors (leaf qdisc handles are <m>:)
LAST_CLIENT_MINOR = 0x7FFF
GROUP_BASE = 0x8000
GROUP_SIZE = 250
GROUP_TOP_MINOR = 1
QUANTUM = 1514
# A class's bucket holds this long at its rate (never less than two full
# packets). tc's default is one packet, since the kernel's timers count in
# nanoseconds: a dequeue that comes late loses the tokens of the time it was
# late, and fast classes fall short of their rate (lab, veth: a 5gbit class
# passed 4.53 Gbit/s with tc's default, 4.78 with 10 ms).
BURST_MS = 10
MAX_BURST = 10 ** 9  # bytes: tc reads a burst into 32 bits
PREF = {("interactive", 4): 1, ("interactive", 6): 2, ("clients", 4): 10, ("clients", 6): 11}
PROTO = {4: "ip", 6: "ipv6"}
# byte offset of the last 32 bits of the (source, destination) address
ADDR_TAIL = {4: {"src": 12, "dst": 16}, 6: {"src": 20, "dst": 36}}
# the two hash levels on 1: table ids (level 1, level 2 base); a group qdisc has the first only
TABLES = {4: (0x10, 0x100), 6: (0x11, 0x200)}
OWN_TABLE_LIMIT = 0x800  # u32 numbers the root table of each priority from 0x800
LEAF_QDISCS = {
    "fq_codel": ["fq_codel", "limit", "1000", "flows", "64"],
    "pfifo": ["pfifo", "limit", "1000"],
}


# ---------------------------------------------------------------------------
# Rates
# ---------------------------------------------------------------------------


def parse_rate(value):
    """Bits per second of a rate written like ``100mbit``, ``20Mbit``, ``500kbit``.

    Raises ValueError with the reason; the caller names the variable.
    """
    text = str(value)
    match = _RATE_RE.fullmatch(text)
    if not match or match.group(2).lower() not in UNITS:
        hint = ""
        if match and match.group(2).lower().endswith(("bps", "b/s", "bit/s")):
            hint = " (tc reads 'bps' as bytes per second: write bits, e.g. 20mbit)"
        raise ValueError("%r is not a rate%s; write a number and one of bit, kbit, mbit, gbit, tbit "
                         "(any case), e.g. 100mbit, 20Mbit, 1gbit, 500kbit" % (text, hint))
    bits = round(float(match.group(1)) * UNITS[match.group(2).lower()])
    if bits < 8000:
        raise ValueError("%r is below the smallest rate, 8kbit" % text)
    if bits > MAX_RATE:
        raise ValueError("%r is above the largest rate, 10tbit" % text)
    return bits


def rate_text(bits):
    """The rate as ``tc`` prints it, after storing it in bytes per second."""
    rate = (int(bits) // 8) * 8
    units = ["", "K", "M", "G", "T"]
    i = 0
    while i < len(units) - 1:
        if rate < 1000:
            break
        if rate % 1000 and rate < 1000 * 1000:
            break
        rate //= 1000
        i += 1
    return "%d%sbit" % (rate, units[i])


def burst_bytes(bits):
    """The bucket of a class of ``bits`` per second: whole milliseconds of it, bytes."""
    per_ms = bits / 8000
    ms = max(BURST_MS, -(-2 * QUANTUM // max(1, int(per_ms))))
    return min(MAX_BURST, int(ms * per_ms))


def burst_text(size, bits):
    """A bucket as milliseconds at ``bits`` per second (tc prints it rounded to its ticks)."""
    return "%dms" % round(size * 8000 / bits)


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([KMG]?)b")


def parse_size(text):
    """Bytes of a size as tc prints it (``1599b``, ``25Kb``, ``1.5Mb``; ``/<cell>`` ignored)."""
    match = _SIZE_RE.match(text or "")
    if not match:
        return 0
    return round(float(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " "))


# ---------------------------------------------------------------------------
# Desired state
# ---------------------------------------------------------------------------


def hexid(number):
    return "%x" % number


def _keys_for(network, offset_tail):
    """u32 (value, mask, offset) keys matching ``network`` at the address whose tail is at ``offset_tail``."""
    width = network.max_prefixlen // 32
    start = offset_tail - 4 * (width - 1)
    value = int(network.network_address)
    mask = int(network.netmask)
    keys = []
    for word in range(width):
        shift = 32 * (width - 1 - word)
        wmask = (mask >> shift) & 0xFFFFFFFF
        if wmask:
            keys.append(((value >> shift) & wmask, wmask, start + 4 * word))
    return keys or [(0, 0, 0)]


def _match(keys):
    return " ".join("%x/%x@%d" % (v & m, m, o) for v, m, o in sorted(keys, key=lambda k: (k[2], k[1], k[0])))


def _match_args(keys):
    out = []
    for v, m, o in sorted(keys, key=lambda k: (k[2], k[1], k[0])):
        out += ["match", "u32", "0x%08x" % (v & m), "0x%08x" % m, "at", str(o)]
    return out


class Filter:
    """One u32 filter: its identity (what it does) and how to add it."""

    def __init__(self, pref, ver, where, keys=None, flowid=None, link=None, hashkey=None,
                 divisor=None, redirect=None, qdisc=ROOT):
        self.pref, self.ver, self.where, self.qdisc = pref, ver, where, qdisc
        self.keys, self.flowid, self.link = keys or [], flowid, link
        self.hashkey, self.divisor, self.redirect = hashkey, divisor, redirect
        self._identity = None
        self._args = {}  # (dev, parent) -> add args: the diff and the full batch share them

    @property
    def is_table(self):
        return self.divisor is not None

    def identity(self):
        if self._identity is None:
            self._identity = self._describe()
        return self._identity

    def _describe(self):
        head = "pref %d %s" % (self.pref, PROTO.get(self.ver, "all"))
        if self.qdisc != ROOT:
            head = "qdisc %s %s" % (self.qdisc, head)
        if self.is_table:
            return "%s table %s: divisor %d" % (head, hexid(self.where), self.divisor)
        text = "%s in %s match %s" % (head, self.where, _match(self.keys))
        if self.hashkey:
            text += " hash %x@%d" % self.hashkey
        if self.link is not None:
            text += " link %s:" % hexid(self.link)
        if self.flowid:
            text += " flowid %s" % self.flowid
        if self.redirect:
            text += " redirect %s" % self.redirect
        return text

    def add_args(self, dev, parent):
        args = self._args.get((dev, parent))
        if args is None:
            args = self._args[(dev, parent)] = self._add_args(dev, parent)
        return args

    def _add_args(self, dev, parent):
        args = ["filter", "add", "dev", dev, "parent", parent, "prio", str(self.pref),
                "protocol", PROTO.get(self.ver, "all")]
        if self.is_table:
            return [*args, "handle", hexid(self.where) + ":", "u32", "divisor", str(self.divisor)]
        args.append("u32")
        if self.where != "root":
            table, bucket = self.where.split(":")
            args += ["ht", "%s:%s:" % (table, bucket)]
        args += _match_args(self.keys)
        if self.hashkey:
            args += ["hashkey", "mask", "0x%08x" % self.hashkey[0], "at", str(self.hashkey[1])]
        if self.link is not None:
            args += ["link", hexid(self.link) + ":"]
        if self.flowid:
            args += ["flowid", self.flowid]
        if self.redirect:
            args += ["action", "mirred", "egress", "redirect", "dev", self.redirect]
        return args

    def depth(self):
        """Add order: tables, then entries, then links into deeper tables, root last."""
        if self.is_table:
            return 0
        if self.where == "root":
            return 3
        if self.link is not None:
            return 2
        return 1


def client_filters(ver, side, entries):
    """The u32 filters on ``1:`` classifying ``entries`` [(network, classid)] of one family.

    ``side`` is ``dst`` (download, on the tunnel) or ``src`` (upload, on the ifb);
    the classes are the groups' (``1:<G>``).
    """
    pref = PREF[("clients", ver)]
    tail = ADDR_TAIL[ver][side]
    level1, level2 = TABLES[ver]
    hosts = [(n, c) for n, c in entries if n.prefixlen == n.max_prefixlen]
    nets = [(n, c) for n, c in entries if n.prefixlen != n.max_prefixlen]
    # the first level exists even without clients of the family, so that it
    # never has to be deleted (see diff)
    out = [Filter(pref, ver, level1, divisor=256),
           Filter(pref, ver, "root", keys=[(0, 0, 0)], hashkey=(0x0000FF00, tail), link=level1)]
    if hosts:
        for byte in sorted({(int(n.network_address) >> 8) & 0xFF for n, _c in hosts}):
            out.append(Filter(pref, ver, level2 + byte, divisor=256))
            out.append(Filter(pref, ver, "%s:%s" % (hexid(level1), hexid(byte)), keys=[(0, 0, 0)],
                              hashkey=(0x000000FF, tail), link=level2 + byte))
        for net, classid in hosts:
            addr = int(net.network_address)
            where = "%s:%s" % (hexid(level2 + ((addr >> 8) & 0xFF)), hexid(addr & 0xFF))
            out.append(Filter(pref, ver, where, keys=_keys_for(net, tail), flowid=classid))
    for net, classid in nets:
        out.append(Filter(pref, ver, "root", keys=_keys_for(net, tail), flowid=classid))
    return out


def group_filters(ver, side, entries, qdisc):
    """The u32 filters on the group qdisc ``qdisc`` classifying its ``entries`` [(network, classid)].

    At most ``GROUP_SIZE`` clients: one table hashed on the last byte of the address.
    """
    pref = PREF[("clients", ver)]
    tail = ADDR_TAIL[ver][side]
    table = TABLES[ver][0]
    out = [Filter(pref, ver, table, divisor=256, qdisc=qdisc),
           Filter(pref, ver, "root", keys=[(0, 0, 0)], hashkey=(0x000000FF, tail), link=table, qdisc=qdisc)]
    for net, classid in entries:
        keys = _keys_for(net, tail)
        if net.prefixlen == net.max_prefixlen:
            where = "%s:%s" % (hexid(table), hexid(int(net.network_address) & 0xFF))
        else:
            where = "root"
        out.append(Filter(pref, ver, where, keys=keys, flowid=classid, qdisc=qdisc))
    return out


def group_major(minor):
    """Major number of the group (and its qdisc) of client number ``minor``."""
    return GROUP_BASE + (minor - FIRST_CLIENT_MINOR) // GROUP_SIZE


def client_classid(minor):
    return "%x:%x" % (group_major(minor), minor)


def interactive_filters(side):
    """Small packets and DNS go to the interactive class, before any client lookup."""
    flowid = "1:%x" % INTERACTIVE_MINOR
    port = (0x00350000, 0xFFFF0000) if side == "dst" else (0x00000035, 0x0000FFFF)
    v4, v6 = PREF[("interactive", 4)], PREF[("interactive", 6)]
    return [
        # IPv4 total length below 128 bytes
        Filter(v4, 4, "root", keys=[(0, 0x0000FF80, 0)], flowid=flowid),
        # IPv4 without options, UDP, DNS port (source towards clients, destination from them)
        Filter(v4, 4, "root", keys=[(0x05000000, 0x0F000000, 0), (0x00110000, 0x00FF0000, 8),
                                    (port[0], port[1], 20)], flowid=flowid),
        # IPv6 payload below 128 bytes
        Filter(v6, 6, "root", keys=[(0, 0xFF800000, 4)], flowid=flowid),
        Filter(v6, 6, "root", keys=[(0x00001100, 0x0000FF00, 4), (port[0], port[1], 40)], flowid=flowid),
    ]


class Device:
    """Desired or live objects of one device: qdiscs, classes, filters by identity."""

    def __init__(self, name):
        self.name = name
        self.qdiscs = {}   # key -> (identity, add args)
        self.classes = {}  # classid -> (identity, add args)
        self.filters = {}  # identity -> Filter (desired) or delete args (live)

    def lines(self):
        out = ["qdisc %s %s" % (k, v[0]) for k, v in sorted(self.qdiscs.items())]
        out += ["class %s %s" % (k, v[0]) for k, v in sorted(self.classes.items(), key=lambda i: _classkey(i[0]))]
        out += ["filter %s" % f for f in sorted(self.filters)]
        return ["%s: %s" % (self.name, line) for line in out]


def _classkey(classid):
    major, minor = classid.split(":")
    return int(major or "0", 16), int(minor or "0", 16)


def _minor(classid):
    return _classkey(classid)[1]


def _is_group_class(classid):
    return classid.startswith("1:") and _minor(classid) >= GROUP_BASE


def plan_device(spec, direction):
    """The desired Device of one direction of a validated ``spec``: ``down`` (the tunnel) or ``up`` (the ifb).

    ``spec``: interface, ifb, cap_down/cap_up (bits or None), interactive_rate
    (bits or None), leaf_qdisc, clients [{name, minor, networks, down, up}]
    with networks as ipaddress objects and down/up bits or None.
    """
    if direction == "down":
        dev, side = spec["interface"], "dst"
    else:
        dev, side = spec["ifb"], "src"
    cap = spec["cap_" + direction] or MAX_RATE
    device = Device(dev)
    device.qdiscs["root"] = ("htb handle 1: default %x" % DEFAULT_MINOR,
                             ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                              "default", hexid(DEFAULT_MINOR)])
    interactive = spec["interactive_rate"]
    if interactive:
        interactive = min(interactive, cap // 2)
    slots = 16
    while slots < len(spec["clients"]) + 1:
        slots *= 2
    guaranteed = max(8000, ((cap - (interactive or 0)) // slots) // 8 * 8)

    def add_class(classid, parent, rate, ceil, prio=None, leaf=None, quantum=QUANTUM):
        burst, cburst = burst_bytes(rate), burst_bytes(ceil)
        args = ["class", "add", "dev", dev, "parent", parent, "classid", classid, "htb",
                "rate", "%dbit" % rate, "ceil", "%dbit" % ceil,
                "burst", "%db" % burst, "cburst", "%db" % cburst]
        ident = "parent %s rate %s ceil %s burst %s cburst %s" % (
            parent, rate_text(rate), rate_text(ceil), burst_text(burst, rate), burst_text(cburst, ceil))
        # an explicit quantum everywhere: equal shares of what the cap leaves
        # over, and no warnings about quanta derived from large rates
        args += ["quantum", str(quantum)]
        if prio is not None:
            args += ["prio", str(prio)]
            ident += " prio %d quantum %d" % (prio, quantum)
        device.classes[classid] = (ident, args)
        if leaf is not None and spec["leaf_qdisc"] in LEAF_QDISCS:
            qdisc = LEAF_QDISCS[spec["leaf_qdisc"]]
            device.qdiscs["parent " + classid] = (
                "%s handle %x:" % (qdisc[0], leaf),
                ["qdisc", "add", "dev", dev, "parent", classid, "handle", "%x:" % leaf, *qdisc])

    add_class(NODE_CLASS, ROOT, cap, cap)
    add_class("1:%x" % DEFAULT_MINOR, NODE_CLASS, guaranteed, cap, prio=1, leaf=DEFAULT_MINOR)
    if interactive:
        add_class("1:%x" % INTERACTIVE_MINOR, NODE_CLASS, interactive, interactive, prio=0,
                  leaf=INTERACTIVE_MINOR)
        for flt in interactive_filters(side):
            device.filters[flt.identity()] = flt
    groups = {}
    for client in spec["clients"]:
        groups.setdefault(group_major(client["minor"]), []).append(client)
    entries = {4: [], 6: []}
    for major, members in sorted(groups.items()):
        group, qdisc, top = "1:%x" % major, "%x:" % major, "%x:%x" % (major, GROUP_TOP_MINOR)
        # a class at the top of an htb qdisc cannot borrow: the clients borrow
        # from the group's top class, up to the cap the group class enforces
        add_class(top, qdisc, cap, cap)
        rates = []
        inner = {4: [], 6: []}
        for client in members:
            ceil = min(client[direction] or cap, cap)
            rates.append(min(guaranteed, ceil))
            classid = client_classid(client["minor"])
            add_class(classid, top, rates[-1], ceil, prio=1, leaf=client["minor"])
            for net in client["networks"]:
                entries[net.version].append((net, group))
                inner[net.version].append((net, classid))
        # a group is guaranteed its members' rates and borrows in proportion to their number
        add_class(group, NODE_CLASS, min(sum(rates), cap), cap, prio=1,
                  quantum=QUANTUM * len(members))
        device.qdiscs["parent " + group] = ("htb handle %s default 0" % qdisc,
                                            ["qdisc", "add", "dev", dev, "parent", group, "handle", qdisc, "htb"])
        for ver in (4, 6):
            ordered = sorted(inner[ver], key=lambda e: (int(e[0].network_address), e[0].prefixlen))
            for flt in group_filters(ver, side, ordered, qdisc):
                device.filters[flt.identity()] = flt
    for ver in (4, 6):
        ordered = sorted(entries[ver], key=lambda e: (int(e[0].network_address), e[0].prefixlen))
        for flt in client_filters(ver, side, ordered):
            device.filters[flt.identity()] = flt
    if direction == "down":
        # the redirect of the tunnel's ingress to the ifb device
        device.qdiscs["ingress"] = ("ingress handle ffff:", ["qdisc", "add", "dev", dev, "ingress"])
        redirect = Filter(1, None, "root", keys=[(0, 0, 0)], redirect=spec["ifb"])
        device.filters["ingress " + redirect.identity()] = redirect
    return device


# ---------------------------------------------------------------------------
# Live state
# ---------------------------------------------------------------------------


def _pairs(pairs):
    """JSON object hook keeping repeated keys (tc prints one ``match`` per key)."""
    out = {}
    for key, value in pairs:
        if key in out:
            if not isinstance(out[key], list) or key != "match":
                out[key] = [out[key]]
            out[key].append(value)
        elif key == "match":
            out[key] = [value]
        else:
            out[key] = value
    return out


def parse_qdiscs(text):
    """{key: identity} of ``tc -j qdisc show dev X`` (key root, ingress, parent <classid>)."""
    out = {}
    for q in json.loads(text or "[]"):
        kind, handle = q.get("kind"), q.get("handle", "")
        if q.get("root"):
            key = "root"
        elif kind in ("ingress", "clsact"):
            key = "ingress"
        elif "parent" in q:
            key = "parent " + q["parent"]
        else:
            continue
        if kind == "htb":
            default = int(str((q.get("options") or {}).get("default", "0")), 16)
            ident = "htb handle %s default %x" % (handle, default)
        else:
            ident = "%s handle %s" % (kind, handle)
        out[key] = ident
    return out


_CLASS_RE = re.compile(r"^class htb (\S+) (?:root|parent (\S+))(.*)$")
_BURST_RE = re.compile(r"(?<![a-z])burst (\d+(?:\.\d+)?[KMG]?b)")
_CBURST_RE = re.compile(r"\bcburst (\d+(?:\.\d+)?[KMG]?b)")


def parse_classes(text):
    """{classid: identity} of ``tc -d class show dev X`` (htb prints no JSON).

    The parent of a class at the top of its qdisc (printed ``root``) is the qdisc: ``<major>:``.
    """
    out = {}
    for line in text.splitlines():
        match = _CLASS_RE.match(line.strip())
        if not match:
            continue
        classid, rest = match.group(1), match.group(3).split()
        parent = match.group(2) or classid.split(":")[0] + ":"
        fields = dict(zip(rest[::2], rest[1::2]))
        ident = "parent %s rate %s ceil %s" % (parent, fields.get("rate"), fields.get("ceil"))
        # (iproute2 6.14 prints "burst 7812b/1mpu 0b": no space before mpu)
        burst, cburst = _BURST_RE.search(match.group(3)), _CBURST_RE.search(match.group(3))
        try:
            ident += " burst %s cburst %s" % (burst_text(parse_size(burst.group(1)), parse_rate(fields["rate"])),
                                              burst_text(parse_size(cburst.group(1)), parse_rate(fields["ceil"])))
        except (AttributeError, KeyError, ValueError):
            ident += " burst ?"  # never the desired identity: the class is changed
        if "quantum" in fields:
            ident += " prio %s quantum %s" % (fields.get("prio"), fields["quantum"])
        out[classid] = ident
    return out


def _hex(value):
    return int(str(value or "0"), 16)


def parse_filters(text, parent):
    """{identity: delete args} of the u32 filters in ``tc -j filter show dev X [ingress]``.

    Filters of other kinds are listed under an identity that never matches a
    desired one, so a foreign filter on an owned qdisc is removed.
    """
    out = {}
    for item in json.loads(text or "[]", object_pairs_hook=_pairs):
        opts = item.get("options")
        if not opts:
            continue
        proto = item.get("protocol", "all")
        ver = {"ip": 4, "ipv6": 6}.get(proto)
        pref = int(item.get("pref", 0))
        handle = opts.get("fh", "")
        dele = ["filter", "del", "dev", None, "parent", parent, "prio", str(pref), "handle", handle,
                "protocol", proto, item.get("kind", "u32")]
        head = "pref %d %s" % (pref, proto)
        if parent not in (ROOT, "ffff:"):
            head = "qdisc %s %s" % (parent, head)
        if item.get("kind") != "u32":
            out["%s foreign %s %s" % (head, item.get("kind"), handle)] = dele
            continue
        table = _hex(handle.split(":")[0])
        if "ht_divisor" in opts:
            if table < OWN_TABLE_LIMIT:
                out["%s table %s: divisor %d" % (head, hexid(table), opts["ht_divisor"])] = dele
            continue
        key_ht = _hex(opts.get("key_ht"))
        where = "root" if key_ht >= OWN_TABLE_LIMIT else "%s:%s" % (hexid(key_ht), hexid(_hex(opts.get("bkt"))))
        keys = [(_hex(m.get("value")), _hex(m.get("mask")), int(m.get("off", 0))) for m in opts.get("match", [])]
        ident = Filter(pref, ver, where, keys=keys, qdisc=ROOT if parent == "ffff:" else parent,
                       flowid=opts.get("flowid"),
                       link=_hex(opts["link"].rstrip(":")) if opts.get("link") else None,
                       hashkey=(_hex(opts["hash_mask"]), int(opts.get("hash_off", 0))) if "hash_mask" in opts else None,
                       redirect=_redirect_of(item)).identity()
        out[ident] = dele
    return out


def _redirect_of(item):
    for action in (item.get("options") or {}).get("actions", []) or []:
        if action.get("kind") == "mirred":
            return action.get("to_dev")
    return None


def group_qdiscs(qdiscs):
    """Handles of the group qdiscs (``htb`` under a class of ``1:``) in ``tc -j qdisc show`` output."""
    return sorted(ident.split()[2] for key, ident in parse_qdiscs(qdiscs).items()
                  if key.startswith("parent 1:") and ident.startswith("htb handle "))


def live_device(name, qdiscs, classes, filters, ingress_filters, groups=None):
    """A Device from the live listings (raw command outputs).

    ``groups``: {group qdisc handle: ``tc -j filter show dev X parent <handle>`` output}.
    """
    device = Device(name)
    device.qdiscs = {k: (v, None) for k, v in parse_qdiscs(qdiscs).items()}
    device.classes = {k: (v, None) for k, v in parse_classes(classes).items()}
    root = device.qdiscs.get("root", ("", None))[0]
    if root.startswith("htb handle 1:"):
        device.filters.update(parse_filters(filters, ROOT))
        for handle, text in sorted((groups or {}).items()):
            device.filters.update(parse_filters(text, handle))
    if ingress_filters is not None and "ingress" in device.qdiscs:
        device.filters.update({"ingress " + k: v for k, v in parse_filters(ingress_filters, "ffff:").items()})
    for args in device.filters.values():
        args[3] = name
    return device


# ---------------------------------------------------------------------------
# The difference, as tc batch lines
# ---------------------------------------------------------------------------


def batch_line(args):
    return " ".join(args)


def _flat(live):
    """The tree of the versions before groups: client classes right under ``1:1``."""
    return any(c.startswith("1:") and FIRST_CLIENT_MINOR <= _minor(c) < GROUP_BASE for c in live.classes)


def _filter_qdisc(identity):
    return identity.split()[1] if identity.startswith("qdisc ") else ROOT


def _group_handles(device):
    """Handles of the groups ``device`` holds, from its classes and qdiscs."""
    out = {c.split(":")[0] + ":" for c in device.classes if not c.startswith("1:")}
    out |= {"%x:" % _minor(c) for c in device.classes if _is_group_class(c)}
    out |= {k.split()[1].replace("1:", "", 1) + ":" for k in device.qdiscs
            if k.startswith("parent 1:") and _is_group_class(k.split()[1])}
    return out


def _unwanted_classes(classids, live_classes, desired, dev, dels, deleted):
    """Of ``classids`` (live, in order): the deletions of those not wanted, returned to run last;
    those that hang from another parent are deleted now (appended to ``dels``, added to ``deleted``)."""
    late = []
    for classid in classids:
        want = desired.classes.get(classid)
        if want is None:
            late.append(["class", "del", "dev", dev, "classid", classid])
        elif live_classes[classid][0].split()[1] != want[1][5]:
            dels.append(["class", "del", "dev", dev, "classid", classid])
            deleted.add(classid)
    return late


def diff(live, desired):
    """Batch lines turning ``live`` into ``desired`` (both Devices of one name).

    Adds go top down (classes of ``1:``, group qdiscs, the classes in them, leaf
    qdiscs, filters), deletions bottom up; a group that goes or whose qdisc is
    replaced takes its classes, qdiscs and filters with it.
    """
    dev = desired.name
    dels, adds = [], []
    live_root = live.qdiscs.get("root", (None,))[0]
    live_classes, live_filters, live_qdiscs = live.classes, live.filters, live.qdiscs
    if live_root != desired.qdiscs["root"][0] or _flat(live):
        # htb cannot be changed in place; any other root (the kernel's default) is
        # replaced; the flat tree of earlier versions is rebuilt (its leaf qdisc
        # handles are the ones the groups' clients take)
        if live_root is not None and live_root.split()[2] == ROOT:
            dels.append(["qdisc", "del", "dev", dev, "root"])
            adds.append(desired.qdiscs["root"][1])
        else:
            adds.append(["qdisc", "replace", *desired.qdiscs["root"][1][2:]])
        live_classes = {}
        live_filters = {k: v for k, v in live.filters.items() if k.startswith("ingress ")}
        live_qdiscs = {k: v for k, v in live.qdiscs.items() if k == "ingress"}
    if "ingress" in desired.qdiscs and live_qdiscs.get("ingress", (None,))[0] != desired.qdiscs["ingress"][0]:
        if "ingress" in live_qdiscs:
            dels.append(["qdisc", "del", "dev", dev, "ingress"])
        live_filters = {k: v for k, v in live_filters.items() if not k.startswith("ingress ")}
        adds.append(desired.qdiscs["ingress"][1])
    # classes of 1: that are not wanted, or hang from another parent, are deleted
    deleted, added, changed = set(), set(), set()
    # (deleted last, inner before top: the kernel lets go of a class a moment after its filters)
    late = _unwanted_classes(sorted(c for c in live_classes if c.startswith("1:")), live_classes, desired, dev,
                             dels, deleted)
    # the groups whose content does not survive: the class goes, or the qdisc is not the wanted one
    kept = set()
    for key, (ident, args) in desired.qdiscs.items():
        group = key.split()[-1]
        if key.startswith("parent ") and _is_group_class(group) and group in live_classes \
                and group not in deleted and live_qdiscs.get(key, (None,))[0] == ident:
            kept.add(args[7])
    gone_groups = _group_handles(live) - kept
    # filters first: a class cannot go while a filter points at it. Hash tables
    # and the links into them stay once made (an empty table costs a lookup
    # that finds nothing): the kernel releases a table only some time after
    # the links into it are gone, so deleting both in one batch fails.
    gone = [k for k in live_filters if k not in desired.filters and not _structural(k)
            and _filter_qdisc(k) not in gone_groups]
    dels += [live_filters[k] for k in sorted(gone)]
    # classes inside the groups, bottom up
    late_inner = _unwanted_classes(
        [c for c in sorted((c for c in live_classes if not c.startswith("1:")), key=_classkey, reverse=True)
         if c.split(":")[0] + ":" not in gone_groups], live_classes, desired, dev, dels, deleted)
    top = sorted((c for c in desired.classes if c.startswith("1:")), key=_classkey)
    inner = sorted((c for c in desired.classes if not c.startswith("1:")), key=_classkey)
    for stage, classids in enumerate((top, inner)):
        if stage:
            # the group qdiscs, between the group classes and the classes in them
            for classid in top:
                key = "parent " + classid
                if _is_group_class(classid):
                    ident, args = desired.qdiscs[key]
                    if classid in added:
                        adds.append(args)
                    elif live_qdiscs.get(key, (None,))[0] != ident:
                        adds.append(["qdisc", "replace", *args[2:]])
        for classid in classids:
            ident, args = desired.classes[classid]
            fresh = stage and classid.split(":")[0] + ":" in gone_groups
            if classid not in live_classes or classid in deleted or fresh:
                adds.append(args)
                added.add(classid)
            elif live_classes[classid][0] != ident:
                adds.append(["class", "change", *args[2:]])
                changed.add(classid)
    # leaf qdiscs
    for key, (ident, args) in sorted(desired.qdiscs.items()):
        if not key.startswith("parent ") or _is_group_class(key.split()[1]):
            continue
        if key.split()[1] in added:
            adds.append(args)
        elif live_qdiscs.get(key, (None,))[0] != ident:
            adds.append(["qdisc", "replace", *args[2:]])
    for key in sorted(live_qdiscs):
        parent = key.split()[-1]
        if key.startswith("parent ") and key not in desired.qdiscs and parent in desired.classes \
                and parent in live_classes and parent not in deleted and parent not in added:
            dels.append(["qdisc", "del", "dev", dev, "parent", parent])
    missing = [(flt.depth(), k, flt) for k, flt in desired.filters.items()
               if k not in live_filters or (gone_groups and _filter_qdisc(k) in gone_groups)]
    for _depth, _k, flt in sorted(missing, key=lambda m: m[:2]):
        adds.append(flt.add_args(dev, "ffff:" if flt.redirect else flt.qdisc))
    return [batch_line(a) for a in dels + adds + late_inner + late]


def _structural(identity):
    """A hash table, or a link into one: kept once made."""
    return " table " in identity or " link " in identity


def full_batch(desired):
    """Batch lines building ``desired`` on a device that has none of it."""
    return diff(Device(desired.name), desired)


def client_minors(live_filters, clients):
    """{client name: minor}: keep each client's live class, number new ones.

    ``live_filters`` are identities of the tunnel's filters; ``clients`` a list
    of {name, networks}. A class stays with the client whose address it
    classifies; new clients take the lowest free numbers.
    """
    by_match = {}
    for ident in live_filters:
        match = re.search(r" match (\S+(?: \S+@\d+)*) flowid ([0-9a-f]+):([0-9a-f]+)$", ident)
        if not match:
            continue
        major, minor = int(match.group(2), 16), int(match.group(3), 16)
        # a client's class: in its group, or right under 1:1 in the flat tree of earlier versions
        if FIRST_CLIENT_MINOR <= minor <= LAST_CLIENT_MINOR and major in (1, group_major(minor)):
            by_match[match.group(1)] = minor
    taken, minors = set(), {}
    for client in clients:
        for net in client["networks"]:
            tail = ADDR_TAIL[net.version]["dst"]
            minor = by_match.get(_match(_keys_for(net, tail)))
            if minor is not None and minor not in taken:
                minors[client["name"]] = minor
                taken.add(minor)
                break
    candidate = FIRST_CLIENT_MINOR
    for client in clients:
        if client["name"] in minors:
            continue
        while candidate in taken:
            candidate += 1
        minors[client["name"]] = candidate
        taken.add(candidate)
    return minors


def networks(addresses):
    """ipaddress networks of ``addresses``; raises ValueError naming the bad one."""
    out = []
    for addr in addresses:
        try:
            out.append(ipaddress.ip_network(str(addr), strict=False))
        except ValueError:
            raise ValueError("%r is not an address or network (e.g. 10.66.0.2/32, fd66::2/128)" % addr) from None
    return out
