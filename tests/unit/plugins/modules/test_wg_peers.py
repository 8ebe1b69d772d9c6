"""higgs.vpn.wg_peers driven by wg_peers_cases.yml, with `wg` mocked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.higgs.vpn.plugins.modules import wg_peers

WG = "/usr/bin/wg"
CASES = yaml.safe_load((Path(__file__).parent / "wg_peers_cases.yml").read_text(encoding="utf-8"))["cases"]


class Done(Exception):
    """exit_json or fail_json was called; args[0] is the result."""


def run(monkeypatch, tmp_path, case):
    calls = []
    psks = []

    def run_command(self, args, **kwargs):
        assert isinstance(args, list), "wg must be run with an argument list"
        assert args[0] == WG
        assert kwargs.get("environ_update", {}).get("LANG") == "C"
        if args[1:] == ["show", "wg0", "dump"]:
            result = case.get("dump")
            assert result is not None, "unexpected wg show"
            return result.get("rc", 0), result.get("stdout", ""), result.get("stderr", "")
        assert args[1:3] == ["set", "wg0"], args
        shown = []
        for index, arg in enumerate(args[3:]):
            if index and args[3 + index - 1] == "preshared-key" and arg != "/dev/null":
                mode = stat.S_IMODE(os.stat(arg).st_mode)
                assert mode == 0o600 and stat.S_IMODE(os.stat(os.path.dirname(arg)).st_mode) == 0o700
                psks.append(Path(arg).read_text().strip())
                shown.append("<psk>")
            else:
                shown.append(arg)
        calls.append(shown)
        result = case.get("set_result", {})
        return result.get("rc", 0), "", result.get("stderr", "")

    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: WG)
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "exit_json", lambda self, **kw: (_ for _ in ()).throw(Done(kw)))
    monkeypatch.setattr(AnsibleModule, "fail_json",
                        lambda self, msg, **kw: (_ for _ in ()).throw(Done(dict(kw, msg=msg, failed=True))))
    path = tmp_path / "wg0.peers"
    if "file" in case:
        path.write_text(case["file"])
        path.chmod(int(case.get("file_mode", "0600"), 8))
    args = dict(interface="wg0", path=str(path), peers=[])
    args.update(case["params"])
    args.update(_ansible_check_mode=case.get("check_mode", False), _ansible_diff=True)
    with patch_module_args(args), pytest.raises(Done) as done:
        wg_peers.main()
    return done.value.args[0], calls, psks, path


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_wg_peers(monkeypatch, tmp_path, case):
    before = case.get("file")
    result, calls, psks, path = run(monkeypatch, tmp_path, case)
    if "fail" in case:
        assert result.get("failed"), result
        for fragment in case["fail"]:
            assert fragment in result["msg"], result["msg"]
        return
    assert not result.get("failed"), result
    for key, value in case.get("expect", {}).items():
        assert result[key] == value, (key, result)
    assert calls == ([case["set"]] if "set" in case else [])
    assert psks == case.get("psks", [])
    if case.get("check_mode"):
        assert path.read_text() == before if before is not None else not path.exists()
    elif result["file_changed"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for fragment in case.get("file_after", []):
            assert fragment in path.read_text()
    # secrets never leave the module
    text = repr(result)
    assert "IlTFicdqGleDGC94EDukQHVgQk" not in text
    assert "yARLW3PuHFRdY0qYBjtiDVtGnG1Cshvt" not in text


def test_second_run_after_apply_is_unchanged(monkeypatch, tmp_path):
    """The file written by a run makes the next run report no change."""
    case = next(c for c in CASES if c["id"] == "first-run-interface-down-writes-file-only")
    run(monkeypatch, tmp_path, case)
    again = dict(case, file=(tmp_path / "wg0.peers").read_text())
    result, calls, _, _ = run(monkeypatch, tmp_path, again)
    assert result["changed"] is False and calls == []


def test_diff_hides_preshared_keys(monkeypatch, tmp_path):
    case = next(c for c in CASES if c["id"] == "interface-up-empty-adds-all-in-one-call")
    result, _, _, _ = run(monkeypatch, tmp_path, case)
    after = result["diff"]["after"]
    assert after["5MGlllJdj01AqNS228dj6gmOT8QFjGpu6hDfUVfbFRY="]["preshared_key"] == "<hidden>"
    assert after["OJtKp6XAIkhhHeLegyopBH4cVLu+xmPnpoF32C6p834="]["name"] == "alice"


def test_thousand_peers_are_one_call(monkeypatch, tmp_path):
    import base64
    import hashlib

    peers = [dict(name="c%d" % i, public_key=base64.b64encode(hashlib.sha256(b"%d" % i).digest()).decode(),
                  allowed_ips=["10.66.%d.%d/32" % (i // 250, i % 250 + 2)]) for i in range(1000)]
    case = dict(params=dict(peers=peers), dump=dict(stdout=CASES[1]["dump"]["stdout"]))
    result, calls, _, _ = run(monkeypatch, tmp_path, case)
    assert len(result["added"]) == 1000 and len(calls) == 1 and calls[0].count("peer") == 1000


def test_examples_match_the_argument_spec():
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    validator = ArgumentSpecValidator(wg_peers.ARGS)
    for task in yaml.safe_load(wg_peers.EXAMPLES):
        result = validator.validate(task["higgs.vpn.wg_peers"])
        assert result.error_messages == []
        assert wg_peers.validate(result.validated_parameters) == []


def test_documentation_matches_the_argument_spec():
    doc = yaml.safe_load(wg_peers.DOCUMENTATION)["options"]
    assert set(doc) == set(wg_peers.ARGS)
    assert set(doc["peers"]["suboptions"]) == set(wg_peers.ARGS["peers"]["options"])
