# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WireGuard helpers shared by the wg_* modules and the wireguard filters.

Pure functions only (parsing ``wg show <iface> dump``, planning the ``wg set``
call that brings the live peers to the wanted set, rendering the peer file
read by ``wg addconf`` at boot, key checks): no commands and no work at import
time. Key material that passes through here is never put into a returned
structure except the public keys.

Why ``wg set`` and not ``wg syncconf``: a configuration file read by
``syncconf``/``setconf`` without ``PrivateKey``/``ListenPort`` resets them
(the key to none, the port to a random one), so a peers-only file cannot be
synced. One ``wg set`` call naming only the peers that differ changes nothing
else: sessions of untouched peers, the key and the port stay as they are.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

KEY_LEN = 32
# fullmatch: a "$" would accept a trailing newline
KEY_RE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
NONE = "(none)"
# Hidden stand-in for a preshared key in diffs and results.
SECRET = "<hidden>"


def key_error(text):
    """Why ``text`` is not a WireGuard key (44 characters of base64 for 32 bytes), or None."""
    if not isinstance(text, str) or not text:
        return "must be a non-empty string"
    if len(text) != 44:
        return "is %d characters long; a WireGuard key is 44 characters of base64 ending in '='" % len(text)
    if not KEY_RE.fullmatch(text):
        return "is not the base64 encoding of 32 bytes"
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return "is not valid base64"
    if len(raw) != KEY_LEN:  # pragma: no cover - excluded by KEY_RE
        return "does not decode to 32 bytes"
    return None


def normalize_allowed_ips(values):
    """Sorted network strings as the kernel stores them (host bits cleared)."""
    nets = {ipaddress.ip_network(str(v).strip(), strict=False) for v in values if str(v).strip()}
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n.network_address, n.prefixlen))]


def parse_dump(text):
    """Parse ``wg show <iface> dump`` into (interface, peers).

    interface: {public_key, listen_port, fwmark} -- the private key printed
    first is dropped here and never leaves this function.
    peers: {public_key: {preshared_key, endpoint, allowed_ips,
    persistent_keepalive, latest_handshake, transfer_rx, transfer_tx}}; the
    preshared key is kept only for comparison (callers hide it).
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise ValueError("unexpected interface line with %d fields" % len(head))
    interface = dict(
        public_key=None if head[1] == NONE else head[1],
        listen_port=int(head[2]) if head[2].isdigit() else 0,
        fwmark=None if head[3] == "off" else head[3],
    )
    peers = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 8:
            raise ValueError("unexpected peer line %d with %d fields" % (number, len(fields)))
        pub, psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
        peers[pub] = dict(
            preshared_key=None if psk == NONE else psk,
            endpoint=None if endpoint == NONE else endpoint,
            allowed_ips=[] if allowed == NONE else normalize_allowed_ips(allowed.split(",")),
            persistent_keepalive=0 if keepalive == "off" else int(keepalive),
            latest_handshake=int(handshake),
            transfer_rx=int(rx),
            transfer_tx=int(tx),
        )
    return interface, peers


def desired_peers(peers):
    """Map public key -> comparable peer from the module's ``peers`` option."""
    desired = {}
    for peer in peers:
        desired[peer["public_key"]] = dict(
            name=peer.get("name") or "",
            preshared_key=peer.get("preshared_key") or None,
            endpoint=peer.get("endpoint") or None,
            allowed_ips=normalize_allowed_ips(peer.get("allowed_ips") or []),
            persistent_keepalive=int(peer.get("persistent_keepalive") or 0),
        )
    return desired


def peer_differs(want, have):
    """True when the live peer ``have`` must be updated to match ``want``.

    The endpoint of a peer is compared only when one is wanted: a roaming
    client's endpoint is learned by the node and must not be reset.
    """
    if have is None:
        return True
    return (
        want["allowed_ips"] != have["allowed_ips"]
        or want["preshared_key"] != have["preshared_key"]
        or want["persistent_keepalive"] != have["persistent_keepalive"]
        or (want["endpoint"] is not None and want["endpoint"] != have["endpoint"])
    )


def plan(desired, live):
    """(added, updated, removed) public keys, each sorted."""
    added = sorted(k for k in desired if k not in live)
    removed = sorted(k for k in live if k not in desired)
    updated = sorted(k for k in desired if k in live and peer_differs(desired[k], live[k]))
    return added, updated, removed


def public_view(peers, names=None):
    """Peers keyed by public key without secrets, for diffs and results."""
    view = {}
    for key in sorted(peers):
        peer = peers[key]
        entry = dict(allowed_ips=list(peer["allowed_ips"]),
                     persistent_keepalive=peer["persistent_keepalive"],
                     preshared_key=SECRET if peer.get("preshared_key") else None)
        name = peer.get("name") or (names or {}).get(key)
        if name:
            entry["name"] = name
        if peer.get("endpoint") and "name" in peer:  # wanted endpoints only
            entry["endpoint"] = peer["endpoint"]
        view[key] = entry
    return view


def set_args(desired, live, psk_file):
    """Arguments after ``wg set <iface>`` that turn ``live`` into ``desired``.

    ``psk_file(public_key)`` returns the path of a file holding that peer's
    preshared key (the key itself never appears in an argument list). Every
    attribute of a changed peer is given, ``allowed-ips`` replacing the list.
    """
    added, updated, removed = plan(desired, live)
    args = []
    for key in removed:
        args += ["peer", key, "remove"]
    for key in sorted(added + updated):
        peer = desired[key]
        args += ["peer", key,
                 "preshared-key", psk_file(key) if peer["preshared_key"] else "/dev/null",
                 "persistent-keepalive", str(peer["persistent_keepalive"] or "off"),
                 "allowed-ips", ",".join(peer["allowed_ips"])]
        if peer["endpoint"]:
            args += ["endpoint", peer["endpoint"]]
    return args


def render_peers(desired):
    """The peer file read by ``wg addconf`` when the interface comes up.

    Sorted by name then key, so the same peers always give the same text.
    It holds no [Interface] keys: ``addconf`` then leaves the private key and
    listen port of the interface as they are.
    """
    lines = ["[Interface]"]
    for key in sorted(desired, key=lambda k: (desired[k]["name"], k)):
        peer = desired[key]
        lines.append("")
        if peer["name"]:
            lines.append("# %s" % peer["name"].replace("\n", " "))
        lines.append("[Peer]")
        lines.append("PublicKey = %s" % key)
        if peer["preshared_key"]:
            lines.append("PresharedKey = %s" % peer["preshared_key"])
        if peer["allowed_ips"]:
            lines.append("AllowedIPs = %s" % ", ".join(peer["allowed_ips"]))
        if peer["endpoint"]:
            lines.append("Endpoint = %s" % peer["endpoint"])
        lines.append("PersistentKeepalive = %s" % (peer["persistent_keepalive"] or "off"))
    return "\n".join(lines) + "\n"


def parse_peers_file(text):
    """Peers of a file written by render_peers (or any wg configuration), like desired_peers."""
    peers = {}
    current = None
    name = ""
    for raw in (text or "").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            name = line[1:].strip()
            continue
        if line.lower() == "[peer]":
            current = dict(name=name, preshared_key=None, endpoint=None, allowed_ips=[], persistent_keepalive=0)
            name = ""
            continue
        if line.startswith("["):
            current = None
            continue
        if current is None or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        key = key.lower()
        if key == "publickey":
            peers[value] = current
        elif key == "presharedkey":
            current["preshared_key"] = value
        elif key == "allowedips":
            current["allowed_ips"] = normalize_allowed_ips(value.split(","))
        elif key == "endpoint":
            current["endpoint"] = value
        elif key == "persistentkeepalive":
            current["persistent_keepalive"] = 0 if value == "off" else int(value)
    return peers
