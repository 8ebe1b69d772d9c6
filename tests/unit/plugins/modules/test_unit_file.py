"""higgs.vpn.unit_file with systemd-analyze mocked: it sees the file under test
in the directory named by SYSTEMD_UNIT_PATH and answers like systemd 252/257."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from ansible.module_utils.basic import AnsibleModule
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.modules import unit_file

GOOD = "# Ansible managed\n[Unit]\nDescription=test\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n"


@pytest.fixture
def analyze(monkeypatch):
    """Records the calls; warns about 'Bogus' keys like systemd does, and about other units when asked."""
    calls = []
    state = {"other_unit_warning": False, "rc": 0}

    def run_command(self, args, environ_update=None, **kwargs):
        search = environ_update["SYSTEMD_UNIT_PATH"].rstrip(":")
        files = [os.path.join(d, f) for d, _, names in os.walk(search) for f in names]
        calls.append(dict(args=args, files={os.path.relpath(f, search): Path(f).read_text() for f in files}))
        err = []
        for path in files:
            for number, line in enumerate(Path(path).read_text().splitlines(), 1):
                if line.startswith("Bogus"):
                    err.append("%s:%d: Unknown key 'Bogus' in section [Service], ignoring." % (path, number))
        if state["other_unit_warning"]:
            err.append("/lib/systemd/system/other.service:7: Unknown key 'Foo' in section [Unit], ignoring.")
        return state["rc"], "", "\n".join(err) + "\n" if err else ""

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False: "/usr/bin/" + name)

    stop_at_exit(monkeypatch)
    state["calls"] = calls
    return state


def run(args, check=False, diff=False):
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    return run_main(unit_file, args)


def test_write_verified_unit_then_nothing_to_do(analyze, tmp_path):
    dest = tmp_path / "higgs-vpn-metrics.service"
    first = run({"dest": str(dest), "content": GOOD}, diff=True)
    assert first["changed"] is True and first["unit"] == "higgs-vpn-metrics.service"
    assert first["diff"]["before"] == "" and first["diff"]["after"] == GOOD
    assert dest.read_text() == GOOD and stat.S_IMODE(dest.stat().st_mode) == 0o644
    call = analyze["calls"][0]
    assert call["args"] == ["/usr/bin/systemd-analyze", "verify", "--man=no", "--recursive-errors=no",
                            "higgs-vpn-metrics.service"]
    assert call["files"] == {"higgs-vpn-metrics.service": GOOD}
    assert run({"dest": str(dest), "content": GOOD})["changed"] is False
    assert not [p for p in tmp_path.iterdir() if p.name != dest.name]


@pytest.mark.parametrize("content", [GOOD + "Bogus=1\n", GOOD.replace("Description=test", "Description=test\nBogus")],
                         ids=["unknown-key", "line-broken-by-a-newline"])
def test_a_warning_about_the_unit_fails_and_leaves_it(analyze, tmp_path, content):
    dest = tmp_path / "a.service"
    dest.write_text(GOOD)
    result = run({"dest": str(dest), "content": content})
    assert result["failed"] and "systemd-analyze verify refuses" in result["msg"]
    assert "a.service:" in result["msg"] and "Unknown key 'Bogus'" in result["msg"]
    assert result["warnings_found"] and dest.read_text() == GOOD


def test_a_warning_in_check_mode_fails_too(analyze, tmp_path):
    result = run({"dest": str(tmp_path / "a.service"), "content": GOOD + "Bogus=1\n"}, check=True)
    assert result["failed"] and not (tmp_path / "a.service").exists()


def test_warnings_about_other_units_are_not_this_files(analyze, tmp_path):
    analyze["other_unit_warning"] = True
    assert run({"dest": str(tmp_path / "a.service"), "content": GOOD})["changed"] is True


def test_a_failing_verification_fails(analyze, tmp_path):
    analyze["rc"] = 1
    result = run({"dest": str(tmp_path / "a.service"), "content": GOOD})
    assert result["failed"] and result["rc"] == 1 and not (tmp_path / "a.service").exists()


def test_dropin_is_verified_with_its_unit_and_its_directory_created(analyze, tmp_path):
    dest = tmp_path / "wg-quick@wg0.service.d" / "higgs-vpn.conf"
    result = run({"dest": str(dest), "content": "[Unit]\nAfter=nftables.service\n"})
    assert result["changed"] and result["unit"] == "wg-quick@wg0.service"
    assert analyze["calls"][0]["args"][-1] == "wg-quick@wg0.service"
    assert list(analyze["calls"][0]["files"]) == ["wg-quick@wg0.service.d/higgs-vpn.conf"]
    assert stat.S_IMODE(dest.parent.stat().st_mode) == 0o755


def test_template_is_verified_through_an_instance(analyze, tmp_path):
    result = run({"dest": str(tmp_path / "higgs-vpn-shaping@.service"), "content": GOOD})
    assert result["unit"] == "higgs-vpn-shaping@verify.service"
    assert list(analyze["calls"][0]["files"]) == ["higgs-vpn-shaping@.service"]


@pytest.mark.parametrize("name", ["unit", "a.conf", "x.service.txt", "a.service\n"])
def test_a_name_systemd_would_not_load_is_refused(analyze, tmp_path, name):
    result = run({"dest": str(tmp_path / name), "content": GOOD})
    assert result["failed"] and "neither a unit file" in result["msg"] and not analyze["calls"]


def test_check_mode_and_mode_changes(analyze, tmp_path):
    dest = tmp_path / "a.timer"
    planned = run({"dest": str(dest), "content": GOOD}, check=True, diff=True)
    assert planned["changed"] and not dest.exists()
    run({"dest": str(dest), "content": GOOD})
    os.chmod(dest, 0o600)
    assert run({"dest": str(dest), "content": GOOD}, check=True)["changed"] is True
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert run({"dest": str(dest), "content": GOOD, "mode": "0640"})["changed"] is True
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


def test_absent_removes_and_shows_the_diff(analyze, tmp_path):
    dest = tmp_path / "a.service"
    dest.write_text(GOOD)
    planned = run({"dest": str(dest), "state": "absent"}, check=True, diff=True)
    assert planned["changed"] and planned["diff"]["before"] == GOOD and dest.exists()
    assert run({"dest": str(dest), "state": "absent"})["changed"] is True and not dest.exists()
    assert run({"dest": str(dest), "state": "absent"})["changed"] is False
    assert not analyze["calls"]
