# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The egress of a host (the interface, gateway, source address and MTU its traffic leaves by), per family.

Shared by the modules ``egress_facts`` (with its options) and ``host_probe`` (``egress``: the default
routes of both families, in the node's one preflight call). Not part of the collection's public API.
"""

from __future__ import annotations

from ansible_collections.higgs.vpn.plugins.module_utils import _iproute as iproute

FAMILIES = ("ipv4", "ipv6")
LABELS = {"ipv4": "IPv4", "ipv6": "IPv6"}


def override_hint(family):
    return f"set higgs_egress_interface_{family} (module option interface_{family})"


def detect_default_route(module, family):
    """Return (route summary or None, reason when None) from the main table's default routes."""
    route, ignored = iproute.select_default_route(
        iproute.default_routes(module, family)
    )
    if route is not None:
        for skipped in ignored:
            if skipped["metric"] < route["metric"]:
                module.warn(
                    f"ignored {LABELS[family]} {skipped['type']} default route with metric "
                    f"{skipped['metric']}, lower than the metric {route['metric']} of the "
                    f"selected route through {route['interface']}: the kernel prefers the "
                    f"{skipped['type']} route"
                )
        return route, None
    reason = f"no {LABELS[family]} default route found"
    if ignored:
        skipped = ", ".join(f"{r['type']} metric {r['metric']}" for r in ignored)
        reason += f" (ignored: {skipped})"
    return None, f"{reason}; {override_hint(family)} or add a default route"


def detect_route_get(module, family, destination):
    """Return (route summary or None, reason when None) for ``ip route get destination``."""
    try:
        routes = iproute.route_get(module, family, destination)
    except iproute.IpCommandError as exc:
        why = exc.stderr or f"rc={exc.rc}"
    else:
        route = iproute.summarize_route_get(routes)
        if route is not None:
            return route, None
        types = ", ".join(r.get("type", "unicast") for r in routes) or "none"
        why = f"no unicast route (route types: {types})"
    return None, (
        f"no {LABELS[family]} route to {destination} (destination_{family}) found: {why}; "
        f"{override_hint(family)} or add a route"
    )


def override_route(module, family, interface):
    """A main-table default route through ``interface``, or a summary without route data."""
    route, _ignored = iproute.select_default_route(
        iproute.default_routes(module, family), interface=interface
    )
    if route is not None:
        return route
    return {
        "interface": interface,
        "gateway": None,
        "source": None,
        "mtu": None,
        "metric": None,
        "table": None,
        "proto": None,
        "multipath": False,
    }


def egress_facts(module, family, route, detected_by):
    """Complete a route summary with what is read from its interface."""
    interface = route["interface"]
    try:
        link = iproute.link_summary(iproute.link_info(module, interface))
    except iproute.IpCommandError as exc:
        if detected_by != "override":
            raise
        raise iproute.IpCommandError(
            exc.cmd,
            exc.rc,
            exc.stdout,
            exc.stderr,
            msg=f"interface_{family}: cannot read interface {interface!r}: {exc.stderr}",
        ) from exc
    source = route["source"]
    if source is None:
        source = iproute.preferred_address(iproute.addresses(module, interface, family))
    return {
        "interface": interface,
        "gateway": route["gateway"],
        "source": source,
        "mtu": route["mtu"] if route["mtu"] is not None else link["mtu"],
        "metric": route["metric"],
        "table": route["table"],
        "proto": route["proto"],
        "multipath": route["multipath"],
        "detected_by": detected_by,
        "link": link,
    }


def gather(module, families, required, params=None):
    """Return the higgs_egress fact, failing when a required family is not found.

    ``params`` holds ``interface_<family>`` and ``destination_<family>`` (egress_facts' options);
    without it every family is detected from its default routes.
    """
    facts = dict.fromkeys(FAMILIES)
    missing = []
    for family in families:
        interface = (params or {}).get(f"interface_{family}")
        destination = (params or {}).get(f"destination_{family}")
        reason = None
        if interface is not None:
            route = override_route(module, family, interface)
            detected_by = "override"
        elif destination is not None:
            route, reason = detect_route_get(module, family, destination)
            detected_by = "route_get"
        else:
            route, reason = detect_default_route(module, family)
            detected_by = "default_route"
        if route is not None:
            facts[family] = egress_facts(module, family, route, detected_by)
        elif family in required:
            missing.append(reason)
    if missing:
        module.fail_json(msg="; ".join(missing))
    return facts
