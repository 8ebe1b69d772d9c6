"""The owned-objects engine (_owned): rendering helpers and sync() against a fake kernel."""

from __future__ import annotations

import pytest

from ansible_collections.higgs.vpn.plugins.module_utils import _owned

SAVED_FILTER = """\
*filter
:INPUT ACCEPT [10:20]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:higgs_vpn_forward - [3:180]
:higgs_vpn_input - [0:0]
-A FORWARD -j higgs_vpn_forward
-A FORWARD -j DOCKER-USER
-A INPUT -j higgs_vpn_input
-A DOCKER-USER -j RETURN
-A higgs_vpn_forward -i wg0 -j ACCEPT
COMMIT
"""


def test_iptables_restore_declares_jump_targets_even_when_empty():
    text = _owned.iptables_restore("t", {"filter": {"forward": ["-j ACCEPT"]}})
    assert ":t_input - [0:0]" in text and ":t_prerouting - [0:0]" in text
    assert "-F t_forward" in text and "-A t_forward -j ACCEPT" in text
    assert text.count("COMMIT") == 2


def test_jumps_added_then_stripped_round_trip():
    base = _owned.iptables_restore("t", {})
    full = _owned.add_jumps(base, "t", set(_owned.JUMPS))
    assert "-I FORWARD 1 -j t_forward" in full and "-I PREROUTING 1 -j t_prerouting" in full
    assert _owned.strip_jumps(full, "t") == base


def test_owned_lines_and_missing_jumps_from_iptables_save():
    saved = _owned.split_save(SAVED_FILTER)
    owned = _owned.owned_lines("higgs_vpn", saved)
    assert "filter :higgs_vpn_forward -" in owned  # counters dropped
    assert "DOCKER-USER" not in owned
    assert "filter -A FORWARD -j higgs_vpn_forward" in owned
    assert _owned.missing_jumps("higgs_vpn", saved) == {
        ("nat", "PREROUTING", "prerouting"), ("nat", "POSTROUTING", "postrouting")}


def test_removal_deletes_only_owned_chains_and_jumps():
    text = _owned.removal_text("higgs_vpn", _owned.split_save(SAVED_FILTER))
    assert "-D FORWARD -j higgs_vpn_forward" in text and "-D INPUT -j higgs_vpn_input" in text
    assert "-X higgs_vpn_forward" in text and "-X higgs_vpn_input" in text
    assert "DOCKER-USER" not in text


def test_a_table_named_like_another_with_a_suffix_keeps_its_chains(tmp_path, monkeypatch):
    """higgs_vpn_dns_forward is a chain of higgs_vpn_dns, not of higgs_vpn: removing higgs_vpn leaves it."""
    saved = _owned.split_save(SAVED_FILTER.replace(
        "-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-USER\n-A FORWARD -j higgs_vpn_dns_forward").replace(
        ":higgs_vpn_input - [0:0]", ":higgs_vpn_input - [0:0]\n:higgs_vpn_dns_forward - [0:0]"))
    monkeypatch.setattr(_owned, "UNIT_DIR", str(tmp_path / "units"))
    (tmp_path / "fw").mkdir()
    (tmp_path / "fw" / "higgs_vpn_dns.ipv4.rules").write_text("")
    others = _owned.other_tables("higgs_vpn", str(tmp_path / "fw"))
    assert others == ["higgs_vpn_dns"]
    for text in (_owned.removal_text("higgs_vpn", saved, others), _owned.owned_lines("higgs_vpn", saved, others)):
        assert "higgs_vpn_forward" in text and "higgs_vpn_dns" not in text
    assert "-X higgs_vpn_dns_forward" in _owned.removal_text("higgs_vpn_dns", saved, [])


def test_persisted_round_trip_and_unreadable_files():
    text = _owned.persisted("body\n", "live")
    assert _owned.parse_persisted(text) == (_owned.fingerprint("live"), "body\n")
    assert _owned.parse_persisted("table inet x {}\n") == (None, None)
    assert _owned.parse_persisted(None) == (None, None)


def test_counters_do_not_count_as_drift():
    assert _owned.normalize_nft("counter packets 12 bytes 3400 accept") == "counter accept"


@pytest.mark.parametrize("name,ok", [("higgs_vpn", True), ("a", True), ("Higgs", False),
                                     ("with-dash", False), ("x" * 16, False), ("1abc", False)])
def test_owned_names(name, ok):
    assert (_owned.name_error(name) is None) is ok


class Kernel:
    """An nftables stand-in: holds one table listing, as nft would print it."""

    def __init__(self):
        self.listing = None
        self.applied = 0

    def run(self, argv, data=None, **_kwargs):
        if argv[1:3] == ["list", "table"]:
            if self.listing is None:
                return 1, "", "Error: No such file or directory"
            return 0, self.listing, ""
        if argv[1:] == ["-f", "-"]:
            self.applied += 1
            body = data.split("\n", 2)[2]  # what the kernel keeps: the table itself
            self.listing = body.replace("accept", "counter packets 0 bytes 0 accept")
            return 0, "", ""
        if argv[1] == "delete":
            self.listing = None
            return 0, "", ""
        raise AssertionError(argv)


class FakeModule:
    def __init__(self, kernel, check_mode=False):
        self.kernel = kernel
        self.check_mode = check_mode
        self._diff = True

    def get_bin_path(self, name, required=False):
        return "/usr/sbin/" + name

    def run_command(self, argv, **kwargs):
        return self.kernel.run(argv, **kwargs)

    def atomic_move(self, src, dest):
        import os
        os.replace(src, dest)

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs)


RULESET = {"nftables": "table inet t\ndelete table inet t\ntable inet t {\n\tchain c { accept }\n}\n"}


def sync(kernel, tmp_path, rendered=None, state="present", check_mode=False):
    if rendered is None and state == "present":
        rendered = RULESET
    module = FakeModule(kernel, check_mode)
    return _owned.sync(module, "nftables", "t", str(tmp_path / "fw"), rendered, state)


def test_first_apply_then_no_change(tmp_path):
    kernel = Kernel()
    assert sync(kernel, tmp_path)["changed"] is True
    assert kernel.applied == 1
    assert sync(kernel, tmp_path)["changed"] is False
    assert kernel.applied == 1


def test_check_mode_predicts_without_applying(tmp_path):
    kernel = Kernel()
    result = sync(kernel, tmp_path, check_mode=True)
    assert result["changed"] is True and kernel.applied == 0
    assert not (tmp_path / "fw").exists()
    assert "chain c" in result["diff"]["after"]


def test_drift_by_hand_is_repaired(tmp_path):
    kernel = Kernel()
    sync(kernel, tmp_path)
    kernel.listing = kernel.listing.replace("accept", "drop")
    assert sync(kernel, tmp_path)["changed"] is True
    assert "drop" not in kernel.listing


def test_lost_ruleset_is_reapplied(tmp_path):
    kernel = Kernel()
    sync(kernel, tmp_path)
    kernel.listing = None
    assert sync(kernel, tmp_path)["changed"] is True
    assert kernel.listing is not None


def test_changed_policy_is_applied(tmp_path):
    kernel = Kernel()
    sync(kernel, tmp_path)
    other = {"nftables": RULESET["nftables"].replace("chain c", "chain d")}
    assert sync(kernel, tmp_path, other)["changed"] is True
    assert "chain d" in kernel.listing


def test_absent_removes_table_file_and_empty_dir(tmp_path):
    kernel = Kernel()
    sync(kernel, tmp_path)
    assert sync(kernel, tmp_path, None, "absent")["changed"] is True
    assert kernel.listing is None and not (tmp_path / "fw").exists()
    assert sync(kernel, tmp_path, None, "absent")["changed"] is False


# --- boot restore: one template per backend, one instance per table ---------------


def boot(tmp_path, monkeypatch, name, state="present", backend="nftables", after=(), check_mode=False):
    monkeypatch.setattr(_owned, "UNIT_DIR", str(tmp_path / "units"))
    module = FakeModule(Kernel(), check_mode)
    module.get_bin_path = lambda binary, required=False: None  # no systemctl: nothing runs
    paths = _owned.persist_paths(backend, name, "/etc/higgs-vpn/firewall")
    return _owned.boot_sync(module, backend, name, paths, list(after), state)


def units(tmp_path):
    root = tmp_path / "units"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()) if root.exists() else []


def test_boot_restore_of_one_table_survives_removal_of_another(tmp_path, monkeypatch):
    assert boot(tmp_path, monkeypatch, "higgs_vpn") is True
    assert boot(tmp_path, monkeypatch, "higgs_vpn_dns", after=["higgs_vpn"]) is True
    assert boot(tmp_path, monkeypatch, "higgs_vpn_dns", after=["higgs_vpn"]) is False
    assert _owned.enabled_tables("nftables") == ["higgs_vpn", "higgs_vpn_dns"]

    assert boot(tmp_path, monkeypatch, "higgs_vpn", "absent") is True
    assert units(tmp_path) == ["higgs-vpn-nft@.service", "higgs-vpn-nft@higgs_vpn_dns.service.d/higgs-vpn.conf",
                               "sysinit.target.wants/higgs-vpn-nft@higgs_vpn_dns.service"]
    link = tmp_path / "units/sysinit.target.wants/higgs-vpn-nft@higgs_vpn_dns.service"
    assert link.resolve() == (tmp_path / "units/higgs-vpn-nft@.service").resolve() and link.exists()

    assert boot(tmp_path, monkeypatch, "higgs_vpn_dns", "absent") is True
    assert units(tmp_path) == []
    assert boot(tmp_path, monkeypatch, "higgs_vpn_dns", "absent") is False


def test_boot_restore_check_mode_predicts_without_writing(tmp_path, monkeypatch):
    assert boot(tmp_path, monkeypatch, "higgs_vpn", check_mode=True) is True
    assert units(tmp_path) == []
    boot(tmp_path, monkeypatch, "higgs_vpn")
    assert boot(tmp_path, monkeypatch, "higgs_vpn", "absent", check_mode=True) is True
    assert len(units(tmp_path)) == 3


def test_boot_units_name_the_files_and_the_order():
    for backend in _owned.BACKENDS:
        template = _owned.template_text(backend)
        assert "/etc/higgs-vpn" not in template and "WantedBy=sysinit.target" in template
    assert "ExecStartPre=-/usr/sbin/ip6tables -w -t nat -D POSTROUTING -j %i_postrouting" in \
        _owned.template_text("iptables")
    paths = _owned.persist_paths("iptables", "higgs_vpn_dns", "/srv/fw")
    dropin = _owned.dropin_text("iptables", paths, ["higgs_vpn"])
    assert "ConditionPathExists=/srv/fw/higgs_vpn_dns.ipv4.rules" in dropin
    assert "ExecStart=/usr/sbin/ip6tables-restore -w --noflush /srv/fw/higgs_vpn_dns.ipv6.rules" in dropin
    assert "After=higgs-vpn-nft@higgs_vpn.service higgs-vpn-iptables@higgs_vpn.service" in dropin


@pytest.mark.parametrize("values, expected", [
    ({"restore_after": ["Higgs"]}, "restore_after 'Higgs'"),
    ({"restore_after": ["t"]}, "restore_after: lists the table 't' itself"),
    ({"tunnel_interfaces": []}, "tunnel_interfaces: list at least one interface"),
    ({"tunnel_interfaces": ["wg0;reboot"]}, "tunnel_interfaces: 'wg0;reboot'"),
])
def test_shared_options_are_checked_naming_the_option(values, expected):
    params = dict(dict(table="t", state="present", tunnel_interfaces=["wg0"], restore_after=[]), **values)
    assert any(expected in e for e in _owned.common_errors(params)), _owned.common_errors(params)
