"""higgs.vpn.nat_facts: the agent's state file as facts (bounded, checked) and a probe by the real agent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ansible.module_utils.basic import AnsibleModule
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.action import program
from ansible_collections.higgs.vpn.plugins.module_utils import _nat
from ansible_collections.higgs.vpn.plugins.modules import nat_facts

PROGRAMS = Path(__file__).resolve().parents[4] / "programs"
STATE = {"route": "direct", "endpoint": "11.47.0.1:51820", "nat_type": "FullCone", "reason": "upnp mapped",
         "stun_mapped_address": "11.47.0.1:51820"}


@pytest.fixture(autouse=True)
def ends(monkeypatch):
    stop_at_exit(monkeypatch)


def run(args):
    return run_main(nat_facts, args)


def test_state_file_becomes_the_fact(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps(STATE))
    result = run({"path": str(path), "_ansible_check_mode": True})
    assert result == {"changed": False, "ansible_facts": {"higgs_nat": STATE}}


def test_no_state_yet_is_null(tmp_path):
    assert run({"path": str(tmp_path / "missing.json")})["ansible_facts"] == {"higgs_nat": None}


@pytest.mark.parametrize(("content", "why"), [
    ("{not json", "is not JSON"),
    (json.dumps(dict(STATE, route="sideways")), "not a NAT state"),
    (json.dumps(dict(STATE, nat_type="Open")), "not a NAT state"),
    (json.dumps([STATE]), "not a NAT state"),
    (json.dumps(dict(STATE, endpoint="11.47.0.1:51820\nPostUp = x")), "not an IPv4 address:port"),
    (json.dumps(dict(STATE, endpoint="router.example:51820")), "not an IPv4 address:port"),
    (json.dumps(dict(STATE, endpoint="11.47.0.1:0")), "not an IPv4 address:port"),
    (json.dumps(dict(STATE, endpoint=None)), "not an IPv4 address:port"),
    (json.dumps(dict(STATE, route="relay")), "not an IPv4 address:port"),
    (json.dumps(dict(STATE, pad="x" * _nat.MAX_STATE)), "larger than"),
])
def test_a_bad_state_file_fails_naming_it(tmp_path, content, why):
    path = tmp_path / "state.json"
    path.write_text(content)
    result = run({"path": str(path)})
    assert result["failed"] and why in result["msg"] and (str(path) in result["msg"] or "larger" not in why)


def test_probe_runs_the_agent_without_mapping(tmp_path, monkeypatch):
    """The real agent, no STUN server and no mapping protocol: it measures the egress class only."""
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False: sys.executable)
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({"wireguard_port": 51820, "stun_servers": [], "protocols": [], "lease": 3600,
                                  "timeout": 0.2, "description": "x", "state_file": str(tmp_path / "s.json")}))
    agent = tmp_path / "higgs-nat.pyz"   # as the role installs it
    agent.write_bytes(program.build_zipapp(PROGRAMS, "higgs_nat", "higgs_nat.__main__:main"))
    result = run({"probe": True, "config": str(config), "agent": str(agent)})
    state = result["ansible_facts"]["higgs_nat"]
    assert state["route"] in ("direct", "relay") and state["mapping"] is None and state["mapping_errors"] == []
    assert not (tmp_path / "s.json").exists()   # a probe writes nothing


def test_probe_without_the_agent_says_so(tmp_path):
    result = run({"probe": True, "agent": str(tmp_path / "higgs-nat.pyz")})
    assert result["failed"] and "not installed" in result["msg"]
