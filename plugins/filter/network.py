# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that check and derive node addresses for the roles' preflight."""

from __future__ import annotations

import ipaddress

from ansible_collections.higgs.vpn.plugins.module_utils import _net


def invalid_ifnames(names):
    """['name: reason', ...] for the entries that are not safe interface names."""
    if isinstance(names, str):
        names = [names]
    return ["%r %s" % (n, _net.ifname_error(n)) for n in names if _net.ifname_error(n)]


def control_char_errors(values):
    """['name[0].key contains the control character ...', ...]; see control_char_errors.yml."""
    return _net.control_char_errors(values)


def invalid_networks(values, strict=True):
    """['value: reason', ...] for the entries that are not networks in CIDR form."""
    if isinstance(values, str):
        values = [values]
    return ["%r: %s" % (k, v) for k, v in _net.cidr_errors(values, strict=strict).items()]


def overlapping(first, second=None):
    """'a overlaps b' for each overlapping pair (within ``first`` when ``second`` is omitted)."""
    pairs = _net.self_overlaps(first) if second is None else _net.overlaps(first, second)
    return ["%s overlaps %s" % pair for pair in pairs]


def host_networks(facts, exclude=()):
    """Connected networks and own addresses of a host, from its network facts."""
    return _net.host_networks(facts, exclude)


def address_of(interface):
    """'10.66.0.1/24' -> '10.66.0.1': the address of an interface address."""
    return str(ipaddress.ip_interface(interface).ip)


class FilterModule:
    """higgs.vpn network filters."""

    def filters(self):
        return {
            "invalid_ifnames": invalid_ifnames,
            "control_char_errors": control_char_errors,
            "invalid_networks": invalid_networks,
            "overlapping": overlapping,
            "host_networks": host_networks,
            "address_of": address_of,
        }
