"""higgs.vpn.program: the deterministic zipapp builder, the archives it builds, and when the action installs."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import websockets
from ansible.errors import AnsibleActionFail

from ansible_collections.higgs.vpn.plugins.action import program
from ansible_collections.higgs.vpn.plugins.action.program import PROGRAMS, build_zipapp


@pytest.fixture
def programs(tmp_path):
    """A programs/ directory with one package ``demo`` whose ``cli.main`` exits with its first argument."""
    package = tmp_path / "programs" / "demo"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Demo."""\n')
    (package / "cli.py").write_text("import sys\n\nfrom demo.sub import value\n\n\n"
                                    "def main():\n    return int(sys.argv[1]) + value.OFFSET\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "value.py").write_text("OFFSET = 0\n")
    return tmp_path / "programs"


def test_the_same_content_gives_the_same_bytes_whatever_the_dates_and_the_directory(programs, tmp_path):
    first = build_zipapp(programs, "demo", "demo.cli:main")
    for path in (programs / "demo").rglob("*.py"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    copy = tmp_path / "elsewhere" / "programs"
    shutil.copytree(programs, copy)
    (copy / "demo" / "cli.py").chmod(0o600)
    assert build_zipapp(programs, "demo", "demo.cli:main") == first
    assert build_zipapp(copy, "demo", "demo.cli:main") == first


def test_entries_are_sorted_with_fixed_metadata_and_no_bytecode(programs):
    cache = programs / "demo" / "__pycache__"
    cache.mkdir()
    (cache / "cli.cpython-311.pyc").write_bytes(b"\0")
    (programs / "demo" / "stale.pyc").write_bytes(b"\0")
    with zipfile.ZipFile(io.BytesIO(build_zipapp(programs, "demo", "demo.cli:main"))) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == ["__main__.py", "demo/__init__.py", "demo/cli.py", "demo/sub/__init__.py", "demo/sub/value.py"]
    assert {(info.date_time, info.external_attr, info.compress_type) for info in infos} == {
        ((1980, 1, 1, 0, 0, 0), 0o100644 << 16, zipfile.ZIP_STORED)}


def test_a_changed_file_an_added_file_or_another_entry_point_change_the_bytes(programs):
    before = build_zipapp(programs, "demo", "demo.cli:main")
    (programs / "demo" / "sub" / "value.py").write_text("OFFSET = 1\n")
    changed = build_zipapp(programs, "demo", "demo.cli:main")
    (programs / "demo" / "extra.py").write_text("")
    added = build_zipapp(programs, "demo", "demo.cli:main")
    assert len({before, changed, added, build_zipapp(programs, "demo", "demo.sub.value:main")}) == 4


def test_the_archive_runs_its_entry_point_and_exits_with_its_status(programs, tmp_path):
    app = tmp_path / "demo.pyz"
    app.write_bytes(build_zipapp(programs, "demo", "demo.cli:main"))
    assert subprocess.run([sys.executable, str(app), "3"], check=False, timeout=30).returncode == 3


def test_the_relay_archive_runs_the_relay_from_the_zip_alone(tmp_path):
    """The collection's own package: the server's argument check answers from inside the archive."""
    app = tmp_path / "relay.pyz"
    app.write_bytes(build_zipapp(PROGRAMS, "higgs_relay", "higgs_relay.server:main"))
    # -S: no site-packages (.pth files not read), so higgs_relay comes from the archive, websockets from its directory
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(websockets.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-S", str(app)], env=env, capture_output=True, text=True, timeout=30,
                         check=False, cwd=tmp_path)
    assert out.returncode == 2 and "--auth-token-file is required" in out.stderr, out.stderr
    with zipfile.ZipFile(app) as archive:
        names = set(archive.namelist())
    assert {"higgs_relay/server.py", "higgs_relay/connector.py", "higgs_relay/framing.py"} <= names


@pytest.mark.parametrize(("package", "entry_point", "message"), [
    ("demo", "demo.cli", "must be module:function"),
    ("demo", "other.cli:main", "with the module in the package demo"),
    ("demo", "demo.cli:main()", "must be module:function"),
    ("missing", "missing.cli:main", "package 'missing' is not in"),
    ("../demo", "demo.cli:main", "is not a Python package name"),
])
def test_bad_arguments_are_refused_naming_the_fix(programs, package, entry_point, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_zipapp(programs, package, entry_point)


class Action(program.ActionModule):
    """The action with the remote side replaced: a stat answer and a recorded copy action."""

    def __init__(self, args, stat, diff=False):  # no super().__init__: nothing of a real connection is used
        self._task = SimpleNamespace(args=args, diff=diff, copy=lambda: SimpleNamespace(args={}))
        self.stat, self.copies = stat, []
        action = self

        class Copy:
            def __init__(self, task):
                self.task = task

            def run(self, task_vars):
                action.copies.append(dict(self.task.args, data=Path(self.task.args["src"]).read_bytes()))
                return {"changed": True}

        self._shared_loader_obj = SimpleNamespace(action_loader=SimpleNamespace(
            get=lambda name, task, **kwargs: Copy(task)))
        self._connection = self._play_context = self._loader = self._templar = None

    def validate_argument_spec(self, argument_spec=None, **kwargs):
        return None, dict({"owner": None, "group": None, "mode": "0644", "probed": None, "probed_key": None},
                          **self._task.args)

    def _execute_remote_stat(self, path, all_vars, follow, tmp=None, checksum=True):
        assert self.stat is not None, "no remote stat expected"
        return self.stat


ARGS = {"package": "higgs_vpn_metrics", "entry_point": "higgs_vpn_metrics.collector:main",
        "dest": "/usr/local/lib/higgs-vpn/higgs-vpn-metrics.pyz", "owner": "root", "group": "root"}
DATA = build_zipapp(PROGRAMS, "higgs_vpn_metrics", "higgs_vpn_metrics.collector:main")
SAME = {"exists": True, "isreg": True, "checksum": hashlib.sha1(DATA).hexdigest(), "mode": "0644",
        "pw_name": "root", "gr_name": "root", "uid": 0, "gid": 0}


def test_same_bytes_owner_and_mode_on_the_node_is_no_change_and_no_transfer():
    action = Action(ARGS, SAME)
    result = action._install({}, {})
    assert result["changed"] is False and action.copies == []
    assert result["checksum"] == SAME["checksum"] and result["size"] == len(DATA)


@pytest.mark.parametrize("difference", [
    {"exists": False, "checksum": "1"}, {"checksum": "0" * 40}, {"mode": "0600"}, {"pw_name": "nobody", "uid": 65534},
])
def test_other_bytes_or_attributes_go_through_the_copy_action_once(difference):
    action = Action(ARGS, dict(SAME, **difference), diff=True)
    result = action._install({}, {})
    assert result["changed"] is True
    assert [copy["data"] for copy in action.copies] == [DATA]
    assert action.copies[0]["dest"] == "/usr/local/lib/higgs-vpn/"  # the copy module creates a missing directory
    wanted = {"owner": "root", "group": "root", "mode": "0644"}
    assert {key: action.copies[0][key] for key in ("owner", "group", "mode")} == wanted
    assert "higgs_vpn_metrics/collector.py" in result["diff"]["after"]


@pytest.mark.parametrize(("override", "message"), [
    ({"mode": "644x"}, "mode '644x' must be octal"),
    ({"dest": "relative.pyz"}, "must be the absolute path"),
    ({"package": "nothing"}, "package 'nothing' is not in"),
])
def test_bad_arguments_fail_the_task_before_the_node_is_asked(override, message):
    action = Action(dict(ARGS, **override), None)
    with pytest.raises(AnsibleActionFail, match=message):
        action._install({}, {})


# what the node's probe read of the archive (host_probe's stats), when it is the one built
PROBED = {"type": "file", "sha256": hashlib.sha256(DATA).hexdigest(), "mode": "0644", "uid": 0, "gid": 0,
          "owner": "root", "group": "root"}


def test_the_probe_having_read_the_same_archive_is_no_change_without_a_round_trip():
    action = Action(dict(ARGS, probed={ARGS["dest"]: PROBED, "/other": None}), None)  # no stat allowed
    result = action._install({}, {})
    assert result["changed"] is False and result["on_controller"] is True and action.copies == []


@pytest.mark.parametrize("record", [
    None, dict(PROBED, sha256="0" * 64), dict(PROBED, mode="0600"), dict(PROBED, owner="nobody", uid=65534),
    dict(PROBED, type="link", src="/elsewhere"), dict(PROBED, sha256=None),
])
def test_the_probe_having_read_another_file_copies_without_a_remote_stat(record):
    action = Action(dict(ARGS, probed={ARGS["dest"]: record}), None, diff=True)  # no stat allowed
    result = action._install({}, {})
    assert result["changed"] is True and "on_controller" not in result
    assert [copy["data"] for copy in action.copies] == [DATA]
    assert result["diff"]["after"].startswith("sha1 %s\n" % hashlib.sha1(DATA).hexdigest())
    assert result["diff"]["before"] == ("present (another archive or other attributes)\n" if record else "")


def test_a_probe_that_did_not_read_the_archive_leaves_the_remote_stat_to_decide():
    action = Action(dict(ARGS, probed={"/other": PROBED}), SAME)
    result = action._install({}, {})
    assert result["changed"] is False and "on_controller" not in result and action.copies == []


def test_a_record_read_with_the_runs_key_needs_that_key():
    keyed = dict(PROBED, sha256=hmac.new(b"run-key", DATA, hashlib.sha256).hexdigest())
    action = Action(dict(ARGS, probed={ARGS["dest"]: keyed}, probed_key="run-key"), None)
    assert action._install({}, {})["on_controller"] is True and action.copies == []
    action = Action(dict(ARGS, probed={ARGS["dest"]: keyed}), None)
    assert action._install({}, {})["changed"] is True and len(action.copies) == 1
