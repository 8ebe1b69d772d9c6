"""Issue 16: the relay announces its operator's STUN servers (stunServers) and the connector writes them, checked
and bounded, to a small world-readable file the NAT agent reads (the agent then asks no third party)."""

from __future__ import annotations

import asyncio
import copy
import json
import stat
from pathlib import Path

import pytest
import yaml
from fake_boson import FakeBoson
from higgs_relay import config, connector

pytest.importorskip("websockets")
from higgs_relay import server

BASE = yaml.safe_load((Path(__file__).parent / "config_cases.yml").read_text())["base"]
TOKEN = "registration-token-for-tests"
REGISTER = {
    "nodeId": "0d6c2a53-7f1e-4c4b-9a8e-45a1e1a5e045", "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
    "networkInfo": {"ipv4": "192.0.2.1", "ipv6": None, "natType": "PortRestricted", "stunMappedAddress": None,
                    "localPort": 51820},
    "capabilities": {"maxConnections": 8, "bandwidth": {"up": 10, "down": 10}, "routing": True, "natting": True},
    "location": {"country": "DE", "region": "lab", "coordinates": None},
}


def _register(args):
    relay = server.Relay(server.parse_args(["--auth-token-file", "unused", *args]), TOKEN)
    status, answer = relay.rest("POST", "/api/v1/nodes/register", {"authorization": "Bearer " + TOKEN},
                                json.dumps(REGISTER).encode(), "127.0.0.1")
    assert status == 201, answer
    return relay, answer


def test_the_relay_announces_its_stun_servers_and_counts_nat_types():
    """Before: stunServers was always [] and the relay's metrics did not say what natType its nodes registered."""
    relay, answer = _register(["--stun-server", "10.48.1.31:3478", "--stun-server", "[2001:db8::31]:3478"])
    assert answer["stunServers"] == [{"host": "10.48.1.31", "port": 3478}, {"host": "2001:db8::31", "port": 3478}]
    assert 'boson_relay_nodes_online_nat_type{nat_type="PortRestricted"} 1' in relay.prometheus()
    assert 'boson_relay_nodes_online_nat_type{nat_type="FullCone"} 0' in relay.prometheus()
    assert _register([])[1]["stunServers"] == []


@pytest.mark.parametrize("value", ["stun.example.net", "stun.example.net:0", "stun.example.net:65536",
                                   "bad host:3478", "stun.example.net:3478\n--no-auth"])
def test_the_relay_refuses_a_stun_server_that_is_not_host_port(value, capsys):
    with pytest.raises(SystemExit):
        server.parse_args(["--no-auth", "--stun-server", value])
    assert "--stun-server" in capsys.readouterr().err


def test_the_relay_announces_at_most_eight():
    with pytest.raises(SystemExit):
        server.parse_args(["--no-auth"] + ["--stun-server=10.0.0.%d:3478" % i for i in range(9)])


@pytest.mark.parametrize(("entries", "expected"), [
    ([{"host": "10.48.1.31", "port": 3478}, {"host": "stun.example.net", "port": 19302}],
     ["10.48.1.31:3478", "stun.example.net:19302"]),
    ([{"host": "2001:db8::31", "port": 3478}], ["[2001:db8::31]:3478"]),
    # not host + port: skipped, the good ones kept
    ([{"host": "10.48.1.31"}, {"host": "10.48.1.31", "port": 0}, {"host": "10.48.1.31", "port": 65536},
      {"host": "10.48.1.31", "port": True}, {"host": "10.48.1.31", "port": "3478"}, {"host": 5, "port": 3478},
      "10.48.1.31:3478", None, {"host": "a b:c", "port": 3478}, {"host": "x\nInjected", "port": 3478},
      {"host": "127.0.0.1", "port": 3478}, {"host": "0.0.0.0", "port": 3478}, {"host": "224.0.0.1", "port": 3478},
      {"host": "fe80::1", "port": 3478}, {"host": "h" * 300, "port": 3478}, {"host": "10.0.0.1", "port": 3478}],
     ["10.0.0.1:3478"]),
    ({"host": "10.48.1.31", "port": 3478}, []),
    (None, []),
    # bounded: the first MAX_STUN_SERVERS valid ones
    ([{"host": "10.0.0.%d" % i, "port": 3478} for i in range(1, 100)],
     ["10.0.0.%d:3478" % i for i in range(1, connector.MAX_STUN_SERVERS + 1)]),
], ids=["v4-and-name", "v6", "junk", "not-a-list", "none", "bounded"])
def test_only_checked_entries_are_kept(entries, expected):
    assert connector.announced_stun_servers(entries) == expected


def _daemon(fake, runtime_dir, monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(runtime_dir))
    raw = copy.deepcopy(BASE)
    raw.update(relays=[fake.url], listen="", uvloop=False)
    return connector.Daemon(config.validate(raw))


def _answer(fake, stun):
    fake.answers["register"] = (201, {"nodeId": BASE["node_id"], "status": "registered", "relayServers": [],
                                      "stunServers": stun, "sessionToken": "t", "expiresAt": 0}, {})


def test_the_connector_writes_the_announced_list_for_the_agent(tmp_path, monkeypatch, caplog):
    """Before: the registration answer's stunServers were ignored (nothing written)."""
    async def scenario():
        fake = await FakeBoson().start()
        try:
            daemon = _daemon(fake, tmp_path, monkeypatch)
            _answer(fake, [{"host": "10.48.1.31", "port": 3478}, {"host": "x\ny", "port": 1}])
            await daemon.links[0].register()
            path = tmp_path / connector.STUN_FILE
            assert json.loads(path.read_text()) == {"stun_servers": ["10.48.1.31:3478"]}
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
            first = path.stat().st_ino
            await daemon.links[0].register()          # unchanged: not written again
            assert path.stat().st_ino == first
            _answer(fake, [])                         # the operator took them away
            await daemon.links[0].register()
            assert json.loads(path.read_text()) == {"stun_servers": []}
            assert [p.name for p in tmp_path.iterdir()] == [connector.STUN_FILE]   # no temporary file left
        finally:
            fake.close()
    asyncio.run(scenario())
    assert any("x\\ny" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)


def test_an_unwritable_directory_is_logged_not_fatal(tmp_path, monkeypatch, caplog):
    async def scenario():
        fake = await FakeBoson().start()
        try:
            daemon = _daemon(fake, tmp_path / "missing", monkeypatch)
            _answer(fake, [{"host": "10.48.1.31", "port": 3478}])
            await daemon.links[0].register()
            assert daemon.links[0].stats["registrations"] == 1
        finally:
            fake.close()
    asyncio.run(scenario())
    assert any("cannot write" in r.getMessage() for r in caplog.records)
