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
]


@pytest.mark.parametrize(("role", "values", "message"), CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_preflight_refuses(tmp_path, role, values, message):
    play = [{"hosts": "localhost", "gather_facts": False, "vars": values,
             "tasks": [{"ansible.builtin.include_role": {"name": "higgs.vpn." + role, "tasks_from": "validate"}},
                       {"ansible.builtin.debug": {"msg": "preflight passed"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_STDOUT_CALLBACK="default",
               NO_COLOR="1", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", "-c", "local",
                          "-e", "ansible_python_interpreter=" + sys.executable, str(tmp_path / "play.yml")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    failed = [json.loads(line.split(" => ", 1)[1])["msg"] for line in run.stdout.splitlines()
              if line.startswith("fatal: [localhost]: FAILED! => ")]
    assert len(failed) == 1 and message in failed[0], failed
    assert "preflight passed" not in run.stdout
