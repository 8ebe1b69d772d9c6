"""higgs.vpn.tc_shaping: parameter checks driven by tc_shaping_cases.yml, and the documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.doc_fragments.shaping_clients import ModuleDocFragment as ClientsFragment
from ansible_collections.higgs.vpn.plugins.module_utils import _plan
from ansible_collections.higgs.vpn.plugins.modules import tc_shaping

CASES = yaml.safe_load((Path(__file__).parent / "tc_shaping_cases.yml").read_text())
CLIENT_KEYS = dict.fromkeys(_plan.CLIENT_OPTIONS)


def params(overrides):
    merged = dict(CASES["base"])
    merged.update(overrides)
    merged["clients"] = [dict(CLIENT_KEYS, **c) for c in merged["clients"]]
    return merged


@pytest.mark.parametrize("case", CASES["invalid"], ids=lambda c: c["name"])
def test_invalid_input_names_the_option(case):
    _spec, errors = tc_shaping.validate(params(case["params"]))
    for expected in case["errors"]:
        assert any(expected in error for error in errors), errors


@pytest.mark.parametrize("case", CASES["valid"], ids=lambda c: c["name"])
def test_valid_input(case):
    assert tc_shaping.validate(params(case["params"]))[1] == []


def test_client_rates_fall_back_to_the_defaults():
    spec, _errors = tc_shaping.validate(params({
        "client_rate_down": "10mbit",
        "clients": [{"name": "a", "addresses": ["10.66.0.2/32"]},
                    {"name": "b", "addresses": ["10.66.0.3/32"], "rate_down": "unlimited", "rate_up": "1mbit"}]}))
    assert [(c["down"], c["up"]) for c in spec["clients"]] == [(10_000_000, None), (None, 1_000_000)]
    assert spec["ifb"] == "ifb-wg0"


def test_documented_options_match_the_argument_spec():
    doc = yaml.safe_load(ClientsFragment.DOCUMENTATION)["options"]
    doc.update(yaml.safe_load(tc_shaping.DOCUMENTATION)["options"])
    assert set(doc) == set(tc_shaping.ARGUMENT_SPEC)
    for name, spec in tc_shaping.ARGUMENT_SPEC.items():
        for key in ("type", "elements", "choices", "default"):
            assert doc[name].get(key) == spec.get(key), f"{name}.{key}"
    assert set(doc["clients"]["suboptions"]) == set(_plan.CLIENT_OPTIONS)


def test_examples_validate():
    tasks = yaml.safe_load(tc_shaping.EXAMPLES)
    calls = [t["higgs.vpn.tc_shaping"] for t in tasks]
    for call in calls:
        assert set(call) <= set(tc_shaping.ARGUMENT_SPEC)
        merged = dict({k: v.get("default") for k, v in tc_shaping.ARGUMENT_SPEC.items()}, **call)
        merged["clients"] = [dict(CLIENT_KEYS, **c) for c in merged["clients"]]
        assert tc_shaping.validate(merged)[1] == []
