"""Faults on the running lab fleet (`scripts/lab up 2`; scripts/test runs this
between bringing the fleet up and cleaning it): an interrupted site.yml run
converges when re-run, a package gone brings the package transaction back, files
changed and units stopped by hand are put back, a restarted node comes back whole,
and cleanup after a crash leaves nothing behind.

fleet-node1 carries the lab client's tunnel; fleet-node2 takes the
interruptions and the crash.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from higgs_lab import lab  # the lab's docker helpers, e.g. start with its retry

ROOT = Path(__file__).resolve().parents[2]

INVENTORY = ROOT / "inventory" / "lab"
ENV = dict(os.environ, ANSIBLE_CONFIG=str(INVENTORY / "ansible.cfg"),
           ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"))


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/docker", *args], capture_output=True, text=True, check=check)


def on(host: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return docker("exec", host, "sh", "-c", cmd, check=check)


def playbook(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ansible-playbook", "-i", str(INVENTORY), str(ROOT / path), *args],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, check=False)


def recap(out: str, host: str) -> dict[str, int]:
    match = re.search(r"^%s\s+:\s+(.*)$" % re.escape(host), out, re.MULTILINE)
    assert match, out[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def changed_tasks(out: str) -> list[str]:
    """The tasks of a playbook run that reported a change."""
    tasks, current = [], ""
    for line in out.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed: "):
            tasks.append(current)
    return tasks


def wait(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.5)
    pytest.fail("%s: not within %d s" % (what, timeout))


def booted(host: str) -> bool:
    state = on(host, "systemctl is-system-running", check=False).stdout.strip()
    return state in ("running", "degraded")


def interrupt_site(host: str, marker: str) -> None:
    """Start site.yml on ``host`` and SIGKILL it (and its workers) once ``marker`` holds on the host."""
    log = ROOT / "tests" / "output" / "faults-interrupted.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        proc = subprocess.Popen(["ansible-playbook", "-i", str(INVENTORY), str(ROOT / "playbooks/site.yml"),
                                 "--limit", host], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                if on(host, marker, check=False).returncode == 0:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return
                time.sleep(0.2)
            pytest.fail("site.yml ended (rc %s) before `%s` held on %s" % (proc.returncode, marker, host))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_interrupted_runs_converge():
    """site.yml killed at four points of a fresh install; the next run converges, the one after changes nothing."""
    node = "fleet-node2"
    assert playbook("playbooks/cleanup.yml", "--limit", node).returncode == 0
    for marker in ("nft list table inet higgs_vpn",                    # forwarding applied, tunnel not yet
                   "test -e /etc/wireguard/wg0.peers",                  # tunnel configured, not yet up
                   "test -e /etc/unbound/unbound.conf.d/higgs-vpn.conf",
                   "test -e /etc/higgs-vpn/relay/connector.json"):
        interrupt_site(node, marker)
    first = playbook("playbooks/site.yml", "--limit", node)
    assert first.returncode == 0, first.stdout[-3000:]
    second = playbook("playbooks/site.yml", "--limit", node)
    assert second.returncode == 0, second.stdout[-3000:]
    assert recap(second.stdout, node)["changed"] == 0, changed_tasks(second.stdout)
    # every package there: no package transaction (skipped, which the lab's output does not show)
    assert "Install the packages of every part" not in second.stdout
    diagnosis = playbook("playbooks/diagnose.yml", "--limit", node)
    assert diagnosis.returncode == 0, diagnosis.stdout[-3000:]


def test_a_missing_package_brings_the_transaction_back():
    """A converged node skips the package transaction; one part's package gone, a check run plans it again."""
    node, task = "fleet-node2", "Install the packages of every part in one transaction"
    # dns-root-data marked removed in dpkg's database only (the containers have no mirror to reinstall from)
    on(node, "cp -p /var/lib/dpkg/status /root/dpkg-status && sed -i '/^Package: dns-root-data$/,/^$/"
             "s/^Status: install ok installed$/Status: deinstall ok config-files/' /var/lib/dpkg/status")
    try:
        assert on(node, "dpkg-query -W -f '${db:Status-Abbrev}' dns-root-data").stdout == "rc "
        planned = playbook("playbooks/site.yml", "--check", "--limit", node)
    finally:
        on(node, "mv /root/dpkg-status /var/lib/dpkg/status")
    assert planned.returncode == 0, planned.stdout[-3000:]
    assert [t for t in changed_tasks(planned.stdout) if task in t], changed_tasks(planned.stdout)


def test_files_changed_by_hand_are_put_back():
    """The node's probe reads its parts' files once and their tasks answer from it on the controller; a file
    changed by hand (content, mode, link, a program's bytes, one removed) is seen and written back."""
    node = "fleet-node2"
    files = {"unbound": "/etc/unbound/unbound.conf.d/higgs-vpn.conf",
             "agent": "/usr/local/lib/higgs-nat/higgs-nat.pyz",
             "shaping unit": "/etc/systemd/system/higgs-vpn-shaping@.service",
             "clients": "/etc/wireguard/wg0.clients.json"}
    token, textfile = "/etc/higgs-vpn/relay/token", "/var/lib/prometheus/node-exporter/higgs_vpn.prom"

    def state() -> str:
        return on(node, "sha256sum %s; stat -c '%%a %%U %%G' %s; readlink %s"
                  % (" ".join(files.values()), token, textfile)).stdout

    before = state()
    on(node, "echo '# by hand' >> %(unbound)s; echo x >> %(agent)s; echo '# by hand' >> '%(shaping unit)s';"
             " rm %(clients)s" % files + "; chmod 0644 %s; ln -sfn /tmp/elsewhere %s" % (token, textfile))
    assert state() != before
    again = playbook("playbooks/site.yml", "--limit", node)
    assert again.returncode == 0, again.stdout[-3000:]
    assert state() == before
    changed = changed_tasks(again.stdout)
    for task in ("nat_traversal : Install the agent", "wireguard : Write the interface configuration",
                 "dns_forwarder : Write the resolver configuration", "traffic_shaping : Install the unit",
                 "relay_connector : Write the configuration directory", "metrics : Write the configuration"):
        assert [t for t in changed if task in t], (task, changed)
    quiet = playbook("playbooks/site.yml", "--limit", node)
    assert quiet.returncode == 0, quiet.stdout[-3000:]
    assert recap(quiet.stdout, node)["changed"] == 0, changed_tasks(quiet.stdout)


def test_units_stopped_or_disabled_by_hand_are_started_again():
    """The probe reads the parts' units once and their service tasks answer from it on the controller; a unit
    stopped or disabled by hand, or running older files than it should, is seen and put right."""
    node = "fleet-node2"
    on(node, "systemctl stop unbound.service higgs-relay-connector.service && systemctl disable --now higgs-nat.timer"
             " && systemctl disable higgs-vpn-metrics.timer && touch /etc/wireguard/wg0.conf")
    again = playbook("playbooks/site.yml", "--limit", node)
    assert again.returncode == 0, again.stdout[-3000:]
    assert on(node, "systemctl is-active unbound.service higgs-relay-connector.service higgs-nat.timer"
                    " higgs-vpn-metrics.timer wg-quick@wg0.service", check=False).stdout.split() == ["active"] * 5
    assert on(node, "systemctl is-enabled higgs-nat.timer higgs-vpn-metrics.timer").stdout.split() == ["enabled"] * 2
    changed = changed_tasks(again.stdout)
    for task in ("dns_forwarder : Start unbound", "relay_connector : Enable and start the connector",
                 "nat_traversal : Renew the mapping", "metrics : Run the collector on schedule",
                 "wireguard : Start the interface"):  # the last: its configuration is newer than the interface
        assert [t for t in changed if task in t], (task, changed)
    quiet = playbook("playbooks/site.yml", "--limit", node)
    assert quiet.returncode == 0, quiet.stdout[-3000:]
    assert recap(quiet.stdout, node)["changed"] == 0, changed_tasks(quiet.stdout)


def test_restarted_node_comes_back():
    """After a restart the node has its tunnel, rules, limits, connector and metrics, and its client is back."""
    node, client = "fleet-node1", "fleet-client"

    def client_through_node() -> bool:
        page = on(client, "curl -s --max-time 2 http://203.0.113.10/", check=False)
        return page.returncode == 0 and page.stdout.strip() == "10.40.0.11"

    assert client_through_node()
    docker("stop", node)
    lab.start(node)
    wait(lambda: booted(node), 60, "%s boots" % node)
    recovery = wait(client_through_node, 90, "the client reaches the internet through %s again" % node)
    print("client traffic back %.1f s after the node booted" % recovery)
    assert on(node, "nft list table inet higgs_vpn", check=False).returncode == 0
    assert "htb" in on(node, "tc qdisc show dev wg0").stdout
    assert "htb" in on(node, "tc qdisc show dev ifb-wg0").stdout
    wait(lambda: on(node, "curl -sf 127.0.0.1:9477/health", check=False).returncode == 0, 30,
         "the relay connector reports healthy")
    wait(lambda: re.search(r'^higgs_wireguard_peer_latest_handshake_timestamp_seconds\{[^}]*name="lab-client"',
                           on("fleet-inet", "curl -s --max-time 3 http://10.40.0.11:9100/metrics",
                              check=False).stdout, re.MULTILINE) is not None,
         30, "the operator scrapes the client's handshake")
    diagnosis = playbook("playbooks/diagnose.yml", "--limit", node)
    assert diagnosis.returncode == 0, diagnosis.stdout[-3000:]
    again = playbook("playbooks/site.yml", "--limit", node)
    assert again.returncode == 0, again.stdout[-3000:]
    assert recap(again.stdout, node)["changed"] == 0, changed_tasks(again.stdout)


def test_cleanup_after_a_crash_leaves_nothing():
    """SIGKILL the connector, crash the whole node (SIGKILL to its init), start it: cleanup.yml leaves nothing."""
    node = "fleet-node2"
    on(node, "systemctl kill --signal=KILL higgs-relay-connector.service")
    docker("kill", node)
    lab.start(node)
    wait(lambda: booted(node), 60, "%s boots" % node)
    cleanup = playbook("playbooks/cleanup.yml", "--limit", node)
    assert cleanup.returncode == 0, cleanup.stdout[-3000:]
    clean = playbook("lab/fleet_clean.yml", "--limit", node)
    assert clean.returncode == 0, clean.stdout[-3000:]
