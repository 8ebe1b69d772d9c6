"""higgs.vpn.service_state with systemctl mocked and real files' modification times."""

from __future__ import annotations

import os
import time

import pytest
from ansible.module_utils.basic import AnsibleModule
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.module_utils import _systemd
from ansible_collections.higgs.vpn.plugins.modules import host_probe, service_state


@pytest.fixture
def systemd(monkeypatch):
    """Units by name: file state, active state, seconds since they started; the commands run."""
    units = {}
    commands = []

    def run_command(self, args, **kwargs):
        commands.append(args[1:])
        if args[1] == "show":
            blocks = []
            for name in args[args.index("--") + 1:]:
                unit = units[name]
                since_boot = int((time.monotonic() - unit.get("started", 10.0)) * 1e6)
                blocks.append("Id=%s\nUnitFileState=%s\nActiveState=%s\nActiveEnterTimestampMonotonic=%d\n"
                              "NeedDaemonReload=%s\n" % (name, unit.get("file", "enabled"),
                                                         unit.get("active", "active"), since_boot,
                                                         unit.get("reload", "no")))
            return 0, "\n".join(blocks), ""
        return 0, "", ""

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False: "/bin/" + name)
    stop_at_exit(monkeypatch)
    return units, commands


def run(args):
    return run_main(service_state, args)


def touch(path, age):
    path.write_text("x\n")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return str(path)


def test_running_enabled_units_with_older_files_cost_one_show(systemd, tmp_path):
    units, commands = systemd
    units.update({"a.timer": {}, "b.service": {}})
    conf = touch(tmp_path / "b.conf", age=60)
    result = run({"units": [{"name": "a.timer"}, {"name": "b.service", "paths": [conf]}]})
    assert result == {"changed": False, "daemon_reloaded": False, "enabled": [], "started": [],
                      "restarted": [], "stale_paths": {}}
    assert [c[0] for c in commands] == ["show"]


def test_stopped_disabled_units_are_enabled_and_started_not_restarted(systemd, tmp_path):
    units, commands = systemd
    units.update({"a.service": {"file": "disabled", "active": "inactive"}, "b.service": {"file": "static"}})
    new = touch(tmp_path / "a.conf", age=1)
    result = run({"units": [{"name": "a.service", "paths": [new]}, {"name": "b.service"}]})
    assert result["enabled"] == ["a.service"] and result["started"] == ["a.service"]
    assert result["restarted"] == []
    assert commands[1:] == [["enable", "--", "a.service"], ["start", "--", "a.service"]]


def test_a_unit_older_than_its_files_is_restarted_after_a_reload(systemd, tmp_path):
    units, commands = systemd
    units.update({"a.service": {"reload": "yes"}})
    old, new = touch(tmp_path / "old", age=60), touch(tmp_path / "new", age=1)
    result = run({"units": [{"name": "a.service", "paths": [old, new, str(tmp_path / "missing")]}]})
    assert result["daemon_reloaded"] and result["restarted"] == ["a.service"]
    assert result["stale_paths"] == {"a.service": [new]}
    assert commands[1:] == [["daemon-reload"], ["restart", "--", "a.service"]]


def test_check_mode_predicts_without_acting(systemd):
    units, commands = systemd
    units.update({"a.service": {"active": "failed"}})
    result = run({"units": [{"name": "a.service"}], "daemon_reload": True, "_ansible_check_mode": True})
    assert result["changed"] and result["started"] == ["a.service"] and result["daemon_reloaded"]
    assert [c[0] for c in commands] == ["show"]


def test_started_false_leaves_a_stopped_unit_stopped(systemd):
    units, commands = systemd
    units.update({"a.service": {"active": "inactive"}})
    result = run({"units": [{"name": "a.service", "started": False}]})
    assert not result["changed"] and [c[0] for c in commands] == ["show"]


def test_no_units_is_an_error(systemd):
    assert run({"units": []})["failed"]


SETUPS = [
    ({}, {}, 60),                                        # running, enabled, older files: nothing to do
    ({"file": "disabled"}, {}, 60),                      # to enable
    ({"file": "static"}, {}, 60),                        # static counts as enabled
    ({"active": "inactive"}, {}, 60),                    # to start
    ({"active": "inactive"}, {"started": False}, 60),    # stays stopped: nothing to do
    ({"active": "activating"}, {}, 60),                  # counts as running
    ({}, {}, 1),                                         # a file newer than the start: to restart
    ({"reload": "yes"}, {}, 60),                         # to reload
    ({"file": "disabled"}, {"enabled": False}, 60),      # stays disabled: nothing to do
]


@pytest.mark.parametrize(("unit", "wanted", "age"), SETUPS)
def test_the_probes_record_answers_as_the_module_would(systemd, tmp_path, unit, wanted, age):
    """host_probe's record and the action's check agree with the module: nothing to do when it changes nothing."""
    units, _commands = systemd
    units["b.service"] = dict(unit, started=10.0)
    conf = touch(tmp_path / "b.conf", age=age)
    task = {"name": "b.service", "paths": [conf], **wanted}
    records = run_main(host_probe, {"units": [{"name": "b.service", "paths": [conf]}]})["units"]
    assert records["b.service"]["paths"] == [conf]
    assert _systemd.satisfied(task, records) is (run({"units": [task]})["changed"] is False)


def test_a_record_for_other_paths_or_another_unit_answers_nothing(systemd, tmp_path):
    units, _commands = systemd
    units["b.service"] = {}
    conf = touch(tmp_path / "b.conf", age=60)
    records = run_main(host_probe, {"units": [{"name": "b.service", "paths": [conf]}]})["units"]
    assert _systemd.satisfied({"name": "b.service", "paths": [conf]}, records)
    assert not _systemd.satisfied({"name": "b.service"}, records)
    assert not _systemd.satisfied({"name": "b.service", "paths": [conf, conf + ".d"]}, records)
    assert not _systemd.satisfied({"name": "c.service", "paths": [conf]}, records)
    assert not _systemd.satisfied("b.service", records)
