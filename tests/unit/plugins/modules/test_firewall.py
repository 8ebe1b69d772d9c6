"""Planning logic of higgs.vpn.firewall, driven by firewall_cases.yml."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.doc_fragments.owned_firewall import ModuleDocFragment
from ansible_collections.higgs.vpn.plugins.modules import firewall

CASES = yaml.safe_load((Path(__file__).parent / "firewall_cases.yml").read_text())


def params(overrides):
    merged = dict(CASES["base"])
    merged.update(overrides)
    return merged


@pytest.mark.parametrize("case", CASES["invalid"], ids=lambda c: c["name"])
def test_invalid_input_names_the_option(case):
    errors = firewall.validate(params(case["params"]))
    for expected in case["errors"]:
        assert any(expected in error for error in errors), errors


@pytest.mark.parametrize("case", CASES["valid"], ids=lambda c: c["name"])
def test_valid_input(case):
    assert firewall.validate(params(case["params"])) == []


@pytest.mark.parametrize("case", CASES["render"], ids=lambda c: c["name"])
def test_render(case):
    rendered = firewall.render(params(dict(case["params"], backend=case["backend"])))
    text = rendered[case.get("family", "nftables")]
    for fragment in case["contains"]:
        assert fragment in text, text
    for fragment in case.get("absent", []):
        assert fragment not in text, text


def test_render_is_deterministic_whatever_the_input_order():
    a = firewall.render(params({"blocked_destinations": ["192.168.0.0/16", "10.0.0.0/8"],
                                "tunnel_interfaces": ["wg1", "wg0"]}))
    b = firewall.render(params({"blocked_destinations": ["10.0.0.0/8", "192.168.0.0/16"],
                                "tunnel_interfaces": ["wg0", "wg1"]}))
    assert a == b


def test_documented_options_match_the_argument_spec():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    doc.update(yaml.safe_load(firewall.DOCUMENTATION)["options"])
    assert set(doc) == set(firewall.ARGUMENT_SPEC)
    for name, spec in firewall.ARGUMENT_SPEC.items():
        for key in ("type", "elements", "choices", "default"):
            assert doc[name].get(key) == spec.get(key), f"{name}.{key}"


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
