# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Address and interface-name helpers shared by modules and filters.

Pure functions only: no commands, no work at import time.
"""

from __future__ import annotations

import ipaddress
import re

# fullmatch: a "$" would accept a trailing newline
IFNAME_RE = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")

# Destinations a client must not reach unless explicitly allowed: private,
# shared (CGNAT), loopback, link-local, multicast and reserved ranges.
DEFAULT_BLOCKED_IPV4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
)
DEFAULT_BLOCKED_IPV6 = ("::1/128", "fc00::/7", "fe80::/10", "ff00::/8")

# C0 and C1 control characters, DEL and the Unicode line and paragraph
# separators: a value carrying one of them would start a new line (or hide
# text) in a configuration file or unit rendered from it.
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def control_char_errors(values):
    """'where: contains ...' for every string in ``values`` (nested dicts/lists) with a control character.

    ``values`` maps a variable name to its value. Values are never quoted in
    the messages (they may be keys or tokens): only the path and the position.
    """
    errors = []

    def walk(where, value):
        if isinstance(value, str):
            found = CONTROL_RE.search(value)
            if found:
                errors.append("%s contains the control character %s at position %d; give it on one line "
                              "without control characters" % (where, repr(found.group())[1:-1], found.start()))
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk("%s.%s" % (where, key), value[key])
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk("%s[%d]" % (where, index), item)

    for name in sorted(values or {}):
        walk(name, values[name])
    return errors


def ifname_error(name):
    """Return why ``name`` is not a safe Linux interface name, or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if len(name) > 15:
        return "is %d characters long; Linux allows at most 15" % len(name)
    if not IFNAME_RE.fullmatch(name):
        return "may only contain letters, digits and _ . @ : -"
    return None


def parse_network(text):
    """Parse a CIDR strictly (host bits must be zero); raise ValueError."""
    return ipaddress.ip_network(str(text), strict=True)


def cidr_errors(values, strict=True):
    """Map each invalid entry of ``values`` to a reason."""
    errors = {}
    for value in values:
        try:
            ipaddress.ip_network(str(value), strict=strict)
        except ValueError as exc:
            errors[str(value)] = str(exc)
    return errors


def overlaps(first, second):
    """Pairs (a, b) of networks from the two lists that overlap."""
    found = []
    for a in first:
        na = ipaddress.ip_network(str(a), strict=False)
        for b in second:
            nb = ipaddress.ip_network(str(b), strict=False)
            if na.version == nb.version and na.overlaps(nb) and (str(a), str(b)) not in found:
                found.append((str(a), str(b)))
    return found


def self_overlaps(networks):
    """Pairs of distinct entries of one list that overlap each other."""
    nets = [str(n) for n in networks]
    return [
        (a, b) for i, a in enumerate(nets) for b in nets[i + 1:]
        if overlaps([a], [b])
    ]


def collapse(networks, version):
    """Sorted, merged networks of one IP version, as strings."""
    nets = [
        ipaddress.ip_network(str(n), strict=False) for n in networks
    ]
    nets = [n for n in nets if n.version == version]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def host_networks(facts, exclude=()):
    """Connected networks and own addresses of a host, from Ansible facts.

    ``facts`` is ``ansible_facts`` gathered with the network subset; the
    interfaces named in ``exclude`` (the tunnels) are skipped.
    """
    found = []
    for name in facts.get("interfaces", []):
        if name in exclude or name == "lo":
            continue
        info = facts.get(name.replace("-", "_").replace(".", "_"), facts.get(name)) or {}
        v4 = [info["ipv4"]] if isinstance(info.get("ipv4"), dict) else []
        v4 += info.get("ipv4_secondaries") or []
        for entry in v4:
            if entry.get("address") and entry.get("netmask"):
                iface = ipaddress.ip_interface("%s/%s" % (entry["address"], entry["netmask"]))
                found += [str(iface.network), "%s/32" % iface.ip]
        for entry in info.get("ipv6") or []:
            if entry.get("address") and entry.get("prefix") and entry.get("scope") != "link":
                iface = ipaddress.ip_interface("%s/%s" % (entry["address"], entry["prefix"]))
                found += [str(iface.network), "%s/128" % iface.ip]
    return sorted(set(found))
