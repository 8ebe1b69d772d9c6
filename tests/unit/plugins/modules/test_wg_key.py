"""higgs.vpn.wg_key driven by wg_key_cases.yml, with `wg` mocked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.higgs.vpn.plugins.modules import wg_key

WG = "/usr/bin/wg"
DATA = yaml.safe_load((Path(__file__).parent / "wg_key_cases.yml").read_text(encoding="utf-8"))
PAIRS = {p["private"]: p["public"] for p in DATA["pairs"].values()}
NEW = DATA["pairs"]["new"]["private"]


class Done(Exception):
    """exit_json or fail_json was called; args[0] is the result."""


def run(monkeypatch, tmp_path, case, wg=WG):
    ran = []

    def run_command(self, args, data=None, **kwargs):
        assert isinstance(args, list) and args[0] == WG
        assert not kwargs.get("use_unsafe_shell")
        ran.append(args[1])
        if args[1:] == ["genkey"]:
            return 0, NEW + "\n", ""
        assert args[1:] == ["pubkey"] and data in PAIRS, "the private key goes to wg pubkey on stdin"
        return 0, PAIRS[data] + "\n", ""

    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: wg)
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "exit_json", lambda self, **kw: (_ for _ in ()).throw(Done(kw)))
    monkeypatch.setattr(AnsibleModule, "fail_json",
                        lambda self, msg, **kw: (_ for _ in ()).throw(Done(dict(kw, msg=msg, failed=True))))
    path = tmp_path / "wireguard" / "wg0.key"
    if "file" in case:
        path.parent.mkdir(mode=0o700)
        path.write_text(case["file"])
        path.chmod(int(case.get("file_mode", "0600"), 8))
    args = {} if "paths" in case.get("params", {}) else dict(path=str(path))
    args.update(case.get("params", {}))
    args.update(_ansible_check_mode=case.get("check_mode", False), _ansible_diff=True)
    with patch_module_args(args), pytest.raises(Done) as done:
        wg_key.main()
    return done.value.args[0], ran, path


@pytest.mark.parametrize("case", DATA["cases"], ids=[c["id"] for c in DATA["cases"]])
def test_wg_key(monkeypatch, tmp_path, case):
    result, ran, path = run(monkeypatch, tmp_path, case)
    if "fail" in case:
        assert result.get("failed"), result
        for fragment in case["fail"]:
            assert fragment in result["msg"]
        return
    assert not result.get("failed"), result
    for key, value in case.get("expect", {}).items():
        assert result[key] == value, (key, result)
    assert ("genkey" in ran) == case.get("genkey", False)
    if case["key_after"] is None:
        assert not path.exists()
    else:
        assert path.read_text().strip() == case["key_after"]
        if not case.get("check_mode"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # the private keys are never returned, not even in the diff
    for private in PAIRS:
        assert private not in repr(result)


def test_cryptography_fallback_matches_wg(monkeypatch, tmp_path):
    """Without the wg command the public key is computed in Python, with the same result."""
    case = dict(file=DATA["pairs"]["old"]["private"] + "\n")
    result, ran, _ = run(monkeypatch, tmp_path, case, wg=None)
    assert ran == [] and result["public_key"] == DATA["pairs"]["old"]["public"]


def test_cryptography_fallback_generates_valid_key(monkeypatch, tmp_path):
    result, ran, path = run(monkeypatch, tmp_path, {}, wg=None)
    assert ran == [] and result["created"] and len(result["public_key"]) == 44
    assert path.read_text().strip() not in PAIRS and len(path.read_text().strip()) == 44


def test_examples_and_documentation_match_the_argument_spec():
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    validator = ArgumentSpecValidator(wg_key.ARGS)
    for task in yaml.safe_load(wg_key.EXAMPLES):
        if "higgs.vpn.wg_key" in task:
            result = validator.validate(task["higgs.vpn.wg_key"])
            assert result.error_messages == []
    assert set(yaml.safe_load(wg_key.DOCUMENTATION)["options"]) == set(wg_key.ARGS)


def test_many_keys_in_one_call(monkeypatch, tmp_path):
    """paths: each key as path would be, the public keys by path, the new ones named."""
    old, new = tmp_path / "clients" / "old.key", tmp_path / "clients" / "new.key"
    old.parent.mkdir(mode=0o700)
    old.write_text(DATA["pairs"]["old"]["private"] + "\n")
    old.chmod(0o600)
    case = {"params": {"paths": [str(old), str(new)]}}
    result, ran, _ = run(monkeypatch, tmp_path, case)
    assert result["changed"] and result["created_paths"] == [str(new)] and ran.count("genkey") == 1
    assert result["public_keys"] == {str(old): DATA["pairs"]["old"]["public"], str(new): PAIRS[NEW]}
    assert new.read_text().strip() == NEW and stat.S_IMODE(new.stat().st_mode) == 0o600
    assert [d["after_header"] for d in result["diff"]] == [str(new)]
    again, ran, _ = run(monkeypatch, tmp_path, case)
    assert not again["changed"] and again["created_paths"] == [] and "genkey" not in ran
    assert again["public_keys"] == result["public_keys"]
    for private in PAIRS:
        assert private not in repr(result) + repr(again)


def test_missing_directories_are_made_private(monkeypatch, tmp_path):
    """The controller's profile directory and its per-node directory are made 0700, not per the umask."""
    new = tmp_path / "profiles" / "node1" / "alice.key"
    old_umask = os.umask(0o022)
    try:
        result, _, _ = run(monkeypatch, tmp_path, {"params": {"paths": [str(new)]}})
    finally:
        os.umask(old_umask)
    assert result["created_paths"] == [str(new)]
    for directory in (new.parent, new.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_a_directory_made_meanwhile_by_another_run_is_no_error(monkeypatch, tmp_path):
    """Two nodes' client keys are made on the controller at once, in one shared profile directory."""
    new = tmp_path / "profiles" / "node2" / "bob.key"
    real_mkdir = os.mkdir

    def racing_mkdir(path, *args):
        if path == str(tmp_path / "profiles"):
            real_mkdir(path)  # the other node's run wins the race
        real_mkdir(path, *args)

    monkeypatch.setattr(wg_key.os, "mkdir", racing_mkdir)
    result, _, _ = run(monkeypatch, tmp_path, {"params": {"paths": [str(new)]}})
    assert not result.get("failed"), result
    assert result["created_paths"] == [str(new)] and new.exists()


def test_path_and_paths_exclude_each_other(monkeypatch, tmp_path):
    both = {"path": str(tmp_path / "b.key"), "paths": [str(tmp_path / "a.key")]}
    result, _, _ = run(monkeypatch, tmp_path, {"params": both})
    assert result["failed"] and "mutually exclusive" in result["msg"]
