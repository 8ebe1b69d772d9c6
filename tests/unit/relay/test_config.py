"""Configuration validation: every problem named, with its key and fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from higgs_relay import config

DATA = yaml.safe_load((Path(__file__).parent / "config_cases.yml").read_text())


@pytest.mark.parametrize("case", DATA["cases"], ids=lambda c: c["name"])
def test_cases(case):
    raw = copy.deepcopy(DATA["base"])
    raw.update(case["set"])
    if not case["problems"]:
        cfg = config.validate(raw)
        assert cfg.node_id == raw["node_id"]
        return
    with pytest.raises(config.ConfigError) as info:
        config.validate(raw)
    text = "; ".join(info.value.problems)
    for expected in case["problems"]:
        assert expected in text


def test_relay_urls_normalised():
    relay = config.parse_relay("https://relay.example.net/boson/")
    assert relay == config.Relay(name="relay.example.net:443", api="https://relay.example.net:443/boson",
                                 ws="wss://relay.example.net:443/boson", tls=True)
    relay = config.parse_relay("ws://[fd00::1]:3000")
    assert relay.api == "http://[fd00::1]:3000" and relay.ws == "ws://[fd00::1]:3000" and not relay.tls


def test_token_file_read_and_env_expanded(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    raw = dict(DATA["base"], token_file="${CREDENTIALS_DIRECTORY}/token")
    assert config.validate(raw).token == "secret"


def test_load_reports_file_problems(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot be read"):
        config.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        config.load(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(DATA["base"]))
    assert config.load(str(good)).relays[0].ws == "wss://relay.example.net:443"


def test_node_id_lowercased():
    raw = dict(DATA["base"], node_id=DATA["base"]["node_id"].upper())
    assert config.validate(raw).node_id == DATA["base"]["node_id"]
