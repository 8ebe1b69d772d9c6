"""Wall time of playbooks/site.yml on lab fleets of 1, 4 and 16 nodes.

    python3 benchmarks/site.py [--nodes 1 4 16]

For each size: a fresh lab fleet (higgs_lab.fleet) with its relay
(playbooks/relays.yml, not timed), site.yml run twice
(first run, then the no-change run) with the settings we recommend
(inventory/lab/ansible.cfg: pipelining, forks 20, explicit fact gathering),
then the fleet is removed. Prints one line per size. Uses .venv (run
scripts/bootstrap first).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from higgs_lab import fleet, lab

ROOT = Path(__file__).resolve().parents[1]

ENV = dict(
    os.environ,
    PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
    ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"),
    ANSIBLE_CONFIG=str(ROOT / "inventory" / "lab" / "ansible.cfg"),
    ANSIBLE_NOCOLOR="1",
)


def site(playbook: str = "site.yml") -> tuple[float, int]:
    """Seconds of one run of the playbook and the number of changed tasks."""
    start = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", "-i", "inventory/lab", f"playbooks/{playbook}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, check=False,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{playbook} failed:\n{proc.stdout[-3000:]}")
    changed = sum(int(n) for n in re.findall(r" changed=(\d+)", proc.stdout))
    return elapsed, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    lab.build_images(list(lab.SUITES))
    print(f"{'nodes':>5} {'first run':>10} {'changed':>8} {'no-change':>10} {'changed':>8}")
    for count in args.nodes:
        plats = fleet.platforms(count)
        lab.create(fleet.SCENARIO, plats)
        fleet.INVENTORY.write_text(fleet.inventory(plats))
        try:
            site("relays.yml")  # the fleet's relay, which the nodes' connectors register with; not timed
            first, first_changed = site()
            again, again_changed = site()
        finally:
            lab.destroy(fleet.SCENARIO, plats)
            fleet.INVENTORY.unlink(missing_ok=True)
        print(f"{count:>5} {first:>9.1f}s {first_changed:>8} {again:>9.1f}s {again_changed:>8}", flush=True)


if __name__ == "__main__":
    main()
