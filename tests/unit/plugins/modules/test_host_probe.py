"""higgs.vpn.host_probe: missing packages, accounts, paths and small files, read in one call."""

from __future__ import annotations

import pwd

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.modules import host_probe

# dpkg-query -W -f '${db:Status-Abbrev}${Package}\n' as it prints them: rc 1 and a message
# on stderr for a package it never heard of
DPKG = {"unbound": "ii unbound", "nftables": "ii nftables", "iptables": "rc iptables",
        "wireguard-go": "iU wireguard-go", "python3": "iiRpython3", "python3-uvloop": "hi python3-uvloop"}


@pytest.fixture
def host(monkeypatch):
    ran = []

    def run_command(self, argv, **_kwargs):
        ran.append(argv)
        names = argv[argv.index("--") + 1:]
        unknown = [n for n in names if n not in DPKG]
        out = "".join(DPKG[n] + "\n" for n in sorted(names) if n in DPKG)
        return (1 if unknown else 0), out, "".join("dpkg-query: no packages found matching %s\n" % n for n in unknown)

    monkeypatch.setattr(AnsibleModule, "get_bin_path",
                        lambda self, name, required=False, opt_dirs=None: "/usr/bin/" + name)
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    stop_at_exit(monkeypatch)
    return ran


def test_missing_packages_in_the_order_asked(host):
    result = run_main(host_probe, {"packages": ["unbound", "nosuch", "iptables", "wireguard-go", "python3",
                                                "python3-uvloop", "nftables", "nosuch"]})
    # removed (rc), half-configured (iU), reinstall-required (R) and unknown ones are missing; held (hi) is not
    assert result["missing_packages"] == ["nosuch", "iptables", "wireguard-go", "python3"]
    # one dpkg-query for all, each name once
    assert not result["changed"] and len(host) == 1
    assert host[0][host[0].index("--") + 1:] == ["unbound", "nosuch", "iptables", "wireguard-go", "python3",
                                                 "python3-uvloop", "nftables"]


def test_nothing_asked_runs_nothing(host):
    result = run_main(host_probe, {})
    assert result == {"changed": False, "missing_packages": [], "users": {}, "paths": [], "files": {}} and not host


def test_accounts_paths_and_files(host, tmp_path, monkeypatch):
    relay = ("higgs-relay", "x", 998, 998, "", "/nonexistent", "/usr/sbin/nologin")
    entries = {"higgs-relay": pwd.struct_passwd(relay)}

    def getpwnam(name):
        if name not in entries:
            raise KeyError(name)
        return entries[name]

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    kept, link = tmp_path / "node-id", tmp_path / "dangling"
    kept.write_text("5b0d3c1e-8a43-4a8e-9d1c-6f1e2b3a4c5d\n")
    link.symlink_to(tmp_path / "nowhere")
    result = run_main(host_probe, {"users": ["higgs-relay", "nobody-here"],
                                   "paths": [str(kept), str(link), str(tmp_path / "missing")],
                                   "files": [str(kept), str(tmp_path / "missing")]})
    assert result["users"] == {"higgs-relay": {"home": "/nonexistent", "shell": "/usr/sbin/nologin"}}
    assert result["paths"] == [str(kept), str(link)]
    assert result["files"] == {str(kept): "5b0d3c1e-8a43-4a8e-9d1c-6f1e2b3a4c5d\n", str(tmp_path / "missing"): None}


def test_a_large_file_fails_naming_it(host, tmp_path):
    big = tmp_path / "big"
    big.write_text("x" * (host_probe.MAX_FILE + 1))
    result = run_main(host_probe, {"files": [str(big)]})
    assert result["failed"] and str(big) in result["msg"] and "larger than" in result["msg"]


def test_dpkg_failing_otherwise_fails(host, monkeypatch):
    monkeypatch.setattr(AnsibleModule, "run_command", lambda self, argv, **kw: (2, "", "dpkg: database locked"))
    result = run_main(host_probe, {"packages": ["unbound"]})
    assert result["failed"] and "database locked" in result["msg"]


def test_documented_options_and_examples_match_the_argument_spec():
    doc = yaml.safe_load(host_probe.DOCUMENTATION)["options"]
    assert set(doc) == {"packages", "users", "paths", "files"}
    spec = {name: {"type": o["type"], **({"elements": o["elements"]} if "elements" in o else {}),
                   "default": o.get("default")} for name, o in doc.items()}
    for task in yaml.safe_load(host_probe.EXAMPLES):
        assert not ArgumentSpecValidator(spec).validate(task["higgs.vpn.host_probe"]).error_messages
