"""Unit tests for higgs.vpn.egress_facts.

The module tests are data: egress_facts_cases.yml holds module arguments,
captured ``ip -j`` results and the expected facts or failure.  A few direct
tests cover parser edge cases and keep DOCUMENTATION/EXAMPLES/RETURN in step
with the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.higgs.vpn.plugins.module_utils import _iproute as iproute
from ansible_collections.higgs.vpn.plugins.modules import egress_facts, host_probe

IP = "/usr/sbin/ip"
CASES = yaml.safe_load(
    (Path(__file__).parent / "egress_facts_cases.yml").read_text(encoding="utf-8")
)["cases"]


class ModuleExit(Exception):
    """exit_json was called; args[0] is the result."""


class ModuleFail(Exception):
    """fail_json was called; args[0] is the result."""


def run_module(monkeypatch, args, commands):
    """Run egress_facts.main() with ``ip`` mocked by ``commands``.

    Returns (exception raised by exit_json/fail_json, commands run, warnings).
    """
    ran = []
    warnings = []

    def get_bin_path(self, arg, required=False, opt_dirs=None):
        assert (arg, required) == ("ip", True)
        return IP

    def run_command(self, args, **kwargs):
        assert isinstance(args, list), "ip must be run with an argument list"
        assert args[0] == IP
        assert kwargs.get("environ_update", {}).get("LANG") == "C"
        assert not kwargs.get("use_unsafe_shell")
        key = " ".join(args[1:])
        if key not in commands:
            pytest.fail(f"unexpected command: ip {key}")
        ran.append(key)
        result = commands[key]
        return result.get("rc", 0), result.get("stdout", ""), result.get("stderr", "")

    def exit_json(self, **kwargs):
        raise ModuleExit(kwargs)

    def fail_json(self, msg, **kwargs):
        raise ModuleFail(dict(kwargs, msg=msg))

    monkeypatch.setattr(AnsibleModule, "get_bin_path", get_bin_path)
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(
        AnsibleModule, "warn", lambda self, warning, **kw: warnings.append(warning)
    )

    with patch_module_args(args), pytest.raises((ModuleExit, ModuleFail)) as outcome:
        egress_facts.main()
    return outcome.value, ran, warnings


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_egress_facts(monkeypatch, case):
    commands = case.get("commands", {})
    outcome, ran, warnings = run_module(monkeypatch, case["args"], commands)
    result = outcome.args[0]

    if "facts" in case:
        assert isinstance(outcome, ModuleExit), result.get("msg")
        assert result == {
            "changed": False,
            "ansible_facts": {"higgs_egress": case["facts"]},
        }
    else:
        assert isinstance(outcome, ModuleFail), result
        for fragment in case["fail"]:
            assert fragment in result["msg"]
        for key, value in case.get("fail_fields", {}).items():
            assert result[key] == value
    assert sorted(set(ran)) == sorted(commands), "every mocked command must be run"
    expected_warnings = case.get("warnings", [])
    assert len(warnings) == len(expected_warnings), warnings
    for fragment, warning in zip(expected_warnings, warnings, strict=True):
        assert fragment in warning


# --- parser edge cases that captured output cannot show -----------------------


def test_lowest_metric_wins_whatever_the_print_order():
    # The kernel prints routes sorted by metric; do not rely on it.
    routes = [
        {"dst": "default", "gateway": "198.51.100.1", "dev": "a0", "metric": 200},
        {"dst": "default", "gateway": "203.0.113.1", "dev": "b0", "metric": 100},
        {"dst": "default", "gateway": "192.0.2.1", "dev": "c0", "metric": 100},
    ]
    route, ignored = iproute.select_default_route(routes)
    assert (route["interface"], route["metric"], ignored) == ("b0", 100, [])


def test_select_default_route_through_interface_without_match():
    routes = [{"dst": "default", "gateway": "192.0.2.1", "dev": "eth0", "flags": []}]
    assert iproute.select_default_route(routes, interface="eth1") == (None, [])


def test_empty_output_is_an_empty_list():
    assert iproute.parse_json("", ["ip", "-j", "route"]) == []


def test_non_list_json_is_rejected():
    with pytest.raises(iproute.IpError, match="expected a JSON list"):
        iproute.parse_json('{"dst": "default"}', ["ip", "-j", "route"])


def test_route_get_of_a_local_address_is_not_an_egress():
    local = [{"type": "local", "dst": "192.0.2.2", "dev": "lo", "table": "local"}]
    assert iproute.summarize_route_get(local) is None


def test_temporary_addresses_are_not_preferred():
    addr_info = [
        {
            "family": "inet6",
            "local": "2001:db8::f00",
            "scope": "global",
            "temporary": True,
        },
        {
            "family": "inet6",
            "local": "2001:db8::1",
            "scope": "global",
            "mngtmpaddr": True,
        },
    ]
    assert iproute.preferred_address(addr_info) == "2001:db8::1"


def test_no_usable_address_gives_no_source():
    addr_info = [{"family": "inet6", "local": "fe80::1", "scope": "link"}]
    assert iproute.preferred_address(addr_info) is None


# --- documentation ---------------------------------------------------------------


def test_documented_options_match_the_argument_spec():
    options = yaml.safe_load(egress_facts.DOCUMENTATION)["options"]
    assert set(options) == set(egress_facts.ARGUMENT_SPEC)
    for name, spec in egress_facts.ARGUMENT_SPEC.items():
        doc = options[name]
        for key in ("type", "elements", "choices", "default"):
            assert doc.get(key) == spec.get(key), f"{name}.{key}"


def test_examples_use_only_documented_options():
    options = set(yaml.safe_load(egress_facts.DOCUMENTATION)["options"])
    tasks = yaml.safe_load(egress_facts.EXAMPLES)
    calls = [
        t["higgs.vpn.egress_facts"] or {}
        for t in tasks
        if "higgs.vpn.egress_facts" in t
    ]
    assert calls
    for call in calls:
        assert set(call) <= options


def test_returned_keys_match_the_documentation():
    ret = yaml.safe_load(egress_facts.RETURN)["ansible_facts"]
    family_doc = ret["contains"]["higgs_egress"]["contains"]["ipv4"]["contains"]
    facts = next(
        c["facts"] for c in CASES if c["id"] == "single_default_route_per_family"
    )
    for family in ("ipv4", "ipv6"):
        assert set(facts[family]) == set(family_doc)
        assert set(facts[family]["link"]) == set(family_doc["link"]["contains"])
    sample = ret["sample"]["higgs_egress"]["ipv4"]
    assert set(sample) == set(family_doc)


@pytest.mark.parametrize("case_id", ["single_default_route_per_family", "no_default_route_not_required_is_null",
                                     "blackhole_unreachable_prohibit_defaults_ignored"])
def test_the_node_probe_detects_the_same_egress_in_its_one_call(monkeypatch, case_id):
    """host_probe's egress option (the node's preflight) gives what egress_facts gives with required: []."""
    case = next(c for c in CASES if c["id"] == case_id)
    outcome, _ran, warnings = run_module(monkeypatch, {"required": []}, case["commands"])
    with patch_module_args({"egress": True}), pytest.raises((ModuleExit, ModuleFail)) as probed:
        host_probe.main()
    assert isinstance(probed.value, ModuleExit), probed.value.args
    assert isinstance(outcome, ModuleExit), outcome.args
    assert probed.value.args[0]["ansible_facts"] == outcome.args[0]["ansible_facts"]
    assert outcome.args[0]["ansible_facts"]["higgs_egress"] == case["facts"]
    assert len(warnings) == 2 * len(case.get("warnings", []))  # the same warnings, once per module
