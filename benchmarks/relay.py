"""Relay path vs direct WireGuard, side by side on the relay lab (prints figures).

Run after ``molecule converge -s relay`` (containers rly-*):

    python3 benchmarks/relay.py [--seconds 10] [--pings 200]

For the comparison it adds a direct tunnel wg1 (client 10.45.101.2 -> node
UDP 51830, routing only 203.0.113.11) next to the relay-path tunnel wg0
(routing 203.0.113.10 through the client-side connector, a relay and the node
connector), lets UDP 51830 through the client's block, and removes all of it
at the end.  Figures: iperf3 TCP goodput client -> internet on both paths and
their ratio, TCP retransmissions (losses on the way, e.g. a full socket
buffer), relay bytes on the WebSocket ÷ WireGuard datagram bytes (batched and
unbatched), connector CPU time per datagram, CPU seconds of every process on
the path during each run (where the cycles go when the machine is the limit:
the lab puts both WireGuards, both connectors, the relay and both iperf3 on
the same cores; the client's iperf3 runs under docker exec and is not
counted), and ping latency p50/p99 on both paths.  The goodput comparison
runs once per ``--uplinks`` entry: with the node's uplink not capped (the
machine's CPU is the limit) and capped with tbf at a home uplink's rate (the
uplink is the limit, as on most nodes).  Nothing is
asserted: figures depend on the machine.  Run it as root on the Docker host:
process CPU times are read from the host's /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import time

DOCKER = "/usr/bin/docker"
NODE, CLIENT, INET = "rly-node", "rly-client", "rly-inet"
RELAY_TARGET, DIRECT_TARGET = "203.0.113.10", "203.0.113.11"
CONFIG = "/etc/higgs-vpn/relay/connector.json"
NODE_UPLINK = "10.45.0.2"
# the processes that carry the traffic, per container: (label, command line prefix)
PATH_PROCESSES = {
    CLIENT: (("client wireguard-go", "wireguard-go"),
             ("client connector", "/usr/bin/python3 /opt/higgs-relay/boson-client.pyz")),
    "rly-relay1": (("relay", "/usr/bin/python3 /usr/local/lib/higgs-relay-server/higgs-relay-server.pyz"),),
    NODE: (("node wireguard-go", "wireguard-go"),
           ("node connector", "/usr/bin/python3 /usr/local/lib/higgs-relay/higgs-relay-connector.pyz")),
    INET: (("internet iperf3", "iperf3"),),
}


def sh(host, script, check=True):
    proc = subprocess.run([DOCKER, "exec", host, "sh", "-c", script], capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise SystemExit("%s: %s failed: %s" % (host, script, proc.stderr.strip()))
    return proc.stdout


def metrics():
    text = sh(NODE, "curl -s 127.0.0.1:9477/metrics")
    out = {}
    for line in text.splitlines():
        if line.startswith("higgs_relay_") and " " in line:
            key, value = line.rsplit(" ", 1)
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def path_cpu():
    """CPU seconds so far per label of PATH_PROCESSES (several processes of one label add up)."""
    hz = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for container, wanted in PATH_PROCESSES.items():
        top = subprocess.run([DOCKER, "top", container, "-eo", "pid,args"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[1:]
        for line in top:
            pid, _, args = line.strip().partition(" ")
            label = next((name for name, prefix in wanted if args.strip().startswith(prefix)), None)
            if label is None:
                continue
            try:
                with open("/proc/%s/stat" % pid) as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:  # ended in between
                continue
            seconds[label] = seconds.get(label, 0) + (int(fields[11]) + int(fields[12])) / hz
    return seconds


def print_cpu(before, after, seconds):
    used = {label: after.get(label, 0) - before.get(label, 0) for label in after}
    print("             CPU s in %d s: %s (total %.1f)" % (seconds, ", ".join(
        "%s %.1f" % (label, used[label]) for label in sorted(used, key=used.get, reverse=True) if used[label] > 0.05),
        sum(used.values())))


def direct_tunnel(up):
    if not up:
        sh(CLIENT, "wg-quick down wg1; rm -f /etc/wireguard/wg1.conf; "
                   "nft delete rule inet lab_block output handle $(nft -a list chain inet lab_block output "
                   "| sed -n 's/.*dport 51830 accept # handle //p')", check=False)
        sh(NODE, "wg-quick down wg1; rm -f /etc/wireguard/wg1.conf", check=False)
        return
    node_key = sh(NODE, "wg pubkey < /etc/wireguard/lab.key").strip()
    client_key = sh(CLIENT, "wg pubkey < /etc/wireguard/lab.key").strip()
    sh(NODE, "cat > /etc/wireguard/wg1.conf <<EOF\n[Interface]\nAddress = 10.45.101.1/24\nListenPort = 51830\n"
             "PostUp = wg set %%i private-key /etc/wireguard/lab.key\n[Peer]\nPublicKey = %s\n"
             "AllowedIPs = 10.45.101.2/32\nEOF\nwg-quick up wg1" % client_key)
    sh(CLIENT, "nft insert rule inet lab_block output ip daddr 10.45.1.2 udp dport 51830 accept")
    sh(CLIENT, "cat > /etc/wireguard/wg1.conf <<EOF\n[Interface]\nAddress = 10.45.101.2/32\n"
               "PostUp = wg set %%i private-key /etc/wireguard/lab.key\n[Peer]\nPublicKey = %s\n"
               "Endpoint = 10.45.1.2:51830\nAllowedIPs = %s/32\nPersistentKeepalive = 5\nEOF\nwg-quick up wg1"
               % (node_key, DIRECT_TARGET))


def iperf(target, seconds):
    """(goodput Mbit/s, TCP retransmissions)."""
    for _ in range(2):  # the lab's iperf3 sometimes ends without its report: one more try
        data = json.loads(sh(CLIENT, "iperf3 -c %s -t %d -O 1 -J" % (target, seconds)))
        if "sum_received" in data.get("end", {}):
            break
    return data["end"]["sum_received"]["bits_per_second"] / 1e6, data["end"]["sum_sent"].get("retransmits", 0)


def pings(target, count):
    out = sh(CLIENT, "ping -n -c %d -i 0.02 -W 1 %s" % (count, target), check=False)
    times = sorted(float(t) for t in re.findall(r"time=([0-9.]+)", out))
    if not times:
        return float("nan"), float("nan")
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def set_batching(on):
    sh(NODE, "python3 - <<'EOF'\nimport json\np='%s'\nc=json.load(open(p))\nc['batch']=%s\n"
             "open(p,'w').write(json.dumps(c, indent=4, sort_keys=True)+'\\n')\nEOF\n"
             "systemctl restart higgs-relay-connector" % (CONFIG, on))
    flag = "" if on else " --no-batch"
    # the option goes right after the module name: ExecStart may continue over several lines
    sh(CLIENT, "sed -i 's/ --no-batch//; s|/boson-client.pyz|&%s|' /etc/systemd/system/boson-client.service && "
               "systemctl daemon-reload && systemctl restart boson-client" % flag)
    for _ in range(60):
        if sh(CLIENT, "curl -sf -m 2 http://%s/ >/dev/null && echo ok" % RELAY_TARGET, check=False).strip() == "ok":
            return
        time.sleep(1)
    raise SystemExit("the relay path did not come back after switching batching")


def relay_run(label, seconds):
    before, path0 = metrics(), path_cpu()
    goodput, retransmits = iperf(RELAY_TARGET, seconds)
    after, path1 = metrics(), path_cpu()

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    ws = (delta('higgs_relay_bytes_total{direction="to_relay"}')
          + delta('higgs_relay_bytes_total{direction="from_relay"}'))
    wg = (delta('higgs_relay_wireguard_bytes_total{direction="to_relay"}')
          + delta('higgs_relay_wireguard_bytes_total{direction="from_relay"}'))
    grams = (delta('higgs_relay_datagrams_total{direction="to_relay"}')
             + delta('higgs_relay_datagrams_total{direction="from_relay"}'))
    frames = (delta('higgs_relay_frames_total{direction="to_relay"}')
              + delta('higgs_relay_frames_total{direction="from_relay"}'))
    drops = sum(v for k, v in after.items() if k.startswith("higgs_relay_drops_total")) - sum(
        v for k, v in before.items() if k.startswith("higgs_relay_drops_total"))
    print("  %-10s goodput %7.1f Mbit/s (%d retransmits) | WebSocket/WireGuard bytes %.4f | %.1f datagrams/frame | "
          "node connector CPU %.1f us/datagram | drops %d"
          % (label, goodput, retransmits, ws / wg if wg else float("nan"), grams / frames if frames else 0,
             (path1["node connector"] - path0["node connector"]) * 1e6 / grams if grams else float("nan"), drops))
    print_cpu(path0, path1, seconds)
    return goodput


def uplink_cap(rate):
    """Cap the node's uplink (towards the internet container) at ``rate`` with tbf; None removes the cap."""
    device = sh(NODE, "ip -o -4 addr show to %s/32 | cut -d' ' -f2" % NODE_UPLINK).strip()
    if rate is None:
        sh(NODE, "tc qdisc del dev %s root" % device, check=False)
    else:
        sh(NODE, "tc qdisc replace dev %s root tbf rate %s burst 256kb latency 20ms" % (device, rate))


def compare(args, uplink):
    uplink_cap(uplink)
    path0 = path_cpu()
    direct, retransmits = iperf(DIRECT_TARGET, args.seconds)
    path1 = path_cpu()
    print("iperf3 TCP client -> internet, %d s each, node uplink %s" % (args.seconds, uplink or "not capped"))
    print("  %-10s goodput %7.1f Mbit/s (%d retransmits)" % ("direct", direct, retransmits))
    print_cpu(path0, path1, args.seconds)
    set_batching(True)
    batched = relay_run("relay", args.seconds)
    set_batching(False)
    unbatched = relay_run("unbatched", args.seconds)
    set_batching(True)
    print("  ratio relay/direct: %.2f batched, %.2f unbatched (target >= 0.8)"
          % (batched / direct, unbatched / direct))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--uplinks", default="none,100mbit",
                        help="node uplink caps to compare at, tc rates; none = not capped (default: %(default)s)")
    args = parser.parse_args()
    sh(INET, "pgrep -x iperf3 >/dev/null || iperf3 -s -D")
    direct_tunnel(False)
    direct_tunnel(True)
    try:
        for _ in range(30):
            if sh(CLIENT, "ping -c1 -W1 %s >/dev/null && echo ok" % DIRECT_TARGET, check=False).strip() == "ok":
                break
        print("uvloop on the node:", "yes" if "uvloop" in sh(NODE, "journalctl -u higgs-relay-connector -n 50 "
                                                                   "--no-pager", check=False) else "no")
        for uplink in args.uplinks.split(","):
            compare(args, None if uplink == "none" else uplink)
        uplink_cap(None)
        d50, d99 = pings(DIRECT_TARGET, args.pings)
        r50, r99 = pings(RELAY_TARGET, args.pings)
        print("ping, %d each: direct p50 %.3f ms p99 %.3f ms | relay p50 %.3f ms p99 %.3f ms | "
              "added p50 %.3f ms p99 %.3f ms" % (args.pings, d50, d99, r50, r99, r50 - d50, r99 - d99))
    finally:
        uplink_cap(None)
        direct_tunnel(False)
        sh(INET, "pkill -x iperf3", check=False)


if __name__ == "__main__":
    main()
