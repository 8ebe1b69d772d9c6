# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WireGuard filters: tunnel MTU, client address allocation and client checks.

Documentation of each filter is in the sidecar file ``<filter name>.yml``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from ansible.errors import AnsibleFilterError

from ansible_collections.higgs.vpn.plugins.module_utils import _wg

# Bytes a WireGuard data packet adds around the inner packet: 16 header
# (type, receiver index, counter) + 16 Poly1305 tag.
WG_OVERHEAD = 32
IP_HEADER = {"ipv4": 20, "ipv6": 40}
UDP_HEADER = 8
# The relay carries WireGuard packets in WebSocket frames over TLS over TCP:
# WebSocket frame header at most 14 (2 + 8 extended length + 4 mask), TLS
# record 29 with AES-GCM in TLS 1.2 (5 header + 8 explicit nonce + 16 tag;
# TLS 1.3 needs 22: 5 + 1 content type + 16), TCP 20 + 12 of options
# (timestamps), plus the IP header of that TCP connection.
WEBSOCKET_MAX = 14
TLS_RECORD = 5 + 8 + 16
TCP_HEADER = 20 + 12


def wg_mtu(egress_mtu, outer_family="ipv4", path="direct"):
    """Largest inner MTU that fits into ``egress_mtu``, see wg_mtu.yml."""
    if outer_family not in IP_HEADER:
        raise AnsibleFilterError("wg_mtu: outer_family must be ipv4 or ipv6, not %r" % (outer_family,))
    if path not in ("direct", "relay"):
        raise AnsibleFilterError("wg_mtu: path must be direct or relay, not %r" % (path,))
    try:
        mtu = int(egress_mtu)
    except (TypeError, ValueError):
        raise AnsibleFilterError("wg_mtu: egress MTU %r is not a number" % (egress_mtu,)) from None
    # direct: IPv4 20 + UDP 8 + WireGuard 32 = 60; IPv6 40 + 8 + 32 = 80
    mtu -= IP_HEADER[outer_family] + UDP_HEADER + WG_OVERHEAD
    if path == "relay":
        mtu -= WEBSOCKET_MAX + TLS_RECORD + TCP_HEADER + IP_HEADER[outer_family]
    if mtu < 576:
        raise AnsibleFilterError("wg_mtu: egress MTU %s leaves %d bytes for the tunnel; at least 576 are needed"
                                 % (egress_mtu, mtu))
    return mtu


def wg_networks(addresses):
    """Networks of interface addresses ('10.66.0.1/24' -> '10.66.0.0/24'); empty entries skipped."""
    if isinstance(addresses, str):
        addresses = [addresses]
    return [str(ipaddress.ip_interface(str(a)).network) for a in addresses if a]


def wg_address_errors(address, version):
    """Problems with a node tunnel address such as 10.66.0.1/24; see wg_address_errors.yml."""
    try:
        iface = ipaddress.ip_interface(str(address).strip())
    except ValueError as exc:
        return ["%r is not an address with a prefix: %s" % (address, exc)]
    errors = []
    if iface.version != int(version):
        errors.append("%r is an IPv%d address, IPv%d is expected" % (address, iface.version, int(version)))
        return errors
    if "/" not in str(address):
        errors.append("%r has no prefix; add the prefix of the client subnet" % (address,))
    room = 2 if iface.version == 4 else 1
    if iface.network.num_addresses < 2 + room:
        errors.append("%r leaves no addresses for clients; use a shorter prefix" % (address,))
    elif iface.ip == iface.network.network_address or (
            iface.version == 4 and iface.ip == iface.network.broadcast_address):
        errors.append("%r is the network or broadcast address of %s, not a host address" % (address, iface.network))
    return errors


def wg_clients(clients):
    """The client list with every optional key present (empty when not given)."""
    normal = []
    for client in clients or []:
        addresses = client.get("addresses") or []
        normal.append(dict(
            name=client["name"],
            public_key=client.get("public_key") or "",
            addresses=[addresses] if isinstance(addresses, str) else list(addresses),
            preshared_key=client.get("preshared_key") or "",
            persistent_keepalive=int(client.get("persistent_keepalive") or 0),
        ))
    return normal


def wg_peer_list(clients, addresses, keys=None):
    """Peers for higgs.vpn.wg_peers: each client with its key and allocated addresses."""
    keys = keys or {}
    peers = []
    for client in wg_clients(clients):
        public_key = client["public_key"] or keys.get(client["name"])
        if not public_key:
            continue  # a key that check mode has not created yet
        peer = dict(name=client["name"], public_key=public_key,
                    allowed_ips=list(addresses.get(client["name"], [])),
                    persistent_keepalive=client["persistent_keepalive"])
        if client["preshared_key"]:
            peer["preshared_key"] = client["preshared_key"]
        peers.append(peer)
    return peers


# A client's name becomes a file name on the controller and a comment in the
# node's peer file: no path separator, no leading dot, no control character.
CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def wg_endpoint(host, port):
    """'host:port' for a client profile; see wg_endpoint.yml."""
    host = str(host or "").strip()
    if not host:
        return ""
    if host.startswith("["):
        return host if "]:" in host else "%s:%s" % (host, port)
    try:
        if ipaddress.ip_address(host).version == 6:
            return "[%s]:%s" % (host, port)
    except ValueError:
        pass
    return host if ":" in host else "%s:%s" % (host, port)


def _host_address(text):
    """'10.0.0.2' or '10.0.0.2/32' -> ip_address; anything wider raises ValueError."""
    iface = ipaddress.ip_interface(str(text).strip())
    if iface.network.prefixlen != iface.max_prefixlen:
        raise ValueError("is a network; give one address (/%d)" % iface.max_prefixlen)
    return iface.ip


def _networks(node_addresses):
    """{version: (interface, network)} of the node's tunnel addresses."""
    found = {}
    for text in node_addresses or []:
        if text:
            iface = ipaddress.ip_interface(str(text))
            found[iface.version] = (iface, iface.network)
    return found


def _usable(network):
    """(first host, number of hosts) a client may get in ``network``."""
    if network.version == 4:
        first, count = int(network.network_address) + 1, network.num_addresses - 2
    else:
        first, count = int(network.network_address) + 1, network.num_addresses - 1
    return first, max(count, 0)


def wg_client_errors(clients, node_addresses, variable="wireguard_clients"):
    """Problems with the client list, each naming the entry and the fix; see wg_client_errors.yml."""
    errors = []
    if not isinstance(clients, list):
        return ["%s must be a list of clients, got %s" % (variable, type(clients).__name__)]
    nets = _networks(node_addresses)
    names, keys, addrs = {}, {}, {}
    for index, client in enumerate(clients):
        where = "%s[%d]" % (variable, index)
        if not isinstance(client, dict):
            errors.append("%s must be a dict with at least a name" % where)
            continue
        name = client.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append("%s.name is missing; every client needs a unique name" % where)
        elif not CLIENT_NAME_RE.fullmatch(name):
            errors.append("%s.name %r is not a safe name: it names the client's files on the controller "
                          "(<name>.conf, .key, .png); use 1-64 letters, digits, _ . - starting with a "
                          "letter or digit (e.g. alice-phone)" % (where, name))
        else:
            where = "%s[%d] (%s)" % (variable, index, name)
            if name in names:
                errors.append("%s.name is also the name of %s[%d]; names must be unique"
                              % (where, variable, names[name]))
            names.setdefault(name, index)
        unknown = sorted(set(client) - {"name", "public_key", "addresses", "preshared_key", "persistent_keepalive"})
        if unknown:
            errors.append("%s has unknown keys %s" % (where, ", ".join(unknown)))
        for field in ("public_key", "preshared_key"):
            value = client.get(field)
            if value not in (None, "") and _wg.key_error(value):
                errors.append("%s.%s %s (generate one with `wg %s`)"
                              % (where, field, _wg.key_error(value), "pubkey" if field == "public_key" else "genpsk"))
        if client.get("public_key"):
            if client["public_key"] in keys:
                errors.append("%s.public_key is also the key of %s[%d]" % (where, variable, keys[client["public_key"]]))
            keys.setdefault(client["public_key"], index)
        keepalive = client.get("persistent_keepalive", 0)
        if isinstance(keepalive, bool) or not isinstance(keepalive, int) or not 0 <= keepalive <= 65535:
            errors.append("%s.persistent_keepalive must be a number of seconds from 0 to 65535" % where)
        given = client.get("addresses") or []
        if isinstance(given, str):
            given = [given]
        families = set()
        for text in given:
            try:
                ip = _host_address(text)
            except ValueError as exc:
                errors.append("%s.addresses %r %s" % (where, text, exc))
                continue
            if ip.version in families:
                errors.append("%s.addresses has more than one IPv%d address" % (where, ip.version))
            families.add(ip.version)
            if ip.version not in nets:
                errors.append("%s.addresses %r: the node has no IPv%d tunnel address (set wireguard_address_ipv%d)"
                              % (where, text, ip.version, ip.version))
                continue
            node_if, net = nets[ip.version]
            first, count = _usable(net)
            if ip not in net or not first <= int(ip) < first + count:
                errors.append("%s.addresses %r is outside the client subnet %s (host addresses only)"
                              % (where, text, net))
            elif ip == node_if.ip:
                errors.append("%s.addresses %r is the node's own tunnel address" % (where, text))
            elif ip in addrs:
                errors.append("%s.addresses %r is also an address of %s[%d]; give each client its own"
                              % (where, text, variable, addrs[ip]))
            addrs.setdefault(ip, index)
    return errors


def _hash_slot(name, version, count):
    digest = hashlib.sha256(("%s/v%d" % (name, version)).encode()).digest()
    return int.from_bytes(digest[:16], "big") % count


def wg_client_addresses(clients, node_addresses, previous=None):
    """{name: [addresses]} for every client; see wg_client_addresses.yml for the rules."""
    errors = wg_client_errors(clients, node_addresses)
    if errors:
        raise AnsibleFilterError("; ".join(errors))
    previous = previous or {}
    result = {c["name"]: [] for c in clients}
    for version, (node_if, net) in sorted(_networks(node_addresses).items()):
        bits = node_if.max_prefixlen
        first, count = _usable(net)
        taken = {int(node_if.ip)}
        chosen, pending = {}, []
        for client in sorted(clients, key=lambda c: c["name"]):
            given = client.get("addresses") or []
            given = [_host_address(a) for a in ([given] if isinstance(given, str) else given)]
            mine = [ip for ip in given if ip.version == version]
            if mine:
                chosen[client["name"]] = int(mine[0])
                taken.add(int(mine[0]))
            else:
                pending.append(client["name"])
        # clients that had an address keep it, before new clients are placed
        fresh = []
        for name in pending:
            kept = None
            for text in previous.get(name) or []:
                try:
                    ip = _host_address(text)
                except ValueError:
                    continue
                if ip.version == version and ip in net and first <= int(ip) < first + count and int(ip) not in taken:
                    kept = int(ip)
            if kept is None:
                fresh.append(name)
            else:
                chosen[name] = kept
                taken.add(kept)
        free = count - len([t for t in taken if first <= t < first + count])
        if len(fresh) > free:
            raise AnsibleFilterError(
                "wireguard_clients: %d clients need an IPv%d address but only %d are free in %s; "
                "use a larger subnet in wireguard_address_ipv%d" % (len(fresh), version, free, net, version))
        for name in fresh:
            slot = _hash_slot(name, version, count)
            while first + slot in taken:
                slot = (slot + 1) % count
            chosen[name] = first + slot
            taken.add(first + slot)
        for name, value in chosen.items():
            result[name].append("%s/%d" % (ipaddress.ip_address(value), bits))
    return result


class FilterModule:
    """higgs.vpn WireGuard filters."""

    def filters(self):
        return {
            "wg_mtu": wg_mtu,
            "wg_networks": wg_networks,
            "wg_client_errors": wg_client_errors,
            "wg_client_addresses": wg_client_addresses,
            "wg_address_errors": wg_address_errors,
            "wg_clients": wg_clients,
            "wg_peer_list": wg_peer_list,
            "wg_endpoint": wg_endpoint,
        }
