"""The agent's route choice, its UPnP mapping (never touching a mapping it did not make) and its
state file."""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from higgs_nat import __main__ as agent

ROOT = Path(__file__).resolve().parents[3]

CFG = {"wireguard_port": 51820, "protocols": ["upnp"], "lease": 3600, "timeout": 0.2,
       "description": "higgs-vpn wireguard", "stun": [], "state_file": "/nonexistent"}


def v4(egress="192.168.1.10", cls="private", mapped="11.47.0.1:40000", mapping="endpoint-independent",
       measured="PortRestricted"):
    return {"egress_address": egress, "egress_class": cls, "stun_server": "s:1", "stun_mapped": mapped,
            "mapping_behaviour": mapping, "filtering_behaviour": None, "nat_type_measured": measured}


MAPPING = {"protocol": "upnp", "external_address": "11.47.0.1", "external_port": 51820,
           "lan_address": "192.168.1.10", "lease": 3600}
V6 = {"egress_address": None, "egress_class": "none"}


@pytest.mark.parametrize(("ipv4", "mapping", "route", "nat_type", "why"), [
    (v4("11.47.0.9", "public", "11.47.0.9:40000", "none", "FullCone"), None, "direct", "FullCone", "public"),
    (v4(), MAPPING, "direct", "FullCone", "upnp mapped 11.47.0.1:51820"),
    (v4(mapping="address-and-port-dependent", measured="Symmetric"), MAPPING, "relay", "Symmetric", "symmetric"),
    (v4(mapped="100.64.0.9:40000"), dict(MAPPING, external_address="100.64.0.9"), "relay", "Symmetric", "CGNAT"),
    (v4(egress="100.64.3.3", cls="cgnat"), None, "relay", "Symmetric", "CGNAT"),
    (v4(mapped="11.48.0.5:40000"), MAPPING, "relay", "Symmetric", "two NAT layers"),
    (v4(), None, "relay", "PortRestricted", "no port mapping"),
    (v4(mapped=None, mapping=None, measured=None), None, "relay", "Symmetric", "no port mapping"),
])
def test_route_choice(ipv4, mapping, route, nat_type, why):
    state = agent.decide(CFG, ipv4, V6, mapping, [])
    assert (state["route"], state["nat_type"]) == (route, nat_type)
    assert why in state["reason"]
    if route == "direct":
        assert state["stun_mapped_address"] == state["endpoint"] and state["manual_forwarding"] is None
    else:
        assert state["endpoint"] is None
        assert state["manual_forwarding"] == {"protocol": "udp", "port": 51820, "lan_address": ipv4["egress_address"]}


@pytest.mark.parametrize(("address", "cls"), [
    ("198.51.100.9", "reserved"), ("8.8.8.8", "public"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
    ("100.64.0.1", "cgnat"), ("100.127.255.254", "cgnat"), ("2001:4860::1", "public"), ("fd00::1", "private"),
    ("127.0.0.1", "reserved"), (None, "none"),
])
def test_address_class(address, cls):
    assert agent.address_class(address) == cls


class FakeIGD:
    """miniupnpc.UPnP over a dict of mappings {port: (host, iport, desc, enabled, lease)}."""
    table: typing.ClassVar[dict] = {}

    def __init__(self):
        self.discoverdelay = 0
        self.lanaddr = "192.168.1.10"

    def discover(self):
        return 1

    def selectigd(self):
        return "http://192.168.1.1:5000/ctl"

    def externalipaddress(self):
        return "11.47.0.1"

    def getspecificportmapping(self, port, proto):
        assert proto == "UDP"
        return self.table.get(port)

    def addportmapping(self, port, proto, host, iport, desc, remote, lease):
        assert proto == "UDP" and remote == ""
        self.table[port] = (host, iport, desc, "1", lease)
        return True

    def deleteportmapping(self, port, proto):
        del self.table[port]


@pytest.fixture
def igd(monkeypatch):
    FakeIGD.table = {}
    monkeypatch.setitem(sys.modules, "miniupnpc", types.SimpleNamespace(UPnP=FakeIGD))
    return FakeIGD.table


def test_upnp_leaves_a_foreign_mapping_alone_and_takes_the_next_port(igd):
    foreign = ("192.168.1.20", 51820, "game console", "1", 0)
    igd[51820] = foreign
    mapping, errors = agent.Router(CFG, "192.168.1.1").map(None)
    assert not errors and mapping["external_port"] == 51821
    assert igd[51820] == foreign and igd[51821][:3] == ("192.168.1.10", 51820, "higgs-vpn wireguard")


def test_upnp_renews_our_own_mapping_in_place(igd):
    router = agent.Router(CFG, "192.168.1.1")
    router.map(None)
    mapping, _ = router.map(51820)
    assert mapping["external_port"] == 51820 and list(igd) == [51820]


def test_removal_deletes_only_our_mapping(igd):
    igd[51820] = ("192.168.1.20", 51820, "game console", "1", 0)
    igd[51821] = ("192.168.1.10", 51820, "higgs-vpn wireguard", "1", 3600)
    igd[51822] = ("192.168.1.10", 51820, "someone else's", "1", 3600)
    removed = agent.Router(CFG, "192.168.1.1").unmap(51821)
    assert removed == {"upnp": [51821]} and sorted(igd) == [51820, 51822]


def test_no_igd_falls_through_with_the_reason(monkeypatch):
    class Nothing(FakeIGD):
        def discover(self):
            return 0
    monkeypatch.setitem(sys.modules, "miniupnpc", types.SimpleNamespace(UPnP=Nothing))
    mapping, errors = agent.Router(dict(CFG, protocols=["upnp", "natpmp"]), None).map(None)
    assert mapping is None
    assert errors == ["UPnP: no Internet Gateway Device on the LAN", "NAT-PMP: no IPv4 default gateway"]


def test_state_file_written_atomically_only_when_changed(tmp_path):
    path = tmp_path / "state.json"
    assert agent.write_state(str(path), {"route": "relay"})
    first = path.stat()
    assert not agent.write_state(str(path), {"route": "relay"})
    assert path.stat().st_mtime_ns == first.st_mtime_ns and oct(first.st_mode & 0o777) == "0o644"
    assert agent.write_state(str(path), {"route": "direct"})
    assert json.loads(path.read_text()) == {"route": "direct"} and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"wireguard_port": 70000}, "wireguard_port"),
    ({"protocols": ["igd"]}, "unknown mapping protocol 'igd'"),
    ({"stun_servers": ["stun.example.net"]}, "is not host:port"),
    ({"lease": 0}, "lease"),
    ({"state_file": "state.json"}, "state_file"),
    ({"relay_stun_file": "stun.json"}, "relay_stun_file"),
])
def test_bad_configuration_exits_2_naming_the_key(tmp_path, capsys, change, message):
    cfg = {"wireguard_port": 51820, "stun_servers": ["stun.example.net:3478"], "protocols": ["upnp"],
           "lease": 3600, "timeout": 1, "description": "x", "state_file": str(tmp_path / "s.json")}
    cfg.update(change)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert agent.main(["probe", "--config", str(tmp_path / "c.json")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("10.0.0.1:3478", ("10.0.0.1", 3478)),
                                                ("[2001:db8::1]:3478", ("2001:db8::1", 3478))])
def test_split_hostport(text, expected):
    assert agent.split_hostport(text) == expected


def test_default_gateway_from_the_route_table(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                     "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
                     "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n")
    assert agent.default_gateway(str(table)) == "192.168.1.1"


def _config(tmp_path, stun_servers, relay_content=None):
    relay = tmp_path / "stun-servers.json"
    if relay_content is not None:
        relay.write_bytes(relay_content if isinstance(relay_content, bytes) else json.dumps(relay_content).encode())
    cfg = {"wireguard_port": 51820, "stun_servers": stun_servers, "protocols": [], "lease": 3600, "timeout": 1,
           "description": "x", "state_file": str(tmp_path / "s.json"), "relay_stun_file": str(relay)}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    return agent.load(str(tmp_path / "c.json"))


def test_the_relay_announced_stun_servers_are_used_when_none_are_configured(tmp_path):
    """Issue 16: before, the relay's stunServers were never used (the default asked Google and Cloudflare)."""
    cfg = _config(tmp_path, [], {"stun_servers": ["10.48.1.31:3478", "[2001:db8::31]:3478"]})
    assert cfg["stun"] == [("10.48.1.31", 3478), ("2001:db8::31", 3478)] and cfg["stun_source"] == "relay"


def test_configured_stun_servers_win_over_the_relay(tmp_path):
    cfg = _config(tmp_path, ["stun.example.net:3478"], {"stun_servers": ["10.48.1.31:3478"]})
    assert cfg["stun"] == [("stun.example.net", 3478)] and cfg["stun_source"] == "configured"


def test_the_role_asks_no_third_party_by_default():
    defaults = (ROOT / "roles" / "nat_traversal" / "defaults" / "main.yml").read_text()
    assert yaml.safe_load(defaults)["nat_traversal_stun_servers"] == []


@pytest.mark.parametrize("content", [
    None,                                                    # no relay connector
    b"{not json", b"\xff\xfe", b"[" * 100000, b"[]",
    {"stun_servers": "10.48.1.31:3478"}, {"stun_servers": [3478]}, {"stun_servers": ["10.48.1.31"]},
    {"stun_servers": ["10.48.1.31:3478", "evil"]},           # one bad entry: the file is not used
    {"stun_servers": ["10.48.1.31:3478"], "pad": "x" * agent.MAX_RELAY_STUN_FILE},
], ids=["missing", "malformed", "not-utf8", "oversized-nesting", "not-object", "not-list", "not-text",
        "no-port", "one-bad", "oversized"])
def test_a_bad_relay_file_gives_no_stun_server(tmp_path, capsys, content):
    cfg = _config(tmp_path, [], content)
    assert cfg["stun"] == [] and cfg["stun_source"] == "none"
    assert (content is None) == ("not used" not in capsys.readouterr().err)


def test_relay_stun_servers_are_bounded(tmp_path):
    cfg = _config(tmp_path, [], {"stun_servers": ["10.0.0.%d:3478" % i for i in range(1, 50)]})
    assert len(cfg["stun"]) == agent.MAX_RELAY_STUN


def test_a_mapping_records_when_its_lease_runs_out(igd):
    """For the metrics' lease seconds left (issue 16): the mapping carries expires_at, renewed at each run."""
    before = int(agent.time.time())
    mapping, errors = agent.Router(dict(CFG, lease=600), "192.168.1.1").map(None)
    assert not errors and before + 600 <= mapping["expires_at"] <= int(agent.time.time()) + 600
