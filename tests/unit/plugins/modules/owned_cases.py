"""The case-driven tests every owned-firewall module shares.

``<module>_cases.yml`` holds ``base`` (the parameters every case starts from),
``invalid`` (parameters and fragments of the errors they must give), ``valid``
and ``render`` (backend, parameters and fragments the ruleset must or must not
hold). :func:`case_tests` turns them into the test functions of the module's
test file, validating as the module run does (the shared options first).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.module_utils import _owned


def documented_options(module):
    """The options of ``module``'s DOCUMENTATION with those of the collection's fragments it extends."""
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = {}
    for fragment in doc.get("extends_documentation_fragment", []):
        if fragment.startswith("higgs.vpn."):
            found = import_module("ansible_collections.higgs.vpn.plugins.doc_fragments." + fragment.split(".")[2])
            options.update(yaml.safe_load(found.ModuleDocFragment.DOCUMENTATION)["options"])
    options.update(doc["options"])
    return options


def case_tests(module, name):
    """(params, validate, and the test functions) of the owned-firewall module ``module``."""
    cases = yaml.safe_load((Path(__file__).parent / (name + "_cases.yml")).read_text())
    client_keys = dict.fromkeys(module.ARGUMENT_SPEC.get("clients", {}).get("options", {}))

    def params(overrides):
        merged = dict(cases["base"])
        merged.update(overrides)
        if "clients" in merged:
            merged["clients"] = [dict(client_keys, **c) for c in merged["clients"]]
        return merged

    def validate(values):
        return _owned.common_errors(values) + module.validate(values)

    @pytest.mark.parametrize("case", cases["invalid"], ids=lambda c: c["name"])
    def test_invalid_input_names_the_option(case):
        errors = validate(params(case["params"]))
        for expected in case["errors"]:
            assert any(expected in error for error in errors), errors

    @pytest.mark.parametrize("case", cases["valid"], ids=lambda c: c["name"])
    def test_valid_input(case):
        assert validate(params(case["params"])) == []

    @pytest.mark.parametrize("case", cases["render"], ids=lambda c: c["name"])
    def test_render(case):
        rendered = module.render(params(dict(case["params"], backend=case["backend"])))
        text = rendered[case.get("family", "nftables")]
        for fragment in case["contains"]:
            assert fragment in text, text
        for fragment in case.get("absent", []):
            assert fragment not in text, text

    def test_documented_options_match_the_argument_spec():
        doc = documented_options(module)
        assert set(doc) == set(module.ARGUMENT_SPEC)
        for option, spec in module.ARGUMENT_SPEC.items():
            for key in ("type", "elements", "choices", "default"):
                assert doc[option].get(key) == spec.get(key), f"{option}.{key}"
            if "options" in spec:
                assert set(doc[option]["suboptions"]) == set(spec["options"]), option

    def test_examples_validate():
        calls = [t["higgs.vpn." + name] for t in yaml.safe_load(module.EXAMPLES) if "higgs.vpn." + name in t]
        assert calls
        for call in calls:
            assert set(call) <= set(module.ARGUMENT_SPEC)
            assert validate(params(call)) == []

    return (params, validate, test_invalid_input_names_the_option, test_valid_input, test_render,
            test_documented_options_match_the_argument_spec, test_examples_validate)
