"""higgs.vpn _tc: rates, the desired objects, the live listings and their difference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ansible_collections.higgs.vpn.plugins.filter import rates
from ansible_collections.higgs.vpn.plugins.module_utils import _tc

CASES = yaml.safe_load((Path(__file__).parent / "tc_cases.yml").read_text())
SAMPLE = CASES["live_sample"]


@pytest.mark.parametrize("case", CASES["rates_valid"], ids=lambda c: c["text"])
def test_rates_operators_write(case):
    assert _tc.parse_rate(case["text"]) == case["bits"]


@pytest.mark.parametrize("case", CASES["rates_invalid"], ids=lambda c: c["text"] or "empty")
def test_bad_rates_say_why(case):
    with pytest.raises(ValueError) as err:
        _tc.parse_rate(case["text"])
    assert case["error"] in str(err.value)


@pytest.mark.parametrize("case", CASES["rate_text"], ids=lambda c: str(c["bits"]))
def test_rate_printed_like_tc(case):
    assert _tc.rate_text(case["bits"]) == case["text"]


def spec_of(sample, clients=None):
    spec = dict(sample["spec"])
    spec["clients"] = [dict(c, networks=_tc.networks(c["addresses"])) for c in (clients or spec["clients"])]
    return spec


def live_sample():
    return _tc.live_device("wg0", SAMPLE["qdiscs"], SAMPLE["classes"], SAMPLE["filters"], SAMPLE["ingress_filters"])


def planned(spec, live):
    minors = _tc.client_minors(list(live.filters), spec["clients"])
    for client in spec["clients"]:
        client["minor"] = minors[client["name"]]
    return _tc.plan(spec), minors


def test_live_listing_equals_its_desired_state():
    live = live_sample()
    (tunnel, _ifb), minors = planned(spec_of(SAMPLE), live)
    assert minors == SAMPLE["minors"], "each client keeps the class its addresses are classified to"
    assert _tc.diff(live, tunnel) == []


def test_the_listing_of_iproute2_6_14_equals_its_desired_state():
    """trixie's tc prints "burst 3045b/1mpu 0b" (no space before mpu)."""
    classes = SAMPLE["classes"].replace("/1 mpu", "/1mpu")
    assert "/1mpu" in classes
    live = _tc.live_device("wg0", SAMPLE["qdiscs"], classes, SAMPLE["filters"], SAMPLE["ingress_filters"])
    (tunnel, _ifb), _minors = planned(spec_of(SAMPLE), live)
    assert _tc.diff(live, tunnel) == []


def test_classes_of_earlier_versions_get_their_buckets_in_place():
    """Classes made with tc's default bucket (one packet) are changed, not rebuilt."""
    classes = re.sub(r"burst \S+ mpu 0b cburst \S+", "burst 1599b/1 mpu 0b cburst 1593b/1", SAMPLE["classes"])
    live = _tc.live_device("wg0", SAMPLE["qdiscs"], classes, SAMPLE["filters"], SAMPLE["ingress_filters"])
    (tunnel, _ifb), _minors = planned(spec_of(SAMPLE), live)
    batch = _tc.diff(live, tunnel)
    assert sorted(line.split()[7] for line in batch) == ["1:1", "1:10", "1:11", "1:2"], batch
    assert all(line.startswith("class change dev wg0 ") for line in batch), batch
    assert "class change dev wg0 parent 1:1 classid 1:10 htb rate 1875000bit ceil 20000000bit" \
        " burst 3046b cburst 25000b quantum 1514 prio 1" in batch


@pytest.mark.parametrize("bits, size, shown", [
    (20_000_000, 25_000, "10ms"),        # 10 ms at the rate
    (1_875_000, 3_046, "13ms"),          # two full packets are more than 10 ms
    (8_000, 3_028, "3028ms"),            # the smallest rate
    (10 ** 13, 10 ** 9, "1ms"),          # tc reads a burst into 32 bits
])
def test_a_bucket_holds_ten_milliseconds_and_two_packets(bits, size, shown):
    assert _tc.burst_bytes(bits) == size
    assert _tc.burst_text(size, bits) == shown


@pytest.mark.parametrize("text, size", [("3045b/1", 3045), ("25Kb", 25600), ("1.5Mb/8", 1572864), ("", 0)])
def test_sizes_as_tc_prints_them(text, size):
    assert _tc.parse_size(text) == size


def test_adding_a_client_only_adds():
    live = live_sample()
    clients = [*SAMPLE["spec"]["clients"], {"name": "c", "addresses": ["10.44.101.9/32"], "down": None, "up": None}]
    (tunnel, _ifb), minors = planned(spec_of(SAMPLE, clients), live)
    batch = _tc.diff(live, tunnel)
    assert minors["c"] == 0x12
    assert not [line for line in batch if " del " in line]
    assert ("class add dev wg0 parent 1:1 classid 1:12 htb rate 1875000bit ceil 30000000bit"
            " burst 3046b cburst 37500b quantum 1514 prio 1") in batch
    assert any(line.startswith("filter add dev wg0 parent 1: prio 10 protocol ip handle 165: u32 divisor 256")
               for line in batch), batch
    assert any("ht 165:9: match u32 0x0a2c6509 0xffffffff at 16 flowid 1:12" in line for line in batch), batch


def test_removing_a_client_deletes_its_filters_first_and_its_class_last():
    live = live_sample()
    (tunnel, _ifb), _minors = planned(spec_of(SAMPLE, SAMPLE["spec"]["clients"][1:]), live)
    batch = _tc.diff(live, tunnel)
    assert batch[-1] == "class del dev wg0 classid 1:11"
    assert batch[0] == "filter del dev wg0 parent 1: prio 10 handle 164:3:800 protocol ip u32"
    assert len(batch) == 2, "hash tables and links stay; nothing else changes"


def test_classification_cost_does_not_grow_with_clients():
    def root_filters(count):
        clients = [{"name": "c%d" % i, "addresses": ["10.66.%d.%d/32" % (i // 250, i % 250 + 2)],
                    "down": None, "up": None} for i in range(count)]
        (tunnel, _ifb), _m = planned(spec_of(SAMPLE, clients), _tc.Device("wg0"))
        flts = [f for f in tunnel.filters.values() if not f.redirect]
        per_bucket = {}
        for flt in flts:
            if not flt.is_table:
                per_bucket[flt.where] = per_bucket.get(flt.where, 0) + 1
        return per_bucket
    small, large = root_filters(10), root_filters(5000)
    assert small["root"] == large["root"] == 2, "one hash link per family at the root"
    assert max(large.values()) == 2 and max(v for k, v in large.items() if k != "root") == 1


def test_full_batch_starts_from_the_root():
    (tunnel, ifb), _m = planned(spec_of(SAMPLE), _tc.Device("wg0"))
    batch = _tc.full_batch(ifb) + _tc.full_batch(tunnel)
    assert batch[0] == "qdisc replace dev ifb-wg0 root handle 1: htb default 2"
    assert "filter add dev wg0 parent ffff: prio 1 protocol all u32 match u32 0x00000000 0x00000000 at 0 " \
           "action mirred egress redirect dev ifb-wg0" in batch
    assert not [line for line in batch if " del " in line]


def test_a_foreign_root_qdisc_is_replaced():
    live = _tc.live_device("wg0", '[{"kind":"pfifo_fast","handle":"0:","root":true}]', "", "[]", "[]")
    (tunnel, _ifb), _m = planned(spec_of(SAMPLE), live)
    assert _tc.diff(live, tunnel)[0] == "qdisc replace dev wg0 root handle 1: htb default 2"
    foreign_htb = '[{"kind":"htb","handle":"1:","root":true,"options":{"default":"0x30"}}]'
    live = _tc.live_device("wg0", foreign_htb, "", "[]", "[]")
    batch = _tc.diff(live, tunnel)
    assert batch[:2] == ["qdisc del dev wg0 root", "qdisc add dev wg0 root handle 1: htb default 2"]


def test_rate_filters_name_the_variable():
    assert rates.rate_bits("20Mbit", "traffic_shaping_rate_down") == 20_000_000
    problems = rates.rate_errors(
        {"traffic_shaping_rate_down": "20mbps", "traffic_shaping_rate_up": ""},
        [{"name": "a", "rate_down": "unlimited", "rate_up": "fast"}], "traffic_shaping_clients")
    assert len(problems) == 2
    assert problems[0].startswith("traffic_shaping_rate_down: '20mbps' is not a rate")
    assert problems[1].startswith("traffic_shaping_clients[0] (a).rate_up: 'fast' is not a rate")
    assert rates.shaping_clients([{"name": "a", "public_key": "k", "addresses": ["10.66.0.2/32"]}]) == \
        [{"name": "a", "addresses": ["10.66.0.2/32"]}]
