"""The fake NAT gateway the NAT-PMP and PCP client tests share.

A router on loopback that records each request and, unless ``silent``, hands it to the test module's
``respond(gateway, request, source)``: that sends the answers, junk and answers to other requests first,
from ``gateway.sock`` (the router's port) and ``gateway.stranger`` (another sender).  A test module names
its protocol module (whose ``PORT`` is pointed at the fake) and ``respond`` in a ``protocol`` fixture;
indirect parameters of ``gateway`` are the fake's options (``result``, ``silent``, and any the module's
``respond`` reads).
"""

from __future__ import annotations

import socket
import threading

import pytest


class FakeGateway:
    def __init__(self, respond, result=0, silent=False, **options):
        self.respond, self.result, self.silent, self.options = respond, result, silent, options
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.stranger.bind(("127.0.0.1", 0))
        self.requests = []
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        self.sock.settimeout(0.05)
        while not self.stop:
            try:
                data, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.requests.append(data)
            if not self.silent:
                self.respond(self, data, source)

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()
        self.stranger.close()


@pytest.fixture
def gateway(monkeypatch, request, protocol):
    module, respond = protocol
    fake = FakeGateway(respond, **getattr(request, "param", {}))
    monkeypatch.setattr(module, "PORT", fake.port)
    yield fake
    fake.close()
