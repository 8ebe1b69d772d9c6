# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Traffic control (``tc``) for the tunnel: rates, the class tree, the diff.

The shaping of one tunnel interface is a set of objects on two devices: the
tunnel itself (download: traffic towards the clients leaves through it) and an
``ifb`` device that the tunnel's ingress is redirected to (upload). On each:

* root ``htb`` qdisc ``1:`` (default class ``1:2``), class ``1:1`` holding the
  node-wide cap, ``1:2`` for traffic of no listed client, ``1:3`` for
  prioritised interactive traffic when asked for, and one class ``1:<m>`` per
  client (``m`` from 0x10) whose ceil is the client's rate, each with a leaf
  qdisc ``<m>:``;
* ``u32`` filters that find a client's class in constant time, whatever the
  number of clients: a root filter hashes the second-to-last byte of the
  address into table ``0x10`` (IPv4) / ``0x11`` (IPv6), whose buckets link to
  one table per value of that byte (``0x100 + b`` / ``0x200 + b``) hashed on
  the last byte, whose buckets hold the exact-match entries. Client networks
  that are not host addresses are matched one by one after that lookup.

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
LAST_CLIENT_MINOR = 0xFFFE
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
# the two hash levels: table ids (level 1, level 2 base)
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
                 divisor=None, redirect=None):
        self.pref, self.ver, self.where = pref, ver, where
        self.keys, self.flowid, self.link = keys or [], flowid, link
        self.hashkey, self.divisor, self.redirect = hashkey, divisor, redirect

    @property
    def is_table(self):
        return self.divisor is not None

    def identity(self):
        head = "pref %d %s" % (self.pref, PROTO.get(self.ver, "all"))
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
    """The u32 filters classifying ``entries`` [(network, classid)] of one family.

    ``side`` is ``dst`` (download, on the tunnel) or ``src`` (upload, on the ifb).
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
        out += ["class %s %s" % (k, v[0]) for k, v in sorted(self.classes.items(), key=lambda i: _minor(i[0]))]
        out += ["filter %s" % f for f in sorted(self.filters)]
        return ["%s: %s" % (self.name, line) for line in out]


def _minor(classid):
    return int(classid.split(":")[1] or "0", 16)


def plan(spec):
    """The desired devices for a validated ``spec``.

    ``spec``: interface, ifb, cap_down/cap_up (bits or None), interactive_rate
    (bits or None), leaf_qdisc, clients [{name, minor, networks, down, up}]
    with networks as ipaddress objects and down/up bits or None.
    """
    devices = []
    for dev, direction, side in ((spec["interface"], "down", "dst"), (spec["ifb"], "up", "src")):
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

        def add_class(device, minor, parent, rate, ceil, prio=None, leaf=True):
            dev = device.name
            classid = "1:%x" % minor
            burst, cburst = burst_bytes(rate), burst_bytes(ceil)
            args = ["class", "add", "dev", dev, "parent", parent, "classid", classid, "htb",
                    "rate", "%dbit" % rate, "ceil", "%dbit" % ceil,
                    "burst", "%db" % burst, "cburst", "%db" % cburst]
            ident = "parent %s rate %s ceil %s burst %s cburst %s" % (
                parent, rate_text(rate), rate_text(ceil), burst_text(burst, rate), burst_text(cburst, ceil))
            # an explicit quantum everywhere: equal shares of what the cap leaves
            # over, and no warnings about quanta derived from large rates
            args += ["quantum", str(QUANTUM)]
            if prio is not None:
                args += ["prio", str(prio)]
                ident += " prio %d quantum %d" % (prio, QUANTUM)
            device.classes[classid] = (ident, args)
            if leaf and spec["leaf_qdisc"] in LEAF_QDISCS:
                qdisc = LEAF_QDISCS[spec["leaf_qdisc"]]
                device.qdiscs["parent " + classid] = (
                    "%s handle %x:" % (qdisc[0], minor),
                    ["qdisc", "add", "dev", dev, "parent", classid, "handle", "%x:" % minor, *qdisc])

        add_class(device, 1, ROOT, cap, cap, leaf=False)
        add_class(device, DEFAULT_MINOR, NODE_CLASS, guaranteed, cap, prio=1)
        if interactive:
            add_class(device, INTERACTIVE_MINOR, NODE_CLASS, interactive, interactive, prio=0)
            for flt in interactive_filters(side):
                device.filters[flt.identity()] = flt
        entries = {4: [], 6: []}
        for client in spec["clients"]:
            ceil = min(client[direction] or cap, cap)
            add_class(device, client["minor"], NODE_CLASS, min(guaranteed, ceil), ceil, prio=1)
            for net in client["networks"]:
                entries[net.version].append((net, "1:%x" % client["minor"]))
        for ver in (4, 6):
            ordered = sorted(entries[ver], key=lambda e: (int(e[0].network_address), e[0].prefixlen))
            for flt in client_filters(ver, side, ordered):
                device.filters[flt.identity()] = flt
        devices.append(device)
    # the redirect of the tunnel's ingress to the ifb device
    tunnel = devices[0]
    tunnel.qdiscs["ingress"] = ("ingress handle ffff:", ["qdisc", "add", "dev", spec["interface"], "ingress"])
    redirect = Filter(1, None, "root", keys=[(0, 0, 0)], redirect=spec["ifb"])
    tunnel.filters["ingress " + redirect.identity()] = redirect
    return devices


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
    """{classid: identity} of ``tc -d class show dev X`` (htb prints no JSON)."""
    out = {}
    for line in text.splitlines():
        match = _CLASS_RE.match(line.strip())
        if not match:
            continue
        classid, parent, rest = match.group(1), match.group(2) or ROOT, match.group(3).split()
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
        ident = Filter(pref, ver, where, keys=keys,
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


def live_device(name, qdiscs, classes, filters, ingress_filters):
    """A Device from the live listings (raw command outputs)."""
    device = Device(name)
    device.qdiscs = {k: (v, None) for k, v in parse_qdiscs(qdiscs).items()}
    device.classes = {k: (v, None) for k, v in parse_classes(classes).items()}
    root = device.qdiscs.get("root", ("", None))[0]
    if root.startswith("htb handle 1:"):
        device.filters.update(parse_filters(filters, ROOT))
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


def diff(live, desired):
    """Batch lines turning ``live`` into ``desired`` (both Devices of one name)."""
    dev = desired.name
    dels, adds = [], []
    live_root = live.qdiscs.get("root", (None,))[0]
    live_classes, live_filters, live_qdiscs = live.classes, live.filters, live.qdiscs
    if live_root != desired.qdiscs["root"][0]:
        # htb cannot be changed in place; any other root (the kernel's default) is replaced
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
    # filters first: a class cannot go while a filter points at it. Hash tables
    # and the links into them stay once made (an empty table costs a lookup
    # that finds nothing): the kernel releases a table only some time after
    # the links into it are gone, so deleting both in one batch fails.
    gone = [k for k in live_filters if k not in desired.filters and not _structural(k)]
    dels += [live_filters[k] for k in sorted(gone)]
    # classes: a class that is not wanted, or hangs from another parent, is deleted
    # (children before parents); the others are added or changed
    deleted, added, changed = set(), set(), set()
    # (deleted last: the kernel lets go of a class a moment after its filters)
    late = []
    for classid in sorted(live_classes, key=_minor, reverse=True):
        want = desired.classes.get(classid)
        if want is None:
            late.append(["class", "del", "dev", dev, "classid", classid])
        elif live_classes[classid][0].split()[1] != want[1][5]:
            dels.append(["class", "del", "dev", dev, "classid", classid])
            deleted.add(classid)
    for classid in sorted(desired.classes, key=_minor):
        ident, args = desired.classes[classid]
        if classid not in live_classes or classid in deleted:
            adds.append(args)
            added.add(classid)
        elif live_classes[classid][0] != ident:
            adds.append(["class", "change", *args[2:]])
            changed.add(classid)
    # leaf qdiscs
    for key, (ident, args) in sorted(desired.qdiscs.items()):
        if not key.startswith("parent "):
            continue
        if key.split()[1] in added:
            adds.append(args)
        elif live_qdiscs.get(key, (None,))[0] != ident:
            adds.append(["qdisc", "replace", *args[2:]])
    for key in sorted(live_qdiscs):
        parent = key.split()[-1]
        if key.startswith("parent ") and key not in desired.qdiscs and parent in desired.classes \
                and parent in live_classes and parent not in deleted:
            dels.append(["qdisc", "del", "dev", dev, "parent", parent])
    missing = [desired.filters[k] for k in desired.filters if k not in live_filters]
    for flt in sorted(missing, key=lambda f: (f.depth(), f.identity())):
        adds.append(flt.add_args(dev, "ffff:" if flt.redirect else ROOT))
    return [batch_line(a) for a in dels + adds + late]


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
        match = re.search(r" match (\S+(?: \S+@\d+)*) flowid 1:([0-9a-f]+)$", ident)
        if match:
            by_match[match.group(1)] = int(match.group(2), 16)
    taken, minors = set(), {}
    for client in clients:
        for net in client["networks"]:
            tail = ADDR_TAIL[net.version]["dst"]
            minor = by_match.get(_match(_keys_for(net, tail)))
            if minor is not None and FIRST_CLIENT_MINOR <= minor <= LAST_CLIENT_MINOR and minor not in taken:
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
