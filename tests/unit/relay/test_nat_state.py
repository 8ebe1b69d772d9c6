"""Issue 16: the connector reports the natType / stunMappedAddress the nat_traversal agent measured
(its state file) at registration, and registers again when they change; a bad file is not used."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from pathlib import Path

import pytest
import yaml
from fake_boson import FakeBoson
from higgs_relay import config, connector

pytest.importorskip("websockets")
BASE = yaml.safe_load((Path(__file__).parent / "config_cases.yml").read_text())["base"]


def _daemon(fake, state_file, **settings):
    raw = copy.deepcopy(BASE)
    raw.update(relays=[fake.url], listen="", uvloop=False, backoff_base=0.1, backoff_cap=0.5, ping_interval=1,
               nat_state_file=str(state_file), **settings)
    return connector.Daemon(config.validate(raw))


def _write(path, **values):
    state = {"route": "relay", "endpoint": None, "nat_type": "Symmetric", "stun_mapped_address": "11.47.0.1:40000"}
    state.update(values)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _network(fake, index=-1):
    return [r[4] for r in fake.requests if r[0] == "register"][index]["networkInfo"]


def test_registration_reports_the_measured_nat_state(tmp_path):
    """Before: natType was the constant FullCone (or the configured value) and stunMappedAddress null."""
    async def scenario():
        fake = await FakeBoson().start()
        state = tmp_path / "state.json"
        _write(state)
        try:
            await _daemon(fake, state).links[0].register()
            assert _network(fake)["natType"] == "Symmetric"
            assert _network(fake)["stunMappedAddress"] == "11.47.0.1:40000"
        finally:
            fake.close()
    asyncio.run(scenario())


def test_a_changed_route_registers_again(tmp_path, monkeypatch):
    async def scenario():
        monkeypatch.setattr(connector, "MIN_REREGISTER", 0.5)
        fake = await FakeBoson().start()
        state = tmp_path / "state.json"
        _write(state)
        daemon = _daemon(fake, state)
        task = asyncio.get_running_loop().create_task(daemon.run())
        try:
            for _ in range(200):
                if daemon.links[0].stats["connected"] == 1:
                    break
                await asyncio.sleep(0.05)
            assert fake.count("register") == 1
            _write(state, route="direct", endpoint="11.47.0.1:51820", nat_type="FullCone",
                   stun_mapped_address="11.47.0.1:51820")
            for _ in range(200):
                if fake.count("register") >= 2:
                    break
                await asyncio.sleep(0.05)
            assert _network(fake)["natType"] == "FullCone"
            assert _network(fake)["stunMappedAddress"] == "11.47.0.1:51820"
        finally:
            daemon.stopping.set()
            await asyncio.wait_for(task, 10)
            fake.close()
    asyncio.run(scenario())


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"route": "direct", "endpoint": None, "nat_type": "Open", "stun_mapped_address": None}),
    json.dumps({"route": "sideways", "endpoint": None, "nat_type": "Symmetric", "stun_mapped_address": None}),
    json.dumps({"route": "relay", "endpoint": None, "nat_type": "Symmetric", "stun_mapped_address": "x:y"}),
    json.dumps({"route": "relay", "endpoint": None, "nat_type": "Symmetric", "stun_mapped_address": None,
                "pad": "x" * connector.MAX_NAT_STATE}),
    "[]",
], ids=["malformed", "nat-type", "route", "address", "oversized", "not-object"])
def test_a_bad_state_file_is_not_used(tmp_path, caplog, content):
    async def scenario():
        fake = await FakeBoson().start()
        state = tmp_path / "state.json"
        state.write_text(content)
        try:
            await _daemon(fake, state, network={"nat_type": "PortRestricted"}).links[0].register()
            assert _network(fake)["natType"] == "PortRestricted"
        finally:
            fake.close()
    with caplog.at_level(logging.WARNING, logger="higgs-relay"):
        asyncio.run(scenario())
    assert any("NAT state" in r.getMessage() and "not used" in r.getMessage() for r in caplog.records)


def test_a_relative_state_file_is_refused():
    raw = copy.deepcopy(BASE)
    raw.update(relays=["http://127.0.0.1:9"], nat_state_file="state.json")
    with pytest.raises(config.ConfigError, match="nat_state_file"):
        config.validate(raw)
