"""higgs.vpn.files on real files in a temporary directory."""

from __future__ import annotations

import os
import stat

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
