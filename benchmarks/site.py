"""Wall time and round trips of playbooks/site.yml on lab fleets of 1 and 4 nodes.

    python3 benchmarks/site.py [--nodes 1 4] [--strategies linear free mitogen] [--top 15]

For each size and strategy: a fresh lab fleet (higgs_lab.fleet) with its
relay (playbooks/relays.yml, not timed), site.yml run twice (first run, then
the no-change run) with the settings we recommend (inventory/lab/ansible.cfg:
pipelining, forks 20, explicit fact gathering), then the fleet is removed.

Round trips are the remote module executions per node, counted by the callback
benchmarks/callback/round_trips.py (loop items included; set_fact, assert,
include_* and the other controller-only actions not). Prints one line per size
and strategy, then the tasks that cost most round trips per node.

Strategies: linear (the default), free (ANSIBLE_STRATEGY=free) and mitogen
(mitogen_linear from the PyPI package mitogen, which is no requirement of the
collection: put it on PYTHONPATH or in the venv for the benchmark only, e.g.
pip install --target /tmp/mitogen mitogen; PYTHONPATH=/tmp/mitogen). A strategy
that cannot run here is skipped with the reason. Uses .venv (run
scripts/bootstrap first) when it exists, else the ansible-playbook on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from higgs_lab import fleet, lab

ROOT = Path(__file__).resolve().parents[1]
# this checkout's lab inventory (higgs_lab.fleet.INVENTORY is the one of the checkout the
# lab package is installed from, which need not be this one)
INVENTORY = ROOT / "inventory" / "lab" / "hosts.yml"

ENV = dict(
    os.environ,
    PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"),
    ANSIBLE_CONFIG=str(ROOT / "inventory" / "lab" / "ansible.cfg"),
    ANSIBLE_NOCOLOR="1",
    ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "benchmarks" / "callback"),
    ANSIBLE_CALLBACKS_ENABLED="round_trips",
)


def mitogen_env() -> dict[str, str]:
    """The settings of mitogen_linear, or SystemExit with the reason it cannot run here."""
    probe = subprocess.run(
        ["python3", "-c", "import ansible_mitogen, mitogen, ansible.release as r;"
         "print(ansible_mitogen.__file__); print('.'.join(map(str, mitogen.__version__))); print(r.__version__)"],
        env=ENV, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SystemExit("mitogen is not installed (pip install --target /tmp/mitogen mitogen; "
                         "PYTHONPATH=/tmp/mitogen)")
    where, version, core = probe.stdout.split()
    plugins = Path(where).parent / "plugins" / "strategy"
    # mitogen replaces the connections it knows by their short names only (docker, ssh, ...):
    # the lab's community.docker.docker is named docker in the inventory for it (HIGGS_CONNECTION)
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear",
            "HIGGS_CONNECTION": "docker", "HIGGS_MITOGEN_VERSION": f"mitogen {version} on ansible-core {core}"}


def strategy_env(strategy: str) -> dict[str, str]:
    if strategy == "linear":
        return {}
    if strategy == "free":
        return {"ANSIBLE_STRATEGY": "free"}
    return mitogen_env()


def site(playbook: str = "site.yml", extra: dict[str, str] | None = None) -> dict:
    """One run of the playbook: seconds, changed tasks and the round trips per node."""
    with tempfile.NamedTemporaryFile(suffix=".json") as counts:
        env = dict(ENV, **(extra or {}), HIGGS_ROUND_TRIPS_FILE=counts.name)
        start = time.monotonic()
        proc = subprocess.run(
            ["ansible-playbook", "-i", "inventory/lab", f"playbooks/{playbook}"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{playbook} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
        hosts = json.loads(Path(counts.name).read_text() or "{}").get("hosts", {})
    nodes = {host: c for host, c in hosts.items() if host.startswith("fleet-node")}
    tasks: Counter = Counter()
    for c in nodes.values():
        tasks.update(c["tasks"])
    return {
        "wall": elapsed,
        "changed": sum(int(n) for n in re.findall(r" changed=(\d+)", proc.stdout)),
        "trips": {host: c["total"] for host, c in nodes.items()},
        "tasks": {task: n / max(len(nodes), 1) for task, n in tasks.items()},
    }


def per_node(run: dict) -> str:
    trips = sorted(run["trips"].values())
    return f"{trips[0]}" if trips[0] == trips[-1] else f"{trips[0]}-{trips[-1]}"


def top(title: str, run: dict, count: int) -> None:
    print(f"\n{title}: the {count} tasks with the most round trips per node")
    for task, n in sorted(run["tasks"].items(), key=lambda kv: -kv[1])[:count]:
        print(f"  {n:5.1f}  {task}")
    roles: Counter = Counter()
    for task, n in run["tasks"].items():
        roles[task.split(" : ")[0] if " : " in task else "(play)"] += n
    print("  per role: " + ", ".join(f"{role.removeprefix('higgs.vpn.')} {n:.0f}" for role, n in roles.most_common()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--strategies", nargs="+", choices=["linear", "free", "mitogen"], default=["linear"])
    parser.add_argument("--top", type=int, default=15, help="costliest tasks to print (0: none)")
    args = parser.parse_args()
    lab.build_images(list(lab.SUITES))
    envs = {}
    for strategy in args.strategies:
        try:
            envs[strategy] = strategy_env(strategy)
        except SystemExit as why:
            print(f"{strategy}: skipped, {why}")
    if "HIGGS_MITOGEN_VERSION" in envs.get("mitogen", {}):
        print(f"mitogen: {envs['mitogen']['HIGGS_MITOGEN_VERSION']}")
    head = (f"{'strategy':>8} {'nodes':>5} {'first':>8} {'trips/node':>10} {'changed':>7}"
            f" {'no-change':>9} {'trips/node':>10} {'changed':>7} {'ratio':>5}")
    print(head, flush=True)
    shown = set()
    for count in args.nodes:
        for strategy, extra in envs.items():
            plats = fleet.platforms(count)
            lab.create(fleet.SCENARIO, plats)
            hosts = fleet.inventory(plats)
            if "HIGGS_CONNECTION" in extra:
                hosts = hosts.replace('"community.docker.docker"', f'"{extra["HIGGS_CONNECTION"]}"')
            INVENTORY.write_text(hosts)
            try:
                site("relays.yml")  # the fleet's relay, which the nodes' connectors register with; not timed
                first = site(extra=extra)
                again = site(extra=extra)
            except RuntimeError as why:
                print(f"{strategy:>8} {count:>5} failed: {str(why)[:3000]}", flush=True)
                continue
            finally:
                lab.destroy(fleet.SCENARIO, plats)
                INVENTORY.unlink(missing_ok=True)
            print(f"{strategy:>8} {count:>5} {first['wall']:>7.1f}s {per_node(first):>10} {first['changed']:>7}"
                  f" {again['wall']:>8.1f}s {per_node(again):>10} {again['changed']:>7}"
                  f" {again['wall'] / first['wall']:>5.2f}", flush=True)
            if args.top and strategy not in shown:
                shown.add(strategy)
                top(f"{strategy}, {count} node(s), first run", first, args.top)
                top(f"{strategy}, {count} node(s), no-change run", again, args.top)
                print(head, flush=True)


if __name__ == "__main__":
    main()
