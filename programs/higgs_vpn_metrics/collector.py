"""Write the node's VPN metrics for the node exporter's textfile collector.

    python3 -m higgs_vpn_metrics.collector --config /etc/higgs-vpn/metrics/collector.json

One run reads the kernel's live state and writes one Prometheus text file,
atomically (temp file + rename in the same directory, as the textfile
collector requires):

* WireGuard (``wg show all dump``): per peer received / sent bytes and the
  latest handshake, labelled with the interface, the public key and the
  client name the wireguard role wrote into ``/etc/wireguard/<if>.peers``.
  The interface line of the dump carries the private key: it is skipped,
  never stored or printed.
* Shaping (``tc -s class show``): per htb class sent bytes / packets, drops,
  overlimits and backlog, on the devices the tc_shaping module recorded in
  its JSON sidecar ``<dir>/<if>.clients.json`` (the interface, its ifb device
  and each client's class), labelled with the client of each class.
* Firewall: packets / bytes of the counted rules of the collection's owned
  nftables tables and iptables chains, summed per table, chain and verdict.
* NAT traversal (the nat_traversal agent's ``/var/lib/higgs-nat/state.json``,
  ``nat_state_file`` in the configuration): the reported natType, the route
  (direct / relay), whether our port mapping is present and by which
  protocol, and the seconds left of its lease.  No state file: the part is
  not installed and nothing is reported.
* Optionally the relay connector's own /metrics, appended as they are.

Every source is read independently: a failing one is reported by
``higgs_metrics_source_up{source=...} 0`` and on stderr (the journal) and the
others are still written.  Python standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ENV = dict(os.environ, LANG="C", LC_ALL="C")
PREFIX = "higgs"
VERDICTS = ("accept", "drop", "reject", "masquerade", "snat", "dnat", "redirect", "return", "jump", "goto")
IPTABLES_TARGETS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "MASQUERADE": "masquerade",
                    "SNAT": "snat", "DNAT": "dnat", "REDIRECT": "redirect", "RETURN": "return"}


class Source(Exception):
    """A source could not be read."""


class Missing(Source):
    """The tool is not installed."""


def run(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=20, check=False)
    except FileNotFoundError:
        raise Missing("%s is not installed" % args[0]) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Source("%s: %s" % (args[0], exc)) from None
    if proc.returncode:
        raise Source("%s failed (rc %d): %s" % (" ".join(args), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Family:
    """One metric family: HELP, TYPE and its samples."""

    def __init__(self, name: str, kind: str, help_text: str):
        self.name = "%s_%s" % (PREFIX, name)
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict, float]] = []

    def add(self, value, **labels):
        self.samples.append((labels, value))

    def render(self) -> list[str]:
        if not self.samples:
            return []
        out = ["# HELP %s %s" % (self.name, self.help), "# TYPE %s %s" % (self.name, self.kind)]
        for labels, value in self.samples:
            text = ",".join('%s="%s"' % (k, escape(v)) for k, v in labels.items())
            name = "%s{%s}" % (self.name, text) if text else self.name
            out.append("%s %s" % (name, _number(value)))
        return out


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# ---------------------------------------------------------------------------
# WireGuard
# ---------------------------------------------------------------------------

def peer_names(text: str) -> dict[str, str]:
    """{public key: name} from a peers file the wireguard role wrote."""
    names: dict[str, str] = {}
    comment = section = ""  # the comment line above a section, the name of the current peer
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comment = line[1:].strip()
        elif line.startswith("["):
            section = comment if line.lower() == "[peer]" else ""
            comment = ""
        elif "=" in line and section:
            key, value = (part.strip() for part in line.split("=", 1))
            if key.lower() == "publickey":
                names[value] = section
    return names


def parse_wg_dump(text: str) -> dict[str, list[dict]]:
    """{interface: [peer]} of ``wg show all dump``; interface lines (with the private key) are dropped."""
    peers: dict[str, list[dict]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 5:  # interface: name, private key, public key, port, fwmark
            peers.setdefault(fields[0], [])
        elif len(fields) == 9:  # peer: name, key, psk, endpoint, allowed ips, handshake, rx, tx, keepalive
            peers.setdefault(fields[0], []).append({
                "public_key": fields[1], "handshake": int(fields[5]),
                "rx": int(fields[6]), "tx": int(fields[7]),
            })
        elif line:
            raise Source("wg show all dump: unexpected line with %d fields" % len(fields))
    return peers


def wireguard(cfg: dict, fam: dict[str, Family]) -> None:
    dump = parse_wg_dump(run(["wg", "show", "all", "dump"]))
    wanted = set(cfg.get("wireguard_interfaces") or dump)
    for iface in sorted(wanted & set(dump)):
        path = Path(cfg.get("wireguard_dir", "/etc/wireguard")) / (iface + ".peers")
        try:
            names = peer_names(path.read_text())
        except OSError:
            names = {}
        fam["wg_peers"].add(len(dump[iface]), interface=iface)
        for peer in dump[iface]:
            labels = {"interface": iface, "public_key": peer["public_key"], "name": names.get(peer["public_key"], "")}
            fam["wg_rx"].add(peer["rx"], **labels)
            fam["wg_tx"].add(peer["tx"], **labels)
            fam["wg_hs"].add(peer["handshake"], **labels)


# ---------------------------------------------------------------------------
# Shaping
# ---------------------------------------------------------------------------

CLASS_RE = re.compile(
    r"^class htb (?P<id>\S+) .*\n"
    r"\s*Sent (?P<bytes>\d+) bytes (?P<pkts>\d+) pkt \(dropped (?P<drops>\d+), overlimits (?P<over>\d+)"
    r"[^\n]*\n\s*backlog \S+ (?P<backlog>\d+)p",
    re.MULTILINE)


def parse_classes(text: str) -> list[dict]:
    """htb classes of ``tc -s class show dev X`` (htb prints no JSON)."""
    return [{"classid": m["id"], "bytes": int(m["bytes"]), "packets": int(m["pkts"]),
             "drops": int(m["drops"]), "overlimits": int(m["over"]), "backlog": int(m["backlog"])}
            for m in CLASS_RE.finditer(text)]


SIDECAR = ".clients.json"


def shaped_devices(directory: Path) -> list[tuple[str, str, str, dict]]:
    """(interface, device, direction, {classid: client}) of every shaping the sidecars record."""
    out = []
    for path in sorted(directory.glob("*" + SIDECAR)):
        record = json.loads(path.read_text())
        iface = record["interface"]
        clients = {c["classid"]: c["name"] for c in record["clients"]}
        out.append((iface, iface, "down", clients))
        if record.get("ifb"):
            out.append((iface, record["ifb"], "up", clients))
    return out


def shaping(cfg: dict, fam: dict[str, Family]) -> None:
    for iface, dev, direction, clients in shaped_devices(Path(cfg.get("shaping_dir", "/etc/higgs-vpn/shaping"))):
        for cls in parse_classes(run(["tc", "-s", "class", "show", "dev", dev])):
            labels = {"interface": iface, "device": dev, "direction": direction,
                      "class": cls["classid"], "client": clients.get(cls["classid"], "")}
            fam["tc_bytes"].add(cls["bytes"], **labels)
            fam["tc_packets"].add(cls["packets"], **labels)
            fam["tc_drops"].add(cls["drops"], **labels)
            fam["tc_over"].add(cls["overlimits"], **labels)
            fam["tc_backlog"].add(cls["backlog"], **labels)


# ---------------------------------------------------------------------------
# Firewall
# ---------------------------------------------------------------------------

def nft_counters(document: dict) -> dict[tuple[str, str, str], list[int]]:
    """{(table, chain, verdict): [packets, bytes]} of the counted rules of ``nft -j list table``."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for item in document.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        counter, verdict = None, "continue"
        for expr in rule.get("expr", []):
            if "counter" in expr and isinstance(expr["counter"], dict):
                counter = expr["counter"]
            for name in VERDICTS:
                if name in expr:
                    verdict = name
        if counter is not None:
            entry = sums.setdefault((rule["table"], rule["chain"], verdict), [0, 0])
            entry[0] += counter.get("packets", 0)
            entry[1] += counter.get("bytes", 0)
    return sums


def iptables_counters(text: str, prefixes: list[str], family: str) -> dict[tuple[str, str, str], list[int]]:
    """The same sums from ``iptables-save -c`` for chains named ``<prefix>_*``."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            continue
        match = re.match(r"^\[(\d+):(\d+)\] -A (\S+) (.*)$", line)
        if not match or not any(match[3].startswith(p + "_") for p in prefixes):
            continue
        target = re.search(r"-j (\S+)", match[4])
        verdict = IPTABLES_TARGETS.get(target[1], "jump") if target else "continue"
        entry = sums.setdefault(("%s/%s" % (family, table), match[3], verdict), [0, 0])
        entry[0] += int(match[1])
        entry[1] += int(match[2])
    return sums


def firewall(cfg: dict, fam: dict[str, Family]) -> None:
    names = cfg.get("firewall_tables") or []
    sums: dict[tuple[str, str, str], list[int]] = {}
    listed = json.loads(run(["nft", "-j", "list", "tables"]))
    for item in listed.get("nftables", []):
        table = item.get("table")
        if table and table["name"] in names:
            doc = json.loads(run(["nft", "-j", "list", "table", table["family"], table["name"]]))
            for key, (pkts, byts) in nft_counters(doc).items():
                entry = sums.setdefault(("%s %s" % (table["family"], key[0]), key[1], key[2]), [0, 0])
                entry[0] += pkts
                entry[1] += byts
    for family, tool in (("ip", "iptables-save"), ("ip6", "ip6tables-save")):
        with contextlib.suppress(Missing):  # a node with nftables only
            sums.update(iptables_counters(run([tool, "-c"]), names, family))
    for (table, chain, verdict), (pkts, byts) in sorted(sums.items()):
        fam["fw_packets"].add(pkts, table=table, chain=chain, verdict=verdict)
        fam["fw_bytes"].add(byts, table=table, chain=chain, verdict=verdict)


# ---------------------------------------------------------------------------
# NAT traversal
# ---------------------------------------------------------------------------

NAT_STATE = "/var/lib/higgs-nat/state.json"
NAT_TYPES = ("FullCone", "RestrictedCone", "PortRestricted", "Symmetric")
NAT_ROUTES = ("direct", "relay")
NAT_PROTOCOLS = ("pcp", "natpmp", "upnp")


def nat(cfg: dict, fam: dict[str, Family], now: float | None = None) -> bool:
    """The NAT agent's state as gauges; False when there is no state file (the part is not installed)."""
    path = Path(cfg.get("nat_state_file") or NAT_STATE)
    try:
        with path.open("rb") as handle:
            raw = handle.read((1 << 16) + 1)
    except FileNotFoundError:
        return False
    if len(raw) > 1 << 16:
        raise Source("%s is larger than 64 KiB" % path)
    state = json.loads(raw)
    if not isinstance(state, dict) or state.get("nat_type") not in NAT_TYPES or state.get("route") not in NAT_ROUTES:
        raise Source("%s is not a NAT state of the higgs-nat agent" % path)
    for nat_type in NAT_TYPES:
        fam["nat_type"].add(int(state["nat_type"] == nat_type), nat_type=nat_type)
    for route in NAT_ROUTES:
        fam["nat_route"].add(int(state["route"] == route), route=route)
    mapping = state.get("mapping") if isinstance(state.get("mapping"), dict) else {}
    for protocol in NAT_PROTOCOLS:
        fam["nat_mapping"].add(int(mapping.get("protocol") == protocol), protocol=protocol)
    expires = mapping.get("expires_at")
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        left = expires - (time.time() if now is None else now)
        fam["nat_lease"].add(max(0, int(left)))
    return True


# ---------------------------------------------------------------------------
# Relay connector
# ---------------------------------------------------------------------------

def relay_connector(cfg: dict) -> list[str]:
    try:
        with urllib.request.urlopen(cfg["relay_connector_url"], timeout=5) as answer:
            text = answer.read(4 << 20).decode()
    except (OSError, ValueError) as exc:
        raise Source("relay connector %s: %s" % (cfg["relay_connector_url"], exc)) from None
    return [line for line in text.splitlines() if line]


# ---------------------------------------------------------------------------

def families() -> dict[str, Family]:
    return {
        "wg_peers": Family("wireguard_peers", "gauge", "Peers configured on the WireGuard interface."),
        "wg_rx": Family("wireguard_peer_receive_bytes_total", "counter", "Bytes received from the peer."),
        "wg_tx": Family("wireguard_peer_transmit_bytes_total", "counter", "Bytes sent to the peer."),
        "wg_hs": Family("wireguard_peer_latest_handshake_timestamp_seconds", "gauge",
                        "Unix time of the peer's latest handshake (0: never)."),
        "tc_bytes": Family("shaping_sent_bytes_total", "counter", "Bytes sent by the htb class."),
        "tc_packets": Family("shaping_sent_packets_total", "counter", "Packets sent by the htb class."),
        "tc_drops": Family("shaping_dropped_packets_total", "counter", "Packets the class dropped (queue full)."),
        "tc_over": Family("shaping_overlimits_total", "counter", "Times the class was over its rate."),
        "tc_backlog": Family("shaping_backlog_packets", "gauge", "Packets queued in the class."),
        "fw_packets": Family("firewall_packets_total", "counter",
                             "Packets matched by the counted rules of an owned table / chain, per verdict."),
        "fw_bytes": Family("firewall_bytes_total", "counter",
                           "Bytes matched by the counted rules of an owned table / chain, per verdict."),
        "nat_type": Family("nat_type", "gauge", "The natType the node reports (1 for the current one)."),
        "nat_route": Family("nat_route", "gauge",
                            "How clients reach the node: direct or relay (1 for the current one)."),
        "nat_mapping": Family("nat_port_mapping", "gauge",
                              "Our WireGuard port mapping on the router, by protocol (1: present; all 0: none)."),
        "nat_lease": Family("nat_port_mapping_lease_remaining_seconds", "gauge",
                            "Seconds left of our port mapping's lease (absent without a mapping)."),
        "up": Family("metrics_source_up", "gauge", "Whether the source was read in the latest run."),
        "duration": Family("metrics_collector_duration_seconds", "gauge", "Time the latest run took."),
        "last": Family("metrics_collector_last_run_timestamp_seconds", "gauge", "Unix time of the latest run."),
    }


def collect(cfg: dict) -> str:
    started = time.monotonic()
    fam = families()
    extra: list[str] = []
    sources = [("wireguard", lambda: wireguard(cfg, fam)),
               ("shaping", lambda: shaping(cfg, fam)),
               ("firewall", lambda: firewall(cfg, fam))]
    if cfg.get("relay_connector_url"):
        sources.append(("relay_connector", lambda: extra.extend(relay_connector(cfg))))
    sources.append(("nat", lambda: nat(cfg, fam)))
    for name, read in sources:
        try:
            if read() is False:   # a part this node does not have
                continue
            fam["up"].add(1, source=name)
        except (Source, OSError, ValueError, KeyError) as exc:
            fam["up"].add(0, source=name)
            print("higgs-vpn-metrics: %s: %s" % (name, exc), file=sys.stderr)
    fam["duration"].add(round(time.monotonic() - started, 6))
    fam["last"].add(round(time.time(), 3))
    lines = [line for f in fam.values() for line in f.render()]
    return "\n".join(lines + extra) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".higgs-vpn-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--stdout", action="store_true", help="print instead of writing the textfile")
    args = parser.parse_args(argv)
    try:
        cfg = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        print("higgs-vpn-metrics: config %s: %s" % (args.config, exc), file=sys.stderr)
        return 78
    text = collect(cfg)
    if args.stdout:
        sys.stdout.write(text)
    else:
        write_atomic(Path(cfg["textfile"]), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
