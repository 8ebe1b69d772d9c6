"""The node plan (module_utils/_plan.py), driven by plan_cases.yml; its defaults are the roles' defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.filter import plan as plan_filters
from ansible_collections.higgs.vpn.plugins.filter import rates
from ansible_collections.higgs.vpn.plugins.module_utils import _plan

CASES = yaml.safe_load((Path(__file__).parent / "plan_cases.yml").read_text(encoding="utf-8"))
ROLES = Path(__file__).resolve().parents[4] / "roles"


@pytest.mark.parametrize("case", CASES["accepted"], ids=lambda c: c["name"])
def test_plan(case):
    record = _plan.node_plan(case["inventory"], case.get("previous"))
    for key, value in case.get("expect", {}).items():
        assert record[key] == value, key
    clients = {c["name"]: c for c in record["clients"]}
    for name, expected in case.get("expect_clients", {}).items():
        assert {k: clients[name][k] for k in expected} == expected
    shaping = {c["name"]: c for c in rates.shaping_clients(record["clients"])}
    for name, expected in case.get("expect_shaping", {}).items():
        assert {k: v for k, v in shaping[name].items() if k != "addresses"} == expected
        assert shaping[name]["addresses"] == clients[name]["addresses"]
    assert plan_filters.node_plan_errors(case["inventory"], case.get("previous")) == []


@pytest.mark.parametrize("case", CASES["refused"], ids=lambda c: c["name"])
def test_refused(case):
    with pytest.raises(_plan.PlanError) as exc:
        _plan.node_plan(case["inventory"])
    assert len(exc.value.errors) == len(case["errors"]), exc.value.errors
    for fragment in case["errors"]:
        assert any(fragment in error for error in exc.value.errors), exc.value.errors
    assert plan_filters.node_plan_errors(case["inventory"]) == exc.value.errors


def test_allocation_does_not_depend_on_the_order_of_the_clients():
    names = ["client%03d" % i for i in range(100)]
    first = _plan.node_plan({"wireguard_clients": [{"name": n} for n in names]})
    again = _plan.node_plan({"wireguard_clients": [{"name": n} for n in reversed(names)]})
    assert sorted(map(str, first["clients"])) == sorted(map(str, again["clients"]))


def defaults_of(role):
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text(encoding="utf-8"))


def test_plan_defaults_are_the_roles_defaults():
    """The plan falls back to the parts' own defaults: none of them is spelled differently."""
    merged = {}
    for role in ("wireguard", "forwarding", "dns_forwarder", "traffic_shaping", "relay_connector", "node"):
        merged.update(defaults_of(role))
    for name, value in _plan.DEFAULTS.items():
        assert merged[name] == value, name


def test_argument_specs_without_defaults():
    spec = {"a": {"type": "int", "default": "{{ x }}", "options": {"b": {"type": "str", "default": "y"}}}}
    assert plan_filters.without_defaults(spec) == {"a": {"type": "int", "options": {"b": {"type": "str"}}}}
