# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rate filters: parse the rates operators write, report bad ones by variable.

Documentation of each filter is in the sidecar file ``<filter name>.yml``.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.higgs.vpn.plugins.module_utils import _plan, _tc


def rate_bits(value, name="rate"):
    """Bits per second of ``value``, see rate_bits.yml."""
    try:
        return _tc.parse_rate(value)
    except ValueError as exc:
        raise AnsibleFilterError("%s: %s" % (name, exc)) from None


def rate_errors(rates, clients=None, clients_name="clients"):
    """Problems of the rates in ``rates`` {variable: value} and ``clients``, see rate_errors.yml."""
    errors = []
    for name, value in sorted((rates or {}).items()):
        if value in (None, ""):
            continue
        try:
            _tc.parse_rate(value)
        except ValueError as exc:
            errors.append("%s: %s" % (name, exc))
    for index, client in enumerate(clients or []):
        if not isinstance(client, dict):
            errors.append("%s[%d]: must be a mapping with name and addresses" % (clients_name, index))
            continue
        errors += _plan.limit_errors("%s[%d] (%s)" % (clients_name, index, client.get("name")), client)
    return errors


def shaping_clients(clients):
    """The clients with only the keys the shaping modules take, see shaping_clients.yml."""
    out = []
    for index, client in enumerate(clients or []):
        if not isinstance(client, dict):
            raise AnsibleFilterError("shaping_clients: item %d is not a mapping" % index)
        out.append(_plan.shaping_client(client))
    return out


class FilterModule:
    """higgs.vpn rate filters."""

    def filters(self):
        return {"rate_bits": rate_bits, "rate_errors": rate_errors, "shaping_clients": shaping_clients}
