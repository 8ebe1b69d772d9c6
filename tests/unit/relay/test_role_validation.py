"""The relay_connector role refuses bad variables before anything changes, naming the variable.

Runs the role's validate.yml on localhost (asserts only, nothing touched) once per case.
Issue 12 items 14 and 15: "$" accepted a trailing newline, and a newline in
relay_connector_memory_max appended directives to the unit; issue 13 item 3:
the values the relay refuses are refused here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: relay_connector
        tasks_from: validate.yml
"""
GOOD = {"relay_connector_relays": ["https://relay.example.net"], "relay_connector_wireguard_port": 51820,
        "relay_connector_public_key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}
CASES = [
    ("valid", {}, None),
    ("coordinates null", {"relay_connector_location": {"country": "DE", "region": "", "coordinates": None}}, None),
    ("relay URL with a trailing newline", {"relay_connector_relays": ["https://relay.example.net\n"]},
     "relay_connector_relays"),
    ("node id with a trailing newline", {"relay_connector_node_id": "3f2b8c1e-5d4a-4e8f-9a1b-2c3d4e5f6a7b\n"},
     "relay_connector_node_id"),
    ("memory ceiling with a directive", {"relay_connector_memory_max": "128M\nExecStartPre=/bin/sh -c id"},
     "relay_connector_memory_max"),
    ("interface with a newline", {"relay_connector_wireguard_interface": "wg0\nUser=root"},
     "relay_connector_wireguard_interface"),
    ("port with a trailing newline", {"relay_connector_wireguard_port": "51820\n"}, "relay_connector_wireguard_port"),
    ("country of three letters", {"relay_connector_location": {"country": "DEU"}}, "relay_connector_location"),
    ("coordinates one number", {"relay_connector_location": {"country": "DE", "coordinates": 5}},
     "relay_connector_location"),
    ("coordinates three numbers", {"relay_connector_location": {"country": "DE", "coordinates": [1, 2, 3]}},
     "relay_connector_location"),
    ("bandwidth as text", {"relay_connector_capabilities": {"bandwidth_up": "fast"}}, "relay_connector_capabilities"),
    ("max connections as text", {"relay_connector_capabilities": {"max_connections": "many"}},
     "relay_connector_capabilities"),
    ("public key not a key", {"relay_connector_public_key": "12345"}, "relay_connector_public_key"),
    ("heartbeat beyond the server's range", {"relay_connector_settings": {"heartbeat_interval": 5}},
     "relay_connector_settings.heartbeat_interval"),
]


@pytest.mark.parametrize(("name", "extra", "variable"), CASES, ids=[c[0] for c in CASES])
def test_role_validation(tmp_path, name, extra, variable):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "vars.json").write_text(json.dumps(dict(GOOD, **extra)))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    run = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-c", "local", "-i", "localhost,",
                          "-e", "@%s" % (tmp_path / "vars.json"), str(tmp_path / "play.yml")],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    out = run.stdout + run.stderr
    if variable is None:
        assert run.returncode == 0, out
    else:
        assert run.returncode != 0 and variable in out, out
