"""The roles' preflight refuses values that would inject lines into the files
rendered from them (a YAML block scalar ends with a newline) and client names
that would leave the profile directory, naming the variable, before anything
changes. Runs each role's validate tasks on localhost with ansible-playbook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

CASES = [
    ("wireguard", {"wireguard_endpoint": "vpn.example.net\n"},
     "wireguard_endpoint contains the control character \\n at position 15"),
    ("wireguard", {"wireguard_clients": [{"name": "../../x"}]},
     "wireguard_clients[0].name '../../x' is not a safe name"),
    ("wireguard", {"wireguard_clients": [{"name": "alice\n"}]},
     "wireguard_clients[0].name contains the control character"),
    ("dns_forwarder", {"dns_forwarder_upstreams": [{"address": "9.9.9.9",
                                                    "tls_name": "dns.quad9.net\nforward-addr: 192.0.2.66"}]},
     "dns_forwarder_upstreams[0].tls_name contains the control character \\n at position 13"),
    ("dns_forwarder", {"dns_forwarder_listen_addresses": "{{ ansible_facts.all_ipv4_addresses[:1] }}",
                       "dns_forwarder_upstreams": [{"address": "9.9.9.9",
                                                    "tls_name": "dns.quad9.net forward-addr: x"}]},
     "tls_name that is not a DNS name for 9.9.9.9"),
    ("dns_forwarder", {"dns_forwarder_insecure_domains": ["lab.test\n"]},
     "dns_forwarder_insecure_domains[0] contains the control character"),
    ("metrics", {"metrics_listen_address": "127.0.0.1:9100\n"},
     "metrics_listen_address contains the control character \\n at position 14"),
    ("metrics", {"metrics_exporter_args": ["--collector.systemd\n--web.config.file=/tmp/x"]},
     "metrics_exporter_args[0] contains the control character"),
    ("traffic_shaping", {"traffic_shaping_tunnel_unit": "wg-quick@wg0.service\nExecStartPre=/bin/false"},
     "traffic_shaping_tunnel_unit contains the control character \\n at position 20"),
    ("traffic_shaping", {"traffic_shaping_rate_down": "100mbit\n"},
     "traffic_shaping_rate_down contains the control character"),
    # relay_connector: "$" accepted a trailing newline, a newline in a unit value appended
    # directives (issue 12 items 14, 15); the values the relay refuses are refused here (issue 13 item 3)
    ("relay_connector", {"relay_connector_relays": ["https://relay.example.net\n"]}, "relay_connector_relays"),
    ("relay_connector", {"relay_connector_node_id": "3f2b8c1e-5d4a-4e8f-9a1b-2c3d4e5f6a7b\n"},
     "relay_connector_node_id"),
    ("relay_connector", {"relay_connector_memory_max": "128M\nExecStartPre=/bin/sh -c id"},
     "relay_connector_memory_max"),
    ("relay_connector", {"relay_connector_wireguard_interface": "wg0\nUser=root"},
     "relay_connector_wireguard_interface"),
    ("relay_connector", {"relay_connector_wireguard_port": "51820\n"}, "relay_connector_wireguard_port"),
    ("relay_connector", {"relay_connector_location": {"country": "DEU"}}, "relay_connector_location"),
    ("relay_connector", {"relay_connector_location": {"country": "DE", "coordinates": 5}},
     "relay_connector_location"),
    ("relay_connector", {"relay_connector_location": {"country": "DE", "coordinates": [1, 2, 3]}},
     "relay_connector_location"),
    ("relay_connector", {"relay_connector_capabilities": {"bandwidth_up": "fast"}}, "relay_connector_capabilities"),
    ("relay_connector", {"relay_connector_capabilities": {"max_connections": "many"}},
     "relay_connector_capabilities"),
    ("relay_connector", {"relay_connector_public_key": "12345"}, "relay_connector_public_key"),
    ("relay_connector", {"relay_connector_settings": {"heartbeat_interval": 5}},
     "relay_connector_settings.heartbeat_interval"),
    # nat_traversal (issue 16): a port out of range, an unknown mapping protocol, a STUN server that is not
    # host:port, a renewal not shorter than the lease, a line injected into the units
    ("nat_traversal", {"nat_traversal_wireguard_port": 70000},
     "nat_traversal_wireguard_port: 70000 is not a UDP port"),
    ("nat_traversal", {"nat_traversal_protocols": ["upnp", "igd"]},
     "nat_traversal_protocols: igd is not a mapping protocol"),
    ("nat_traversal", {"nat_traversal_stun_servers": ["stun.example.net"]},
     "nat_traversal_stun_servers: stun.example.net is not host:port"),
    ("nat_traversal", {"nat_traversal_stun_servers": ["10.47.1.31:3478", "stun.example.net:99999"]},
     "nat_traversal_stun_servers: stun.example.net:99999 is not host:port"),
    ("nat_traversal", {"nat_traversal_renew_interval": 3600}, "nat_traversal_renew_interval"),
    ("nat_traversal", {"nat_traversal_description": "x\nExecStart=/bin/sh"},
     "nat_traversal_description contains the control character"),
    # the STUN servers a relay announces (issue 16): host:port, a port 1-65535, no line injected into the unit
    ("relay_server", {"relay_server_stun_servers": ["stun.example.net"]}, "relay_server_stun_servers"),
    ("relay_server", {"relay_server_stun_servers": ["stun.example.net:0"]}, "relay_server_stun_servers"),
    ("relay_server", {"relay_server_stun_servers": ["10.48.1.31:3478\nExecStartPre=/bin/sh"]},
     "relay_server_stun_servers"),
    ("relay_server", {"relay_server_stun_servers": ["10.0.0.%d:3478" % i for i in range(9)]},
     "relay_server_stun_servers"),
]
# The node checks its whole input first (the plan, then every part's checks with the
# values it hands the part): a bad value of any part is refused before any change,
# naming the variable the operator wrote (issue 14).
NODE_CASES = [
    ("node", {"node_traffic_shaping": True, "traffic_shaping_client_rate_down": "30mbit",
              "traffic_shaping_client_max_connections": -1},
     "traffic_shaping_client_max_connections: -1 is not a count"),
    ("node", {"node_traffic_shaping": True, "traffic_shaping_rate_down": "50mbit",
              "node_relay_connector": True, "relay_connector_relays": ["ftp://relay.example.net"]},
     "relay_connector_relays"),
    ("node", {"wireguard_address_ipv4": "10.0.0.0/33"}, "wireguard_address_ipv4: '10.0.0.0/33' is not an address"),
    ("node", {"wireguard_interface": "wg-0123456789abc"},
     "wireguard_interface: 'wg-0123456789abc' is 16 characters long"),
    ("node", {"wireguard_clients": [{"name": "alice", "rate_dwon": "20mbit"}]},
     "wireguard_clients[0] (alice) has unknown keys rate_dwon"),
    ("node", {"node_traffic_shaping": True, "wireguard_clients": [{"name": "alice", "max_connections": -4}]},
     "wireguard_clients[0] (alice).max_connections: -4 is not a count"),
    # a part's argument specification is checked before the first change too
    ("node", {"node_metrics": True, "metrics_interval": "often"}, "metrics_interval"),
    ("node", {"node_nat_traversal": True, "nat_traversal_renew_interval": "often"},
     "argument 'nat_traversal_renew_interval' is of type str"),
]
CASES += NODE_CASES
# Values every case starts from, where a role needs some to pass its checks.
BASE = {"relay_connector": {"relay_connector_relays": ["https://relay.example.net"],
                            "relay_connector_wireguard_port": 51820,
                            "relay_connector_public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="},
        # a node of its own parts only, whose upstream needs no CA bundle on the test machine
        "node": {"dns_forwarder_upstream_tls": False, "dns_forwarder_upstreams": [{"address": "9.9.9.9"}],
                 "relay_connector_public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}}
ACCEPTED = [
    ("nat_traversal", {}),
    ("nat_traversal", {"nat_traversal_stun_servers": ["[2001:db8::1]:3478", "10.47.1.31:3478"],
                       "nat_traversal_protocols": []}),
    ("relay_connector", {}),
    ("relay_server", {"relay_server_stun_servers": ["10.48.1.31:3478", "[2001:db8::31]:3478",
                                                    "stun.example.net:3478"]}),
    ("relay_connector", {"relay_connector_location": {"country": "DE", "region": "", "coordinates": None}}),
    # per-client limits next to the client (refused as unknown keys before issue 14)
    ("node", {"node_traffic_shaping": True,
              "wireguard_clients": [{"name": "alice", "rate_down": "20mbit", "rate_up": "5mbit",
                                     "max_connections": 50, "new_connections_per_second": 5},
                                    {"name": "bob", "rate_down": "unlimited"}]}),
]


def preflight(tmp_path, role, values, tasks_from="validate"):
    """(return code, failure messages, output) of the role's validate tasks with ``values``."""
    play = [{"hosts": "localhost", "gather_facts": False, "vars": dict(BASE.get(role, {}), **values),
             "tasks": [{"ansible.builtin.include_role": {"name": "higgs.vpn." + role, "tasks_from": tasks_from}},
                       {"ansible.builtin.debug": {"msg": "preflight passed"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_STDOUT_CALLBACK="default",
               NO_COLOR="1", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local",
                          "-e", "ansible_python_interpreter=" + sys.executable, str(tmp_path / "play.yml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    failed = [json.loads(line.split(" => ", 1)[1])["msg"] for line in run.stdout.splitlines()
              if line.startswith(("fatal: [localhost]: FAILED! => ", "failed: [localhost] (item="))]
    return run.returncode, failed, run.stdout + run.stderr


@pytest.mark.parametrize(("role", "values", "message"), CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_preflight_refuses(tmp_path, role, values, message):
    rc, failed, out = preflight(tmp_path, role, values)
    assert rc == 2, out[-4000:]
    assert len(failed) == 1 and message in failed[0], failed
    assert "preflight passed" not in out


@pytest.mark.parametrize(("role", "values"), ACCEPTED, ids=lambda v: v if isinstance(v, str) else None)
def test_preflight_accepts(tmp_path, role, values):
    rc, failed, out = preflight(tmp_path, role, values)
    assert rc == 0 and not failed, out[-4000:]
    assert "preflight passed" in out


def test_node_preflight_names_every_host_problem_at_once(tmp_path):
    """The node's host checks read this machine through its probe (release, memory) and report all problems."""
    rc, failed, out = preflight(tmp_path, "node", {"node_min_memory_mb": 10 ** 9,
                                                   "node_supported_releases": {"Plan9": ["4"]}}, "preflight")
    assert rc == 2, out[-4000:]
    assert len(failed) == 1, failed
    assert "is not a supported node (node_supported_releases" in failed[0]
    assert "MB of memory; a node needs at least 1000000000 MB" in failed[0]
    rc, failed, out = preflight(tmp_path, "node", {}, "preflight")
    assert rc == 0 and not failed, out[-4000:]
