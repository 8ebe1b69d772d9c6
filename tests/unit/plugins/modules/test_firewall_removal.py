"""Removal with the iptables backend restores the nftables view exactly (issue 15).

iptables-nft creates a table (and the builtin chains a jump needs) on first
use; removal must delete what was created for the collection, and nothing else.
"""

from __future__ import annotations

import os

import pytest
from ansible.module_utils.basic import AnsibleModule
from module_run import run_main, stop_at_exit

from ansible_collections.higgs.vpn.plugins.module_utils import _owned
from ansible_collections.higgs.vpn.plugins.modules import firewall

BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}


class IptablesNft:
    """Tables {(family, table): {chain: [rules]}} as iptables-nft keeps them in nftables."""

    def __init__(self, tables):
        self.tables = {key: {c: list(r) for c, r in chains.items()} for key, chains in tables.items()}

    def view(self):
        return {key: {c: list(r) for c, r in chains.items()} for key, chains in self.tables.items()}

    def run(self, argv, data=None, **_kwargs):
        tool = os.path.basename(argv[0])
        fam = "ip6" if tool.startswith("ip6") else "ip"
        if tool == "nft":
            fam, what = argv[3], tuple(argv[4:])
            if argv[1] == "delete":
                del self.tables[(fam, what[0])]
                return 0, "", ""
            table = self.tables.get((fam, what[0]))
            if table is None or (len(what) == 2 and what[1] not in table):
                return 1, "", "Error: No such file or directory"
            return 0, "table %s %s {\n%s}\n" % (fam, what[0], "".join("\tchain %s {\n\t}\n" % c for c in table)), ""
        if tool.endswith("-save"):
            name = argv[argv.index("-t") + 1]
            chains = self.tables.get((fam, name))
            if chains is None:
                return 0, "", ""
            lines = ["*" + name] + [":%s %s [0:0]" % (c, "ACCEPT" if c in BUILTIN[name] else "-") for c in chains]
            lines += ["-A %s %s" % (c, r) for c, rules in chains.items() for r in rules]
            return 0, "\n".join([*lines, "COMMIT", ""]), ""
        if tool.endswith("-restore"):
            table = None
            for line in data.splitlines():
                parts = line.split()
                if line.startswith("*"):
                    table = self.tables.setdefault((fam, line[1:]), {})
                elif line.startswith(":"):
                    table.setdefault(parts[0][1:], [])
                elif parts and parts[0] == "-X":
                    del table[parts[1]]
                elif parts and parts[0] == "-F":
                    table[parts[1]] = []
                elif parts and parts[0] in ("-A", "-I", "-D"):
                    rule = " ".join(parts[3:] if parts[0] == "-I" else parts[2:])
                    chain = table.setdefault(parts[1], [])
                    if parts[0] == "-A":
                        chain.append(rule)
                    elif parts[0] == "-I":
                        chain.insert(0, rule)
                    else:
                        chain.remove(rule)
            return 0, "", ""
        table = self.tables[(fam, argv[argv.index("-t") + 1])]
        if "-S" in argv:
            chain = argv[argv.index("-S") + 1]
            return 0, "\n".join(["-P %s ACCEPT" % chain] + ["-A %s %s" % (chain, r) for r in table[chain]]), ""
        del table[argv[argv.index("-X") + 1]]
        return 0, "", ""


class Module:
    check_mode = False
    _diff = False

    def __init__(self, host):
        self.host = host

    def get_bin_path(self, name, required=False):
        return "/usr/sbin/" + name

    def run_command(self, argv, **kwargs):
        return self.host.run(argv, **kwargs)

    def atomic_move(self, src, dest):
        os.replace(src, dest)

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


PARAMS = dict(state="present", backend="iptables", table="higgs_vpn", tunnel_interfaces=["wg0"],
              persist_dir="", client_subnets=["10.66.0.0/24", "fd66::/64"],
              egress_ipv4={"interface": "eth0", "snat": None}, egress_ipv6={"interface": "eth0", "snat": None},
              nat66=True, blocked_destinations=[], allowed_destinations=[], client_to_client=False,
              mss_clamp=True, node_services=[])


@pytest.mark.parametrize("foreign", [
    {},                                                                            # nothing
    {("ip", "nat"): {"POSTROUTING": ["-s 192.0.2.0/24 -j MASQUERADE"]}},           # only table ip nat
    {("ip", "filter"): {"FORWARD": ["-j ufw-before-forward"], "ufw-before-forward": []},
     ("ip6", "filter"): {"FORWARD": ["-j ufw6-before-forward"], "ufw6-before-forward": []}},  # ufw-like
])
def test_removal_deletes_the_tables_created_for_the_owned_chains(tmp_path, foreign):
    host = IptablesNft(foreign)
    before = host.view()
    module = Module(host)
    persist = str(tmp_path / "fw")
    rendered = firewall.render(dict(PARAMS, persist_dir=persist))
    _owned.sync(module, "iptables", "higgs_vpn", persist, rendered)
    assert ("ip6", "nat") in host.tables and "higgs_vpn_postrouting" in host.tables[("ip6", "nat")]
    _owned.sync(module, "iptables", "higgs_vpn", persist, state="absent")
    assert host.view() == before


DOCKER_V6_NAT = {("ip6", "nat"): {"PREROUTING": ["-m addrtype --dst-type LOCAL -j DOCKER"],
                                  "POSTROUTING": ["-s fd17::/64 ! -o docker0 -j MASQUERADE"],
                                  "DOCKER": ["-i docker0 -j RETURN"]}}


def boot(host, persist, foreign):
    """A reboot: an empty ruleset, the collection's boot unit first, then the foreign service."""
    host.tables = {}
    for ver in (4, 6):
        with open(os.path.join(persist, "higgs_vpn.ipv%d.rules" % ver)) as handle:
            host.run(["/usr/sbin/%s-restore" % ("iptables" if ver == 4 else "ip6tables")], data=handle.read())
    for key, chains in foreign.items():
        table = host.tables.setdefault(key, {})
        for chain, rules in chains.items():
            table.setdefault(chain, [])[:0] = rules


@pytest.mark.parametrize("docker_at_converge", [True, False], ids=["docker-first", "docker-installed-later"])
def test_removal_after_a_boot_keeps_a_foreign_table_the_boot_unit_created_first(tmp_path, docker_at_converge):
    # at boot the unit (Before=network-pre) creates ip6 nat before dockerd fills
    # it; whether or not the table was recorded as created for us at converge,
    # removal leaves it with Docker's chains and rules, and only those
    host = IptablesNft(DOCKER_V6_NAT if docker_at_converge else {})
    module = Module(host)
    persist = str(tmp_path / "fw")
    rendered = firewall.render(dict(PARAMS, persist_dir=persist))
    _owned.sync(module, "iptables", "higgs_vpn", persist, rendered)
    boot(host, persist, DOCKER_V6_NAT)
    assert "higgs_vpn_postrouting" in host.tables[("ip6", "nat")]
    _owned.sync(module, "iptables", "higgs_vpn", persist, state="absent")
    assert host.view() == IptablesNft(DOCKER_V6_NAT).view()


class WithNftables(IptablesNft):
    """IptablesNft plus the collection's own ``inet`` table (nft list/-f/delete table inet)."""

    def __init__(self, tables):
        super().__init__(tables)
        self.inet = {}

    def run(self, argv, data=None, **kwargs):
        if os.path.basename(argv[0]) != "nft" or not (argv[1] == "-f" or argv[3] == "inet"):
            return super().run(argv, data=data, **kwargs)
        if argv[1] == "-f":
            name = data.split("table inet ", 1)[1].split()[0]
            self.inet[name] = data
            return 0, "", ""
        if argv[1] == "delete":
            del self.inet[argv[4]]
            return 0, "", ""
        if argv[4] not in self.inet:
            return 1, "", "Error: No such file or directory"
        return 0, self.inet[argv[4]], ""


def test_one_call_switches_the_backend(tmp_path, monkeypatch):
    """remove_other_backend: the iptables chains, files and boot restore go; the nftables table comes, in one call."""
    host = WithNftables(DOCKER_V6_NAT)
    before = host.view()
    monkeypatch.setattr(AnsibleModule, "get_bin_path",
                        lambda self, name, required=False, opt_dirs=None: "/usr/sbin/" + name)
    monkeypatch.setattr(AnsibleModule, "run_command", lambda self, argv, **kw: host.run(argv, **kw))
    monkeypatch.setattr(_owned, "UNIT_DIR", str(tmp_path / "units"))
    monkeypatch.setattr(_owned, "_systemctl", lambda module, *args: None)
    stop_at_exit(monkeypatch)
    persist = tmp_path / "fw"
    args = {k: v for k, v in PARAMS.items() if k not in ("state",)}
    args.update(persist_dir=str(persist), _ansible_diff=True)
    first = run_main(firewall, args)
    assert first["changed"] and "other_backend_removed" not in first and (persist / "higgs_vpn.ipv4.rules").exists()
    assert "higgs_vpn_postrouting" in host.tables[("ip6", "nat")]

    switched = run_main(firewall, dict(args, backend="nftables", remove_other_backend=True))
    assert switched["changed"] and switched["other_backend_removed"] and len(switched["diff"]) == 2
    assert host.view() == before                       # the iptables chains and the tables made for them are gone
    assert sorted(os.listdir(persist)) == ["higgs_vpn.nft"] and "higgs_vpn" in host.inet
    units = tmp_path / "units"
    assert sorted(os.listdir(units / _owned.WANTS)) == ["higgs-vpn-nft@higgs_vpn.service"]
    assert not (units / "higgs-vpn-iptables@.service").exists()

    again = run_main(firewall, dict(args, backend="nftables", remove_other_backend=True))
    assert not again["changed"] and again["other_backend_removed"] is False
