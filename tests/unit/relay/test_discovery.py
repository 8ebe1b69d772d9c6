"""Relays announced in registration answers: untrusted input, bounded, deduplicated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from higgs_relay import config, connector

DATA = yaml.safe_load((Path(__file__).parent / "discovery_cases.yml").read_text())
BASE = yaml.safe_load((Path(__file__).parent / "config_cases.yml").read_text())["base"]


@pytest.mark.parametrize("case", DATA["cases"], ids=lambda c: c["name"])
def test_announced_relays(case):
    announcer = config.parse_relay(case.get("announcer", "https://relay.example.net/boson"))
    learnt = config.announced_relays(case["servers"], announcer)
    assert [r.api for r in learnt] == case["learnt"]
    assert all(r.tls == announcer.tls for r in learnt)


def test_oversized_answer_is_bounded():
    announcer = config.parse_relay("https://relay.example.net")
    servers = [{"host": "relay%d.example.net" % i, "port": 443, "protocol": "websocket"} for i in range(100000)]
    learnt = config.announced_relays(servers, announcer)
    assert len(learnt) == config.MAX_DISCOVERED
    # huge host names are not host names
    assert config.announced_relays([{"host": "a" * 1000000, "port": 1, "protocol": "websocket"}], announcer) == []
    assert config.announced_relays([{"host": "a" * 64 + ".net", "port": 1, "protocol": "websocket"}], announcer) == []


def _daemon(**settings):
    async def build():
        return connector.Daemon(config.validate(dict(BASE, relays=["https://r1.example.net", "https://r2.example.net"],
                                                     **settings)))
    return asyncio.run(build())


def test_discovered_relays_follow_the_configured_ones_and_stay_bounded():
    daemon = _daemon()
    first = daemon.links[0]
    daemon.discover(first, [{"host": "r2.example.net", "port": 443, "protocol": "websocket"},     # configured
                            {"host": "r3.example.net", "port": 443, "protocol": "websocket"}])
    assert [link.relay.name for link in daemon.links] == ["r1.example.net:443", "r2.example.net:443",
                                                          "r3.example.net:443"]
    # every relay announcing relays nobody configured: the list and the metrics labels stay bounded
    for round_ in range(50):
        for link in list(daemon.links):
            daemon.discover(link, [{"host": "r%d-%d.example.net" % (round_, i), "port": 443, "protocol": "websocket"}
                                   for i in range(64)])
        daemon.discover(first, "garbage")
        daemon.discover(first, [None, {"host": ["x"]}, {"port": -1}])
    assert len(daemon.links) == 2 + config.MAX_DISCOVERED
    assert len({link.relay.name for link in daemon.links}) == len(daemon.links)
    assert len(daemon.metrics.per_relay) == 2 + config.MAX_DISCOVERED
    assert daemon.metrics.render().count("higgs_relay_relay_connected{") == 2 + config.MAX_DISCOVERED


def test_discovery_setting():
    assert config.validate(dict(BASE)).discover_relays is True
    assert config.validate(dict(BASE, discover_relays=False)).discover_relays is False
    with pytest.raises(config.ConfigError, match="discover_relays must be true or false"):
        config.validate(dict(BASE, discover_relays="no"))
