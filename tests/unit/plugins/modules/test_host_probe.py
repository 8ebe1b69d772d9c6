"""higgs.vpn.host_probe: missing packages, accounts, paths and small files, read in one call."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pwd

import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.filter import network
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
    assert result == {"changed": False, "missing_packages": [], "modules": {}, "users": {}, "paths": [],
                      "files": {}, "stats": {}, "units": {}} and not host


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


def test_stats_of_files_directories_links_and_missing_paths_without_contents(host, tmp_path):
    secret, conf_dir, link = tmp_path / "token", tmp_path / "relay", tmp_path / "higgs_vpn.prom"
    secret.write_text("s3cret-token\n")
    secret.chmod(0o640)
    conf_dir.mkdir(mode=0o755)
    conf_dir.chmod(0o755)
    link.symlink_to("/run/higgs-vpn-metrics/higgs_vpn.prom")  # dangling: the link itself is read
    result = run_main(host_probe, {"stats": [str(secret), str(conf_dir), str(link), str(tmp_path / "missing")]})
    me = pwd.getpwuid(os.getuid()).pw_name
    stats = result["stats"]
    assert stats[str(secret)] == {"type": "file", "mode": "0640", "uid": os.getuid(), "gid": os.getgid(),
                                  "owner": me, "group": stats[str(secret)]["group"],
                                  "sha256": hashlib.sha256(b"s3cret-token\n").hexdigest()}
    assert stats[str(conf_dir)]["type"] == "directory" and stats[str(conf_dir)]["mode"] == "0755"
    assert stats[str(link)]["type"] == "link" and stats[str(link)]["src"] == "/run/higgs-vpn-metrics/higgs_vpn.prom"
    assert stats[str(tmp_path / "missing")] is None
    assert "s3cret" not in json.dumps(result) and not host  # no contents, no command
    keyed = run_main(host_probe, {"stats": [str(secret)], "stats_key": "run-key"})["stats"][str(secret)]
    assert keyed == dict(stats[str(secret)], sha256=hmac.new(b"run-key", b"s3cret-token\n", hashlib.sha256).hexdigest())


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
    assert set(doc) == {"facts", "egress", "packages", "modules", "users", "paths", "files", "stats", "stats_key",
                        "units"}
    spec = {name: {"type": o["type"], **({"elements": o["elements"]} if "elements" in o else {}),
                   "default": o.get("default")} for name, o in doc.items()}
    for task in yaml.safe_load(host_probe.EXAMPLES):
        assert not ArgumentSpecValidator(spec).validate(task["higgs.vpn.host_probe"]).error_messages


# ip -j addr show of a node: loopback, a LAN with a secondary address, a VLAN, the tunnel
IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
                                   {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host"}]},
    {"ifname": "eth0", "addr_info": [
        {"family": "inet", "local": "192.168.1.20", "prefixlen": 24, "scope": "global"},
        {"family": "inet", "local": "172.17.0.1", "prefixlen": 32, "scope": "global", "secondary": True},
        {"family": "inet6", "local": "2001:db8:1::20", "prefixlen": 64, "scope": "global"},
        {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
    {"ifname": "eth0.100", "addr_info": [{"family": "inet", "local": "172.16.5.1", "prefixlen": 16,
                                          "scope": "global"}]},
    {"ifname": "wg0", "addr_info": [{"family": "inet", "local": "10.66.0.1", "prefixlen": 24, "scope": "global"}]},
    {"ifname": "ifb-wg0", "addr_info": []},
]


def test_facts_as_setup_names_them_and_the_node_networks_the_roles_isolate(host, tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        2035108 kB\nMemFree:          123456 kB\n")
    monkeypatch.setattr(host_probe, "MEMINFO", str(meminfo))
    monkeypatch.setattr(AnsibleModule, "run_command",
                        lambda self, argv, **kw: (0, json.dumps(IP_ADDR), "") if argv[1:] == ["-j", "addr", "show"]
                        else (1, "", "not asked"))
    facts = run_main(host_probe, {"facts": True})["ansible_facts"]
    assert facts["memtotal_mb"] == 1987
    assert facts["all_ipv4_addresses"] == ["192.168.1.20", "172.17.0.1", "172.16.5.1", "10.66.0.1"]
    assert facts["all_ipv6_addresses"] == ["2001:db8:1::20", "fe80::1"]
    assert facts["interfaces"] == ["lo", "eth0", "eth0.100", "wg0", "ifb-wg0"]
    assert facts["eth0"]["ipv4"] == {"address": "192.168.1.20", "netmask": "255.255.255.0"}
    assert {"distribution", "distribution_version", "distribution_major_version"} <= set(facts)
    # the forwarding part isolates the same networks as from setup's network facts (test_network.py)
    assert network.host_networks(facts, ["wg0"]) == sorted([
        "192.168.1.0/24", "192.168.1.20/32", "2001:db8:1::/64", "2001:db8:1::20/128", "172.16.0.0/16",
        "172.16.5.1/32", "172.17.0.1/32"])


def test_facts_not_asked_are_not_returned(host):
    assert "ansible_facts" not in run_main(host_probe, {"packages": ["unbound"]})


def test_kernel_modules_loaded_loadable_or_none(host, tmp_path, monkeypatch):
    (tmp_path / "wireguard").mkdir()
    monkeypatch.setattr(host_probe, "SYS_MODULE", str(tmp_path))
    asked = []

    def modprobe(self, argv, **_kwargs):
        asked.append(argv)
        return (0, "", "") if argv[-1] == "tun" else (1, "", "modprobe: FATAL: Module nosuch not found")

    monkeypatch.setattr(AnsibleModule, "run_command", modprobe)
    result = run_main(host_probe, {"modules": ["wireguard", "tun", "nosuch"]})
    assert result["modules"] == {"wireguard": "loaded", "tun": "loadable", "nosuch": "none"}
    # a loaded one is not asked of modprobe, which only looks (--dry-run)
    assert asked == [["/usr/bin/modprobe", "--dry-run", "--quiet", "--", name] for name in ("tun", "nosuch")]


def test_no_modprobe_is_none(host, tmp_path, monkeypatch):
    monkeypatch.setattr(host_probe, "SYS_MODULE", str(tmp_path))
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: None)
    assert run_main(host_probe, {"modules": ["wireguard"]})["modules"] == {"wireguard": "none"}
