"""Validation regexes match the whole value: a trailing newline (a YAML block
scalar ends with one) or any other control character is refused."""

from __future__ import annotations

import pytest

from ansible_collections.higgs.vpn.plugins.filter import network, wireguard
from ansible_collections.higgs.vpn.plugins.module_utils import _net, _owned, _tc, _wg

KEY = "OJtKp6XAIkhhHeLegyopBH4cVLuXKhKmX5z2mlbjOk0="


@pytest.mark.parametrize("suffix", ["\n", "\r", "\x00", "\x1b", "\x85", "\u2028"], ids=repr)
@pytest.mark.parametrize(("check", "good"), [
    (lambda v: _net.ifname_error(v) is None, "wg0"),
    (lambda v: _wg.key_error(v) is None, KEY),
    (lambda v: _owned.name_error(v) is None, "higgs_vpn"),
    (lambda v: not network.invalid_ifnames([v]), "wg0"),
    (lambda v: not wireguard.wg_client_errors([{"name": v}], ["10.66.0.1/24"]), "alice"),
    # (lambda v: not network.control_char_errors({"x": [{"y": v}]}), "dns.quad9.net"),
], ids=["ifname", "wg-key", "owned-name", "invalid_ifnames", "client-name"])
def test_a_control_character_is_refused(check, good, suffix):
    assert check(good)
    assert not check(good + suffix)
    assert not check(good[:2] + suffix + good[2:])


@pytest.mark.parametrize("text", ["100mbit\n", "100\nmbit", "100mbit\t", "\n100mbit"], ids=repr)
def test_a_rate_with_a_control_character_is_refused(text):
    assert _tc.parse_rate(" 100 mbit ") == 100 * 10 ** 6
    with pytest.raises(ValueError, match="is not a rate"):
        _tc.parse_rate(text)


def test_control_char_errors_name_the_path_not_the_value():
    secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI=\n"
    errors = network.control_char_errors({"wireguard_clients": [{"name": "a"}, {"name": "b", "preshared_key": secret}],
                                          "wireguard_endpoint": "vpn.example.net"})
    assert errors == ["wireguard_clients[1].preshared_key contains the control character \\n at position 44; "
                      "give it on one line without control characters"]
    assert secret.strip() not in errors[0]


@pytest.mark.parametrize("name", ["../../x", "../x", "a/b", ".hidden", "-rf", "a b", "", "x" * 65, "é"])
def test_client_names_that_could_leave_the_profile_directory_are_refused(name):
    errors = wireguard.wg_client_errors([{"name": name}], ["10.66.0.1/24"])
    assert errors and ("is not a safe name" in errors[0] or "name is missing" in errors[0]), errors


@pytest.mark.parametrize("name", ["alice", "alice-phone", "Bob_2", "carol.laptop", "x" * 64, "7"])
def test_safe_client_names_pass(name):
    assert wireguard.wg_client_errors([{"name": name}], ["10.66.0.1/24"]) == []
