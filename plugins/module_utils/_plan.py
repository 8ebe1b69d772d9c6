# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node as one plan: the inventory of a node turned into one validated record.

``node_plan(inventory, previous)`` takes the variables as an operator writes
them (``wireguard_*``, ``forwarding_*``, ``dns_forwarder_*``,
``traffic_shaping_*``, ``relay_connector_*``, ``metrics_*``, ``node_*``; what
is not given takes the roles' defaults from ``DEFAULTS``) and the client
addresses the node handed out before, and returns one record: the tunnel
addresses, the client subnets per family, the resolver addresses, the owned
firewall tables and ONE record per client with its addresses allocated and its
limits. Every problem names the inventory path the operator wrote, e.g.
``wireguard_clients[3] (bob).rate_down: ... (fix: ...)``; ``PlanError``
carries all of them at once.

``CLIENT_OPTIONS`` is the one option spec of a client as the shaping modules
(``tc_shaping``, ``conn_limits``) take it. Nothing here runs a command.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

from ansible_collections.higgs.vpn.plugins.module_utils import _tc, _wg
from ansible_collections.higgs.vpn.plugins.module_utils._net import ifname_error

# The roles' defaults the plan falls back to (tests/unit/plugins/module_utils/
# test_plan.py checks that they equal the roles' defaults/main.yml).
DEFAULTS = {
    "wireguard_interface": "wg0",
    "wireguard_listen_port": 51820,
    "wireguard_address_ipv4": "10.66.0.1/24",
    "wireguard_address_ipv6": "fd66::1/64",
    "wireguard_clients": [],
    "forwarding_backend": "nftables",
    "forwarding_table": "higgs_vpn",
    "dns_forwarder_firewall_table": "higgs_vpn_dns",
    "dns_forwarder_intercept": "redirect",
    "traffic_shaping_firewall_table": "higgs_vpn_conn",
    "traffic_shaping_rate_down": "",
    "traffic_shaping_rate_up": "",
    "traffic_shaping_client_rate_down": "",
    "traffic_shaping_client_rate_up": "",
    "traffic_shaping_interactive_rate": "",
    "traffic_shaping_client_max_connections": 0,
    "traffic_shaping_client_new_connections_per_second": 0,
    "relay_connector_listen": "127.0.0.1:9477",
    "node_dns_forwarder": True,
    "node_traffic_shaping": False,
    "node_relay_connector": False,
}

# One client as the shaping modules take it (tc_shaping, conn_limits).
CLIENT_OPTIONS = dict(
    name=dict(type="str", required=True),
    addresses=dict(type="list", elements="str", required=True),
    rate_down=dict(type="str"),
    rate_up=dict(type="str"),
    max_connections=dict(type="int"),
    new_connections_per_second=dict(type="int"),
)
LIMIT_KEYS = ("rate_down", "rate_up", "max_connections", "new_connections_per_second")
# The keys of a wireguard_clients entry.
WIREGUARD_KEYS = ("name", "public_key", "addresses", "preshared_key", "persistent_keepalive")
CLIENT_KEYS = WIREGUARD_KEYS + LIMIT_KEYS
UNLIMITED = "unlimited"
# A client's name becomes a file name on the controller and a comment in the
# node's peer file: no path separator, no leading dot, no control character.
CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PlanError(ValueError):
    """The inventory cannot make a node; ``errors`` lists every problem."""

    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = list(errors)


# ---------------------------------------------------------------------------
# Tunnel addresses
# ---------------------------------------------------------------------------


def address_errors(address, version):
    """Problems with a node tunnel address such as 10.66.0.1/24."""
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
    first = int(network.network_address) + 1
    count = network.num_addresses - (2 if network.version == 4 else 1)
    return first, max(count, 0)


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


def limit_errors(where, client):
    """Problems of the limits of one client entry (rates, connection counts), each starting with ``where``."""
    errors = []
    for key in ("rate_down", "rate_up"):
        value = client.get(key)
        if value in (None, "") or str(value).lower() == UNLIMITED:
            continue
        try:
            _tc.parse_rate(value)
        except ValueError as exc:
            errors.append("%s.%s: %s (fix: a rate such as 20mbit, or unlimited)" % (where, key, exc))
    for key in ("max_connections", "new_connections_per_second"):
        value = client.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append("%s.%s: %r is not a count (fix: a whole number, 0 for no limit)" % (where, key, value))
    return errors


def client_errors(clients, node_addresses, variable="wireguard_clients"):
    """Problems with the client list, each naming the entry and the fix."""
    if not isinstance(clients, list):
        return ["%s must be a list of clients, got %s" % (variable, type(clients).__name__)]
    errors = []
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
        unknown = sorted(set(client) - set(CLIENT_KEYS))
        if unknown:
            errors.append("%s has unknown keys %s (fix: a client takes %s)"
                          % (where, ", ".join(unknown), ", ".join(CLIENT_KEYS)))
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
        errors += limit_errors(where, client)
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


def _given(client):
    given = client.get("addresses") or []
    return [_host_address(a) for a in ([given] if isinstance(given, str) else given)]


def allocate(clients, node_addresses, previous=None):
    """{name: [addresses]} for every (valid) client; raises PlanError when a subnet is full."""
    previous = previous or {}
    result = {c["name"]: [] for c in clients}
    for version, (node_if, net) in sorted(_networks(node_addresses).items()):
        first, count = _usable(net)
        taken = {int(node_if.ip)}
        chosen, pending = {}, []
        for client in sorted(clients, key=lambda c: c["name"]):
            mine = [ip for ip in _given(client) if ip.version == version]
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
            raise PlanError(["wireguard_clients: %d clients need an IPv%d address but only %d are free in %s "
                             "(fix: a larger subnet in wireguard_address_ipv%d)"
                             % (len(fresh), version, free, net, version)])
        for name in fresh:
            slot = _hash_slot(name, version, count)
            while first + slot in taken:
                slot = (slot + 1) % count
            chosen[name] = first + slot
            taken.add(first + slot)
        for name, value in chosen.items():
            result[name].append("%s/%d" % (ipaddress.ip_address(value), node_if.max_prefixlen))
    return result


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------


def _rate_errors(inventory):
    errors = []
    for name in ("traffic_shaping_rate_down", "traffic_shaping_rate_up", "traffic_shaping_client_rate_down",
                 "traffic_shaping_client_rate_up", "traffic_shaping_interactive_rate"):
        value = inventory[name]
        if value in (None, ""):
            continue
        try:
            _tc.parse_rate(value)
        except ValueError as exc:
            errors.append("%s: %s (fix: a rate such as 100mbit, or empty for none)" % (name, exc))
    for name in ("traffic_shaping_client_max_connections", "traffic_shaping_client_new_connections_per_second"):
        value = inventory[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append("%s: %r is not a count (fix: a whole number, 0 for no limit)" % (name, value))
    return errors


def _node_errors(inventory):
    errors = []
    why = ifname_error(inventory["wireguard_interface"])
    if why:
        errors.append("wireguard_interface: %r %s (fix: a Linux interface name of at most 15 letters, "
                      "digits or _ . @ : -, e.g. wg0)" % (inventory["wireguard_interface"], why))
    port = inventory["wireguard_listen_port"]
    if isinstance(port, bool) or not str(port).isdigit() or not 1 <= int(port) <= 65535:
        errors.append("wireguard_listen_port: %r is not a UDP port (fix: a number from 1 to 65535, e.g. 51820)"
                      % (port,))
    for version in (4, 6):
        name = "wireguard_address_ipv%d" % version
        value = inventory[name]
        if version == 6 and value in (None, ""):
            continue
        for problem in address_errors(value, version):
            errors.append("%s: %s (fix: the node's tunnel address with the prefix of the client subnet, e.g. %s)"
                          % (name, problem, "10.66.0.1/24" if version == 4 else "fd66::1/64, or empty"))
    return errors


def node_plan(inventory, previous=None):
    """The validated node record of ``inventory`` (see the module docstring); raises PlanError."""
    inventory = dict(DEFAULTS, **{k: v for k, v in (inventory or {}).items() if v is not None})
    errors = _node_errors(inventory)
    if inventory["node_traffic_shaping"]:
        errors += _rate_errors(inventory)
    if errors:
        raise PlanError(errors)
    tunnel = [a for a in (inventory["wireguard_address_ipv4"], inventory["wireguard_address_ipv6"]) if a]
    clients = inventory["wireguard_clients"]
    errors = client_errors(clients, tunnel)
    if errors:
        raise PlanError(errors)
    addresses = allocate(clients, tunnel, previous)
    ifaces = [ipaddress.ip_interface(a) for a in tunnel]
    subnets = {"ipv%d" % i.version: [str(i.network)] for i in ifaces}
    listen = inventory["relay_connector_listen"] if inventory["node_relay_connector"] else ""
    return dict(
        interface=inventory["wireguard_interface"],
        listen_port=int(inventory["wireguard_listen_port"]),
        firewall_backend=inventory["forwarding_backend"],
        dns_intercept=inventory["dns_forwarder_intercept"],
        tunnel=tunnel,
        tunnel_addresses=[str(i.ip) for i in ifaces],
        client_subnets=[str(i.network) for i in ifaces],
        client_subnets_by_family=subnets,
        resolver_addresses=[str(i.ip) for i in ifaces] if inventory["node_dns_forwarder"] else [],
        node_traffic_shaping=bool(inventory["node_traffic_shaping"]),
        firewall_tables=[inventory["forwarding_table"], inventory["dns_forwarder_firewall_table"],
                         inventory["traffic_shaping_firewall_table"]],
        relay_metrics_url="http://%s/metrics" % listen if listen else "",
        relay_health_url="http://%s/health" % listen if listen else "",
        clients=[client_record(c, addresses[c["name"]]) for c in clients],
    )


def client_record(client, addresses):
    """One client: its WireGuard settings, allocated addresses and limits (None: the node's default)."""
    record = dict(
        name=client["name"],
        public_key=client.get("public_key") or "",
        preshared_key=client.get("preshared_key") or "",
        persistent_keepalive=int(client.get("persistent_keepalive") or 0),
        addresses=list(addresses),
    )
    for key in LIMIT_KEYS:
        record[key] = client.get(key)
    return record


def shaping_client(record):
    """A client record with only the keys of CLIENT_OPTIONS (what tc_shaping and conn_limits take)."""
    return {key: record[key] for key in CLIENT_OPTIONS if record.get(key) is not None}
