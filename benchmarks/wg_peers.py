"""Apply time of higgs.vpn.wg_peers for 100, 1,000 and 5,000 peers.

Prints figures, it is not a test. Runs the module's real code path (read
``wg show dump``, plan, one ``wg set``, write the peer file) inside a lab
container with wireguard-go, the way Ansible runs it on a node but without
the transport: the module and ansible's module_utils are copied in and
``main()`` is timed. For each size:

  first      empty interface -> N peers (N added in one wg set)
  no-change  the same N peers again (dump parsed and compared, nothing applied)
  one-more   N + 1 peers (one peer added, N untouched)

Usage: benchmarks/wg_peers.py [--sizes 100,1000,5000] [--keep]
Needs the lab images (scripts/bootstrap) and /usr/bin/docker.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = "/usr/bin/docker"
SCENARIO = "wgbench"
NODE = "wgbench-node"
PLATFORMS = [{"name": NODE, "lab_image": "higgs-lab:bookworm"}]

RUNNER = r'''
import json, sys, time
sys.path.insert(0, "/tmp/bench")
from ansible.module_utils.testing import patch_module_args
from ansible_collections.higgs.vpn.plugins.modules import wg_peers
args = json.load(open(sys.argv[1]))
start = time.perf_counter()
try:
    with patch_module_args(args):
        wg_peers.main()
except SystemExit:
    pass
sys.stderr.write("%.3f\n" % (time.perf_counter() - start))
'''


def sh(*args, stdin=None):
    proc = subprocess.run([DOCKER, "exec", "-i", NODE, *args], input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        sys.exit("benchmark: %s failed: %s" % (" ".join(args), proc.stderr.decode()))
    return proc


def lab(cmd):
    subprocess.run([sys.executable, "-m", "higgs_lab.lab", cmd, "--scenario", SCENARIO,
                    "--platforms", json.dumps(PLATFORMS)], check=True, stdout=subprocess.DEVNULL)


def code_tarball():
    """ansible.module_utils and the collection's module code, as /tmp/bench/..."""
    import ansible

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        core = Path(ansible.__file__).parent
        tar.add(core / "module_utils", "ansible/module_utils")
        base = "ansible_collections/higgs/vpn/plugins"
        # empty package markers, as in the zip Ansible sends to a node
        for name in ("ansible", "ansible_collections", "ansible_collections/higgs", "ansible_collections/higgs/vpn",
                     base, base + "/modules", base + "/module_utils"):
            info = tarfile.TarInfo(name + "/__init__.py")
            tar.addfile(info, io.BytesIO(b""))
        tar.add(ROOT / "plugins/modules/wg_peers.py", base + "/modules/wg_peers.py")
        for util in ("_wg.py", "_net.py"):
            tar.add(ROOT / "plugins/module_utils" / util, base + "/module_utils/" + util)
    return buf.getvalue()


def peers(count):
    return [dict(name="peer%05d" % i, public_key=base64.b64encode(os.urandom(32)).decode(),
                 allowed_ips=["10.%d.%d.%d/32" % (100 + i // 65536, i // 256 % 256, i % 256)],
                 persistent_keepalive=25 if i % 2 else 0) for i in range(count)]


def apply(wanted):
    args = dict(interface="wgb", path="/etc/wireguard/wgb.peers", peers=wanted)
    sh("sh", "-c", "cat > /tmp/bench/args.json", stdin=json.dumps(args).encode())
    proc = sh("python3", "/tmp/bench/run.py", "/tmp/bench/args.json")
    result = json.loads(proc.stdout)
    seconds = float(proc.stderr.decode().strip().splitlines()[-1])
    return seconds, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--keep", action="store_true", help="keep the lab container")
    opts = parser.parse_args()
    lab("create")
    try:
        sh("mkdir", "-p", "/tmp/bench")
        sh("tar", "-C", "/tmp/bench", "-xf", "-", stdin=code_tarball())
        sh("sh", "-c", "cat > /tmp/bench/run.py", stdin=RUNNER.encode())
        sh("sh", "-c", "umask 077; wireguard-go wgb && wg genkey > /etc/wireguard/wgb.key && "
                       "wg set wgb private-key /etc/wireguard/wgb.key listen-port 51820")
        print("%-7s %12s %12s %12s   (seconds, module main(), wireguard-go, %s)"
              % ("peers", "first", "no-change", "one-more", NODE))
        for size in (int(s) for s in opts.sizes.split(",")):
            wanted = peers(size)
            first, r1 = apply(wanted)
            again, r2 = apply(wanted)
            more, r3 = apply([*wanted, *peers(1)])
            assert len(r1["added"]) == size and not r2["changed"] and len(r3["added"]) == 1, (r1, r2, r3)
            live = int(sh("sh", "-c", "wg show wgb peers | wc -l").stdout)
            assert live == size + 1, live
            print("%-7d %12.3f %12.3f %12.3f" % (size, first, again, more))
            apply([])
    finally:
        if not opts.keep:
            lab("destroy")


if __name__ == "__main__":
    main()
