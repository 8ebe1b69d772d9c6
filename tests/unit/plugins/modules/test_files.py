"""higgs.vpn.files on real files in a temporary directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.modules import files


@pytest.fixture(autouse=True)
def _exit(monkeypatch):
    stop_at_exit(monkeypatch)


def run(args):
    return run_main(files, args)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_creates_and_removes_in_one_call_then_changes_nothing(tmp_path):
    (tmp_path / "old").write_text("stale\n")
    (tmp_path / "same").write_text("kept\n")
    args = {"files": [
        {"path": str(tmp_path / "d"), "state": "directory", "mode": "0750"},
        {"path": str(tmp_path / "d" / "conf"), "content": "a = 1\n", "mode": "0600"},
        {"path": str(tmp_path / "same"), "content": "kept\n"},
        {"path": str(tmp_path / "old"), "state": "absent"},
    ]}
    result = run(args)
    assert result["changed_paths"] == [str(tmp_path / "d"), str(tmp_path / "d" / "conf"), str(tmp_path / "old")]
    assert (tmp_path / "d" / "conf").read_text() == "a = 1\n"
    assert mode(tmp_path / "d") == 0o750 and mode(tmp_path / "d" / "conf") == 0o600
    assert not (tmp_path / "old").exists()
    assert run(args) == {"changed": False, "changed_paths": []}


def test_a_mode_alone_is_a_change(tmp_path):
    path = tmp_path / "f"
    path.write_text("x\n")
    os.chmod(path, 0o644)
    result = run({"files": [{"path": str(path), "content": "x\n", "mode": "0600"}]})
    assert result["changed_paths"] == [str(path)] and mode(path) == 0o600


def test_a_refused_file_stops_the_call_there(tmp_path):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    second.write_text("old\n")
    result = run({"files": [
        {"path": str(first), "content": "new\n"},
        {"path": str(second), "content": "bad\n", "validate": "/bin/sh -c 'grep -q good \"$1\"' sh %s"},
        {"path": str(third), "content": "later\n"},
    ]})
    assert result["failed"] and str(second) in result["msg"] and "left as it was" in result["msg"]
    assert result["changed_paths"] == [str(first)]
    assert second.read_text() == "old\n" and not third.exists()


def test_secret_files_come_first_so_a_checked_file_can_name_them(tmp_path):
    token, conf = tmp_path / "etc" / "token", tmp_path / "etc" / "conf"
    result = run({"files": [{"path": str(conf), "content": "token_file %s\n" % token,
                             "validate": "/bin/sh -c 'test -r \"$(cut -d\" \" -f2 \"$1\")\"' sh %s"}],
                  "secret_files": [{"path": str(token), "content": "t\n"}]})
    assert result["changed_paths"] == [str(token), str(conf)]


def test_validate_sees_the_new_content(tmp_path):
    path = tmp_path / "f"
    result = run({"files": [{"path": str(path), "content": "good\n",
                             "validate": "/bin/sh -c 'grep -q good \"$1\"' sh %s"}]})
    assert result["changed"] and path.read_text() == "good\n"


def test_check_mode_and_diff_change_nothing(tmp_path):
    path = tmp_path / "f"
    path.write_text("before\n")
    result = run({"files": [{"path": str(path), "content": "after\n"},
                            {"path": str(tmp_path / "new"), "content": "n\n"}],
                  "_ansible_check_mode": True, "_ansible_diff": True})
    assert result["changed_paths"] == [str(path), str(tmp_path / "new")]
    assert result["diff"][0] == {"before_header": str(path), "after_header": str(path),
                                 "before": "before\n", "after": "after\n"}
    assert path.read_text() == "before\n" and not (tmp_path / "new").exists()


def test_secret_files_show_no_diff(tmp_path):
    path = tmp_path / "token"
    result = run({"secret_files": [{"path": str(path), "content": "s3cret\n", "mode": "0640"}],
                  "_ansible_diff": True})
    assert result["changed_paths"] == [str(path)] and result["diff"] == []
    assert path.read_text() == "s3cret\n" and mode(path) == 0o640
    assert "s3cret" not in repr(result)


def test_bad_entries_are_named_before_anything_changes(tmp_path):
    path = tmp_path / "f"
    result = run({"files": [{"path": str(path), "content": "x\n"}, {"path": "relative", "content": "x"},
                            {"path": str(tmp_path / "g")}]})
    assert result["failed"]
    assert "files[1].path: relative is not an absolute path" in result["msg"]
    assert "files[2].content" in result["msg"]
    assert not path.exists()


@pytest.fixture
def analyze(monkeypatch):
    """systemd-analyze answering like systemd 252: a warning for every 'Bogus' line of the file verified."""
    from ansible.module_utils.basic import AnsibleModule
    calls, run_command, get_bin_path = [], AnsibleModule.run_command, AnsibleModule.get_bin_path

    def fake_run(self, args, environ_update=None, **kwargs):
        if not args[0].endswith("systemd-analyze"):
            return run_command(self, args, environ_update=environ_update, **kwargs)
        search = environ_update["SYSTEMD_UNIT_PATH"].rstrip(":")
        found = [os.path.join(d, f) for d, _, names in os.walk(search) for f in names]
        calls.append(dict(args=args, files=[os.path.relpath(f, search) for f in found]))
        err = ["%s:%d: Unknown key 'Bogus' in section [Service], ignoring." % (f, n)
               for f in found for n, line in enumerate(Path(f).read_text().splitlines(), 1) if line.startswith("Bogus")]
        return 0, "", "\n".join(err)

    monkeypatch.setattr(AnsibleModule, "run_command", fake_run)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None:
                        "/usr/bin/systemd-analyze" if name == "systemd-analyze" else get_bin_path(self, name))
    return calls


UNIT = "[Unit]\nDescription=test\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n"


def test_units_are_verified_only_when_they_would_change(tmp_path, analyze):
    unit, dropin = tmp_path / "a.service", tmp_path / "b.service.d" / "higgs.conf"
    args = {"files": [{"path": str(unit), "content": UNIT, "unit": True},
                      {"path": str(dropin), "content": "[Service]\nNice=5\n", "unit": True}]}
    assert run(args)["changed_paths"] == [str(unit), str(dropin)]
    assert [c["args"][-1] for c in analyze] == ["a.service", "b.service"]
    assert analyze[1]["files"] == ["b.service.d/higgs.conf"]
    assert run(args)["changed"] is False and len(analyze) == 2


def test_a_refused_unit_stops_the_call_and_names_the_warning(tmp_path, analyze):
    unit, later = tmp_path / "a.timer", tmp_path / "later"
    unit.write_text(UNIT)
    result = run({"files": [{"path": str(unit), "content": UNIT + "Bogus=1\n", "unit": True},
                            {"path": str(later), "content": "x\n"}]})
    assert result["failed"] and "systemd-analyze verify refuses" in result["msg"]
    assert "a.timer:7: Unknown key 'Bogus'" in result["msg"] and str(tmp_path / "higgs-unit") not in result["msg"]
    assert unit.read_text() == UNIT and not later.exists()


def test_a_unit_needs_a_unit_name_before_anything_changes(tmp_path, analyze):
    first = tmp_path / "first"
    result = run({"files": [{"path": str(first), "content": "x\n"},
                            {"path": str(tmp_path / "notaunit.txt"), "content": UNIT, "unit": True}]})
    assert result["failed"] and "files[1].path:" in result["msg"] and "neither a unit file" in result["msg"]
    assert not first.exists() and analyze == []


def test_links_are_made_replaced_and_then_left_alone(tmp_path):
    target, path = tmp_path / "target", tmp_path / "dir" / "link"
    first = run({"files": [{"path": str(path), "state": "link", "src": str(target)}], "_ansible_diff": True})
    assert first["changed_paths"] == [str(path)] and os.readlink(path) == str(target)
    assert first["diff"][0]["before"] == "absent\n" and first["diff"][0]["after"] == "-> %s\n" % target
    assert run({"files": [{"path": str(path), "state": "link", "src": str(target)}]})["changed"] is False
    path.unlink()
    path.write_text("a file where the link belongs\n")
    assert run({"files": [{"path": str(path), "state": "link", "src": "/elsewhere"}]})["changed"]
    assert os.readlink(path) == "/elsewhere" and sorted(os.listdir(path.parent)) == ["link"]


def test_a_link_in_check_mode_changes_nothing_and_never_replaces_a_directory(tmp_path):
    path = tmp_path / "link"
    result = run({"files": [{"path": str(path), "state": "link", "src": "/x"}], "_ansible_check_mode": True})
    assert result["changed_paths"] == [str(path)] and not os.path.lexists(path)
    path.mkdir()
    result = run({"files": [{"path": str(path), "state": "link", "src": "/x"}], "_ansible_check_mode": True})
    assert result["failed"] and "is a directory" in result["msg"] and path.is_dir()
    result = run({"files": [{"path": str(tmp_path / "l2"), "state": "link"}]})
    assert result["failed"] and "files[0].src" in result["msg"]
