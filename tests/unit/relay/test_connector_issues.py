"""Regressions of issues 12 and 13 (connector part), on loopback against a fake reference BosonServer.

Each test names the issue item it proves.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from pathlib import Path

import pytest
import yaml
from fake_boson import FakeBoson, reference_metrics_problem
from higgs_relay import config, connector, framing

pytest.importorskip("websockets")
BASE = yaml.safe_load((Path(__file__).parent / "config_cases.yml").read_text())["base"]


def _config(relays, **settings):
    raw = copy.deepcopy(BASE)
    raw.update(relays=relays, listen="", uvloop=False, backoff_base=0.1, backoff_cap=0.5, ping_interval=1)
    raw.update(settings)
    return config.validate(raw)


async def _until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


def _relay_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "higgs-relay"]


async def _running(fakes, **settings):
    """(daemon, its run task) against the fakes; the caller stops it with _stop."""
    daemon = connector.Daemon(_config([f.url for f in fakes], **settings))
    return daemon, asyncio.get_running_loop().create_task(daemon.run())


async def _stop(daemon, task):
    daemon.stopping.set()
    await asyncio.wait_for(task, 10)


# issue 12 item 10 -------------------------------------------------------------------------------
def test_unexpected_error_is_logged_and_ends_the_daemon(monkeypatch, caplog):
    """An error nobody expected (here in building the registration) stops the daemon with it, logged;
    main() turns that into exit 70 so systemd restarts the unit.  Before: the link task died, the
    process stayed up with /health 503 and logged nothing."""
    def broken(self, link):
        raise TypeError("int() argument must be a string")
    monkeypatch.setattr(connector.Daemon, "registration", broken)

    async def scenario():
        fake = await FakeBoson().start()
        try:
            cfg = _config([fake.url])
            return await asyncio.wait_for(connector._main(cfg), 10)
        finally:
            fake.close()

    failure = asyncio.run(scenario())
    assert isinstance(failure, TypeError)
    assert any("unexpected error" in line and "int() argument" in line for line in _relay_lines(caplog))


def test_an_error_in_a_callback_stops_the_daemon_and_transport_trouble_does_not(caplog):
    """Callbacks of the data path run outside any task: their errors reach the loop's handler."""
    async def scenario():
        daemon = connector.Daemon(_config(["http://127.0.0.1:9"]))
        loop = asyncio.get_running_loop()
        loop.call_exception_handler({"message": "Fatal read error", "exception": ConnectionResetError(104, "reset")})
        assert daemon.failure is None and not daemon.stopping.is_set()
        loop.call_soon(lambda: {}["missing"])
        await asyncio.wait_for(daemon.stopping.wait(), 5)
        return daemon
    daemon = asyncio.run(scenario())
    assert isinstance(daemon.failure, KeyError)
    assert any("unexpected error" in line for line in _relay_lines(caplog))


def test_main_exits_70_after_an_unexpected_error(monkeypatch, tmp_path):
    async def failing(cfg):
        return RuntimeError("boom")
    monkeypatch.setattr(connector, "_main", failing)
    monkeypatch.setattr(connector.udp, "probe", lambda host, port: "")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(dict(BASE, uvloop=False)))
    assert connector.main(["--config", str(path)]) == connector.EX_SOFTWARE


# issue 12 item 11 -------------------------------------------------------------------------------
def test_retry_after_of_one_relay_does_not_stall_failover():
    """Relay A answers registration 429 Retry-After: 900; failover reaches healthy relay B at once."""
    async def scenario():
        a, b = await FakeBoson().start(), await FakeBoson().start()
        a.answers["register"] = (429, "Too many requests", {"Retry-After": "900"})
        daemon, task = await _running([a, b])
        try:
            link_b = daemon.links[1]
            assert await _until(lambda: link_b.stats["connected"] == 1, 10), "failover stalled behind A's Retry-After"
            assert a.count("register") == 1      # A is not asked again before its Retry-After
            assert daemon.links[0].not_before > time.monotonic() + 800
        finally:
            await _stop(daemon, task)
            a.close()
            b.close()
    asyncio.run(scenario())


# issue 12 item 12 -------------------------------------------------------------------------------
def test_relay_text_is_bounded_and_escaped(caplog):
    """2,000 actions per heartbeat and newlines in relay text: one escaped line per cause, not 2,000."""
    async def scenario():
        fake = await FakeBoson().start()
        fake.actions = [{"type": "restart\nCRITICAL forged line", "payload": {}} for _ in range(2000)]
        daemon = connector.Daemon(_config([fake.url]))
        link = daemon.links[0]
        try:
            await link.register()
            for _ in range(3):
                await link.heartbeat()
            for _ in range(50):
                link.control(framing.control("error", errorCode="E\n1", errorMessage="x" * 100000 + "\nforged"))
        finally:
            fake.close()
    caplog.set_level(logging.DEBUG, logger="higgs-relay")
    asyncio.run(scenario())
    lines = _relay_lines(caplog)
    assert len([line for line in lines if "action" in line]) == 1
    assert len([line for line in lines if "reports error" in line]) == 1
    assert all("\n" not in line and len(line) < 600 for line in lines), lines


# issue 12 item 13 -------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [
    {"action": "disconnect", "session": [1]},
    {"action": "disconnect", "session": {"a": 1}},
    {"action": "connect", "session": [1]},
    {"action": "connect", "session": True},
    {"action": "connect", "session": -1},
    {"action": "connect", "session": 1 << 40},
    {"action": "error", "errorCode": {"x": [1]}, "errorMessage": None},
    {"action": ["connected"]},
])
def test_malformed_control_frames_are_ignored(payload):
    """Before: {"action":"disconnect","session":[1]} raised TypeError in data_received and killed the socket."""
    async def scenario():
        daemon = connector.Daemon(_config(["http://127.0.0.1:9"]))
        link = daemon.links[0]
        link.version = 2
        link.control(json.dumps({"type": "control", "payload": payload}))
        assert link.sessions == {}
        assert daemon.failure is None
    asyncio.run(scenario())


def test_expires_at_in_the_past_causes_no_registration_storm():
    """Before: an expiresAt in the past re-registered every second (9 in 10 s)."""
    async def scenario():
        fake = await FakeBoson().start()
        fake.expires_in = -3600
        daemon, task = await _running([fake])
        try:
            assert await _until(lambda: daemon.links[0].stats["connected"] == 1)
            await asyncio.sleep(4)
            assert fake.count("register") == 1
            assert daemon.links[0].next_register - time.monotonic() >= connector.MIN_REREGISTER - 5
        finally:
            await _stop(daemon, task)
            fake.close()
    asyncio.run(scenario())


# issue 12 item 4 ----------------------------------------------------------------------------------
def test_idle_sessions_give_way_to_new_ones():
    """A table full of idle sessions (opened by outsiders) admits a new client; a table of active ones does not."""
    async def scenario():
        daemon = connector.Daemon(_config(["http://127.0.0.1:9"], max_sessions=2))
        link = daemon.links[0]
        link.version = 2
        first, second = link.session(1), link.session(2)
        assert link.session(3) is None                       # both active: refused
        first.last = second.last = time.monotonic() - 3600
        link.evict_after = 0.0
        third = link.session(3)
        assert third is not None                             # the longest idle gave way
        assert daemon.metrics.sessions_refused == 1 and daemon.metrics.sessions_evicted == 1
        assert set(link.sessions) == {2, 3} or set(link.sessions) == {1, 3}
        link.close_sessions()
    asyncio.run(scenario())


# issue 13 items 1, 2 --------------------------------------------------------------------------------
def test_metrics_report_has_the_reference_shape_and_measured_figures():
    async def scenario():
        fake = await FakeBoson().start()
        daemon = connector.Daemon(_config([fake.url]))
        link = daemon.links[0]
        try:
            await link.register()
            await link.send_metrics()
            assert fake.count("metrics") == 0            # nothing measured yet: nothing claimed
            for rtt in (0.010, 0.014, 0.012):
                link.pings_sent += 1
                link.pong(rtt)
            link.pings_sent += 1                           # one ping never answered
            await link.send_metrics()
            body = [r[4] for r in fake.requests if r[0] == "metrics"][-1]
            assert reference_metrics_problem(body) is None
            assert link.stats["refused"] == {}
            network = body["metrics"]["network"]
            assert network["latency"] == 12.0 and network["jitter"] == 3.0 and network["packetLoss"] == 25.0
        finally:
            fake.close()
    asyncio.run(scenario())


def test_old_metrics_body_is_refused_by_the_reference_shape():
    """The body sent before (bytesIn/bytesOut, a packets total, a connections number) gets 400."""
    old = {"nodeId": BASE["node_id"], "timestamp": 1, "metrics": {
        "network": {"bytesIn": 1, "bytesOut": 2, "latency": 0}, "system": {"cpuUsage": 1, "memoryUsage": 2},
        "wireguard": {"packets": 3, "bytes": 4}, "connections": 0}}
    assert reference_metrics_problem(old) is not None


def test_refused_requests_are_counted_logged_once_and_in_health(caplog):
    async def scenario():
        fake = await FakeBoson().start()
        fake.answers["metrics"] = (400, {"error": {"message": "Invalid input\nforged", "statusCode": 400}}, {})
        daemon = connector.Daemon(_config([fake.url]))
        link = daemon.links[0]
        try:
            await link.register()
            link.pong(0.01)
            for _ in range(3):
                await link.send_metrics()
        finally:
            fake.close()
        return daemon
    daemon = asyncio.run(scenario())
    lines = [line for line in _relay_lines(caplog) if "refused" in line]
    assert lines == ["metrics refused by 127.0.0.1:%s: HTTP 400 Invalid input\\nforged"
                     % daemon.links[0].relay.name.rsplit(":", 1)[1]]
    rendered = daemon.metrics.render()
    assert 'higgs_relay_relay_refused_total{relay="%s",request="metrics",status="400"} 3' % (
        daemon.links[0].relay.name) in rendered
    health = daemon.metrics.health()["relays"][daemon.links[0].relay.name]
    assert health["refused"] == {"metrics 400": 3} and "Invalid input" in health["last_refusal"]


# issue 13 item 4 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("answer", "expected"), [
    ((200, {"status": "ok", "nextHeartbeat": 10, "actions": []}, {}), 10),
    ((200, {"status": "ok", "nextHeartbeat": 30, "actions": []}, {}), 30),
    ((429, "Too many requests", {"Retry-After": "120"}), 120),
    ((200, {"status": "ok", "nextHeartbeat": 1, "actions": []}, {}), 10),    # clamped to the server's range
])
def test_heartbeat_scheduled_from_the_answer_without_status(answer, expected):
    async def scenario():
        fake = await FakeBoson().start()
        daemon = connector.Daemon(_config([fake.url], heartbeat_interval=60))
        link = daemon.links[0]
        try:
            await link.register()
            fake.answers["heartbeat"] = answer
            await link._heartbeat()
            body = [r[4] for r in fake.requests if r[0] == "heartbeat"][-1]
            assert "status" not in body
            due = link.heartbeat_due - time.monotonic()
            assert expected - 2 < due <= expected
        finally:
            fake.close()
    asyncio.run(scenario())


# issue 13 item 5 ----------------------------------------------------------------------------------
def test_forgotten_node_registers_again_within_a_minute():
    """The reference answers heartbeats 200 for a node it forgot: the periodic registration (default
    60 s, was 300 s) brings it back; a 404/401 heartbeat schedules it within MIN_REREGISTER."""
    async def scenario():
        fake = await FakeBoson().start()
        daemon = connector.Daemon(_config([fake.url]))
        link = daemon.links[0]
        try:
            assert daemon.cfg.reregister_interval <= 60
            await link.register()
            assert link.next_register - time.monotonic() <= 60
            link.next_register = time.monotonic() + 3600
            fake.answers["heartbeat"] = (404, {"error": {"message": "Node not found", "statusCode": 404}}, {})
            await link.heartbeat()
            assert link.next_register <= link.registered_mono + connector.MIN_REREGISTER
        finally:
            fake.close()
    asyncio.run(scenario())


# issue 13 item 6 ----------------------------------------------------------------------------------
def test_protocol_1_sends_no_node_to_client_frames(caplog):
    async def scenario():
        import socket
        wireguard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        wireguard.bind(("127.0.0.1", 0))
        fake = await FakeBoson().start()
        daemon, task = await _running([fake], wireguard_port=wireguard.getsockname()[1])
        try:
            link = daemon.links[0]
            assert await _until(lambda: link.stats["connected"] == 1)
            assert link.version == 1
            datagram = b"\x01\x00\x00\x00" + b"x" * 144
            fake.sockets[-1].send_binary_many([datagram])
            assert await _until(lambda: daemon.metrics.datagrams_from_relay == 1)
            data, peer = wireguard.recvfrom(2048)
            assert data == datagram
            for _ in range(3):
                wireguard.sendto(b"\x02\x00\x00\x00" + b"y" * 88, peer)
            assert await _until(lambda: daemon.metrics.drops["no_return_path"] == 3)
            await asyncio.sleep(0.3)
            assert fake.frames == [] and daemon.metrics.datagrams_to_relay == 0
        finally:
            await _stop(daemon, task)
            fake.close()
            wireguard.close()
    caplog.set_level(logging.INFO, logger="higgs-relay")
    asyncio.run(scenario())
    assert len([line for line in _relay_lines(caplog) if "protocol 1" in line and "no_return_path" in line]) == 1


# issue 13 item 7 ----------------------------------------------------------------------------------
def test_stable_link_resets_the_backoff_its_supervisor_uses(monkeypatch, caplog):
    """Before: stable() reset a Backoff keyed by the link while keep() used one keyed "failover"."""
    calls = []

    async def serve(self):
        calls.append(time.monotonic())
        if len(calls) == 6:
            self.daemon.stable(self, 3600)
        if len(calls) == 7:
            self.daemon.stopping.set()
        raise connector.LinkDown("down %d" % len(calls))
    monkeypatch.setattr(connector.Link, "serve", serve)

    async def scenario():
        daemon = connector.Daemon(_config(["http://127.0.0.1:9"], backoff_base=0.05, backoff_cap=2))
        await asyncio.wait_for(daemon.run(), 20)
    caplog.set_level(logging.INFO, logger="higgs-relay")
    asyncio.run(scenario())
    waits = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in _relay_lines(caplog) if "reconnecting" in line]
    assert waits[4] >= 0.4                # five failures in a row: the schedule grew
    assert waits[5] <= 0.05               # after a stable link: back to the start


def test_orderly_stop_logs_no_reconnect_and_retries_delete_once_on_429(caplog):
    async def scenario():
        fake = await FakeBoson().start()
        daemon, task = await _running([fake])
        try:
            assert await _until(lambda: daemon.links[0].stats["connected"] == 1)
            fake.answers["delete"] = (429, "Too many requests", {"Retry-After": "1"})
            await _stop(daemon, task)
        finally:
            fake.close()
        return fake
    caplog.set_level(logging.INFO, logger="higgs-relay")
    fake = asyncio.run(scenario())
    assert fake.count("delete") == 2
    assert not [line for line in _relay_lines(caplog) if "reconnecting" in line or "trying" in line]


# issue 13 item 8 ----------------------------------------------------------------------------------
def test_announced_relay_behind_a_tls_proxy_is_refused_and_logged(caplog):
    """A BosonServer behind a TLS proxy announces RELAY_HOST:RELAY_PORT (default localhost:3000)."""
    async def scenario():
        daemon = connector.Daemon(_config(["https://relay.example.net"]))
        for _ in range(3):
            daemon.discover(daemon.links[0], [{"host": "localhost", "port": 3000, "protocol": "websocket"},
                                              {"host": "relay.example.net", "port": 3000, "protocol": "websocket"}])
        return daemon
    daemon = asyncio.run(scenario())
    assert [link.relay.name for link in daemon.links] == ["relay.example.net:443"]
    lines = [line for line in _relay_lines(caplog) if "announced by" in line]
    assert len(lines) == 2 and "loopback" in lines[0] and "port 3000 differs" in lines[1]
