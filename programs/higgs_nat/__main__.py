"""Measure the node's NAT, map the WireGuard UDP port on the home router, write the state file.

    python3 -m higgs_nat apply  --config FILE   # detect, create/renew the mapping, write the state
    python3 -m higgs_nat probe  --config FILE   # detect only (nothing changes), print the state
    python3 -m higgs_nat remove --config FILE   # delete our mapping and the state file

Run by higgs-nat.service (timer) as an unprivileged user.  Exits non-zero with
the reason when it cannot do its job (bad configuration, state not writable).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import socket
import sys
import tempfile
import time

from . import natpmp, pcp, stun

CGNAT = ipaddress.ip_network("100.64.0.0/10")
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
PROTOCOLS = ("pcp", "natpmp", "upnp")
NAT_TYPES = ("FullCone", "RestrictedCone", "PortRestricted", "Symmetric")
MAX_RELAY_STUN = 8    # relay-announced STUN servers used at most
MAX_RELAY_STUN_FILE = 1 << 16   # bytes read of the relay connector's file


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        cfg = json.load(handle)
    problems = []
    port = cfg.get("wireguard_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append("wireguard_port must be 1..65535, not %r" % (port,))
    for proto in cfg.get("protocols", []):
        if proto not in PROTOCOLS:
            problems.append("protocols: unknown mapping protocol %r (known: %s)" % (proto, ", ".join(PROTOCOLS)))
    try:
        cfg["stun"] = [split_hostport(s) for s in cfg.get("stun_servers", [])]
    except ValueError as exc:
        problems.append("stun_servers: %s" % exc)
    relay_file = cfg.get("relay_stun_file", "")
    if not isinstance(relay_file, str) or (relay_file and not relay_file.startswith("/")):
        problems.append("relay_stun_file must be an absolute path (or empty)")
    for key in ("lease", "timeout"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            problems.append("%s must be a positive number, not %r" % (key, cfg.get(key)))
    if not isinstance(cfg.get("state_file"), str) or not cfg["state_file"].startswith("/"):
        problems.append("state_file must be an absolute path")
    if problems:
        raise ValueError("; ".join(problems))
    cfg["stun_source"] = "configured" if cfg["stun"] else "none"
    if not cfg["stun"] and relay_file:
        cfg["stun"] = relay_stun_servers(relay_file)
        cfg["stun_source"] = "relay" if cfg["stun"] else "none"
    return cfg


def relay_stun_servers(path: str) -> list[tuple[str, int]]:
    """The STUN servers the relay announced (written by the relay connector), or [] with the reason logged.

    At most MAX_RELAY_STUN entries of a file of at most MAX_RELAY_STUN_FILE bytes; a file with any
    entry that is not host:port is not used at all.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RELAY_STUN_FILE + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log("relay STUN servers %s not used: %s" % (path, exc))
        return []
    try:
        if len(raw) > MAX_RELAY_STUN_FILE:
            raise ValueError("larger than %d bytes" % MAX_RELAY_STUN_FILE)
        servers = json.loads(raw).get("stun_servers")
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ValueError("stun_servers is not a list of host:port")
        return [split_hostport(s) for s in servers[:MAX_RELAY_STUN]]
    except (ValueError, AttributeError, RecursionError) as exc:
        log("relay STUN servers %s not used: %s" % (path, exc))
        return []


def split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("%r is not host:port" % (text,))
    return host, int(port)


def address_class(address: str | None) -> str:
    """public / private (RFC 1918, IPv6 ULA) / cgnat (100.64/10) / reserved (other special ranges) / none."""
    if address is None:
        return "none"
    ip = ipaddress.ip_address(address)
    if any(ip in net for net in PRIVATE if net.version == ip.version):
        return "private"
    if ip.version == 4 and ip in CGNAT:
        return "cgnat"
    return "public" if ip.is_global else "reserved"


def egress_source(family: int, toward: str) -> str | None:
    """The source address the kernel picks toward ``toward`` (no packet is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((toward, 9))
        except OSError:
            return None
        return sock.getsockname()[0]


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    try:
        with open(route_file, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 2:
                    return str(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1]))
    except OSError:
        return None
    return None


def resolve(stun_servers, family):
    found = []
    for host, port in stun_servers:
        try:
            infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        except OSError:
            continue
        found.extend((info[4][0], port) for info in infos[:1])
    return found


def ipv4_detection(cfg: dict) -> dict:
    servers = resolve(cfg["stun"], socket.AF_INET)
    toward = servers[0][0] if servers else "192.0.2.1"
    source = egress_source(socket.AF_INET, toward)
    found = {"egress_address": source, "egress_class": address_class(source), "stun_server": None,
             "stun_mapped": None, "mapping_behaviour": None, "filtering_behaviour": None,
             "nat_type_measured": None}
    if source is None or not servers:
        return found
    result = stun.discover(servers, source, timeout=cfg["timeout"])
    mapped = result["mapped"]
    found.update(
        stun_server=result["server"], stun_mapped="%s:%d" % mapped if mapped else None,
        mapping_behaviour=result["mapping"], filtering_behaviour=result["filtering"],
        nat_type_measured=result["nat_type"])
    return found


class Router:
    """The home router's mapping service: PCP, NAT-PMP or UPnP-IGD (miniupnpc)."""

    def __init__(self, cfg, gateway, nonce=None):
        self.cfg, self.gateway = cfg, gateway
        self.description = cfg["description"]
        self.nonce = nonce      # our PCP mapping's nonce (from the state), None: no PCP mapping of ours known

    def candidates(self, previous):
        port = self.cfg["wireguard_port"]
        ports = [previous] if previous else []
        ports += [p for p in range(port, min(port + 4, 65536)) if p not in ports]
        return ports

    # UPnP-IGD ---------------------------------------------------------------
    def upnp(self):
        import miniupnpc
        client = miniupnpc.UPnP()
        client.discoverdelay = int(self.cfg["timeout"] * 1000)
        try:
            if not client.discover():
                raise RuntimeError("none answered")
            client.selectigd()
        except Exception as exc:  # miniupnpc raises plain Exception (even "Success" when there is no IGD)
            raise RuntimeError("UPnP: no Internet Gateway Device on the LAN") from exc
        return client

    def ours(self, entry, lan):
        return (entry is not None and entry[0] == lan and int(entry[1]) == self.cfg["wireguard_port"]
                and entry[2] == self.description)

    def upnp_map(self, previous):
        client = self.upnp()
        lan, external = client.lanaddr, client.externalipaddress()
        for port in self.candidates(previous):
            entry = client.getspecificportmapping(port, "UDP")
            if entry is not None and not self.ours(entry, lan):
                log("UPnP: external port %d is mapped by someone else (%s): left alone" % (port, entry[2]))
                continue
            client.addportmapping(port, "UDP", lan, self.cfg["wireguard_port"], self.description, "",
                                  int(self.cfg["lease"]))
            return {"protocol": "upnp", "external_address": external, "external_port": port,
                    "lan_address": lan, "lease": int(self.cfg["lease"])}
        raise RuntimeError("UPnP: every candidate external port is taken by other mappings")

    def upnp_unmap(self, previous):
        client = self.upnp()
        removed = []
        for port in self.candidates(previous):
            if self.ours(client.getspecificportmapping(port, "UDP"), client.lanaddr):
                client.deleteportmapping(port, "UDP")
                removed.append(port)
        return removed

    # PCP --------------------------------------------------------------------
    def pcp_map(self, previous):
        if self.gateway is None:
            raise RuntimeError("PCP: no IPv4 default gateway")
        nonce = self.nonce or pcp.new_nonce()
        answer = pcp.map_udp(self.gateway, nonce, self.cfg["wireguard_port"], previous or self.cfg["wireguard_port"],
                             int(self.cfg["lease"]), self.cfg["timeout"])
        self.nonce = nonce
        return {"protocol": "pcp", "external_address": answer["external_address"],
                "external_port": answer["external_port"], "lease": answer["lifetime"], "nonce": nonce.hex(),
                "lan_address": egress_source(socket.AF_INET, self.gateway)}

    def pcp_unmap(self, _previous):
        if self.gateway is None or self.nonce is None:   # no mapping of ours (only its nonce could delete it)
            return []
        pcp.map_udp(self.gateway, self.nonce, self.cfg["wireguard_port"], 0, 0, self.cfg["timeout"])
        return [self.cfg["wireguard_port"]]

    # NAT-PMP ----------------------------------------------------------------
    def natpmp_map(self, previous):
        if self.gateway is None:
            raise RuntimeError("NAT-PMP: no IPv4 default gateway")
        timeout = self.cfg["timeout"]
        external = natpmp.external_address(self.gateway, timeout)
        answer = natpmp.map_udp(self.gateway, self.cfg["wireguard_port"], previous or self.cfg["wireguard_port"],
                                int(self.cfg["lease"]), timeout)
        return {"protocol": "natpmp", "external_address": external, "external_port": answer["external_port"],
                "lan_address": egress_source(socket.AF_INET, self.gateway), "lease": answer["lifetime"]}

    def natpmp_unmap(self, _previous):
        if self.gateway is None:
            return []
        natpmp.map_udp(self.gateway, self.cfg["wireguard_port"], 0, 0, self.cfg["timeout"])
        return [self.cfg["wireguard_port"]]

    def map(self, previous):
        errors = []
        for proto in self.cfg["protocols"]:
            try:
                mapping = getattr(self, proto + "_map")(previous)
                # when the lease runs out (the metrics' lease seconds left); renewed at each run
                mapping["expires_at"] = int(time.time()) + int(mapping["lease"])
                return mapping, errors
            except Exception as exc:
                named = str(exc).startswith(("UPnP", "NAT-PMP", "PCP"))
                errors.append("%s" % exc if named else "%s: %s" % (proto, exc))
        return None, errors

    def unmap(self, previous):
        removed = {}
        for proto in self.cfg["protocols"]:
            try:
                removed[proto] = getattr(self, proto + "_unmap")(previous)
            except Exception as exc:
                log("%s: nothing removed (%s)" % (proto, exc))
        return removed


def decide(cfg, v4, v6, mapping, errors):
    """The reachable endpoint and the natType to report, with the reason."""
    port = cfg["wireguard_port"]
    measured = v4["nat_type_measured"]
    stun_ip = v4["stun_mapped"].rpartition(":")[0] if v4["stun_mapped"] else None
    router_ip = mapping["external_address"] if mapping else None
    double = bool(stun_ip and router_ip and stun_ip != router_ip)
    cgnat = v4["egress_class"] == "cgnat" or (router_ip is not None and address_class(router_ip) != "public")
    state = {"double_nat": double, "behind_cgnat": cgnat, "router_external_address": router_ip,
             "mapping": mapping, "mapping_errors": errors, "manual_forwarding": None}
    lan = v4["egress_address"]
    if v4["egress_class"] == "public" and v4["mapping_behaviour"] in ("none", None) and (
            stun_ip in (None, lan)):
        state.update(route="direct", endpoint="%s:%d" % (lan, port), nat_type="FullCone",
                     reason="the node's egress address %s is public: clients reach it directly" % lan)
    elif mapping and not double and not cgnat and measured != "Symmetric":
        endpoint = "%s:%d" % (mapping["external_address"], mapping["external_port"])
        state.update(route="direct", endpoint=endpoint, nat_type="FullCone",
                     reason="%s mapped %s to %s:%d on the router" % (mapping["protocol"], endpoint, lan, port))
    else:
        why = ("behind two NAT layers (the STUN server sees %s, the router says %s)" % (stun_ip, router_ip)
               if double else "behind a carrier-grade NAT (CGNAT)" if cgnat
               else "behind a symmetric NAT" if measured == "Symmetric"
               else "the router offers no port mapping (%s)" % "; ".join(errors) if not mapping and errors
               else "no port mapping")
        state.update(route="relay", endpoint=None,
                     nat_type="Symmetric" if (double or cgnat or measured is None) else measured,
                     reason=why + ": relay only")
        if lan:
            state["manual_forwarding"] = {"protocol": "udp", "port": port, "lan_address": lan}
    state["stun_mapped_address"] = state["endpoint"] or v4["stun_mapped"]
    state.update(ipv4=v4, ipv6=v6, wireguard_port=port)
    return state


def ipv6_detection(cfg):
    servers = resolve(cfg["stun"], socket.AF_INET6)
    source = egress_source(socket.AF_INET6, servers[0][0] if servers else "2001:db8::1")
    return {"egress_address": source, "egress_class": address_class(source)}


def read_state(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def write_state(path, state) -> bool:
    """Atomically replace the state file when its content differs; True when written."""
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def previous_port(state):
    mapping = state.get("mapping") if isinstance(state, dict) else None
    port = mapping.get("external_port") if isinstance(mapping, dict) else None
    return port if isinstance(port, int) and 1 <= port <= 65535 else None


def previous_nonce(state):
    """Our PCP mapping's nonce from the state (12 bytes), else None."""
    mapping = state.get("mapping") if isinstance(state, dict) else None
    text = mapping.get("nonce") if isinstance(mapping, dict) and mapping.get("protocol") == "pcp" else None
    try:
        nonce = bytes.fromhex(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return nonce if nonce is not None and len(nonce) == 12 else None


def run(cfg, mode):
    previous = read_state(cfg["state_file"])
    router = Router(cfg, default_gateway(), previous_nonce(previous))
    if mode == "remove":
        removed = router.unmap(previous_port(previous))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cfg["state_file"])
        return {"removed": removed}
    v4, v6 = ipv4_detection(cfg), ipv6_detection(cfg)
    mapping, errors = (None, []) if mode == "probe" or v4["egress_class"] == "public" else \
        router.map(previous_port(previous))
    if mode == "probe" and previous.get("mapping"):
        mapping = previous["mapping"]
    state = decide(cfg, v4, v6, mapping, errors)
    state["stun_source"] = cfg["stun_source"]
    if mode == "apply" and write_state(cfg["state_file"], state):
        log("NAT state: %s (%s), natType %s" % (state["route"], state["reason"], state["nat_type"]))
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("apply", "probe", "remove"))
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config)
    except (OSError, ValueError) as exc:
        log("higgs-nat: bad configuration %s: %s" % (args.config, exc))
        return 2
    try:
        state = run(cfg, args.mode)
    except OSError as exc:
        log("higgs-nat: %s" % exc)
        return 1
    if args.mode != "apply":   # apply logs a changed state; the state file holds it
        print(json.dumps(state, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
