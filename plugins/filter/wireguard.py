# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WireGuard filters: tunnel MTU, client address allocation and client checks.

Documentation of each filter is in the sidecar file ``<filter name>.yml``.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

from ansible_collections.higgs.vpn.plugins.module_utils import _plan

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
    return _plan.address_errors(address, version)


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


def wg_client_errors(clients, node_addresses, variable="wireguard_clients"):
    """Problems with the client list, each naming the entry and the fix; see wg_client_errors.yml."""
    return _plan.client_errors(clients, node_addresses, variable)


def wg_client_addresses(clients, node_addresses, previous=None):
    """{name: [addresses]} for every client; see wg_client_addresses.yml for the rules."""
    try:
        errors = _plan.client_errors(clients, node_addresses)
        if errors:
            raise _plan.PlanError(errors)
        return _plan.allocate(clients, node_addresses, previous)
    except _plan.PlanError as exc:
        raise AnsibleFilterError("; ".join(exc.errors)) from None


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
