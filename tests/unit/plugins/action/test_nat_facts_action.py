"""Action of higgs.vpn.nat_facts: a state file the node's probe read is checked on the controller."""

from __future__ import annotations

import json

import pytest
from action_run import recording

from ansible_collections.higgs.vpn.plugins.action import nat_facts
from ansible_collections.higgs.vpn.plugins.module_utils import _nat

STATE = {"route": "direct", "endpoint": "11.47.0.1:51820", "nat_type": "FullCone", "reason": "upnp mapped",
         "stun_mapped_address": "11.47.0.1:51820"}
REMOTE = {"changed": False, "ansible_facts": {"higgs_nat": "read on the node"}}


Action = recording(nat_facts.ActionModule, REMOTE)
pytestmark = pytest.mark.usefixtures("no_base_run")


@pytest.mark.parametrize(("text", "fact"), [(json.dumps(STATE), STATE), (None, None)])
def test_a_state_read_already_is_the_fact_without_a_round_trip(text, fact):
    action = Action({"read": {_nat.DEFAULT_PATH: text, "/other": "x"}})
    assert action.run(task_vars={}) == {"changed": False, "ansible_facts": {"higgs_nat": fact}, "on_controller": True}
    assert action.executed == []


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "is not JSON"),
    (json.dumps(dict(STATE, route="sideways")), "not a NAT state"),
    (json.dumps(dict(STATE, endpoint="11.47.0.1:51820\nPostUp = x")), "not an IPv4 address:port"),
    (json.dumps(dict(STATE, pad="x" * _nat.MAX_STATE)), "larger than"),
])
def test_a_bad_state_read_already_fails_naming_the_file(content, why):
    action = Action({"path": "/var/lib/x/state.json", "read": {"/var/lib/x/state.json": content}})
    result = action.run(task_vars={})
    assert result["failed"] and why in result["msg"] and "/var/lib/x/state.json" in result["msg"]
    assert action.executed == []


@pytest.mark.parametrize("args", [
    {}, {"read": {}}, {"read": {"/elsewhere": "{}"}}, {"probe": True, "read": {_nat.DEFAULT_PATH: "{}"}},
])
def test_otherwise_the_module_reads_or_probes_on_the_node(args):
    action = Action(args)
    assert action.run(task_vars={}) == REMOTE
    assert action.executed == [("higgs.vpn.nat_facts", args)]
