"""Filters used by the roles' preflight checks."""

from __future__ import annotations

from ansible_collections.higgs.vpn.plugins.filter import network

FACTS = {
    "interfaces": ["lo", "eth0", "wg0", "eth0.100"],
    "eth0": {"ipv4": {"address": "192.168.1.20", "netmask": "255.255.255.0"},
             "ipv6": [{"address": "fe80::1", "prefix": "64", "scope": "link"},
                      {"address": "2001:db8:1::20", "prefix": "64", "scope": "global"}]},
    "wg0": {"ipv4": {"address": "10.66.0.1", "netmask": "255.255.255.0"}},
    "eth0_100": {"ipv4": {"address": "172.16.5.1", "netmask": "255.255.0.0"},
                 "ipv4_secondaries": [{"address": "172.17.0.1", "netmask": "255.255.255.255"}]},
}


def test_host_networks_skip_tunnels_loopback_and_link_local():
    nets = network.host_networks(FACTS, ["wg0"])
    assert nets == sorted(["192.168.1.0/24", "192.168.1.20/32", "2001:db8:1::/64",
                           "2001:db8:1::20/128", "172.16.0.0/16", "172.16.5.1/32",
                           "172.17.0.1/32"])


def test_invalid_ifnames_and_networks():
    assert network.invalid_ifnames(["wg0", "eth0.100"]) == []
    assert network.invalid_ifnames("bad name")[0].startswith("'bad name'")
    assert network.invalid_networks(["10.0.0.0/8", "fd00::/8"]) == []
    assert "host bits" in network.invalid_networks(["10.0.0.1/8"])[0]
    assert network.invalid_networks(["10.0.0.1/8"], strict=False) == []


def test_overlapping():
    assert network.overlapping(["10.66.0.0/24"], ["192.168.1.0/24", "fd00::/8"]) == []
    assert network.overlapping(["10.66.0.0/24"], ["10.0.0.0/8"]) == ["10.66.0.0/24 overlaps 10.0.0.0/8"]
    assert network.overlapping(["10.0.0.0/16", "10.0.1.0/24"]) == ["10.0.0.0/16 overlaps 10.0.1.0/24"]


def test_address_of_an_interface_address():
    assert network.address_of("10.66.0.1/24") == "10.66.0.1"
    assert network.address_of("fd66::1/64") == "fd66::1"
