"""The relay's REST control plane (register, heartbeat, metrics, unregister).

Calls are rare (seconds apart), so they use the standard library's
http.client in a worker thread rather than a second HTTP stack on the event
loop.  A non-2xx answer raises HttpError carrying the status and, for 429,
the Retry-After delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import ssl as _ssl
from urllib.parse import urlsplit

from . import backoff

USER_AGENT = "higgs-relay-connector"


class HttpError(Exception):
    def __init__(self, status, message, retry_after=None):
        super().__init__("HTTP %s: %s" % (status, message))
        self.status = status
        self.message = message
        self.retry_after = retry_after


def ssl_context(ca_file: str = ""):
    context = _ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = _ssl.TLSVersion.TLSv1_2
    return context


def _request(base, method, path, body, token, context, timeout):
    parts = urlsplit(base)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        conn.request(method, parts.path.rstrip("/") + path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read(1 << 20)
        status = response.status
        retry = response.getheader("Retry-After")
    finally:
        conn.close()
    if status == 429:
        raise HttpError(status, "rate limited", backoff.retry_after(retry))
    if not 200 <= status < 300:
        message = raw[:200].decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            message = str(json.loads(raw)["error"]["message"])[:500]
        raise HttpError(status, message)
    if not raw:
        return {}
    try:
        answer = json.loads(raw)
    except ValueError:
        raise HttpError(status, "answer is not JSON") from None
    return answer if isinstance(answer, dict) else {}


async def call(base, method, path, body=None, token="", context=None, timeout=10.0):
    """One REST call; OSError for transport problems, HttpError for HTTP ones."""
    return await asyncio.to_thread(_request, base, method, path, body, token, context, timeout)
