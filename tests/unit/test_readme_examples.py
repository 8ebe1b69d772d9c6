"""Every README example of the node's client and limit settings passes the checks it meets on a
node: the node role's example through the plan (higgs.vpn.node_plan), the WireGuard role's clients
through the plan's client checks, the traffic_shaping example through the tc_shaping and
conn_limits modules' validation."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ansible_collections.higgs.vpn.plugins.filter import rates
from ansible_collections.higgs.vpn.plugins.module_utils import _plan
from ansible_collections.higgs.vpn.plugins.modules import conn_limits, tc_shaping

ROLES = Path(__file__).resolve().parents[2] / "roles"


def examples(role: str) -> list:
    text = (ROLES / role / "README.md").read_text(encoding="utf-8")
    return [yaml.safe_load(block) for block in re.findall(r"^```yaml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def role_vars(example: list, role: str) -> dict:
    for play in example:
        for entry in play.get("roles", []):
            if isinstance(entry, dict) and entry["role"] == "higgs.vpn." + role:
                return entry.get("vars", {})
    raise AssertionError("no %s role in the example" % role)


def module_params(spec: dict, given: dict) -> dict:
    params = {k: v.get("default") for k, v in spec.items()}
    params.update(given)
    params["clients"] = [dict(dict.fromkeys(_plan.CLIENT_OPTIONS), **c) for c in params["clients"]]
    return params


def test_node_example_is_a_valid_plan():
    (example,) = examples("node")
    plan = _plan.node_plan(example)
    limits = {c["name"]: c for c in rates.shaping_clients(plan["clients"])}
    assert limits["alice"]["rate_down"] == "50mbit" and "rate_down" not in limits["bob"]


def test_wireguard_example_clients_pass_the_plan():
    (example,) = examples("wireguard")
    given = role_vars(example, "wireguard")
    psk = "UKX5PIX5nlgtePy/U6rrpjeY62lsMrgQNecW9PMLFlw="  # stands in for the example's vault_bob_psk
    clients = [dict(c, preshared_key=psk) if "preshared_key" in c else c for c in given["wireguard_clients"]]
    plan = _plan.node_plan(dict(given, wireguard_clients=clients))
    assert [c["name"] for c in plan["clients"]] == ["alice", "bob", "carol"]


def test_traffic_shaping_example_passes_the_modules():
    (example,) = examples("traffic_shaping")
    given = role_vars(example, "traffic_shaping")
    clients = rates.shaping_clients(given["traffic_shaping_clients"])
    _spec, errors = tc_shaping.validate(module_params(tc_shaping.ARGUMENT_SPEC, dict(
        clients=clients, rate_down=given["traffic_shaping_rate_down"], rate_up=given["traffic_shaping_rate_up"],
        client_rate_down=given["traffic_shaping_client_rate_down"])))
    assert errors == []
    assert conn_limits.validate(module_params(conn_limits.ARGUMENT_SPEC, dict(
        clients=clients, tunnel_interfaces=["wg0"],
        max_connections=given["traffic_shaping_client_max_connections"]))) == []
