"""higgs.vpn.stale_service with systemctl mocked and real files' modification times."""

from __future__ import annotations

import os
import time

import pytest
from ansible.module_utils.basic import AnsibleModule
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.modules import stale_service


@pytest.fixture
def systemd(monkeypatch):
    """A unit that entered the active state ``started`` seconds ago (monotonic), recording commands."""
    unit = {"state": "active", "started": 10.0, "need_reload": "no", "commands": []}

    def run_command(self, args, **kwargs):
        unit["commands"].append(args[1:])
        if args[1] == "show":
            since_boot = int((time.monotonic() - unit["started"]) * 1e6)
            return 0, ("ActiveState=%s\nActiveEnterTimestampMonotonic=%d\nNeedDaemonReload=%s\n"
                       % (unit["state"], since_boot, unit["need_reload"])), ""
        return 0, "", ""

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False: "/bin/" + name)

    stop_at_exit(monkeypatch)
    return unit


def run(args):
    return run_main(stale_service, args)


def touch(path, age):
    path.write_text("x\n")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return str(path)


def test_files_older_than_the_service_change_nothing(systemd, tmp_path):
    conf = touch(tmp_path / "old.conf", age=60)
    result = run({"name": "unbound.service", "paths": [conf]})
    assert result == {"changed": False, "daemon_reloaded": False, "restarted": False, "stale_paths": []}
    assert systemd["commands"] == [["show", "unbound.service", "--property",
                                    "ActiveState,ActiveEnterTimestampMonotonic,NeedDaemonReload"]]


def test_a_file_written_after_the_start_restarts_it(systemd, tmp_path):
    old = touch(tmp_path / "old.conf", age=60)
    new = touch(tmp_path / "new.conf", age=2)
    result = run({"name": "unbound.service", "paths": [old, new, str(tmp_path / "missing.conf")]})
    assert result["changed"] and result["restarted"] and result["stale_paths"] == [new]
    assert systemd["commands"][-1] == ["restart", "unbound.service"]


def test_check_mode_predicts_without_acting(systemd, tmp_path):
    new = touch(tmp_path / "new.conf", age=2)
    systemd["need_reload"] = "yes"
    result = run({"name": "unbound.service", "paths": [new], "_ansible_check_mode": True})
    assert result["changed"] and result["restarted"] and result["daemon_reloaded"]
    assert [c[0] for c in systemd["commands"]] == ["show"]


def test_a_changed_unit_file_reloads_the_manager_first(systemd, tmp_path):
    systemd["need_reload"] = "yes"
    new = touch(tmp_path / "unit.service", age=2)
    result = run({"name": "x.service", "paths": [new]})
    assert result["daemon_reloaded"] and result["restarted"]
    assert [c[0] for c in systemd["commands"]] == ["show", "daemon-reload", "restart"]


def test_an_inactive_service_is_left_alone(systemd, tmp_path):
    systemd["state"] = "inactive"
    new = touch(tmp_path / "new.conf", age=2)
    result = run({"name": "unbound.service", "paths": [new]})
    assert result["changed"] is False
    assert [c[0] for c in systemd["commands"]] == ["show"]
