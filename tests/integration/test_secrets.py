"""No secret of the lab fleet in a -vvv run (`scripts/lab up 2` first).

Runs playbooks/relays.yml, site.yml and clients.yml at -vvv against the running
fleet, then reads every private key, preshared key and token from the nodes,
the relay and the controller's client profiles, and checks that none of them
occurs anywhere in the output.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventory" / "lab"
PROFILES = ROOT / "lab-out" / "wireguard-profiles"
ENV = dict(os.environ, ANSIBLE_CONFIG=str(INVENTORY / "ansible.cfg"),
           ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"), ANSIBLE_NOCOLOR="1")
KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")


def on(host: str, cmd: str) -> str:
    return subprocess.run(["/usr/bin/docker", "exec", host, "sh", "-c", cmd],
                          capture_output=True, text=True, check=True).stdout


def lab_hosts(prefix: str) -> list[str]:
    names = subprocess.run(["/usr/bin/docker", "ps", "--format", "{{.Names}}"],
                           capture_output=True, text=True, check=True).stdout.split()
    return sorted(n for n in names if n.startswith(prefix))


def secrets() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"private keys": set(), "preshared keys": set(), "tokens": set()}
    for node in lab_hosts("fleet-node"):
        found["private keys"] |= set(KEY_RE.findall(on(node, "wg show all private-key")))
        # "<interface> <peer public key> <preshared key or (none)>" per peer: the third column only
        rows = [line.split() for line in on(node, "wg show all preshared-keys").splitlines()]
        found["preshared keys"] |= {row[2] for row in rows if len(row) == 3 and KEY_RE.fullmatch(row[2])}
    for host in lab_hosts("fleet-node") + lab_hosts("fleet-relay"):
        tokens = on(host, "find /etc/higgs-vpn -name token -type f -exec cat {} + 2>/dev/null || true")
        found["tokens"] |= {t for t in tokens.split() if len(t) >= 16}
    for path in PROFILES.glob("*/*.key"):
        found["private keys"].add(path.read_text().strip())
    for path in PROFILES.glob("*/*.conf"):
        for line in path.read_text().splitlines():
            if line.startswith(("PrivateKey", "PresharedKey")):
                found["private keys" if line.startswith("Private") else "preshared keys"].add(
                    line.split("=", 1)[1].strip())
    return found


@pytest.fixture(scope="module")
def output() -> str:
    runs = []
    for play in ("playbooks/relays.yml", "playbooks/site.yml", "playbooks/clients.yml"):
        run = subprocess.run(["ansible-playbook", "-vvv", "-i", str(INVENTORY), str(ROOT / play)],
                             capture_output=True, text=True, cwd=ROOT, env=ENV, check=False)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        runs.append(run.stdout + run.stderr)
    log = ROOT / "tests" / "output" / "secrets-vvv.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(runs))
    return "".join(runs)


def test_no_secret_in_a_vvv_run(output):
    found = secrets()
    # the lab has node and client private keys and a client with a preshared key
    assert found["private keys"] and found["preshared keys"], found.keys()
    print("checked %d bytes of -vvv output for %s" % (len(output), ", ".join(
        "%d %s" % (len(v), k) for k, v in found.items())))
    leaked = {kind: sorted(s[:6] + "..." for s in values if s in output) for kind, values in found.items()}
    assert not any(leaked.values()), "in the -vvv output (tests/output/secrets-vvv.log): %s" % leaked
