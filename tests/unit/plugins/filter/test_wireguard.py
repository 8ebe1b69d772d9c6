"""Filters of plugins/filter/wireguard.py, driven by wireguard_cases.yml."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.higgs.vpn.plugins.filter import wireguard

CASES = yaml.safe_load((Path(__file__).parent / "wireguard_cases.yml").read_text(encoding="utf-8"))
NODE = ["10.66.0.1/24", "fd66::1/64"]


def table(name):
    section = CASES[name]
    cases = section["cases"] if isinstance(section, dict) else section
    return [pytest.param(name, case, id="%s-%d" % (name, i)) for i, case in enumerate(cases)]


@pytest.mark.parametrize(("name", "case"), table("wg_mtu") + table("wg_networks") + table("wg_endpoint"))
def test_value_filters(name, case):
    func = wireguard.FilterModule().filters()[name]
    if "error" in case:
        with pytest.raises(AnsibleFilterError) as exc:
            func(*case["args"], **case.get("kwargs", {}))
        for fragment in case["error"]:
            assert fragment in str(exc.value)
    else:
        assert func(*case["args"], **case.get("kwargs", {})) == case["result"]


@pytest.mark.parametrize(("name", "case"), table("wg_address_errors") + table("wg_client_errors"))
def test_problem_lists(name, case):
    problems = wireguard.FilterModule().filters()[name](*case["args"])
    if "error" in case:
        for fragment in case["error"]:
            assert any(fragment in p for p in problems), problems
    else:
        assert problems == case["result"]


def clients(names):
    return [{"name": n} for n in names]


def test_allocation_is_deterministic_and_inside_the_subnets():
    names = ["client%03d" % i for i in range(200)]
    first = wireguard.wg_client_addresses(clients(names), NODE)
    again = wireguard.wg_client_addresses(clients(list(reversed(names))), NODE)
    assert first == again
    v4 = [a[0] for a in first.values()]
    v6 = [a[1] for a in first.values()]
    assert len(set(v4)) == len(v4) == 200 and len(set(v6)) == 200
    for addr in v4:
        ip = ipaddress.ip_interface(addr)
        assert ip.network.prefixlen == 32 and ip.ip in ipaddress.ip_network("10.66.0.0/24")
        assert str(ip.ip) not in ("10.66.0.0", "10.66.0.1", "10.66.0.255")
    assert all(ipaddress.ip_interface(a).ip in ipaddress.ip_network("fd66::/64") for a in v6)


def test_allocation_is_stable_when_clients_come_and_go():
    """With the recorded allocation, no client ever moves, whatever is added or removed."""
    rng = random.Random(7)
    names = ["c%d" % i for i in range(150)]
    current = wireguard.wg_client_addresses(clients(names), NODE)
    for _ in range(20):
        removed = set(rng.sample(names, 30))
        names = [n for n in names if n not in removed] + ["n%d" % rng.randrange(10**6) for _ in range(25)]
        names = list(dict.fromkeys(names))
        nxt = wireguard.wg_client_addresses(clients(names), NODE, previous=current)
        for name in names:
            if name in current:
                assert nxt[name] == current[name], name
        assert len({a[0] for a in nxt.values()}) == len(names)
        current = nxt


def test_explicit_addresses_win_and_others_probe_past_them():
    alloc = wireguard.wg_client_addresses(clients(["x"]), ["10.66.0.1/24"])
    taken = alloc["x"][0].split("/")[0]
    again = wireguard.wg_client_addresses([{"name": "x"}, {"name": "y", "addresses": [taken]}], ["10.66.0.1/24"])
    assert again["y"] == [taken + "/32"] and again["x"] != alloc["x"]


def test_previous_address_taken_by_an_explicit_one_moves():
    previous = {"x": ["10.66.0.5/32"]}
    alloc = wireguard.wg_client_addresses([{"name": "x"}, {"name": "y", "addresses": ["10.66.0.5"]}],
                                          ["10.66.0.1/24"], previous)
    assert alloc["y"] == ["10.66.0.5/32"] and alloc["x"] != ["10.66.0.5/32"]


def test_full_subnet_names_the_variable():
    with pytest.raises(AnsibleFilterError, match=r"only 5 are free in 10\.66\.0\.0/29.*wireguard_address_ipv4"):
        wireguard.wg_client_addresses(clients("abcdefg"), ["10.66.0.1/29"])


def test_subnet_can_be_filled_completely():
    alloc = wireguard.wg_client_addresses(clients("abcde"), ["10.66.0.1/29"])
    assert sorted(a[0] for a in alloc.values()) == ["10.66.0.%d/32" % i for i in range(2, 7)]


def test_bad_clients_are_refused_by_the_allocation_too():
    with pytest.raises(AnsibleFilterError, match="is also the name of"):
        wireguard.wg_client_addresses(clients(["a", "a"]), NODE)


def test_peer_list():
    alloc = {"a": ["10.66.0.2/32"], "b": ["10.66.0.3/32"], "c": ["10.66.0.4/32"]}
    peers = wireguard.wg_peer_list(
        [{"name": "a", "public_key": CASES["keys"]["alice"], "preshared_key": CASES["keys"]["bob"]},
         {"name": "b"}, {"name": "c", "persistent_keepalive": 25}],
        alloc, {"c": CASES["keys"]["bob"]})
    assert peers == [
        {"name": "a", "public_key": CASES["keys"]["alice"], "allowed_ips": ["10.66.0.2/32"],
         "persistent_keepalive": 0, "preshared_key": CASES["keys"]["bob"]},
        {"name": "c", "public_key": CASES["keys"]["bob"], "allowed_ips": ["10.66.0.4/32"], "persistent_keepalive": 25},
    ]


def test_every_filter_has_its_documentation():
    plugin_dir = Path(wireguard.__file__).parent
    for name in wireguard.FilterModule().filters():
        doc = yaml.safe_load((plugin_dir / ("%s.yml" % name)).read_text())
        assert doc["DOCUMENTATION"]["name"] == name
        assert doc["EXAMPLES"] and doc["RETURN"]["_value"]


def test_role_argument_specs_match_defaults():
    """The role that uses these filters documents exactly the variables it defaults."""
    role = Path(wireguard.__file__).parents[2] / "roles" / "wireguard"
    defaults = set(yaml.safe_load((role / "defaults/main.yml").read_text()))
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    for entry in specs.values():
        assert set(entry["options"]) == defaults
    assert all(name.startswith("wireguard_") for name in defaults)
