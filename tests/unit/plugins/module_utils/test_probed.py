"""module_utils/_probed: the record the node's probe reads of a file, and when a wanted file is that already."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.higgs.vpn.plugins.module_utils import _probed

CONTENT = "[Unit]\nDescription=x\n"
FILE = {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "owner": "root", "group": "root",
        "sha256": hashlib.sha256(CONTENT.encode()).hexdigest()}
DIRECTORY = {"type": "directory", "mode": "0755", "uid": 0, "gid": 998, "owner": "root", "group": "higgs-relay"}
LINK = {"type": "link", "mode": "0777", "uid": 0, "gid": 0, "owner": "root", "group": "root", "src": "/run/x.prom"}
RECORDS = {"/etc/f": FILE, "/etc/d": DIRECTORY, "/etc/l": LINK, "/etc/gone": None}


@pytest.mark.parametrize("entry", [
    {"path": "/etc/f", "content": CONTENT},
    {"path": "/etc/f", "content": CONTENT, "state": "file", "owner": "root", "group": "root", "mode": "0644"},
    {"path": "/etc/f", "content": CONTENT, "owner": "0", "group": "0", "mode": "644"},
    {"path": "/etc/f", "content": CONTENT, "mode": 0o644, "unit": True, "validate": "false %s"},
    {"path": "/etc/d", "state": "directory", "owner": "root", "group": "higgs-relay", "mode": "0755"},
    {"path": "/etc/d", "state": "directory", "group": "998"},
    {"path": "/etc/l", "state": "link", "src": "/run/x.prom"},
    {"path": "/etc/gone", "state": "absent"},
])
def test_entries_as_wanted(entry):
    assert _probed.entry_satisfied(entry, RECORDS)


@pytest.mark.parametrize("entry", [
    {"path": "/etc/f", "content": CONTENT + "\n"},                    # other content
    {"path": "/etc/f", "content": CONTENT, "mode": "0600"},           # other mode
    {"path": "/etc/f", "content": CONTENT, "mode": "u=rw,go=r"},      # symbolic: only the module can tell
    {"path": "/etc/f", "content": CONTENT, "owner": "higgs-relay"},   # other owner
    {"path": "/etc/f", "content": CONTENT, "group": "1"},              # other group
    {"path": "/etc/f", "content": None},                              # no content: the module names the error
    {"path": "/etc/f", "state": "directory"},                         # a file where a directory is wanted
    {"path": "/etc/f", "state": "absent"},
    {"path": "/etc/f", "state": "fifo"},
    {"path": "/etc/d", "content": CONTENT},
    {"path": "/etc/d", "state": "directory", "mode": "0700"},
    {"path": "/etc/l", "state": "link", "src": "/run/y.prom"},
    {"path": "/etc/l", "content": CONTENT},                           # a link where a file is wanted
    {"path": "/etc/gone", "content": CONTENT},
    {"path": "/etc/gone", "state": "directory"},
    {"path": "/etc/unread", "state": "absent"},                       # not read by the probe
    {"path": "etc/f", "content": CONTENT},                            # not absolute
    "/etc/f",
])
def test_entries_not_as_wanted_or_unknown(entry):
    assert not _probed.entry_satisfied(entry, RECORDS)


def test_a_file_too_large_to_hash_is_never_as_wanted():
    assert not _probed.entry_satisfied({"path": "/etc/f", "content": CONTENT}, {"/etc/f": dict(FILE, sha256=None)})


def test_program_records():
    data = CONTENT.encode()
    assert _probed.program_satisfied(FILE, data, "root", "root", "0644")
    assert _probed.program_satisfied(FILE, data, None, None, "644")
    assert not _probed.program_satisfied(FILE, data + b"x", "root", "root", "0644")
    assert not _probed.program_satisfied(FILE, data, "root", "root", "0755")
    assert not _probed.program_satisfied(dict(FILE, type="link"), data, None, None, "0644")
    assert not _probed.program_satisfied(None, data, None, None, "0644")
    assert not _probed.program_satisfied({"type": "file"}, data, None, None, "0644")


def test_stat_reads_what_the_entries_are_compared_with(tmp_path):
    path = tmp_path / "unit.service"
    path.write_text(CONTENT)
    path.chmod(0o644)
    record = _probed.stat(str(path))
    assert _probed.entry_satisfied({"path": str(path), "content": CONTENT, "mode": "0644",
                                    "owner": str(os.getuid())}, {str(path): record})
    (tmp_path / "sub").mkdir()
    assert _probed.stat(str(tmp_path / "sub"))["type"] == "directory"
    assert _probed.stat(str(tmp_path / "missing")) is None
    assert _probed.stat(str(path / "below-a-file")) is None
    os.mkfifo(tmp_path / "fifo")
    assert _probed.stat(str(tmp_path / "fifo"))["type"] == "other"


def test_a_keyed_record_matches_with_its_key_only(tmp_path):
    """The node reads digests as HMACs with a key of the run: a logged digest of a secret is worth nothing."""
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    keyed = _probed.stat(str(path), key="run-key")
    assert keyed["sha256"] not in (hashlib.sha256(b"s3cret\n").hexdigest(), _probed.stat(str(path))["sha256"])
    entry = {"path": str(path), "content": "s3cret\n"}
    assert _probed.entry_satisfied(entry, {str(path): keyed}, key="run-key")
    assert not _probed.entry_satisfied(entry, {str(path): keyed})
    assert not _probed.entry_satisfied(entry, {str(path): keyed}, key="another")
    assert _probed.program_satisfied(keyed, b"s3cret\n", None, None, _probed.stat(str(path))["mode"], "run-key")
    assert not _probed.program_satisfied(keyed, b"s3cret\n", None, None, keyed["mode"])
