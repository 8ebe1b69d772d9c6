"""The lab fleet behind README command (1): N exit nodes, a client, an internet, a relay.

    python -m higgs_lab.fleet up [--nodes N]   create the fleet and its inventory
    python -m higgs_lab.fleet down             remove it

Topology: every node sits on the "uplink" network (its home LAN, whose router
fleet-inet sends router advertisements, serves the lab's internet at
203.0.113.10 and 2001:db8:40::10 and scrapes the nodes' metrics) and on the
"wan" network, where the client reaches the nodes' WireGuard ports and the
relay fleet-relay (higgs.vpn.relay_server, run by scripts/lab) that every
node's connector registers with. The client reaches the internet only through
a tunnel. Nodes alternate between Debian 12 and 13.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from higgs_lab import lab

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"
SCENARIO = "fleet"


def platforms(nodes: int) -> list[dict]:
    plats = [{
        "name": "fleet-inet", "groups": ["internet"],
        "lab_networks": {"uplink": ["10.40.0.254/24", "fd00:40::254/64"]},
        "lab_addresses": ["203.0.113.10/32", "2001:db8:40::10/128"],
        "lab_http": True, "lab_radvd": "fd00:40::/64",
    }, {
        "name": "fleet-client", "groups": ["clients"],
        "lab_networks": {"wan": ["10.40.1.5/24"]},
    }, {
        "name": "fleet-relay", "groups": ["relays"],
        "lab_networks": {"wan": ["10.40.1.3/24"]},
    }]
    for i in range(1, nodes + 1):
        plats.append({
            "name": f"fleet-node{i}", "groups": ["nodes"],
            "lab_image": "higgs-lab:bookworm" if i % 2 else "higgs-lab:trixie",
            "lab_networks": {"uplink": [f"10.40.0.{10 + i}/24", f"fd00:40::{10 + i}/64"],
                             "wan": [f"10.40.1.{10 + i}/24"]},
            "lab_routes": [{"to": "default", "via": "10.40.0.254"}],
        })
    return plats


def inventory(plats: list[dict]) -> str:
    groups: dict[str, dict] = {}
    for plat in plats:
        host = {"ansible_connection": "community.docker.docker", "ansible_host": plat["name"]}
        if "nodes" in plat["groups"]:
            i = int(plat["name"].removeprefix("fleet-node"))
            host |= {"wireguard_address_ipv4": f"10.40.{100 + i}.1/24",
                     "wireguard_address_ipv6": f"fd40:{100 + i}::1/64",
                     "wireguard_endpoint": plat["lab_networks"]["wan"][0].split("/")[0],
                     "metrics_listen_address": plat["lab_networks"]["uplink"][0].split("/")[0] + ":9100"}
        for group in plat["groups"]:
            groups.setdefault(group, {"hosts": {}})["hosts"][plat["name"]] = host
    header = "# Written by higgs_lab.fleet (lab/higgs_lab/fleet.py) for the running lab fleet; do not edit.\n"
    return header + "---\n" + json.dumps({"all": {"children": groups}}, indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--nodes", type=int, default=3)
    sub.add_parser("down")
    args = parser.parse_args()
    if args.cmd == "up":
        if not 1 <= args.nodes <= 40:
            parser.error("--nodes takes 1 to 40")
        plats = platforms(args.nodes)
        lab.build_images(list(lab.SUITES))
        lab.create(SCENARIO, plats)
        INVENTORY.write_text(inventory(plats))
        print(f"lab fleet: {args.nodes} nodes, inventory {INVENTORY.relative_to(ROOT)}")
    else:
        lab.destroy(SCENARIO, platforms(40))
        INVENTORY.unlink(missing_ok=True)
        print("lab fleet removed")


if __name__ == "__main__":
    main()
