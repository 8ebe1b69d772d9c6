# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd unit files checked by ``systemd-analyze verify`` before they are written.

systemd ignores a unit line it cannot parse (an unknown key, a bad value, a line
broken by a newline in a variable) with a warning in the journal and starts the
service without it. :func:`refusal` verifies a unit or drop-in in a temporary
search directory first, so that a module can fail with the warnings instead.
Used by the modules ``unit_file`` (one unit) and ``files`` (a part's files and
units in one call).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

UNIT_TYPES = ("service", "socket", "device", "mount", "automount", "swap", "target", "path", "timer",
              "slice", "scope")
UNIT_RE = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.(%s)" % "|".join(UNIT_TYPES))
DROPIN_RE = re.compile(r"[A-Za-z0-9:_.\\@-]+\.conf")


def layout(dest):
    """(unit to verify, path of the file relative to the search directory) or raise ValueError."""
    name = os.path.basename(dest)
    parent = os.path.basename(os.path.dirname(dest))
    if UNIT_RE.fullmatch(name):
        unit = name
        relative = name
    elif DROPIN_RE.fullmatch(name) and parent.endswith(".d") and UNIT_RE.fullmatch(parent[:-2]):
        unit = parent[:-2]
        relative = os.path.join(parent, name)
    else:
        raise ValueError("%s is neither a unit file (<name>.service, .timer, ...) nor a drop-in "
                         "(<unit>.d/<name>.conf)" % dest)
    if "@." in unit:  # a template is verified through an instance of it
        unit = unit.replace("@.", "@verify.", 1)
    return unit, relative


def verify(module, unit, relative, content):
    """Lines of systemd-analyze about the file, and the failure (rc, out, err) if it failed."""
    analyze = module.get_bin_path("systemd-analyze", required=True)
    tmp = tempfile.mkdtemp(prefix="higgs-unit-")
    try:
        path = os.path.join(tmp, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)
        # the trailing ':' keeps the system's unit directories after ours
        env = dict(SYSTEMD_UNIT_PATH=tmp + ":", SYSTEMD_LOG_COLOR="0", LANG="C", LC_ALL="C")
        rc, out, err = module.run_command([analyze, "verify", "--man=no", "--recursive-errors=no", unit],
                                          environ_update=env)
        ours = [line.replace(tmp + os.sep, "") for line in (out + err).splitlines() if path in line]
        return ours, (rc, out.replace(tmp + os.sep, ""), err.replace(tmp + os.sep, ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refusal(module, unit, relative, content):
    """None when systemd-analyze accepts the file, else (message, warnings, rc, out, err)."""
    ours, (rc, out, err) = verify(module, unit, relative, content)
    if not ours and rc == 0:
        return None
    return "; ".join(ours) or (err or out).strip(), ours, rc, out, err
