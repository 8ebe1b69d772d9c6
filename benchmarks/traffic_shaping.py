"""Benchmark of higgs.vpn.tc_shaping: apply time and per-packet cost.

Prints figures; asserts nothing. Runs in a throw-away lab container
(``higgs-lab:bookworm``, no network) that it starts and removes:

* apply time of the module for 100 / 1,000 / 10,000 clients, first run (from
  an unshaped interface) and no-change run, side by side with the naive
  approach of one ``tc`` command per object (class and filter per client and
  direction, a linear chain of filters), first run and re-run (``replace``);
* iperf3 throughput through a veth pair (a network namespace plays the
  client) with no shaping, with the module's shaping holding only the
  measured client, holding 10,000 clients, and with the naive linear chain
  of 10,000 filters, the measured client last. No caps: the shaping's cost
  per packet is what limits the rate.

The module keeps at most 250 client classes per htb qdisc (groups under child
qdiscs): the kernel walks every class of a qdisc for each class added to it,
so the naive flat tree grows quadratically; the figures show both, with the
growth from one size to the next and the naive time over the module's. The
module's leaf queues are the kernel's pfifo under each class unless
``--leaf`` says otherwise: the queues the naive approach gets, so both build
the same objects (``pfifo`` and ``fq_codel`` add a qdisc per class). The
load average is printed before and after: the figures are only comparable on
a quiet machine.

Usage: python3 benchmarks/traffic_shaping.py [--sizes 100,1000,10000] [--leaf default|pfifo|fq_codel]
       [--apply-only] [--first-only] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import ansible  # the controller's Ansible, whose module_utils run the module
from higgs_lab import lab  # the lab's container flags

ROOT = Path(__file__).resolve().parent.parent

DOCKER = "/usr/bin/docker"
NAME = "shp-bench"
IMAGE = "higgs-lab:bookworm"
DEV, PEER, NETNS, IFB = "shpb0", "shpb1", "shpb", "ifb-shpb0"
NODE_ADDR, CLIENT_ADDR = "10.99.0.1", "10.99.0.2"

# Runs inside the container: times the module and the naive commands.
DRIVER = r'''
import json, subprocess, sys, time
sys.path.insert(0, "/opt/bench")
MODULE = ["python3", "-m", "ansible_collections.higgs.vpn.plugins.modules.tc_shaping"]
DEV, IFB, LEAF = sys.argv[2], sys.argv[3], sys.argv[6]

def clients(n, last):
    out = [{"name": "c%d" % i, "addresses": ["10.%d.%d.%d/32" % (100 + i // 62500, i // 250 % 250, i % 250 + 2)]}
           for i in range(n - 1)]
    return out + [{"name": "measured", "addresses": [last + "/32"]}]

def module(n, last, state="present"):
    args = {"ANSIBLE_MODULE_ARGS": {"interface": DEV, "ifb_interface": IFB, "state": state,
            "rate_down": "10gbit", "rate_up": "10gbit", "client_rate_down": "5gbit", "client_rate_up": "5gbit",
            "leaf_qdisc": LEAF, "clients": clients(n, last), "persist_dir": "/tmp/bench-shaping"}}
    with open("/tmp/args.json", "w") as handle:
        json.dump(args, handle)
    start = time.monotonic()
    proc = subprocess.run(MODULE + ["/tmp/args.json"], capture_output=True, text=True, cwd="/opt/bench")
    took = time.monotonic() - start
    result = json.loads(proc.stdout)
    if result.get("failed"):
        sys.exit("module failed: %s" % result.get("msg"))
    return took, result.get("changed")

def naive(n, last):
    """One tc process per object: the root, then class and filter per client and direction.

    It cannot tell what changed: a re-run flushes and does it all again.
    """
    start = time.monotonic()
    cmds = [["tc", "qdisc", "del", "dev", DEV, "root"], ["tc", "qdisc", "del", "dev", DEV, "ingress"],
            ["tc", "qdisc", "del", "dev", IFB, "root"]]
    subprocess.run(["ip", "link", "add", IFB, "type", "ifb"], capture_output=True)
    subprocess.run(["ip", "link", "set", IFB, "up"], check=True)
    for dev in (DEV, IFB):
        cmds.append(("tc qdisc replace dev %s root handle 1: htb default 2" % dev).split())
        cmds.append(("tc class replace dev %s parent 1: classid 1:1 htb rate 10gbit" % dev).split())
        cmds.append(("tc class replace dev %s parent 1:1 classid 1:2 htb rate 1mbit ceil 10gbit" % dev).split())
    cmds.append(("tc qdisc replace dev %s handle ffff: ingress" % DEV).split())
    cmds.append(("tc filter replace dev %s parent ffff: prio 1 handle 800::800 protocol all u32 match u32 0 0 "
                 "action mirred egress redirect dev %s" % (DEV, IFB)).split())
    for i, cl in enumerate(clients(n, last)):
        addr = cl["addresses"][0]
        minor = "%x" % (i + 16)
        for dev, side in ((DEV, "dst"), (IFB, "src")):
            cmds.append(("tc class replace dev %s parent 1:1 classid 1:%s htb rate 100kbit ceil 5gbit"
                         % (dev, minor)).split())
            # a u32 table holds at most 4095 filters: a new priority every 4000
            cmds.append(("tc filter add dev %s parent 1: prio %d protocol ip u32 match ip %s %s flowid 1:%s"
                         % (dev, 10 + i // 4000, side, addr, minor)).split())
    for cmd in cmds:
        subprocess.run(cmd, check=cmd[2] != "del", capture_output=True)
    return time.monotonic() - start

def clear():
    for cmd in (["tc", "qdisc", "del", "dev", DEV, "root"], ["tc", "qdisc", "del", "dev", DEV, "ingress"],
                ["ip", "link", "del", IFB]):
        subprocess.run(cmd, capture_output=True)
    subprocess.run(["rm", "-rf", "/tmp/bench-shaping"])

what, n, last = sys.argv[1], int(sys.argv[4]), sys.argv[5]
if what == "module":
    clear()
    first, changed1 = module(n, last)
    again, changed2 = module(n, last)
    print(json.dumps({"first": first, "again": again, "changed": [changed1, changed2]}))
elif what == "module-keep":
    clear()
    print(json.dumps({"first": module(n, last)[0]}))
elif what == "naive":
    clear()
    first = naive(n, last)
    again = naive(n, last)
    print(json.dumps({"first": first, "again": again}))
elif what == "naive-keep":
    clear()
    print(json.dumps({"first": naive(n, last)}))
elif what == "clear":
    clear()
'''


def docker(*args, check=True, capture=True, stdin=None):
    proc = subprocess.run([DOCKER, *args], capture_output=capture, text=True, input=stdin, check=False)
    if check and proc.returncode != 0:
        sys.exit("docker %s failed: %s" % (" ".join(args[:3]), proc.stderr.strip()))
    return proc


def sh(script, check=True):
    return docker("exec", "-i", NAME, "bash", "-c", script, check=check)


def start():
    docker("rm", "-f", NAME, check=False)
    docker("run", "-d", "--name", NAME, "--network", "none", *lab.RUN_FLAGS, IMAGE, "/sbin/init")
    for _ in range(50):
        if sh("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded"):
            break
        time.sleep(0.2)
    # the collection and Ansible's module_utils, enough to run the module directly
    sh("mkdir -p /opt/bench/ansible_collections/higgs/vpn /opt/bench/ansible")
    docker("cp", str(ROOT / "plugins"), "%s:/opt/bench/ansible_collections/higgs/vpn/" % NAME)
    docker("cp", str(Path(ansible.__file__).parent / "module_utils"), "%s:/opt/bench/ansible/" % NAME)
    sh("touch /opt/bench/ansible/__init__.py")
    docker("exec", "-i", NAME, "bash", "-c", "cat > /opt/bench/driver.py", stdin=DRIVER)
    sh(f"""set -e
        ip netns add {NETNS}
        ip link add {DEV} type veth peer name {PEER}
        ip link set {PEER} netns {NETNS}
        ip addr add {NODE_ADDR}/24 dev {DEV} && ip link set {DEV} up
        ip -n {NETNS} addr add {CLIENT_ADDR}/24 dev {PEER} && ip -n {NETNS} link set {PEER} up
        ip -n {NETNS} link set lo up
        systemd-run --unit bench-iperf iperf3 --server --bind {NODE_ADDR}
        sleep 0.5""")


def driver(what, size, leaf="default"):
    out = sh("cd /opt/bench && python3 driver.py %s %s %s %d %s %s" % (what, DEV, IFB, size, CLIENT_ADDR, leaf)).stdout
    return json.loads(out) if out.strip() else {}


def iperf(reverse):
    args = "--reverse" if reverse else ""
    out = sh(f"ip netns exec {NETNS} iperf3 --client {NODE_ADDR} --time 5 --omit 1 --json {args}").stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--keep", action="store_true", help="leave the container running")
    parser.add_argument("--throughput-only", action="store_true", help="skip the apply times")
    parser.add_argument("--apply-only", action="store_true", help="skip the throughput figures")
    parser.add_argument("--first-only", action="store_true", help="apply times of the first run only (no re-runs)")
    parser.add_argument("--leaf", choices=["default", "pfifo", "fq_codel"], default="default",
                        help="the module's leaf_qdisc (default: the kernel's pfifo under each class, the queues "
                             "the naive approach gets too)")
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    start()
    try:
        print("load average before: %s" % Path("/proc/loadavg").read_text().split(" ", 3)[:3])
        print("apply time, seconds (both directions: the tunnel and its ifb; the module's leaf_qdisc: %s); "
              "growth: first run over the previous size's; naive/module: first runs" % opts.leaf)
        print("%8s  %14s  %14s  %14s  %14s  %8s  %8s  %13s"
              % ("clients", "module first", "module no-op", "naive first", "naive re-run", "growth",
                 "naive gr.", "naive/module"))
        previous = None
        for size in [] if opts.throughput_only else sizes:
            if opts.first_only:
                mod = dict(driver("module-keep", size, opts.leaf), again=float("nan"), changed=[True, False])
                nai = dict(driver("naive-keep", size), again=float("nan"))
            else:
                mod = driver("module", size, opts.leaf)
                nai = driver("naive", size)
            growth = ("%8.1f  %8.1f" % (mod["first"] / previous[0], nai["first"] / previous[1])) if previous \
                else "%8s  %8s" % ("-", "-")
            previous = (mod["first"], nai["first"])
            print("%8d  %14.2f  %14.2f  %14.2f  %14.2f  %s  %13.1f%s" % (
                size, mod["first"], mod["again"], nai["first"], nai["again"], growth, nai["first"] / mod["first"],
                "" if mod["changed"] == [True, False] else "  (module changed: %s)" % mod["changed"]), flush=True)
        print("load average after: %s" % Path("/proc/loadavg").read_text().split(" ", 3)[:3])
        if opts.apply_only:
            return
        big = max(sizes)
        print("\niperf3 through the veth pair, Gbit/s (download = towards the client, shaped on egress)")
        print("%-44s  %8s  %8s" % ("", "download", "upload"))
        driver("clear", 0)
        rows = [("no shaping", None), ("module, 1 client", "module-keep:1")]
        rows += [("module, %d clients (u32 hash tables)" % big, "module-keep"),
                 ("naive, %d clients (linear u32 chain)" % big, "naive-keep")]
        for label, step in rows:
            if step:
                what, _sep, size = step.partition(":")
                driver(what, int(size or big), opts.leaf)
            print("%-44s  %8.2f  %8.2f" % (label, iperf(True), iperf(False)), flush=True)
    finally:
        if not opts.keep:
            docker("rm", "-f", NAME, check=False)


if __name__ == "__main__":
    main()
