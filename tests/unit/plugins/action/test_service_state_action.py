"""Action of higgs.vpn.service_state: units the node's probe read as needing nothing make no round trip."""

from __future__ import annotations

import pytest
from action_run import recording

from ansible_collections.higgs.vpn.plugins.action import service_state

CONF = "/etc/unbound/unbound.conf.d/higgs-vpn.conf"
RECORDS = {"unbound.service": {"enabled": True, "active": True, "need_reload": False, "paths": [CONF], "stale": []},
           "higgs-nat.timer": {"enabled": True, "active": True, "need_reload": False, "paths": [], "stale": []}}
ARGS = {"units": [{"name": "unbound.service", "paths": [CONF]}, {"name": "higgs-nat.timer"}]}
REMOTE = {"changed": True, "daemon_reloaded": False, "enabled": [], "started": [], "restarted": ["unbound.service"],
          "stale_paths": {"unbound.service": [CONF]}}


Action = recording(service_state.ActionModule, REMOTE)
pytestmark = pytest.mark.usefixtures("no_base_run")


@pytest.mark.parametrize("reload_arg", [{}, {"daemon_reload": False}, {"daemon_reload": "no"}])
def test_units_the_probe_read_as_needing_nothing_make_no_round_trip(reload_arg):
    action = Action(dict(ARGS, probed=RECORDS, **reload_arg))
    assert action.run(task_vars={}) == {"changed": False, "daemon_reloaded": False, "enabled": [], "started": [],
                                        "restarted": [], "stale_paths": {}, "on_controller": True}
    assert action.executed == []


@pytest.mark.parametrize(("extra", "records"), [
    ({"daemon_reload": True}, RECORDS),                                                         # a unit file written
    ({}, dict(RECORDS, **{"unbound.service": dict(RECORDS["unbound.service"], stale=[CONF])})),  # older than its file
    ({}, dict(RECORDS, **{"unbound.service": dict(RECORDS["unbound.service"], active=False)})),
    ({}, dict(RECORDS, **{"higgs-nat.timer": dict(RECORDS["higgs-nat.timer"], enabled=False)})),
    ({}, dict(RECORDS, **{"higgs-nat.timer": dict(RECORDS["higgs-nat.timer"], need_reload=True)})),
    ({}, {"unbound.service": RECORDS["unbound.service"]}),                                      # one not read
    ({}, dict(RECORDS, **{"unbound.service": dict(RECORDS["unbound.service"], paths=[])})),     # read for other paths
])
def test_a_unit_needing_something_runs_the_module_without_the_record(extra, records):
    action = Action(dict(ARGS, probed=records, **extra))
    assert action.run(task_vars={}) == REMOTE
    assert action.executed == [("higgs.vpn.service_state", dict(ARGS, **extra))]


@pytest.mark.parametrize("args", [ARGS, dict(ARGS, probed=None), {"units": [], "probed": RECORDS},
                                  dict(ARGS, probed=RECORDS, daemon_reload="sometimes")])
def test_without_a_usable_record_the_module_decides(args):
    action = Action(args)
    assert action.run(task_vars={}) == REMOTE
    assert action.executed == [("higgs.vpn.service_state", {key: value for key, value in args.items()
                                                            if key != "probed"})]
