"""Container lab for higgs.vpn: base images, networks and systemd containers.

Used by the molecule create/destroy playbooks and by the lab fleet.  It drives
the Debian ``docker`` CLI (``/usr/bin/docker``) because the Docker API cannot
express ``--security-opt systempaths=unconfined``, which the roles need to
write ``net.*`` sysctls inside a container, including after a restart.

Topology comes from the molecule platforms; each platform may carry::

    lab_image: higgs-lab:bookworm          # default; higgs-lab-fw:<suite> adds
                                           # ufw and firewalld, higgs-lab-nat:<suite>
                                           # miniupnpd and coturn (built on first use)
    lab_networks:                          # docker networks, all internal
      uplink: [10.41.0.2/24, fd00:41::2/64]
    lab_routes:                            # re-applied at every boot
      - {to: default, via: 10.41.0.254}
    lab_addresses: [203.0.113.10/32]       # extra addresses on lo
    lab_http: true                         # HTTP server logging peers
    lab_radvd: fd00:46::/64                # router advertisements on eth0

Every network is ``--internal``: nothing in the lab reaches outside the host.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DOCKER = "/usr/bin/docker"
HERE = Path(__file__).resolve().parent
SUITES = ("bookworm", "trixie")
LAYERS = ("fw", "nat")
MIRROR = "http://deb.debian.org/debian"
BASE_INCLUDE = "python3,iproute2,iptables,procps,systemd,systemd-sysv,dbus"
LABEL = "io.higgs.lab"

RUN_FLAGS = [
    "--cap-add", "NET_ADMIN",
    "--cap-add", "NET_RAW",
    "--cap-add", "SYS_ADMIN",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--device", "/dev/net/tun",
    "--cgroupns", "private",
    "--tmpfs", "/run",
    "--tmpfs", "/run/lock",
    "--stop-signal", "SIGRTMIN+3",
    "--sysctl", "net.ipv6.conf.all.disable_ipv6=0",
]


def docker(*args: str, check: bool = True, capture: bool = True,
           stdin: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [DOCKER, *args], input=stdin, capture_output=capture, check=False,
    )
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if capture else ""
        sys.exit(f"lab: docker {' '.join(args)} failed ({proc.returncode}): {err.strip()}")
    return proc


def start(name: str, attempts: int = 5) -> None:
    """docker start, again after Docker 20.10's occasional failure to set up a
    container joined to several IPv6-enabled networks ("failed to set IPv6
    gateway while updating gateway: file exists"); the next attempt succeeds."""
    for _ in range(attempts - 1):
        proc = docker("start", name, check=False)
        if proc.returncode == 0:
            return
        if b"failed to set IPv6 gateway" not in proc.stderr:
            break
        time.sleep(1)
    docker("start", name)


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def image_label(name: str, key: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", name, check=False)
    if proc.returncode != 0:
        return None
    return (json.loads(proc.stdout) or {}).get(key)


def build_base(suite: str) -> None:
    name = f"higgs-lab-base:{suite}"
    if image_exists(name):
        return
    root = Path(tempfile.mkdtemp(prefix=f"higgs-{suite}-"))
    try:
        print(f"lab: debootstrap {suite} (about a minute)", file=sys.stderr, flush=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={BASE_INCLUDE}", suite, str(root), MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            [DOCKER, "import", "-c", "ENV container=docker", "-c", 'CMD ["/sbin/init"]', "-", name],
            stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            sys.exit(f"lab: tar of the {suite} root failed")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_lab(suite: str, layer: str = "") -> None:
    """The lab layer: every package the roles and the tests use, baked in.

    Lab networks are internal (no mirror), so packages come with the image;
    the roles' install tasks then find them present. ``layer`` "fw" builds
    higgs-lab-fw:<suite> (Dockerfile.fw) over higgs-lab:<suite>, "nat"
    higgs-lab-nat:<suite> (Dockerfile.nat).
    """
    dockerfile = HERE / ("Dockerfile" + (f".{layer}" if layer else ""))
    # A layer is rebuilt when the lab layer under it changes too.
    sources = [HERE / "Dockerfile", dockerfile] if layer else [dockerfile]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sources)).hexdigest()[:16]
    name = f"higgs-lab{'-' + layer if layer else ''}:{suite}"
    if image_label(name, f"{LABEL}.digest") == digest:
        return
    print(f"lab: building {name}", file=sys.stderr, flush=True)  # stdout is create's JSON
    docker(
        "build", "-q", "--network", "bridge", "--build-arg", f"SUITE={suite}",
        "--label", f"{LABEL}.digest={digest}", "-f", str(dockerfile), "-t", name, str(HERE),
    )


def build_suite(suite: str, layers: list[str]) -> None:
    build_base(suite)
    build_lab(suite)
    with ThreadPoolExecutor(max(len(layers), 1)) as pool:
        list(pool.map(build_lab, [suite] * len(layers), layers))   # list(): a build's error is raised here


def build_images(suites: list[str], layers: list[str] | None = None) -> None:
    """Build what is missing or stale, the suites side by side (debootstrap and the builds wait mostly on
    the mirror and dpkg, not the CPU). ``layers`` ("fw:bookworm") are built over their suite, after it."""
    wanted = {suite: [] for suite in suites}
    for spec in layers or []:
        layer, _, suite = spec.partition(":")
        wanted.setdefault(suite, []).append(layer)
    with ThreadPoolExecutor(len(wanted)) as pool:
        list(pool.map(build_suite, wanted, wanted.values()))


def networks_of(scenario: str, platforms: list[dict]) -> dict[str, dict]:
    nets: dict[str, dict] = {}
    for plat in platforms:
        for net, addrs in (plat.get("lab_networks") or {}).items():
            entry = nets.setdefault(net, {"v4": None, "v6": None})
            for addr in addrs:
                iface = ipaddress.ip_interface(addr)
                key = "v4" if iface.version == 4 else "v6"
                if entry[key] not in (None, iface.network):
                    sys.exit(f"lab: network {net}: {addr} is not in {entry[key]}")
                entry[key] = iface.network
    return {f"{scenario}-{net}": spec | {"short": net} for net, spec in nets.items()}


def lab_units(plat: dict) -> dict[str, str]:
    """systemd units that set the lab's addresses and routes at every boot.

    Docker gives every container an IPv6 default route via the host's bridge,
    even on internal networks, and does not isolate IPv6 between bridges: that
    route is removed, so IPv6 leaves a container only where the lab says.
    """
    cmds = ["-/usr/sbin/ip -6 route flush root ::/0 proto boot"]
    if plat.get("lab_radvd"):
        cmds.append("/usr/sbin/sysctl -w net.ipv6.conf.all.forwarding=1")
    for addr in plat.get("lab_addresses") or []:
        cmds.append(f"/usr/sbin/ip addr replace {addr} dev lo")
    for route in plat.get("lab_routes") or []:
        fam = "-6" if ":" in route["via"] else "-4"
        cmds.append(f"/usr/sbin/ip {fam} route replace {route['to']} via {route['via']}")
    lines = "\n".join(f"ExecStart={c}" for c in cmds)
    units = {
        "lab-net.service": (
            "[Unit]\nDescription=Lab addresses and routes\nAfter=network.target\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            f"{lines}\n[Install]\nWantedBy=multi-user.target\n"
        )
    }
    if plat.get("lab_http"):
        units["lab-http.service"] = (
            "[Unit]\nDescription=Lab HTTP server (logs every peer address)\n"
            "After=lab-net.service\n"
            "[Service]\nExecStart=/usr/bin/python3 -u /usr/local/lib/lab/httpd.py\n"
            "Restart=always\n[Install]\nWantedBy=multi-user.target\n"
        )
    return units


def radvd_conf(plat: dict) -> str:
    """Router advertisements (short default-route lifetime, SLAAC prefix) on eth0."""
    return (
        "interface eth0 {\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 4;\n"
        "  AdvDefaultLifetime 12;\n"
        f"  prefix {plat['lab_radvd']} {{ AdvOnLink on; AdvAutonomous on; }};\n}};\n"
    )


def create(scenario: str, platforms: list[dict]) -> list[dict]:
    destroy(scenario, platforms)
    for image in sorted({p.get("lab_image", "") for p in platforms}):
        for layer in LAYERS:
            if image.startswith(f"higgs-lab-{layer}:"):
                build_lab(image.split(":")[1], layer)
    for name, spec in networks_of(scenario, platforms).items():
        args = ["network", "create", "--internal", "--label", f"{LABEL}.scenario={scenario}"]
        if spec["v4"]:
            args += ["--subnet", str(spec["v4"])]
        if spec["v6"]:
            args += ["--ipv6", "--subnet", str(spec["v6"])]
        net_id = docker(*args, name).stdout.decode().strip()
        allow_bridged(scenario, "br-" + net_id[:12])
    for plat in platforms:
        name = plat["name"]
        image = plat.get("lab_image", "higgs-lab:bookworm")
        nets = list((plat.get("lab_networks") or {}).items())
        run = ["create", "--name", name, "--hostname", name,
               "--label", f"{LABEL}.scenario={scenario}",
               "--label", f"{LABEL}.groups={','.join(plat.get('groups') or [])}", *RUN_FLAGS]
        if nets:
            first, addrs = nets[0]
            run += ["--network", f"{scenario}-{first}", *addr_flags(addrs)]
        else:
            run += ["--network", "none"]
        docker(*run, image, "/sbin/init")
        for net, addrs in nets[1:]:
            docker("network", "connect", *addr_flags(addrs), f"{scenario}-{net}", name)
        start(name)
        install_units(name, plat)
    return [
        {"instance": p["name"], "address": p["name"], "connection": "community.docker.docker"}
        for p in platforms
    ]


def allow_bridged(scenario: str, bridge: str) -> None:
    """Let frames stay inside one lab bridge whatever their addresses.

    With br_netfilter, docker's isolation rules drop bridged frames whose
    destination is outside an internal network's subnet (here: the lab's
    "internet" addresses behind its gateway). This host rule accepts traffic
    that enters and leaves the same lab bridge, nothing else; destroy removes it.
    """
    subprocess.run(
        ["iptables", "-w", "-I", "DOCKER-USER", "-i", bridge, "-o", bridge,
         "-m", "comment", "--comment", f"higgs-lab:{scenario}", "-j", "ACCEPT"],
        check=True,
    )


def remove_bridged(scenario: str) -> None:
    rules = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True,
                           text=True, check=False).stdout.splitlines()
    for rule in rules:
        if f'--comment "higgs-lab:{scenario}"' in rule or f"--comment higgs-lab:{scenario} " in rule:
            args = shlex.split(rule)
            subprocess.run(["iptables", "-w", "-D", *args[1:]], check=True)


def addr_flags(addrs: list[str]) -> list[str]:
    flags = []
    for addr in addrs:
        iface = ipaddress.ip_interface(addr)
        flags += ["--ip" if iface.version == 4 else "--ip6", str(iface.ip)]
    return flags


def install_units(name: str, plat: dict) -> None:
    docker("exec", name, "sh", "-c",
           "until systemctl is-system-running --quiet 2>/dev/null; do "
           "case $(systemctl is-system-running 2>/dev/null) in degraded) break;; esac; sleep 0.2; done")
    units = lab_units(plat)
    if plat.get("lab_radvd"):
        docker("exec", "-i", name, "sh", "-c", "cat > /etc/radvd.conf", stdin=radvd_conf(plat).encode())
        units["radvd.service"] = None
    if "lab-http.service" in units:
        docker("exec", "-i", name, "sh", "-c",
               "mkdir -p /usr/local/lib/lab && cat > /usr/local/lib/lab/httpd.py",
               stdin=(HERE / "httpd.py").read_bytes())
    for unit, text in units.items():
        if text is None:  # a packaged unit
            continue
        docker("exec", "-i", name, "sh", "-c", f"cat > /etc/systemd/system/{unit}",
               stdin=text.encode())
    docker("exec", name, "systemctl", "daemon-reload")
    docker("exec", name, "systemctl", "enable", "--now", *units)


def destroy(scenario: str, platforms: list[dict]) -> None:
    ids = set(docker("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL}.scenario={scenario}")
              .stdout.decode().split())
    for plat in platforms:
        proc = docker("container", "inspect", "--format", "{{.Id}}", plat["name"], check=False)
        if proc.returncode == 0:
            ids.add(proc.stdout.decode().strip())
    if ids:
        docker("rm", "-f", "-v", *sorted(ids))
    nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}.scenario={scenario}").stdout.split()
    if nets:
        docker("network", "rm", *(n.decode() for n in nets))
    remove_bridged(scenario)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    img = sub.add_parser("images", help="build the base and lab images that are missing or stale")
    img.add_argument("--suite", action="append", choices=SUITES)
    img.add_argument("--layer", action="append", default=[],
                     choices=[f"{layer}:{suite}" for layer in LAYERS for suite in SUITES],
                     help="also build this layer (scenarios otherwise build theirs on first use)")
    for cmd in ("create", "destroy"):
        p = sub.add_parser(cmd)
        p.add_argument("--scenario", required=True)
        p.add_argument("--platforms", required=True, help="JSON list of molecule platforms")
    args = parser.parse_args()
    os.environ["PATH"] = "/usr/bin:/usr/sbin:" + os.environ.get("PATH", "")
    if args.cmd == "images":
        build_images(args.suite or list(SUITES), args.layer)
    elif args.cmd == "create":
        print(json.dumps(create(args.scenario, json.loads(args.platforms))))
    else:
        destroy(args.scenario, json.loads(args.platforms))


if __name__ == "__main__":
    main()
