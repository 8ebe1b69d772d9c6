# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private helpers around iproute2's ``ip -j`` (JSON) output.

Not part of the collection's public API.

The module is split in two layers:

* command runners (``default_routes``, ``route_get``, ``link_info``,
  ``addresses``) run ``ip`` with an argument list (never a shell) through
  ``module.run_command`` in the C locale and return the decoded JSON;
* pure functions (``parse_json``, ``select_default_route``,
  ``summarize_route_get``, ``link_summary``, ``preferred_address``) turn that
  JSON into plain dicts and can be tested with captured output.

Facts about iproute2's JSON output that the parsers rely on (iproute2 6.1):

* ``type`` is omitted for unicast routes, ``protocol`` is omitted for
  ``proto boot`` when listing routes, ``metric`` is omitted when it is 0 (IPv4)
  and ``table`` is omitted for the main table;
* a route MTU appears as ``"metrics": [{"mtu": 1380}]``;
* multipath routes carry a ``nexthops`` list instead of ``dev``/``gateway``;
* an IPv4 route with an IPv6 next hop (RFC 5549) carries
  ``"via": {"family": "inet6", "host": "fe80::1"}`` instead of ``gateway``.
"""

from __future__ import annotations

import json

FAMILY_FLAGS = {"ipv4": "-4", "ipv6": "-6"}

# The C locale keeps ip's error messages stable (they end up in failure messages).
C_LOCALE = {"LANG": "C", "LC_ALL": "C", "LC_MESSAGES": "C"}

# Address flags that make an address unsuitable as a source address.
UNUSABLE_ADDRESS_FLAGS = ("tentative", "dadfailed", "deprecated", "temporary")


class IpError(Exception):
    """``ip`` could not be run or produced unusable output."""


class IpCommandError(IpError):
    """``ip`` exited with a non-zero status; ``msg`` replaces the default message."""

    def __init__(self, cmd, rc, stdout, stderr, msg=None):
        self.cmd = cmd
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr.strip()
        super().__init__(msg or f"'{' '.join(cmd)}' failed with rc={rc}: {self.stderr}")


# ---------------------------------------------------------------------------
# Pure parsing functions
# ---------------------------------------------------------------------------


def parse_json(text, cmd):
    """Decode the JSON list printed by ``ip -j``; empty output means no objects."""
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise IpError(
            f"could not parse the JSON printed by '{' '.join(cmd)}': {exc}"
        ) from exc
    if not isinstance(data, list):
        raise IpError(
            f"expected a JSON list from '{' '.join(cmd)}', got {type(data).__name__}"
        )
    return data


def is_unicast(route):
    """Only unicast routes forward traffic (not blackhole, unreachable, prohibit, throw, ...)."""
    return route.get("type", "unicast") == "unicast"


def route_mtu(route):
    """The ``mtu`` route metric, or None when the route does not set one."""
    for metrics in route.get("metrics", []):
        if "mtu" in metrics:
            return metrics["mtu"]
    return None


def _gateway(hop):
    if "gateway" in hop:
        return hop["gateway"]
    return hop.get("via", {}).get("host")


def _summarize(route, hop, proto):
    return {
        "interface": hop["dev"],
        "gateway": _gateway(hop),
        "source": route.get("prefsrc"),
        "mtu": route_mtu(route),
        "metric": route.get("metric", 0),
        "table": route.get("table", "main"),
        "proto": proto,
        "multipath": "nexthops" in route,
    }


def _nexthop(route, interface):
    """The next hop of ``route`` to use: the first one, or the first through ``interface``."""
    hops = route.get("nexthops", [route])
    for hop in hops:
        if "dev" in hop and (interface is None or hop["dev"] == interface):
            return hop
    return None


def select_default_route(routes, interface=None):
    """Pick the egress among the default routes printed by ``ip -j route show default``.

    Non-unicast routes are ignored.  The lowest metric wins (a missing metric
    is 0); ties keep the order ``ip`` printed the routes in.  Multipath routes
    contribute their first next hop.  With ``interface``, only routes (or next
    hops) through that interface are considered.

    Returns ``(summary, ignored)``: ``summary`` is a dict (see ``_summarize``)
    or None, ``ignored`` lists the non-unicast routes as
    ``{"type": ..., "metric": ...}``.
    """
    best = None
    best_metric = None
    ignored = []
    for route in routes:
        metric = route.get("metric", 0)
        if not is_unicast(route):
            ignored.append({"type": route["type"], "metric": metric})
            continue
        hop = _nexthop(route, interface)
        if hop is not None and (best is None or metric < best_metric):
            # Listing omits the protocol when it is "boot".
            best = _summarize(route, hop, route.get("protocol", "boot"))
            best_metric = metric
    return best, ignored


def summarize_route_get(routes):
    """Summarize ``ip -j route get`` output, or None when it is not a usable unicast route.

    ``ip route get`` reports ``protocol`` for some IPv6 routes only, so a
    missing protocol is reported as None rather than guessed.
    """
    for route in routes:
        hop = _nexthop(route, None)
        if is_unicast(route) and hop is not None:
            return _summarize(route, hop, route.get("protocol"))
    return None


def link_summary(link):
    """MTU, operational state and kind (``linkinfo.info_kind`` of ``ip -d``) of a link."""
    return {
        "mtu": link.get("mtu"),
        "state": link.get("operstate"),
        "kind": link.get("linkinfo", {}).get("info_kind"),
    }


def preferred_address(addr_info):
    """The first global address usable as a source, from ``addr_info`` entries.

    Tentative, DAD-failed, deprecated and temporary (privacy) addresses are
    skipped.
    """
    for addr in addr_info:
        if addr.get("scope") != "global":
            continue
        if any(addr.get(flag) for flag in UNUSABLE_ADDRESS_FLAGS):
            continue
        return addr.get("local")
    return None


# ---------------------------------------------------------------------------
# Command runners
# ---------------------------------------------------------------------------


def run_ip_json(module, args):
    """Run ``ip -j <args>`` and return its decoded JSON list.

    Raises IpCommandError when ``ip`` exits non-zero and IpError when the
    output is not a JSON list.
    """
    cmd = [module.get_bin_path("ip", required=True), "-j", *args]
    rc, out, err = module.run_command(cmd, environ_update=C_LOCALE)
    if rc != 0:
        raise IpCommandError(cmd, rc, out, err)
    return parse_json(out, cmd)


def default_routes(module, family):
    """Default routes of ``family`` (``ipv4``/``ipv6``) in the main table, as printed."""
    return run_ip_json(
        module, [FAMILY_FLAGS[family], "route", "show", "table", "main", "default"]
    )


def route_get(module, family, destination):
    """The route the kernel picks for ``destination`` (honours policy routing)."""
    return run_ip_json(module, [FAMILY_FLAGS[family], "route", "get", destination])


def link_info(module, ifname):
    """The ``ip -j -d link`` object of ``ifname``."""
    links = run_ip_json(module, ["-d", "link", "show", "dev", ifname])
    if not links:
        raise IpError(f"'ip -j -d link show dev {ifname}' printed no link")
    return links[0]


def addresses(module, ifname, family):
    """The ``addr_info`` entries of ``family`` on ``ifname``, in the order ip printed them."""
    links = run_ip_json(module, [FAMILY_FLAGS[family], "addr", "show", "dev", ifname])
    return [addr for link in links for addr in link.get("addr_info", [])]
