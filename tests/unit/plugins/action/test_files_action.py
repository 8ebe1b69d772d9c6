"""Action of higgs.vpn.files: a task whose files the node's probe read as wanted makes no round trip."""

from __future__ import annotations

import hashlib

import pytest
from action_run import recording

from ansible_collections.higgs.vpn.plugins.action import files
from ansible_collections.higgs.vpn.plugins.module_utils import _probed

UNIT = "[Service]\nExecStart=/bin/true\n"
TOKEN = "s3cret\n"
RECORDS = {
    "/etc/higgs-vpn/relay": {"type": "directory", "mode": "0755", "uid": 0, "gid": 0, "owner": "root",
                             "group": "root"},
    "/etc/systemd/system/x.service": {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "owner": "root",
                                      "group": "root", "sha256": hashlib.sha256(UNIT.encode()).hexdigest()},
    "/etc/higgs-vpn/relay/token": {"type": "file", "mode": "0640", "uid": 0, "gid": 998, "owner": "root",
                                   "group": "higgs-relay", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()},
    "/etc/higgs-vpn/relay/ca.pem": None,
}
ARGS = {
    "files": [{"path": "/etc/higgs-vpn/relay", "state": "directory", "owner": "root", "mode": "0755"},
              {"path": "/etc/systemd/system/x.service", "content": UNIT, "unit": True, "mode": "0644"},
              {"path": "/etc/higgs-vpn/relay/ca.pem", "state": "absent"}],
    "secret_files": [{"path": "/etc/higgs-vpn/relay/token", "content": TOKEN, "group": "higgs-relay",
                      "mode": "0640"}],
}
REMOTE = {"changed": True, "changed_paths": ["/etc/systemd/system/x.service"]}


Action = recording(files.ActionModule, REMOTE)
pytestmark = pytest.mark.usefixtures("no_base_run")


@pytest.mark.parametrize("diff", [False, True])
def test_every_entry_as_the_probe_read_it_is_no_change_without_a_round_trip(diff):
    action = Action(dict(ARGS, probed=RECORDS), diff=diff)
    wanted = {"changed": False, "changed_paths": [], "on_controller": True, **({"diff": []} if diff else {})}
    assert action.run(task_vars={}) == wanted
    assert action.executed == []


@pytest.mark.parametrize("records", [
    dict(RECORDS, **{"/etc/systemd/system/x.service": None}),                       # a file gone
    dict(RECORDS, **{"/etc/higgs-vpn/relay/token": dict(RECORDS["/etc/higgs-vpn/relay/token"], mode="0644")}),
    dict(RECORDS, **{"/etc/higgs-vpn/relay/ca.pem": RECORDS["/etc/systemd/system/x.service"]}),  # one to remove
    {key: value for key, value in RECORDS.items() if key != "/etc/higgs-vpn/relay"},  # a path the probe did not read
    {},
])
def test_one_entry_not_as_wanted_runs_the_module_without_the_record(records):
    action = Action(dict(ARGS, probed=records))
    assert action.run(task_vars={}) == REMOTE
    assert action.executed == [("higgs.vpn.files", ARGS)]


@pytest.mark.parametrize("args", [ARGS, dict(ARGS, probed=None), dict(ARGS, files="not a list", probed=RECORDS)])
def test_without_a_usable_record_the_module_decides(args):
    action = Action(args)
    assert action.run(task_vars={}) == REMOTE
    assert action.executed == [("higgs.vpn.files", {key: value for key, value in args.items() if key != "probed"})]


def test_a_record_read_with_a_key_is_compared_with_that_key():
    """The probe's digests are HMACs with the run's key: the action needs that key to match them."""
    keyed = dict(RECORDS)
    for path, content in (("/etc/systemd/system/x.service", UNIT), ("/etc/higgs-vpn/relay/token", TOKEN)):
        keyed[path] = dict(RECORDS[path], sha256=_probed.digest(content.encode(), "run-key"))
    action = Action(dict(ARGS, probed=keyed, probed_key="run-key"))
    assert action.run(task_vars={})["on_controller"] is True and action.executed == []
    for key in (None, "another"):
        action = Action(dict(ARGS, probed=keyed, probed_key=key))
        assert action.run(task_vars={}) == REMOTE
        assert action.executed == [("higgs.vpn.files", ARGS)]  # neither the record nor the key reach the module
