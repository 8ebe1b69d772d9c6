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


def test_docker_forward_drop_is_reported_with_its_chain():
    result = node_diagnose.foreign_firewall_check(Host((RULESETS / "docker.json").read_text()), PARAMS)
    assert not result["ok"]
    assert "ip filter FORWARD (hook forward, policy drop)" in result["detail"]
    assert "ip6 filter FORWARD (hook forward, policy drop)" in result["detail"]


def test_firewalld_with_the_tunnel_trusted_passes():
    result = node_diagnose.foreign_firewall_check(Host((RULESETS / "firewalld-trusted.json").read_text()), PARAMS)
    assert result["ok"], result


def test_unreadable_ruleset_is_a_failure():
    result = node_diagnose.foreign_firewall_check(Host("{not json"), PARAMS)
    assert not result["ok"] and "cannot read the ruleset" in result["detail"]
