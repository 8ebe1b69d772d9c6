"""higgs.vpn.dns_intercept: planning driven by dns_intercept_cases.yml, and the module run."""

from __future__ import annotations

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from owned_cases import case_tests

from ansible_collections.higgs.vpn.plugins.module_utils import _owned
from ansible_collections.higgs.vpn.plugins.modules import dns_intercept

NFT = "/usr/sbin/nft"
(params, validate, test_invalid_input_names_the_option, test_valid_input, test_render,
 test_documented_options_match_the_argument_spec, test_examples_validate) = case_tests(dns_intercept, "dns_intercept")


def test_render_is_deterministic_whatever_the_input_order():
    a = dns_intercept.render(params({"tunnel_interfaces": ["wg1", "wg0"]}))
    b = dns_intercept.render(params({"tunnel_interfaces": ["wg0", "wg1", "wg0"]}))
    assert a == b


# --- the module run: read, compare, apply, persist ------------------------------


class ModuleExit(Exception):
    """exit_json was called; args[0] is the result."""


class ModuleFail(Exception):
    """fail_json was called; args[0] is the result."""


def run_module(monkeypatch, tmp_path, args, live, check_mode=False):
    """Run main() against a fake nft whose table listing is ``live`` (None: no table)."""
    ran = []

    def run_command(self, argv, **kwargs):
        assert isinstance(argv, list)
        assert kwargs.get("environ_update", {}).get("LANG") == "C"
        ran.append(argv[1:])
        if argv[1:3] == ["list", "table"]:
            if live[0] is None:
                return 1, "", "Error: No such file or directory"
            return 0, live[0], ""
        if argv[1:] == ["-f", "-"]:
            live[0] = "applied\n"
            return 0, "", ""
        if argv[1:3] == ["delete", "table"]:
            live[0] = None
            return 0, "", ""
        pytest.fail("unexpected command %s" % argv)

    def exit_json(self, **kwargs):
        raise ModuleExit(kwargs)

    def fail_json(self, msg, **kwargs):
        raise ModuleFail(dict(kwargs, msg=msg))

    monkeypatch.setattr(AnsibleModule, "get_bin_path",
                        lambda self, arg, required=False, opt_dirs=None: NFT if arg == "nft" else None)
    monkeypatch.setattr(_owned, "UNIT_DIR", str(tmp_path / "units"))
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(AnsibleModule, "fail_json", fail_json)
    module_args = dict(args, persist_dir=str(tmp_path / "fw"), _ansible_check_mode=check_mode, _ansible_diff=True)
    with patch_module_args(module_args), pytest.raises((ModuleExit, ModuleFail)) as outcome:
        dns_intercept.main()
    return outcome.value, ran


def test_apply_then_nothing_to_do_then_remove(monkeypatch, tmp_path):
    live = [None]
    args = {"resolver_addresses": ["10.66.0.1"]}
    outcome, ran = run_module(monkeypatch, tmp_path, args, live, check_mode=True)
    assert isinstance(outcome, ModuleExit) and outcome.args[0]["changed"]
    assert ["-f", "-"] not in ran, "check mode must not apply"
    assert not (tmp_path / "fw").exists()

    outcome, ran = run_module(monkeypatch, tmp_path, args, live)
    result = outcome.args[0]
    assert result["changed"] and ["-f", "-"] in ran
    assert "dnat ip to 10.66.0.1" in result["diff"]["after"]
    stored = (tmp_path / "fw" / "higgs_vpn_dns.nft").read_text()
    assert stored.startswith(_owned.FINGERPRINT_PREFIX + _owned.fingerprint("applied\n"))
    assert (tmp_path / "units/sysinit.target.wants/higgs-vpn-nft@higgs_vpn_dns.service").exists()

    outcome, ran = run_module(monkeypatch, tmp_path, args, live)
    assert not outcome.args[0]["changed"] and ["-f", "-"] not in ran

    live[0] = "changed by hand\n"
    outcome, ran = run_module(monkeypatch, tmp_path, args, live)
    assert outcome.args[0]["changed"] and ["-f", "-"] in ran, "drift must be repaired"

    outcome, ran = run_module(monkeypatch, tmp_path, {"state": "absent"}, live)
    assert outcome.args[0]["changed"] and ["delete", "table", "inet", "higgs_vpn_dns"] in ran
    assert live[0] is None and not (tmp_path / "fw").exists()
    assert not [p for p in (tmp_path / "units").rglob("*") if not p.is_dir()], "the boot restore goes too"


def test_bad_input_fails_before_any_command(monkeypatch, tmp_path):
    outcome, ran = run_module(monkeypatch, tmp_path, {"resolver_addresses": ["203.0.113.300"]}, [None])
    assert isinstance(outcome, ModuleFail)
    assert "resolver_addresses: '203.0.113.300'" in outcome.args[0]["msg"]
    assert ran == []
