"""higgs.vpn.conn_limits: planning driven by conn_limits_cases.yml, and the documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.doc_fragments.owned_firewall import ModuleDocFragment
from ansible_collections.higgs.vpn.plugins.doc_fragments.shaping_clients import ModuleDocFragment as ClientsFragment
from ansible_collections.higgs.vpn.plugins.module_utils import _plan
from ansible_collections.higgs.vpn.plugins.modules import conn_limits

CASES = yaml.safe_load((Path(__file__).parent / "conn_limits_cases.yml").read_text())
CLIENT_KEYS = dict.fromkeys(_plan.CLIENT_OPTIONS)


def params(overrides):
    merged = dict(CASES["base"])
    merged.update(overrides)
    merged["clients"] = [dict(CLIENT_KEYS, **c) for c in merged["clients"]]
    return merged


@pytest.mark.parametrize("case", CASES["invalid"], ids=lambda c: c["name"])
def test_invalid_input_names_the_option(case):
    errors = conn_limits.validate(params(case["params"]))
    for expected in case["errors"]:
        assert any(expected in error for error in errors), errors


@pytest.mark.parametrize("case", CASES["valid"], ids=lambda c: c["name"])
def test_valid_input(case):
    assert conn_limits.validate(params(case["params"])) == []


@pytest.mark.parametrize("case", CASES["render"], ids=lambda c: c["name"])
def test_render(case):
    rendered = conn_limits.render(params(dict(case["params"], backend=case["backend"])))
    text = rendered[case.get("family", "nftables")]
    for fragment in case["contains"]:
        assert fragment in text, text
    for fragment in case.get("absent", []):
        assert fragment not in text, text


def test_chain_names_are_stable_and_safe():
    assert conn_limits.chain_name("alice's phone") == conn_limits.chain_name("alice's phone")
    assert conn_limits.chain_name("a").startswith("c_") and len(conn_limits.chain_name("a")) == 14


def test_documented_options_match_the_argument_spec():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    doc.update(yaml.safe_load(ClientsFragment.DOCUMENTATION)["options"])
    doc.update(yaml.safe_load(conn_limits.DOCUMENTATION)["options"])
    assert set(doc) == set(conn_limits.ARGUMENT_SPEC)
    for name, spec in conn_limits.ARGUMENT_SPEC.items():
        for key in ("type", "elements", "choices", "default"):
            assert doc[name].get(key) == spec.get(key), f"{name}.{key}"
    assert set(doc["clients"]["suboptions"]) == set(_plan.CLIENT_OPTIONS)


def test_examples_validate():
    for task in yaml.safe_load(conn_limits.EXAMPLES):
        call = task["higgs.vpn.conn_limits"]
        assert set(call) <= set(conn_limits.ARGUMENT_SPEC)
        assert conn_limits.validate(params(call)) == []
