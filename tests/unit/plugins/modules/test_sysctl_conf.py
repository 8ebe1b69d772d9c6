"""higgs.vpn.sysctl_conf against a fake /proc/sys in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.modules import sysctl_conf


@pytest.fixture
def proc(tmp_path, monkeypatch):
    root = tmp_path / "proc"

    def proc_path(key):
        return str(root.joinpath(*[p.replace("/", ".") for p in key.split(".")]))

    def setval(key, value):
        path = root.joinpath(*[p.replace("/", ".") for p in key.split(".")])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")

    monkeypatch.setattr(sysctl_conf, "proc_path", proc_path)
    stop_at_exit(monkeypatch)
    setval.read = lambda key: Path(proc_path(key)).read_text().strip()
    return setval


def run(args):
    return run_main(sysctl_conf, args)


def test_apply_records_previous_values_and_restores_them(proc, tmp_path):
    proc("net.ipv4.ip_forward", "0")
    proc("net.ipv4.conf.eth0/100.forwarding", "0")
    conf = str(tmp_path / "60-test.conf")
    settings = {"net.ipv4.ip_forward": 1, "net.ipv4.conf.eth0/100.forwarding": 1,
                "net.ipv4.conf.wg0.forwarding": 1}
    first = run({"path": conf, "settings": settings})
    assert first["changed"] is True
    assert first["pending"] == ["net.ipv4.conf.wg0.forwarding"]
    assert proc.read("net.ipv4.ip_forward") == "1"
    assert proc.read("net.ipv4.conf.eth0/100.forwarding") == "1"
    text = Path(conf).read_text()
    assert "# previous net.ipv4.ip_forward = 0" in text
    assert "net.ipv4.conf.eth0/100.forwarding = 1" in text

    assert run({"path": conf, "settings": settings})["changed"] is False

    removed = run({"path": conf, "state": "absent"})
    assert removed["changed"] is True
    assert proc.read("net.ipv4.ip_forward") == "0"
    assert proc.read("net.ipv4.conf.eth0/100.forwarding") == "0"
    assert run({"path": conf, "state": "absent"})["changed"] is False


def test_live_drift_is_repaired_and_first_value_is_kept(proc, tmp_path):
    proc("net.ipv6.conf.all.forwarding", "0")
    conf = str(tmp_path / "c.conf")
    run({"path": conf, "settings": {"net.ipv6.conf.all.forwarding": 1}})
    proc("net.ipv6.conf.all.forwarding", "0")
    again = run({"path": conf, "settings": {"net.ipv6.conf.all.forwarding": 1}})
    assert again["changed"] is True and again["live_changes"]
    assert "# previous net.ipv6.conf.all.forwarding = 0" in Path(conf).read_text()


def test_dropped_setting_is_restored(proc, tmp_path):
    proc("net.ipv4.ip_forward", "0")
    proc("net.ipv6.conf.all.forwarding", "0")
    conf = str(tmp_path / "c.conf")
    run({"path": conf, "settings": {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1}})
    run({"path": conf, "settings": {"net.ipv4.ip_forward": 1}})
    assert proc.read("net.ipv6.conf.all.forwarding") == "0"
    assert "ipv6" not in Path(conf).read_text()


def test_check_mode_changes_nothing(proc, tmp_path):
    proc("net.ipv4.ip_forward", "0")
    conf = tmp_path / "c.conf"
    result = run({"path": str(conf), "settings": {"net.ipv4.ip_forward": 1}, "_ansible_check_mode": True})
    assert result["changed"] is True
    assert proc.read("net.ipv4.ip_forward") == "0" and not conf.exists()


@pytest.mark.parametrize("key", ["kernel.panic", "vm.swappiness", "net..x", "fs.file-max",
                                 "net.ipv4.ip_forward\n", "net.ipv4.ip_forward\nkernel.panic"])
def test_only_net_parameters(proc, tmp_path, key):
    result = run({"path": str(tmp_path / "c.conf"), "settings": {key: 1}})
    assert result.get("failed") and "only net.* parameters" in result["msg"]
