"""Per-client limits on the running lab fleet (`scripts/lab up 2`), set next to each client in
inventory/lab/group_vars/nodes.yml and applied by site.yml: iperf3 through fleet-node1 measures each
client's own rate, the connection limit refuses the extra connection, the metrics name the clients.
Then playbooks/clients.yml alone changes one client's rate (measured again) and revokes the other
(its peer, class, filters and counters gone) while the first client's traffic never stops; the
inventory's clients are put back at the end.

fleet-client reaches the node as lab-client through wg0 (lab/fleet_report.yml) and as lab-psk
through wgpsk, used for the traffic from lab-psk's address (source routing, table 200).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_faults import on, playbook, recap  # noqa: E402  (the fleet's helpers)

NODE, CLIENT, INET = "fleet-node1", "fleet-client", "fleet-inet"
SERVER = "203.0.113.10"
PROFILES = ROOT / "lab-out" / "wireguard-profiles" / NODE
CLIENTS = yaml.safe_load((ROOT / "inventory" / "lab" / "group_vars" / "nodes.yml").read_text())["wireguard_clients"]
RATES = {c["name"]: c for c in CLIENTS}


HOLDER = """
import socket, threading
def hold(conn):
    while conn.recv(4096):
        pass
    conn.close()
server = socket.create_server(("", 7000), backlog=512)
while True:
    threading.Thread(target=hold, args=(server.accept()[0],), daemon=True).start()
"""


def mbit(port: int, source: str, reverse: bool = True) -> tuple[float, int]:
    """(Mbit/s received, sender's retransmits) of a 5-second iperf3 run from ``source`` (download with ``reverse``)."""
    argv = "iperf3 --client %s --port %d --bind %s --time 5 --omit 1 --json%s" % (
        SERVER, port, source, " --reverse" if reverse else "")
    for _ in range(3):  # iperf3 3.12 now and then exits 0 without its report
        run = on(CLIENT, argv, check=False)
        if run.returncode == 0 and '"sum_received"' in run.stdout:
            end = json.loads(run.stdout)["end"]
            return end["sum_received"]["bits_per_second"] / 1e6, end["sum_sent"].get("retransmits", 0)
        time.sleep(2)
    pytest.fail("iperf3 from %s: %s" % (source, run.stdout[-500:] + run.stderr[-500:]))


def address(profile: str) -> str:
    return re.search(r"^Address = ([0-9.]+)/32", profile, re.MULTILINE).group(1)


def metrics() -> str:
    return on(INET, "curl -s --max-time 3 http://10.40.0.11:9100/metrics", check=False).stdout


def within(port: int, source: str, rate: str, reverse: bool = True) -> bool:
    """Whether ``source``'s rate measures within 10 % of ``rate``, in one of at most three runs.

    One run now and then falls short on a busy machine (16.2 of 20 Mbit/s once in CI, where every
    other run measured 19-19.3): a transient, where a wrong limit is wrong in every run.
    """
    want = float(rate.removesuffix("mbit"))
    for _ in range(3):
        measured, retransmits = mbit(port, source, reverse)
        print("measured %.1f Mbit/s (%d retransmits), limit %s" % (measured, retransmits, rate))
        if 0.9 * want <= measured <= 1.1 * want:
            return True
    return False


def clients_run(clients: list[dict], tmp_path: Path, again: bool = False) -> None:
    """playbooks/clients.yml with ``clients`` as wireguard_clients (``again``: the next run changes nothing)."""
    extra = tmp_path / "clients.json"
    extra.write_text(json.dumps({"wireguard_clients": clients}))
    run = playbook("playbooks/clients.yml", "--limit", NODE, "-e", "@%s" % extra)
    assert run.returncode == 0, run.stdout[-3000:]
    if again:
        run = playbook("playbooks/clients.yml", "--limit", NODE, "-e", "@%s" % extra)
        assert run.returncode == 0 and recap(run.stdout, NODE)["changed"] == 0, run.stdout[-3000:]


@pytest.fixture(scope="module")
def tunnels(tmp_path_factory):
    """(lab-client's address, lab-psk's address) on fleet-client, with iperf3 servers on the internet."""
    for port in (5201, 5202):
        on(INET, "ss -Htln 'sport = :%d' | grep -q . || iperf3 -s -p %d -D" % (port, port))
    # a connection holder: each connection stays open until its client closes it
    on(INET, "ss -Htln 'sport = :7000' | grep -q . || setsid -f python3 -c '%s' >/dev/null 2>&1 </dev/null" % HOLDER)
    psk = (PROFILES / "lab-psk.conf").read_text()
    conf = re.sub(r"^(DNS|Address) = .*\n", "", psk, flags=re.MULTILINE)
    conf = conf.replace("[Interface]\n", "[Interface]\nTable = off\nFwMark = 51820\nAddress = %s/32\n" % address(psk))
    on(CLIENT, "cat > /etc/wireguard/wgpsk.conf <<'EOF'\n%sEOF\nchmod 600 /etc/wireguard/wgpsk.conf" % conf)
    on(CLIENT, "wg-quick down wgpsk >/dev/null 2>&1; wg-quick up wgpsk && ip rule del priority 100 2>/dev/null;"
               " ip rule add from %s lookup 200 priority 100 && ip route replace default dev wgpsk table 200"
               % address(psk))
    yield address((PROFILES / "lab-client.conf").read_text()), address(psk)
    on(CLIENT, "ip rule del priority 100; wg-quick down wgpsk", check=False)
    # the inventory's clients back on the node, as the other fleet tests expect them
    clients_run(CLIENTS, tmp_path_factory.mktemp("restore"), again=True)


def test_each_client_gets_its_own_limits(tunnels):
    client, psk = tunnels
    assert within(5201, client, RATES["lab-client"]["rate_down"])
    assert within(5201, client, RATES["lab-client"]["rate_up"], reverse=False)
    assert within(5202, psk, RATES["lab-psk"]["rate_down"])
    held = RATES["lab-client"]["max_connections"]
    for _ in range(held):
        on(CLIENT, "setsid -f timeout 12 nc -s %s %s 7000 </dev/null >/dev/null 2>&1" % (client, SERVER))
    time.sleep(2)
    extra = on(CLIENT, "nc -v -z -w 3 -s %s %s 7000" % (client, SERVER), check=False)
    assert extra.returncode != 0 and "refused" in extra.stderr, extra
    other = on(CLIENT, "nc -z -w 3 -s %s %s 7000" % (psk, SERVER), check=False)
    assert other.returncode == 0, "lab-psk has its own, higher connection limit"
    scraped = metrics()
    for name in RATES:
        assert re.search(r'^higgs_shaping_sent_bytes_total\{[^}]*client="%s"[^}]*\} [1-9]' % name,
                         scraped, re.MULTILINE), name
    deadline = time.monotonic() + 20  # the held connections end (timeout 12)
    while on(CLIENT, "pgrep -x nc", check=False).returncode == 0 and time.monotonic() < deadline:
        time.sleep(1)


def test_clients_playbook_changes_a_rate_and_revokes_a_client(tunnels, tmp_path):
    client, psk = tunnels
    slower = [dict(c, rate_down="12mbit") if c["name"] == "lab-client" else c for c in CLIENTS]
    clients_run(slower, tmp_path)
    assert within(5201, client, "12mbit")
    # lab-client's traffic runs all through the revocation of lab-psk
    on(CLIENT, "rm -f /tmp/ping.log; setsid -f sh -c 'ping -I %s -i 0.2 -c 600 %s >/tmp/ping.log 2>&1'"
       % (client, SERVER))
    psk_class = re.search(r'class="([0-9a-f:]+)",client="lab-psk"', metrics()).group(1)
    psk_hex = "%08x" % int.from_bytes(bytes(map(int, psk.split("."))), "big")
    # the client's filter is on its group's qdisc
    group = psk_class.split(":")[0] + ":"
    filters = on(NODE, "tc filter show dev wg0 parent %s" % group).stdout
    assert "flowid %s " % psk_class in filters and psk_hex in filters, filters
    key = on(NODE, "wg show wg0 dump").stdout
    psk_key = [line.split("\t")[0] for line in key.splitlines()[1:] if line.split("\t")[3].startswith(psk + "/")]
    assert len(psk_key) == 1
    clients_run([c for c in slower if c["name"] != "lab-psk"], tmp_path)
    assert psk_key[0] not in on(NODE, "wg show wg0 peers").stdout
    classes = on(NODE, "tc class show dev wg0; tc class show dev ifb-wg0").stdout
    assert "class htb %s " % psk_class not in classes, classes
    filters = on(NODE, "for dev in wg0 ifb-wg0; do tc filter show dev $dev; tc filter show dev $dev parent %s; done"
                 % group, check=False).stdout
    assert "flowid %s " % psk_class not in filters and psk_hex not in filters, filters
    assert psk not in on(NODE, "nft list table inet higgs_vpn_conn").stdout
    deadline = time.monotonic() + 30
    while 'client="lab-psk"' in metrics() and time.monotonic() < deadline:
        time.sleep(2)
    assert 'client="lab-psk"' not in metrics()
    assert 'client="lab-client"' in metrics()
    on(CLIENT, "pkill -INT -f 'ping -I %s'" % client, check=False)
    time.sleep(1)
    log = on(CLIENT, "cat /tmp/ping.log").stdout
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", log).groups())
    print("lab-client's pings during the revocation: %d sent, %d received" % (sent, received))
    # at most the one ping in flight when ping was stopped is missing
    assert sent > 20 and received >= sent - 1, log[-500:]
