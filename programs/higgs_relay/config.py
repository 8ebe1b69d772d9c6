"""Connector configuration: a JSON file, checked completely before anything starts.

Every problem is reported at once, each naming the key and the fix; the
daemon then exits with EX_CONFIG (78), which its unit does not restart.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

EX_CONFIG = 78
EX_UNAVAILABLE = 69
NAT_TYPES = ("FullCone", "RestrictedCone", "PortRestricted", "Symmetric")


class ConfigError(ValueError):
    """Bad configuration; ``problems`` lists every finding."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Relay:
    name: str          # host:port, used as the metrics label
    api: str           # http(s)://host:port/base  (REST base)
    ws: str            # ws(s)://host:port/base     (WebSocket base)
    tls: bool


@dataclass
class Config:
    node_id: str
    relays: list
    relay_mode: str = "failover"
    token_file: str = ""
    token: str = ""
    ca_file: str = ""
    # natType / stunMappedAddress measured by the nat_traversal role's agent (read at each registration)
    nat_state_file: str = ""
    wireguard_host: str = "127.0.0.1"
    wireguard_port: int = 51820
    public_key: str = ""
    network: dict = field(default_factory=dict)
    capabilities: dict = field(default_factory=dict)
    location: dict = field(default_factory=dict)
    heartbeat_interval: float = 30.0
    metrics_interval: float = 60.0
    # the reference answers heartbeats 200 for a node it forgot: only registering again brings it back
    reregister_interval: float = 60.0
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    connect_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    stable_after: float = 10.0
    batch: bool = True
    batch_max_count: int = 32
    batch_max_bytes: int = 16384
    queue_size: int = 2048
    max_sessions: int = 256
    session_idle: float = 180.0
    socket_buffer: int = 1 << 20
    write_buffer: int = 256 << 10
    burst: int = 64
    discover_relays: bool = True
    listen: str = "127.0.0.1:9477"
    uvloop: bool = True
    log_level: str = "info"


_URL_TEXT = re.compile(r"[!-~]+")   # printable ASCII, no space, no control character
_PATH = re.compile(r"(/[A-Za-z0-9._~/-]*)?")


def parse_relay(url: str) -> Relay:
    """A relay base URL: http(s):// (REST; WebSocket on the same port) or ws(s)://.

    The whole text must be printable ASCII without spaces: urlsplit() silently
    drops tabs and newlines, so they are refused here before it sees them.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("is empty")
    if not _URL_TEXT.fullmatch(url):
        raise ValueError("contains spaces, control or non-ASCII characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise ValueError("must start with http://, https://, ws:// or wss://")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.query or parts.fragment or parts.username or parts.password or "?" in url or "#" in url:
        raise ValueError("must not carry a query, fragment or credentials")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    host = parts.hostname
    if not _HOSTNAME.fullmatch(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("has an invalid host name") from None
    if not _PATH.fullmatch(parts.path):
        raise ValueError("has a path with characters other than letters, digits and ._~/-")
    tls = scheme in ("https", "wss")
    port = port or (443 if tls else 80)
    netloc = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    base = parts.path.rstrip("/")
    return Relay(name=netloc, api="%s://%s%s" % ("https" if tls else "http", netloc, base),
                 ws="%s://%s%s" % ("wss" if tls else "ws", netloc, base), tls=tls)


MAX_DISCOVERED = 8          # relays learnt from registration answers, in all
_ANNOUNCED_SCANNED = 64     # entries of one answer looked at
# used with fullmatch(): "$" would accept a trailing newline
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def announced_relays(entries, announcer: Relay, limit: int = MAX_DISCOVERED, refused=None) -> list:
    """Relays of a registration answer's ``relayServers``, reached like ``announcer``.

    The answer comes from a relay, which is not trusted: only entries
    ``{"host": name or IP, "port": 1..65535, "protocol": "websocket"}`` count,
    at most ``limit`` of them, taken from the first 64 entries; anything else
    is skipped.  Each is reached with the scheme and base path of the relay
    that announced it.  Addresses a relay has no business sending a node to
    (unspecified, multicast, link-local, reserved; loopback unless the
    announcer itself is on loopback) are skipped too, and so is a port other
    than the announcer's when the announcer is reached over TLS: a BosonServer
    behind a TLS proxy announces its own plain RELAY_HOST:RELAY_PORT
    (default localhost:3000), which with the announcer's https scheme would be
    https://host:3000.  Well-formed entries skipped for a reason are appended
    to ``refused`` as (host:port, reason) when a list is given.
    """
    if not isinstance(entries, list):
        return []
    base = urlsplit(announcer.api)
    announcer_loopback = _is_loopback(base.hostname)
    refused = [] if refused is None else refused
    found = []
    for entry in entries[:_ANNOUNCED_SCANNED]:
        if len(found) >= limit:
            break
        if not isinstance(entry, dict) or entry.get("protocol") != "websocket":
            continue
        host, port = entry.get("host"), entry.get("port")
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            continue
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                continue
            if _is_loopback(host) and not announcer_loopback:
                refused.append(("%s:%d" % (host, port), "a loopback name, announced by a relay elsewhere"))
                continue
        else:
            if (address.is_unspecified or address.is_multicast or address.is_link_local or address.is_reserved
                    or (address.is_loopback and not announcer_loopback)):
                refused.append(("%s:%d" % (host, port), "an address a relay has no business sending a node to"))
                continue
            host = "[%s]" % address if address.version == 6 else str(address)
        if announcer.tls and port != base.port:
            refused.append(("%s:%d" % (host, port), "port %d differs from the port %d of the TLS relay that announced"
                            " it (a relay behind a TLS proxy announces its plain port)" % (port, base.port)))
            continue
        relay = parse_relay("%s://%s:%d%s" % (base.scheme, host, port, base.path))
        if all(relay.name != known.name for known in found):
            found.append(relay)
    return found


def _is_loopback(host) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        name = str(host).rstrip(".").lower()
        return name == "localhost" or name.endswith(".localhost")


def _number(raw, key, problems, low, high, kind=float):
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        problems.append("%s must be a%s number, not %r" % (key, "n integer" if kind is int else "", value))
        return None
    if not low <= value <= high:   # NaN fails this too
        problems.append("%s must be between %s and %s, not %s" % (key, low, high, value))
        return None
    return kind(value)


NUMBERS = {
    # key: (low, high, type)
    "wireguard_port": (1, 65535, int),
    # the BosonServer refuses a registration whose heartbeatInterval is outside 10..300
    "heartbeat_interval": (10, 300, float),
    "metrics_interval": (5, 3600, float),
    "reregister_interval": (60, 86400, float),
    "ping_interval": (1, 300, float),
    "ping_timeout": (1, 300, float),
    "connect_timeout": (1, 120, float),
    "backoff_base": (0.05, 60, float),
    "backoff_cap": (0.1, 3600, float),
    "stable_after": (0, 3600, float),
    "batch_max_count": (1, 99, int),
    "batch_max_bytes": (1500, 1 << 20, int),
    "queue_size": (16, 1 << 20, int),
    "max_sessions": (1, 65536, int),
    "session_idle": (10, 86400, float),
    "socket_buffer": (1 << 16, 64 << 20, int),
    "write_buffer": (1 << 14, 64 << 20, int),
    "burst": (1, 4096, int),
}
STRINGS = ("node_id", "relay_mode", "token_file", "ca_file", "nat_state_file", "wireguard_host", "public_key",
           "listen", "log_level")
BOOLEANS = ("batch", "discover_relays", "uvloop")
KNOWN = set(NUMBERS) | set(STRINGS) | set(BOOLEANS) | {"relays", "network", "capabilities", "location"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_REGION = re.compile(r"[^\x00-\x1f\x7f]{0,64}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_in(low, high):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return "must be an integer from %d to %d, not %r" % (low, high, value)
        return None
    return check


def _number_at_least(low):
    def check(value):
        if not _is_number(value) or value < low:
            return "must be a number of at least %s, not %r" % (low, value)
        return None
    return check


def _boolean(value):
    return None if isinstance(value, bool) else "must be true or false, not %r" % (value,)


def _address(version):
    def check(value):
        if value is None:
            return None
        try:
            if not isinstance(value, str) or ipaddress.ip_address(value).version != version:
                raise ValueError
        except ValueError:
            return "must be an IPv%d address or null, not %r" % (version, value)
        return None
    return check


def _nat_type(value):
    return None if value in NAT_TYPES else "must be one of %s, not %r" % (", ".join(NAT_TYPES), value)


def _mapped_address(value):
    if value is None:
        return None
    try:
        _split_hostport(value)
    except ValueError:
        return "must be the STUN-mapped ip:port or null, not %r" % (value,)
    return None


def _country(value):
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value):
        return None
    return "must be a two-letter country code (e.g. DE), not %r" % (value,)


def _region(value):
    if isinstance(value, str) and _REGION.fullmatch(value):
        return None
    return "must be text of at most 64 characters without control characters, not %r" % (value,)


def _coordinates(value):
    if value is None:
        return None
    if (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
            and -90 <= value[0] <= 90 and -180 <= value[1] <= 180):
        return None
    return "must be [latitude, longitude] (two numbers) or null, not %r" % (value,)


# nested objects: field -> check(value), which returns a problem or None
OBJECTS = {
    "network": {
        "ipv4": _address(4), "ipv6": _address(6), "nat_type": _nat_type,
        "stun_mapped_address": _mapped_address, "local_port": _int_in(1, 65535),
    },
    "capabilities": {
        "max_connections": _int_in(1, 1 << 20), "bandwidth_up": _number_at_least(0),
        "bandwidth_down": _number_at_least(0), "routing": _boolean, "natting": _boolean,
    },
    "location": {"country": _country, "region": _region, "coordinates": _coordinates},
}


def _objects(raw, problems) -> dict:
    """The nested objects, each field checked for type and range (every problem listed)."""
    found = {}
    for name, fields in OBJECTS.items():
        value = raw.get(name)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append("%s must be an object with keys %s, not %r" % (name, ", ".join(fields), value))
            value = {}
        unknown = sorted(str(k) for k in set(value) - set(fields))
        if unknown:
            problems.append("%s has unknown keys %s (known: %s)" % (name, ", ".join(unknown), ", ".join(fields)))
        for key, check in fields.items():
            if key in value:
                problem = check(value[key])
                if problem:
                    problems.append("%s.%s %s" % (name, key, problem))
        found[name] = value
    return found


def validate(raw) -> Config:
    """A Config from a decoded JSON object, or ConfigError with every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a JSON object"])
    problems = []
    unknown = sorted(str(k) for k in set(raw) - KNOWN)
    if unknown:
        problems.append("unknown keys %s (check the spelling)" % ", ".join(unknown))
    for key in STRINGS:
        if key in raw and not isinstance(raw[key], str):
            problems.append("%s must be a string, not %r" % (key, raw[key]))
    text = {key: raw[key] if isinstance(raw.get(key), str) else "" for key in STRINGS}

    node_id = text["node_id"]
    if not _UUID.fullmatch(node_id.lower()):
        problems.append("node_id %r is not a UUID (8-4-4-4-12 hex digits, e.g. from `uuidgen`)"
                        % (raw.get("node_id"),))
    node_id = node_id.lower()

    relays = []
    given = raw.get("relays")
    if not isinstance(given, list) or not given:
        problems.append("relays must be a non-empty list of relay URLs such as https://relay.example.net")
        given = []
    for index, url in enumerate(given):
        try:
            relays.append(parse_relay(url))
        except ValueError as exc:
            problems.append("relays[%d] %r is not a valid relay URL: it %s" % (index, url, exc))
    names = [r.name for r in relays]
    if len(set(names)) != len(names):
        problems.append("relays lists the same relay twice")

    mode = text["relay_mode"] if "relay_mode" in raw else "failover"
    if mode not in ("failover", "all"):
        problems.append("relay_mode must be failover or all, not %r" % (raw.get("relay_mode"),))

    values = {}
    for key, (low, high, kind) in NUMBERS.items():
        value = _number(raw, key, problems, low, high, kind)
        if value is not None:
            values[key] = value
    for key in BOOLEANS:
        if key in raw and not isinstance(raw[key], bool):
            problems.append("%s must be true or false, not %r" % (key, raw[key]))
        elif key in raw:
            values[key] = raw[key]

    token = ""
    token_file = text["token_file"]
    if token_file:
        token_file = os.path.expandvars(token_file)
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
            if not token:
                problems.append("token_file %s is empty" % token_file)
            elif not _URL_TEXT.fullmatch(token):
                problems.append("token_file %s holds spaces or control characters; a bearer token cannot"
                                % token_file)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append("token_file %s cannot be read (%s); create it or remove token_file"
                            % (token_file, getattr(exc, "strerror", None) or exc))
    ca_file = text["ca_file"]
    if ca_file and not os.path.isfile(ca_file):
        problems.append("ca_file %s does not exist; give a PEM bundle or leave it empty for the system CAs" % ca_file)

    nat_state_file = text["nat_state_file"]
    if nat_state_file and not nat_state_file.startswith("/"):
        problems.append("nat_state_file %r must be an absolute path (or empty)" % nat_state_file)

    public_key = text["public_key"]
    try:
        if len(base64.b64decode(public_key, validate=True)) != 32 or len(public_key) != 44:
            raise ValueError
    except (ValueError, binascii.Error):
        problems.append("public_key %s is not a WireGuard public key (44 characters of base64, see `wg pubkey`);"
                        " the relay refuses a registration without one"
                        % ("is missing, so it" if not public_key else repr(public_key)))

    host = text["wireguard_host"] if "wireguard_host" in raw else "127.0.0.1"
    try:
        if not ipaddress.ip_address(host).is_loopback:
            problems.append("wireguard_host %s is not a loopback address; the connector only talks to a local WireGuard"
                            % host)
    except ValueError:
        problems.append("wireguard_host %r is not an IP address" % (raw.get("wireguard_host"),))

    listen = text["listen"] if "listen" in raw else "127.0.0.1:9477"
    if listen:
        try:
            _split_hostport(listen)
        except ValueError:
            problems.append("listen %r must be address:port, e.g. 127.0.0.1:9477 (or empty to disable)" % (listen,))

    objects = _objects(raw, problems)
    level = text["log_level"] if "log_level" in raw else "info"
    if level not in ("debug", "info", "warning", "error"):
        problems.append("log_level must be debug, info, warning or error")
    if values.get("backoff_cap", 30.0) < values.get("backoff_base", 0.5):
        problems.append("backoff_cap must not be below backoff_base")

    if problems:
        raise ConfigError(problems)
    return Config(node_id=node_id, relays=relays, relay_mode=mode, token_file=token_file, token=token,
                  ca_file=ca_file, nat_state_file=nat_state_file,
                  wireguard_host=host, public_key=public_key, listen=listen, log_level=level,
                  **objects, **values)


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        raise ConfigError(["configuration file %s cannot be read: %s" % (path, exc.strerror or exc)]) from None
    except ValueError as exc:
        raise ConfigError(["configuration file %s is not valid JSON: %s" % (path, exc)]) from None
    return validate(raw)


def _split_hostport(text):
    if not isinstance(text, str):
        raise ValueError(text)
    host, sep, port = text.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ValueError(text)
    host = host.strip("[]")
    ipaddress.ip_address(host)
    return host, int(port)


split_hostport = _split_hostport
