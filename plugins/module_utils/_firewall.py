# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Render the client-traffic policy of a node (forwarding, NAT, isolation).

Pure functions: the owned objects are applied and persisted by ``_owned``.
"""

from __future__ import annotations

import json
import shlex

from ansible_collections.higgs.vpn.plugins.module_utils._net import collapse
from ansible_collections.higgs.vpn.plugins.module_utils._owned import iptables_restore

FAMILIES = (("ipv4", 4), ("ipv6", 6))


class Policy:
    """The desired policy, from validated module parameters."""

    def __init__(self, params):
        self.table = params["table"]
        self.tunnels = sorted(set(params["tunnel_interfaces"]))
        self.clients = {v: collapse(params["client_subnets"], v) for v in (4, 6)}
        self.blocked = {v: collapse(params["blocked_destinations"], v) for v in (4, 6)}
        self.allowed = {v: collapse(params["allowed_destinations"], v) for v in (4, 6)}
        self.egress = {}
        for fam, ver in FAMILIES:
            spec = params.get("egress_" + fam) or {}
            if spec.get("interface") and self.clients[ver]:
                self.egress[ver] = spec
        self.masquerade = {4: True, 6: params["nat66"]}
        self.client_to_client = params["client_to_client"]
        self.mss_clamp = params["mss_clamp"]
        self.services = sorted(
            {(s["proto"], int(s["port"])) for s in params["node_services"]}
        )


def _quote(names):
    return "{ %s }" % ", ".join('"%s"' % n for n in names)


def _set(name, kind, elements):
    lines = ["\tset %s {" % name, "\t\ttype %s" % kind, "\t\tflags interval"]
    if elements:
        lines.append("\t\telements = { %s }" % ", ".join(elements))
    lines.append("\t}")
    return lines


def render_nft(policy):
    """The nftables ruleset: one atomic, re-loadable ``nft -f`` file."""
    t = policy.table
    tun = _quote(policy.tunnels)
    lines = ["table inet %s" % t, "delete table inet %s" % t, "table inet %s {" % t]
    for ver, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += _set("clients_v%d" % ver, kind, policy.clients[ver])
        lines += _set("blocked_v%d" % ver, kind, policy.blocked[ver])
        lines += _set("allowed_v%d" % ver, kind, policy.allowed[ver])
    clamp = ["\t\ttcp flags syn / syn,rst tcp option maxseg size set rt mtu"] if policy.mss_clamp else []
    lines += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        "\t\tiifname %s jump clients_to_node" % tun,
        "\t}",
        "\tchain clients_to_node {",
        "\t\tct state established,related accept",
        "\t\tmeta l4proto { icmp, ipv6-icmp } accept",
    ]
    for proto, port in policy.services:
        lines.append("\t\t%s dport %d accept" % (proto, port))
    lines += [
        "\t\tcounter drop",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        "\t\tiifname %s jump from_clients" % tun,
        "\t\toifname %s jump to_clients" % tun,
        "\t}",
        "\tchain from_clients {",
        *clamp,
        "\t\tmeta nfproto ipv4 ip saddr != @clients_v4 counter drop",
        "\t\tmeta nfproto ipv6 ip6 saddr != @clients_v6 counter drop",
    ]
    if policy.client_to_client:
        lines += [
            "\t\toifname %s ip daddr @clients_v4 accept" % tun,
            "\t\toifname %s ip6 daddr @clients_v6 accept" % tun,
        ]
    lines += [
        "\t\tip daddr @allowed_v4 accept",
        "\t\tip6 daddr @allowed_v6 accept",
        "\t\tip daddr @blocked_v4 counter drop",
        "\t\tip6 daddr @blocked_v6 counter drop",
    ]
    for ver, proto in ((4, "ipv4"), (6, "ipv6")):
        if ver in policy.egress:
            lines.append('\t\toifname "%s" meta nfproto %s counter accept'
                         % (policy.egress[ver]["interface"], proto))
    lines += [
        "\t\tcounter drop",
        "\t}",
        "\tchain to_clients {",
        *clamp,
        "\t\tct state established,related accept",
        "\t\tcounter drop",
        "\t}",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    for ver, sel in ((4, "ip"), (6, "ip6")):
        spec = policy.egress.get(ver)
        if not spec or not policy.masquerade[ver]:
            continue
        action = "snat %s to %s" % (sel, spec["snat"]) if spec.get("snat") else "masquerade"
        lines.append('\t\toifname "%s" %s saddr @clients_v%d counter %s'
                     % (spec["interface"], sel, ver, action))
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def render_iptables(policy, ver):
    """Owned chains of one family, as ``iptables-restore --noflush`` text without jumps."""
    def c(suffix):
        return "%s_%s" % (policy.table, suffix)

    chains = {"input": [], "forward": [], "from_clients": [], "client": [], "to_clients": []}
    if policy.mss_clamp:
        clamp = "-p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
        chains["from_clients"].append(clamp)
        chains["to_clients"].append(clamp)
    icmp = "icmp" if ver == 4 else "ipv6-icmp"
    for tun in policy.tunnels:
        chains["input"] += ["-i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % tun,
                            "-i %s -p %s -j ACCEPT" % (tun, icmp)]
        chains["input"] += ["-i %s -p %s -m %s --dport %d -j ACCEPT" % (tun, proto, proto, port)
                            for proto, port in policy.services]
        chains["input"].append("-i %s -j DROP" % tun)
        chains["forward"] += ["-i %s -j %s" % (tun, c("from_clients")), "-o %s -j %s" % (tun, c("to_clients"))]
    chains["from_clients"] += ["-s %s -j %s" % (net, c("client")) for net in policy.clients[ver]]
    chains["from_clients"].append("-j DROP")
    if policy.client_to_client:
        chains["client"] += ["-d %s -o %s -j ACCEPT" % (net, tun)
                             for tun in policy.tunnels for net in policy.clients[ver]]
    chains["client"] += ["-d %s -j ACCEPT" % net for net in policy.allowed[ver]]
    chains["client"] += ["-d %s -j DROP" % net for net in policy.blocked[ver]]
    spec = policy.egress.get(ver)
    if spec:
        chains["client"].append("-o %s -j ACCEPT" % spec["interface"])
    chains["client"].append("-j DROP")
    chains["to_clients"] += ["-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-j DROP"]
    nat = {"postrouting": []}
    if spec and policy.masquerade[ver]:
        action = "SNAT --to-source %s" % spec["snat"] if spec.get("snat") else "MASQUERADE"
        nat["postrouting"] = ["-s %s -o %s -j %s" % (net, spec["interface"], action)
                              for net in policy.clients[ver]]
    return iptables_restore(policy.table, {"filter": chains, "nat": nat})


# ---------------------------------------------------------------------------
# Foreign firewalls (Docker, ufw, firewalld, hand-made rules)
# ---------------------------------------------------------------------------

# Statements that neither select packets nor end the chain.
_NEUTRAL = frozenset(("counter", "log", "comment"))
_HOOKS = ("forward", "input")


def _iif_match(value, tunnels):
    """True/False when ``value`` is a match on the input interface (does client traffic pass it?), else None."""
    if not isinstance(value, dict) or value.get("left") != {"meta": {"key": "iifname"}}:
        return None
    right = value.get("right")
    names = set(right.get("set", [])) if isinstance(right, dict) else {right}
    hit = bool(names & set(tunnels))
    return hit if value.get("op") in ("==", "in") else not hit


def _names(right):
    """The values of a match's right-hand side: a scalar, a list (flags) or an anonymous set."""
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    return right if isinstance(right, list) else [right]


def _port_packet(port, tunnels):
    """Decide a match for a new UDP datagram to ``port`` of this host from outside (the tunnel's own port).

    It arrives on an interface that is neither a tunnel nor loopback (a match on
    any other name is taken as the egress), is not related to a known connection
    and is addressed to a local address. True/False, or None for a match not
    modelled (the rule then counts as selective).
    """
    def hit(left, right):
        if left == {"meta": {"key": "iifname"}}:
            return any(name not in tunnels and name != "lo" for name in _names(right))
        if left in ({"meta": {"key": "l4proto"}}, {"payload": {"protocol": "ip", "field": "protocol"}},
                    {"payload": {"protocol": "ip6", "field": "nexthdr"}}):
            return any(value in ("udp", 17) for value in _names(right))
        if left in ({"payload": {"protocol": "udp", "field": "dport"}},
                    {"payload": {"protocol": "th", "field": "dport"}}):
            return any(value == port or (isinstance(value, dict) and "range" in value
                                         and value["range"][0] <= port <= value["range"][1])
                       for value in _names(right))
        if left == {"fib": {"flags": ["daddr"], "result": "type"}}:
            return "local" in _names(right)
        if left == {"ct": {"key": "state"}}:
            return "new" in _names(right)
        return None

    def decide(value):
        if not isinstance(value, dict):
            return None
        if "xt" in value:   # iptables-nft lists these without their arguments:
            # conntrack/state as their usual RELATED,ESTABLISHED (or INVALID), addrtype as LOCAL
            return {"conntrack": False, "state": False, "addrtype": True}.get(value["xt"])
        if value.get("op") not in ("==", "in", "!="):
            return None
        result = hit(value.get("left"), value.get("right"))
        return None if result is None else result != (value["op"] == "!=")
    return decide


def _verdict(rule, decide):
    """(verdict, jump target) of a rule the packet ``decide`` models matches; None when it selects.

    ``decide(match)`` is True/False for a match it can tell for that packet,
    None otherwise; a match it cannot tell makes the rule selective.
    """
    verdict = None
    for stmt in rule.get("expr") or []:
        (key, value), = stmt.items()
        if key in _NEUTRAL:
            continue
        if key == "match" and decide(value) is not None:
            if decide(value):
                continue
            return None
        if key == "xt":
            name = (value or {}).get("name", "")
            if value.get("type") == "match" and name == "comment":
                continue
            if value.get("type") == "match" and decide({"xt": name}) is not None:
                if decide({"xt": name}):
                    continue
                return None
            if value.get("type") == "target" and name == "REJECT":
                verdict = ("reject", None)
                continue
            return None
        if key in ("drop", "reject", "accept", "return"):
            verdict = (key, None)
        elif key in ("jump", "goto"):
            verdict = (key, value["target"])
        else:
            return None
    return verdict or ("continue", None)


def _jump_target(rule):
    for stmt in rule.get("expr") or []:
        for key in ("jump", "goto"):
            if key in stmt:
                return stmt[key]["target"]
    return None


def blocking_chains(ruleset, table, tunnels, hooks=_HOOKS, port=None):
    """Foreign base chains that drop client traffic whatever the collection accepts.

    ``ruleset`` is ``nft -j list ruleset`` (iptables-nft, ufw, Docker and
    firewalld all show there). A base chain on a ``hooks`` hook blocks when its
    policy is drop, or when it (or a chain it jumps to unconditionally) drops or
    rejects every packet arriving on a ``tunnels`` interface, unless a rule
    before that point jumps into the collection's chain for the hook (the
    iptables backend's ``<table>_forward`` / ``<table>_input``). Our own
    ``inet <table>`` is never foreign. With ``port``, the packet is instead a
    new UDP datagram to that port from outside (the tunnel's own port, on the
    input hook; the collection's chains do not accept it). Returns [{family,
    table, chain, hook, reason}] sorted.
    """
    chains, rules = {}, {}
    for item in ruleset.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    if port is None:
        ours = {"%s_%s" % (table, hook) for hook in hooks}

        def decide(value):   # a client packet: only its input interface is known
            return _iif_match(value, tunnels)
    else:
        ours, decide = set(), _port_packet(port, tunnels)

    def fate(key, seen):
        """What becomes of a packet no match in ``key`` selects: ("drop", why), ("accept",) or None."""
        for rule in rules.get(key, []):
            verdict = _verdict(rule, decide)
            if verdict is None:
                continue
            if _jump_target(rule) in ours:
                return ("accept",)
            kind, target = verdict
            if kind in ("drop", "reject"):
                return ("drop", "%s rule in %s" % (kind, key[2]))
            if kind == "accept":
                return ("accept",)
            if kind == "return":
                return None
            sub = (key[0], key[1], target)
            if kind in ("jump", "goto") and sub not in seen:
                result = fate(sub, seen | {sub})
                if result:
                    return result
            if kind == "goto":   # no way back into this chain
                return None
        return None

    found = []
    for key, chain in sorted(chains.items()):
        if chain.get("hook") not in hooks or chain.get("type") != "filter":
            continue
        if key[0] == "inet" and key[1] == table:
            continue
        result = fate(key, {key}) or (("drop", "policy drop") if chain.get("policy") == "drop" else None)
        if result and result[0] == "drop":
            reason = result[1]
            found.append(dict(family=key[0], table=key[1], chain=key[2], hook=chain["hook"], reason=reason))
    return found


def describe_blocker(b):
    return "%s %s %s (hook %s, %s)" % (b["family"], b["table"], b["chain"], b["hook"], b["reason"])


def _ports(text):
    """``--dport``/``--dports`` values (``51820``, ``1000:2000``, ``53,51820``) as an nft set."""
    out = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        if not (low.isdigit() and (not high or high.isdigit())):
            return {"set": []}
        out.append({"range": [int(low), int(high)]} if high else int(low))
    return {"set": out}


# iptables match options the analysis reads, as the nft JSON match they stand for.
_IPT_MATCHES = {
    "-p": ({"meta": {"key": "l4proto"}}, str.lower),
    "--protocol": ({"meta": {"key": "l4proto"}}, str.lower),
    "--dport": ({"payload": {"protocol": "th", "field": "dport"}}, _ports),
    "--dports": ({"payload": {"protocol": "th", "field": "dport"}}, _ports),
    "--destination-port": ({"payload": {"protocol": "th", "field": "dport"}}, _ports),
    "--ctstate": ({"ct": {"key": "state"}}, lambda v: v.lower().split(",")),
    "--state": ({"ct": {"key": "state"}}, lambda v: v.lower().split(",")),
    "--dst-type": ({"fib": {"flags": ["daddr"], "result": "type"}}, lambda v: v.lower().split(",")),
}


def _ipt_rule(family, chain, args):
    """One ``iptables-save`` rule as the JSON ``nft -j`` would list (the parts the analysis reads)."""
    expr, i = [], 0
    while i < len(args):
        neg = args[i] == "!"
        if neg:
            i += 1
        opt = args[i]
        val = args[i + 1] if i + 1 < len(args) else ""
        if opt in ("-i", "--in-interface"):
            expr.append({"match": {"op": "!=" if neg else "==", "left": {"meta": {"key": "iifname"}}, "right": val}})
            i += 2
        elif opt in ("-j", "-g"):
            verdicts = {"DROP": {"drop": None}, "ACCEPT": {"accept": None}, "RETURN": {"return": None},
                        "REJECT": {"reject": None}}
            if val in verdicts:
                expr.append(verdicts[val])
            elif val.isupper() and val.isalpha():  # an extension target (LOG, MASQUERADE, ...)
                expr.append({"counter": None} if val == "LOG" else {"xt": {"type": "target", "name": val}})
            else:
                expr.append({"jump" if opt == "-j" else "goto": {"target": val}})
            i += 2
            while i < len(args) and args[i].startswith("--"):  # target options
                i += 2
        elif opt == "-m" and val == "comment":
            i += 4
        elif opt == "-m":   # a match module: its options follow
            i += 2
        elif opt in _IPT_MATCHES and i + 1 < len(args):
            left, convert = _IPT_MATCHES[opt]
            expr.append({"match": {"op": "!=" if neg else "==", "left": left, "right": convert(val)}})
            i += 2
        else:  # any other match selects packets
            expr.append({"match": {"op": "==", "left": {"opaque": opt}, "right": val}})
            i += 1
            while i < len(args) and not args[i].startswith("-") and args[i] != "!":
                i += 1
    return {"rule": {"family": family, "table": "filter", "chain": chain, "expr": expr}}


def from_iptables_save(text, family):
    """The filter table of ``iptables-save`` output in the ``nft -j list ruleset`` form."""
    items, inside = [], False
    for line in text.splitlines():
        if line.startswith("*"):
            inside = line == "*filter"
        elif inside and line.startswith(":"):
            name, policy = line[1:].split()[:2]
            hook = {"INPUT": "input", "FORWARD": "forward", "OUTPUT": "output"}.get(name)
            chain = {"family": family, "table": "filter", "name": name}
            if hook:
                chain.update(type="filter", hook=hook, policy=policy.lower())
            items.append({"chain": chain})
        elif inside and line.startswith("-A "):
            parts = shlex.split(line)
            items.append(_ipt_rule(family, parts[1], parts[2:]))
    return {"nftables": items}


def read_rulesets(module, run):
    """The host's rulesets in ``nft -j list ruleset`` form: nftables (iptables-nft included) and iptables-legacy.

    ``run(argv)`` returns (rc, stdout). Without ``nft``, ``iptables-save`` of
    whichever flavour is installed is read instead.
    """
    nft = module.get_bin_path("nft")
    sources = []
    if nft:
        rc, out = run([nft, "-j", "list", "ruleset"])
        if rc == 0 and out.strip():
            sources.append(json.loads(out))
    saves = [("ip", "iptables-legacy-save"), ("ip6", "ip6tables-legacy-save")]
    if not nft:
        saves += [("ip", "iptables-save"), ("ip6", "ip6tables-save")]
    for family, name in saves:
        binary = module.get_bin_path(name)
        if binary:
            rc, out = run([binary, "-t", "filter"])
            if rc == 0:
                sources.append(from_iptables_save(out, family))
    return sources


def find_blockers(sources, table, tunnels, ports=()):
    """(chains blocking client traffic, chains dropping the tunnel's own UDP ``ports`` with a ``port`` key)."""
    blockers, closed = [], []
    for source in sources:
        blockers += [b for b in blocking_chains(source, table, tunnels) if b not in blockers]
        for port in ports:
            closed += [dict(b, port=port) for b in blocking_chains(source, table, tunnels, ("input",), port)
                       if dict(b, port=port) not in closed]
    return blockers, closed


def describe_closed(b):
    return "UDP port %d dropped by %s" % (b["port"], describe_blocker(b))


def unresolved(blockers, backend, firewalld_zone):
    """The ``blockers`` the chosen placement does not clear, each with the ``fix`` that would.

    fix ``iptables``: an iptables builtin INPUT/FORWARD chain, cleared by the
    iptables backend (its jump is inserted first there); ``firewalld``: cleared
    by binding the tunnel interfaces to a firewalld zone; ``foreign``: only the
    owner of that chain can clear it.
    """
    out = []
    for b in blockers:
        if b["family"] in ("ip", "ip6") and b["table"] == "filter" and b["chain"] in ("INPUT", "FORWARD"):
            fix = "iptables"
        elif b["family"] == "inet" and b["table"] == "firewalld":
            fix = "firewalld"
        else:
            fix = "foreign"
        if (fix, backend) == ("iptables", "iptables") or (fix == "firewalld" and firewalld_zone):
            continue
        out.append(dict(b, fix=fix))
    return out
