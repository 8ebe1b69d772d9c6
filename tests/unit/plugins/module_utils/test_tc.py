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
FLAT = CASES["flat_sample"]
SPEC = FLAT["spec"]


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


def spec_of(clients=None):
    spec = dict(SPEC)
    spec["clients"] = [dict(c, networks=_tc.networks(c["addresses"])) for c in (clients or SPEC["clients"])]
    return spec


def live_sample():
    return _tc.live_device("wg0", SAMPLE["qdiscs"], SAMPLE["classes"], SAMPLE["filters"], SAMPLE["ingress_filters"],
                           SAMPLE["groups"])


def flat_sample():
    return _tc.live_device("wg0", FLAT["qdiscs"], FLAT["classes"], FLAT["filters"], FLAT["ingress_filters"])


def planned(spec, live):
    minors = _tc.client_minors(list(live.filters), spec["clients"])
    for client in spec["clients"]:
        client["minor"] = minors[client["name"]]
    return [_tc.plan_device(spec, "down"), _tc.plan_device(spec, "up")], minors


def many(count, first=0):
    return [{"name": "c%d" % i, "addresses": ["10.66.%d.%d/32" % (i // 250, i % 250 + 2)], "down": None, "up": None}
            for i in range(first, count)]


def test_live_listing_equals_its_desired_state():
    live = live_sample()
    assert live.classes["8000:1"][0].startswith("parent 8000: "), "a class at the top of a group qdisc"
    assert any(k.startswith("qdisc 8000: pref 10 ip in 10:3 ") for k in live.filters), "the group's filters are read"
    (tunnel, _ifb), minors = planned(spec_of(), live)
    assert minors == SAMPLE["minors"], "each client keeps the class its addresses are classified to"
    assert _tc.diff(live, tunnel) == []


def test_group_listing_parsed_from_the_qdiscs():
    assert _tc.group_qdiscs(SAMPLE["qdiscs"]) == ["8000:"]


def test_the_listing_of_iproute2_6_14_equals_its_desired_state():
    """trixie's tc prints "burst 3045b/1mpu 0b" (no space before mpu)."""
    classes = SAMPLE["classes"].replace("/1 mpu", "/1mpu")
    assert "/1mpu" in classes
    live = _tc.live_device("wg0", SAMPLE["qdiscs"], classes, SAMPLE["filters"], SAMPLE["ingress_filters"],
                           SAMPLE["groups"])
    (tunnel, _ifb), _minors = planned(spec_of(), live)
    assert _tc.diff(live, tunnel) == []


def test_classes_of_earlier_versions_get_their_buckets_in_place():
    """Classes made with tc's default bucket (one packet) are changed, not rebuilt."""
    classes = re.sub(r"burst \S+ mpu 0b cburst \S+", "burst 1599b/1 mpu 0b cburst 1593b/1", SAMPLE["classes"])
    live = _tc.live_device("wg0", SAMPLE["qdiscs"], classes, SAMPLE["filters"], SAMPLE["ingress_filters"],
                           SAMPLE["groups"])
    (tunnel, _ifb), _minors = planned(spec_of(), live)
    batch = _tc.diff(live, tunnel)
    assert sorted(line.split()[7] for line in batch) == ["1:1", "1:2", "1:8000", "8000:1", "8000:10", "8000:11"], \
        batch
    assert all(line.startswith("class change dev wg0 ") for line in batch), batch
    assert "class change dev wg0 parent 8000:1 classid 8000:11 htb rate 1875000bit ceil 20000000bit" \
        " burst 3046b cburst 25000b quantum 1514 prio 1" in batch
    assert "class change dev wg0 parent 8000: classid 8000:1 htb rate 30000000bit ceil 30000000bit" \
        " burst 37500b cburst 37500b quantum 1514" in batch, "the group's top class too"


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
    clients = [*SPEC["clients"], {"name": "c", "addresses": ["10.44.101.9/32"], "down": None, "up": None}]
    (tunnel, _ifb), minors = planned(spec_of(clients), live)
    batch = _tc.diff(live, tunnel)
    assert minors["c"] == 0x12
    assert not [line for line in batch if " del " in line]
    assert batch[0] == "class change dev wg0 parent 1:1 classid 1:8000 htb rate 5625000bit ceil 30000000bit " \
                       "burst 7031b cburst 37500b quantum 4542 prio 1", "the group's guarantee and share grow with it"
    assert "class add dev wg0 parent 8000:1 classid 8000:12 htb rate 1875000bit ceil 30000000bit " \
           "burst 3046b cburst 37500b quantum 1514 prio 1" in batch
    assert any(line.startswith("filter add dev wg0 parent 1: prio 10 protocol ip handle 165: u32 divisor 256")
               for line in batch), batch
    assert any("ht 165:9: match u32 0x0a2c6509 0xffffffff at 16 flowid 1:8000" in line for line in batch), batch
    assert "filter add dev wg0 parent 8000: prio 10 protocol ip u32 ht 10:9: match u32 0x0a2c6509 0xffffffff " \
           "at 16 flowid 8000:12" in batch


def test_changing_a_rate_is_one_class_change():
    live = live_sample()
    clients = [dict(c, down=12_000_000) if c["name"] == "a" else c for c in SPEC["clients"]]
    (tunnel, _ifb), _minors = planned(spec_of(clients), live)
    assert _tc.diff(live, tunnel) == [
        "class change dev wg0 parent 8000:1 classid 8000:11 htb rate 1875000bit ceil 12000000bit "
        "burst 3046b cburst 15000b quantum 1514 prio 1"]


def test_removing_a_client_deletes_its_filters_first_and_its_class_last():
    live = live_sample()
    (tunnel, _ifb), _minors = planned(spec_of(SPEC["clients"][1:]), live)
    batch = _tc.diff(live, tunnel)
    assert batch[:2] == ["filter del dev wg0 parent 1: prio 10 handle 164:3:800 protocol ip u32",
                         "filter del dev wg0 parent 8000: prio 10 handle 10:3:800 protocol ip u32"]
    assert batch[-1] == "class del dev wg0 classid 8000:10"
    assert len(batch) == 4, "the group's share shrinks; hash tables and links stay; nothing else changes"


def test_no_qdisc_holds_more_than_a_group_of_classes():
    """The kernel walks every class of a qdisc for each class added to it: few classes per qdisc."""
    (tunnel, _ifb), _m = planned(spec_of(many(1000)), _tc.Device("wg0"))
    per_qdisc = {}
    for line in _tc.full_batch(tunnel):
        if line.startswith("class add "):
            parent = line.split()[5]
            qdisc = parent.split(":")[0] + ":"
            per_qdisc[qdisc] = per_qdisc.get(qdisc, 0) + 1
    assert max(per_qdisc.values()) <= 250 + 1
    assert sum(per_qdisc.values()) == 1000 + 2 + 4 + 4, "clients, 1:1, 1:2, group classes, their top classes"
    assert sorted(per_qdisc)[-1] == "8003:"
    # a class at the top of an htb qdisc cannot borrow: every class that may go above its rate has a parent class
    assert all(not args[5].endswith(":") for ident, args in tunnel.classes.values() if " prio " in ident)


def test_groups_are_stable_when_clients_come_and_go():
    live = _tc.Device("wg0")
    (tunnel, _ifb), minors = planned(spec_of(many(600)), live)
    assert (minors["c0"], minors["c249"], minors["c250"], minors["c599"]) == (0x10, 0x109, 0x10a, 0x267)
    assert (_tc.client_classid(0x109), _tc.client_classid(0x10a)) == ("8000:109", "8001:10a")
    # the live tree of those 600; c100 goes, c600 comes: it takes c100's number, nobody moves
    filters = list(tunnel.filters)
    clients = [c for c in many(601) if c["name"] != "c100"]
    again = _tc.client_minors(filters, [dict(c, networks=_tc.networks(c["addresses"])) for c in clients])
    assert again["c600"] == minors["c100"]
    assert all(again[name] == minor for name, minor in minors.items() if name != "c100")


def test_a_group_that_empties_goes_whole():
    live_clients = many(300)
    (tunnel, _ifb), _m = planned(spec_of(live_clients), _tc.Device("wg0"))
    live = _tc.Device("wg0")
    live.qdiscs = {k: (v[0], None) for k, v in tunnel.qdiscs.items()}
    live.classes = {k: (v[0], None) for k, v in tunnel.classes.items()}
    live.filters = {k: ["filter", "del", "dev", "wg0", "parent", f.qdisc, "prio", str(f.pref), "handle", k]
                    for k, f in tunnel.filters.items()}
    assert _tc.diff(live, tunnel) == []
    (smaller, _ifb), _m = planned(spec_of(many(250)), live)
    batch = _tc.diff(live, smaller)
    assert batch[-1] == "class del dev wg0 classid 1:8001", "the group class goes last, taking its qdisc"
    assert not [line for line in batch if "8001:" in line and " del " in line], \
        "nothing inside the group is deleted one by one"
    assert len([line for line in batch if line.startswith("filter del dev wg0 parent 1: ")]) == 50


def test_the_flat_tree_of_earlier_versions_is_rebuilt():
    live = flat_sample()
    (tunnel, _ifb), minors = planned(spec_of(), live)
    assert minors == FLAT["minors"], "clients keep their numbers"
    batch = _tc.diff(live, tunnel)
    assert batch[:2] == ["qdisc del dev wg0 root", "qdisc add dev wg0 root handle 1: htb default 2"]
    assert "class add dev wg0 parent 8000:1 classid 8000:10 htb rate 1875000bit ceil 20000000bit " \
           "burst 3046b cburst 25000b quantum 1514 prio 1" in batch
    assert not [line for line in batch if "ingress" in line or "ffff:" in line], "the redirect stays"
    order = [line for line in batch if line.startswith(("class add", "qdisc add"))]
    assert order.index("qdisc add dev wg0 parent 1:8000 handle 8000: htb") < \
        order.index(next(line for line in order if "classid 8000:" in line)), "group qdisc before its classes"


def test_classification_cost_does_not_grow_with_clients():
    def buckets(count):
        (tunnel, _ifb), _m = planned(spec_of(many(count)), _tc.Device("wg0"))
        per_bucket = {}
        for flt in tunnel.filters.values():
            if not flt.is_table and not flt.redirect:
                where = (flt.qdisc, flt.where)
                per_bucket[where] = per_bucket.get(where, 0) + 1
        return per_bucket
    small, large = buckets(10), buckets(5000)
    assert small[("1:", "root")] == large[("1:", "root")] == 2, "one hash link per family at the root"
    assert large[("8013:", "root")] == 2, "and at the root of each group qdisc"
    assert max(large.values()) == 2 and max(v for k, v in large.items() if k[1] != "root") == 1


def test_full_batch_starts_from_the_root():
    (tunnel, ifb), _m = planned(spec_of(), _tc.Device("wg0"))
    batch = _tc.full_batch(ifb) + _tc.full_batch(tunnel)
    assert batch[0] == "qdisc replace dev ifb-wg0 root handle 1: htb default 2"
    assert "filter add dev wg0 parent ffff: prio 1 protocol all u32 match u32 0x00000000 0x00000000 at 0 " \
           "action mirred egress redirect dev ifb-wg0" in batch
    assert not [line for line in batch if " del " in line]


def test_a_foreign_root_qdisc_is_replaced():
    live = _tc.live_device("wg0", '[{"kind":"pfifo_fast","handle":"0:","root":true}]', "", "[]", "[]")
    (tunnel, _ifb), _m = planned(spec_of(), live)
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
