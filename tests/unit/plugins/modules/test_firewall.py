"""Planning logic of higgs.vpn.firewall, driven by firewall_cases.yml."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from owned_cases import case_tests

from ansible_collections.higgs.vpn.plugins.modules import firewall

(params, validate, test_invalid_input_names_the_option, test_valid_input, test_render,
 test_documented_options_match_the_argument_spec, test_examples_validate) = case_tests(firewall, "firewall")


def test_render_is_deterministic_whatever_the_input_order():
    a = firewall.render(params({"blocked_destinations": ["192.168.0.0/16", "10.0.0.0/8"],
                                "tunnel_interfaces": ["wg1", "wg0"]}))
    b = firewall.render(params({"blocked_destinations": ["10.0.0.0/8", "192.168.0.0/16"],
                                "tunnel_interfaces": ["wg0", "wg1"]}))
    assert a == b


ROLE_DEFAULTS = yaml.safe_load(
    (Path(__file__).parents[4] / "roles/forwarding/defaults/main.yml").read_text())


@pytest.mark.parametrize("address", [
    "64:ff9b::c0a8:101",      # NAT64 of 192.168.1.1 (RFC 6052)
    "64:ff9b:1::a00:1",       # local-use NAT64 (RFC 8215)
    "2002:c0a8:101::1",       # 6to4 of 192.168.1.1
    "::ffff:192.168.1.1",     # IPv4-mapped
])
def test_default_blocked_destinations_cover_ipv4_embedded_in_ipv6(address):
    """Issue 12 item 19: on a NAT64 network these reach the owner's IPv4 LAN."""
    blocked = [ipaddress.ip_network(n) for n in ROLE_DEFAULTS["forwarding_blocked_destinations"]]
    addr = ipaddress.ip_address(address)
    assert any(addr in net for net in blocked if net.version == 6)
    text = firewall.render(params({"blocked_destinations": ROLE_DEFAULTS["forwarding_blocked_destinations"]}))
    assert str(next(n for n in blocked if n.version == 6 and addr in n)) in text["nftables"]
