# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NAT state the higgs-nat agent writes, checked before anything uses it.

One check for the ``nat_facts`` module (which reads the file on the node) and
its action (when the node role's probe read the file already): the endpoint
goes into the clients' profiles, so a state that is not the agent's is refused.
"""

from __future__ import annotations

import ipaddress
import json

DEFAULT_PATH = "/var/lib/higgs-nat/state.json"
MAX_STATE = 1 << 16
ROUTES = ("direct", "relay")
NAT_TYPES = ("FullCone", "RestrictedCone", "PortRestricted", "Symmetric")


def address_and_port(endpoint):
    """Whether endpoint is IPv4:port, as the agent writes it (it goes into the clients' profiles)."""
    if not isinstance(endpoint, str):
        return False
    host, sep, port = endpoint.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return bool(sep) and port.isdigit() and 0 < int(port) < 65536


def checked(state, source):
    """``state`` when the agent could have written it, else raise ValueError naming ``source``."""
    if (not isinstance(state, dict) or state.get("route") not in ROUTES
            or state.get("nat_type") not in NAT_TYPES):
        raise ValueError("%s is not a NAT state written by the higgs-nat agent" % source)
    endpoint = state.get("endpoint")
    if not (address_and_port(endpoint) if state["route"] == "direct" else endpoint is None):
        raise ValueError("%s has the endpoint %s, not an IPv4 address:port for the direct route (none for the "
                         "relay route)" % (source, json.dumps(endpoint)[:80]))
    return state


def parse(text, source):
    """The checked state in the JSON ``text`` read from ``source``, or raise ValueError."""
    if len(text) > MAX_STATE:
        raise ValueError("%s is larger than %d bytes" % (source, MAX_STATE))
    try:
        state = json.loads(text)
    except ValueError:
        raise ValueError("%s is not JSON" % source) from None
    return checked(state, source)
