"""higgs.vpn.tc_shaping: parameter checks driven by tc_shaping_cases.yml, and the documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.doc_fragments.shaping_clients import ModuleDocFragment as ClientsFragment
from ansible_collections.higgs.vpn.plugins.module_utils import _plan
from ansible_collections.higgs.vpn.plugins.modules import tc_shaping

CASES = yaml.safe_load((Path(__file__).parent / "tc_shaping_cases.yml").read_text())
CLIENT_KEYS = dict.fromkeys(_plan.CLIENT_OPTIONS)


def params(overrides):
    merged = dict(CASES["base"])
    merged.update(overrides)
    merged["clients"] = [dict(CLIENT_KEYS, **c) for c in merged["clients"]]
    return merged


@pytest.mark.parametrize("case", CASES["invalid"], ids=lambda c: c["name"])
def test_invalid_input_names_the_option(case):
    _spec, errors = tc_shaping.validate(params(case["params"]))
    for expected in case["errors"]:
        assert any(expected in error for error in errors), errors


@pytest.mark.parametrize("case", CASES["valid"], ids=lambda c: c["name"])
def test_valid_input(case):
    assert tc_shaping.validate(params(case["params"]))[1] == []


def test_client_rates_fall_back_to_the_defaults():
    spec, _errors = tc_shaping.validate(params({
        "client_rate_down": "10mbit",
        "clients": [{"name": "a", "addresses": ["10.66.0.2/32"]},
                    {"name": "b", "addresses": ["10.66.0.3/32"], "rate_down": "unlimited", "rate_up": "1mbit"}]}))
    assert [(c["down"], c["up"]) for c in spec["clients"]] == [(10_000_000, None), (None, 1_000_000)]
    assert spec["ifb"] == "ifb-wg0"


def test_documented_options_match_the_argument_spec():
    doc = yaml.safe_load(ClientsFragment.DOCUMENTATION)["options"]
    doc.update(yaml.safe_load(tc_shaping.DOCUMENTATION)["options"])
    assert set(doc) == set(tc_shaping.ARGUMENT_SPEC)
    for name, spec in tc_shaping.ARGUMENT_SPEC.items():
        for key in ("type", "elements", "choices", "default"):
            assert doc[name].get(key) == spec.get(key), f"{name}.{key}"
    assert set(doc["clients"]["suboptions"]) == set(_plan.CLIENT_OPTIONS)


def test_examples_validate():
    tasks = yaml.safe_load(tc_shaping.EXAMPLES)
    calls = [t["higgs.vpn.tc_shaping"] for t in tasks]
    for call in calls:
        assert set(call) <= set(tc_shaping.ARGUMENT_SPEC)
        merged = dict({k: v.get("default") for k, v in tc_shaping.ARGUMENT_SPEC.items()}, **call)
        merged["clients"] = [dict(CLIENT_KEYS, **c) for c in merged["clients"]]
        assert tc_shaping.validate(merged)[1] == []


class Failed(Exception):
    pass


class FakeModule:
    """What present() reads of AnsibleModule; fail_json raises."""

    check_mode = False
    _diff = False

    def __init__(self, params):
        self.params = params

    def fail_json(self, **kwargs):
        raise Failed(kwargs)

    def warn(self, msg):
        raise AssertionError(msg)

    def atomic_move(self, src, dest):
        Path(src).replace(dest)


class FakeHost:
    """Devices that a batch builds whole, or not at all while ``failures`` last for it."""

    def __init__(self, spec, failures):
        self.spec, self.failures = spec, failures
        self.applied, self.batches = {}, []

    def link(self, _name):
        return {"flags": ["UP"]}

    def ensure_ifb(self, _name):
        pass

    def device(self, name, _ingress):
        return self.applied.get(name) or tc_shaping._tc.Device(name)

    def start_batch(self, lines):
        name = lines[0].split(" dev ")[1].split()[0]
        direction = "up" if name == self.spec["ifb"] else "down"
        self.batches.append((name, len(lines)))
        host = self

        class Batch:
            def wait(self):
                if host.failures.get(name, 0):
                    host.failures[name] -= 1
                    return 2, "RTNETLINK answers: Device or resource busy\n"
                host.applied[name] = tc_shaping._tc.plan_device(host.spec, direction)
                return 0, ""

        return Batch()


def run_present(tmp_path, failures, monkeypatch):
    monkeypatch.setattr(tc_shaping.time, "sleep", lambda _s: None)
    module = FakeModule(params({"persist_dir": str(tmp_path / "shaping")}))
    spec, errors = tc_shaping.validate(module.params)
    assert errors == []
    host = FakeHost(spec, failures)
    result = {}
    tc_shaping.present(module, host, spec, result)
    return host, result


def test_each_device_gets_its_batch_and_a_failed_one_is_read_again_and_retried(tmp_path, monkeypatch):
    host, result = run_present(tmp_path, {"wg0": 1}, monkeypatch)
    (ifb, ifb_lines), (tun, tun_lines), retry = host.batches
    assert (ifb, tun) == ("ifb-wg0", "wg0"), "the ifb first: the tunnel's ingress leads to it"
    assert retry == ("wg0", tun_lines), "only what is still missing, read again after the failure"
    assert result["attempts"] == 2 and result["changed"]
    assert result["command_count"] == ifb_lines + tun_lines == len(result["commands"])
    assert sorted(p.name for p in (tmp_path / "shaping").iterdir()) == ["wg0.clients.json", "wg0.env", "wg0.tc"]


def test_a_batch_that_keeps_failing_fails_the_module_and_writes_nothing(tmp_path, monkeypatch):
    with pytest.raises(Failed) as failed:
        run_present(tmp_path, {"wg0": tc_shaping.ATTEMPTS}, monkeypatch)
    assert "tc -batch failed: RTNETLINK answers: Device or resource busy" in failed.value.args[0]["msg"]
    assert not (tmp_path / "shaping").exists()


def test_the_result_lists_the_first_lines_and_counts_them_all(tmp_path, monkeypatch):
    many = [dict(CLIENT_KEYS, name="c%d" % i, addresses=["10.66.%d.%d/32" % (i // 250, i % 250 + 2)])
            for i in range(400)]
    monkeypatch.setitem(CASES["base"], "clients", many)
    _host, result = run_present(tmp_path, {}, monkeypatch)
    assert len(result["commands"]) == tc_shaping.LISTED < result["command_count"]


def test_a_failed_batch_names_the_line_tc_stopped_at(tmp_path):
    class Module:
        tmpdir = str(tmp_path)

        def run_command(self, argv, **_kwargs):
            self.batch = Path(argv[-1]).read_text()
            return 2, "", "Error: Specified qdisc kind is unknown.\nCommand failed %s:2\n" % argv[-1]

    module = Module()
    rc, err = tc_shaping._Batch(module, "tc", ["qdisc add dev wg0 root handle 1: htb",
                                               "qdisc add dev wg0 parent 1:2 handle 2: fq_codel"]).wait()
    assert module.batch.splitlines()[1].endswith("fq_codel"), "the lines reach tc in a file"
    assert (rc, err) == (2, "qdisc add dev wg0 parent 1:2 handle 2: fq_codel: Error: Specified qdisc kind is unknown.")
    assert list(tmp_path.iterdir()) == [], "the file goes once tc is done"
