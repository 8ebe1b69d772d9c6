"""Planning logic of higgs.vpn.firewall, driven by firewall_cases.yml."""

from __future__ import annotations

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
