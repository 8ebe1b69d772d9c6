# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a file is on the node, read once per run, and whether a wanted file is that already.

The node role's probe (module ``host_probe``, option ``stats``) reads :func:`stat` of every file
its parts manage, in the one call it makes anyway. The actions of ``files`` and ``program`` then
compare what a task wants with that record on the controller (:func:`entry_satisfied`,
:func:`program_satisfied`): when everything is as wanted there is no round trip, otherwise the
module does the work as without the record. Anything the record cannot answer for sure (no
record of the path, a symbolic mode, a file too large to hash) counts as not as wanted.

A record holds no contents, only a digest. With a key (the node makes one per run and keeps it out
of the logs), the digest is an HMAC-SHA256, so that the digest of a secret file (a relay token) in
a logged probe result cannot be checked against guesses.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import os
import pwd
import re
import stat as st

# a file larger than this is not hashed (nothing the parts manage comes near it)
MAX_HASH = 64 << 20
OCTAL_MODE = re.compile(r"0?[0-7]{3,4}")


def _name(lookup, ident):
    try:
        return lookup(ident)[0]
    except KeyError:
        return None


def hasher(key=None):
    """A SHA-256 hash object, or an HMAC-SHA256 one with ``key``."""
    return hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256) if key else hashlib.sha256()


def digest(data, key=None):
    sha = hasher(key)
    sha.update(data)
    return sha.hexdigest()


def stat(path, key=None):
    """The record of ``path`` (not following a last symbolic link), or None when nothing is there.

    ``type`` (file, directory, link or other), ``mode`` (four octal digits), ``uid``, ``gid``,
    ``owner`` and ``group`` (names, None when unknown); a file's ``sha256`` (of its contents, an
    HMAC-SHA256 with ``key``; None above :data:`MAX_HASH` bytes), a link's ``src``.
    """
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    record = {"mode": "%04o" % st.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid,
              "owner": _name(pwd.getpwuid, info.st_uid), "group": _name(grp.getgrgid, info.st_gid)}
    if st.S_ISLNK(info.st_mode):
        record.update(type="link", src=os.readlink(path))
    elif st.S_ISDIR(info.st_mode):
        record["type"] = "directory"
    elif st.S_ISREG(info.st_mode):
        hexdigest = None
        if info.st_size <= MAX_HASH:
            sha = hasher(key)
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            hexdigest = sha.hexdigest()
        record.update(type="file", sha256=hexdigest)
    else:
        record["type"] = "other"
    return record


def wanted_mode(mode):
    """The permission bits ``mode`` asks for, None for any, False when only the module can tell."""
    if mode is None:
        return None
    if isinstance(mode, int) and not isinstance(mode, bool):
        return mode  # a YAML 0644 read as an integer, which the file modules take as these bits
    if isinstance(mode, str) and OCTAL_MODE.fullmatch(mode):
        return int(mode, 8)
    return False


def attributes_satisfied(record, owner, group, mode):
    bits = wanted_mode(mode)
    if bits is False or (bits is not None and bits != int(record["mode"], 8)):
        return False
    if owner is not None and str(owner) not in (record["owner"], str(record["uid"])):
        return False
    return group is None or str(group) in (record["group"], str(record["gid"]))


def entry_satisfied(entry, records, key=None):
    """Whether the ``files`` entry (as given, before defaults) is as wanted by ``records`` (read with ``key``)."""
    if not isinstance(entry, dict):
        return False
    path = entry.get("path")
    if not isinstance(path, str) or not os.path.isabs(path) or path not in records:
        return False
    record = records[path]
    state = entry.get("state") or "file"
    if state == "absent":
        return record is None
    if not isinstance(record, dict):
        return False
    if state == "link":
        return record.get("type") == "link" and record.get("src") == entry.get("src")
    if state == "directory":
        kind = record.get("type") == "directory"
    elif state == "file":
        content = entry.get("content")
        kind = (isinstance(content, str) and record.get("type") == "file" and isinstance(record.get("sha256"), str)
                and hmac.compare_digest(record["sha256"], digest(content.encode("utf-8"), key)))
    else:
        return False
    try:
        return kind and attributes_satisfied(record, entry.get("owner"), entry.get("group"), entry.get("mode"))
    except (KeyError, TypeError, ValueError):
        return False


def program_satisfied(record, data, owner, group, mode, key=None):
    """Whether ``record`` (read with ``key``) is a regular file holding ``data`` with those attributes."""
    if not isinstance(record, dict) or record.get("type") != "file" or not isinstance(record.get("sha256"), str):
        return False
    try:
        return (hmac.compare_digest(record["sha256"], digest(data, key))
                and attributes_satisfied(record, owner, group, mode))
    except (KeyError, TypeError, ValueError):
        return False
