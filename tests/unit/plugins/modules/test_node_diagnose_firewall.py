"""node_diagnose's foreign-firewall check (issue 15), on the captured lab rulesets."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.higgs.vpn.plugins.modules import node_diagnose

RULESETS = Path(__file__).parent / "firewall_foreign"


class Host:
    """nft only (no iptables-legacy); ``nft -j list ruleset`` prints ``ruleset``."""

    def __init__(self, ruleset):
        self.ruleset = ruleset

    def get_bin_path(self, name, required=False):
        return "/usr/sbin/nft" if name == "nft" else None

    def run_command(self, argv, **_kwargs):
        assert argv == ["/usr/sbin/nft", "-j", "list", "ruleset"]
        return 0, self.ruleset, ""


PARAMS = {"firewall_table": "higgs_vpn", "interface": "wg0"}


def checks(name_or_text, ports=(51820,)):
    path = RULESETS / (name_or_text + ".json")
    text = path.read_text() if path.name[0] != "{" and path.exists() else name_or_text
    return {c["name"]: c for c in node_diagnose.foreign_firewall_check(Host(text), PARAMS, list(ports))}


def test_docker_forward_drop_is_reported_with_its_chain():
    result = checks("docker")["foreign firewall"]
    assert not result["ok"]
    assert "ip filter FORWARD (hook forward, policy drop)" in result["detail"]
    assert "ip6 filter FORWARD (hook forward, policy drop)" in result["detail"]


def test_firewalld_with_the_tunnel_trusted_passes():
    result = checks("firewalld-trusted")["foreign firewall"]
    assert result["ok"], result


def test_unreadable_ruleset_is_a_failure():
    result = checks("{not json")["foreign firewall"]
    assert not result["ok"] and "cannot read the ruleset" in result["detail"]


def test_a_closed_tunnel_port_is_its_own_failed_check():
    found = checks("ufw")
    assert not found["tunnel port"]["ok"]
    assert "UDP port 51820 dropped by ip6 filter INPUT (hook input, policy drop)" in found["tunnel port"]["detail"]
    assert "only relayed clients" in found["tunnel port"]["detail"]
    opened = checks("ufw-port")
    assert opened["tunnel port"]["ok"] and not opened["foreign firewall"]["ok"]
    assert checks("ufw", ports=())["tunnel port"]["ok"]
