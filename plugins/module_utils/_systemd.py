# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state of systemd units from ``systemctl show``, and whether a running unit is older than its files.

Shared by the modules ``service_state``, ``stale_service`` and ``host_probe``
(which reads the units of a node's parts once, so that the action of
``service_state`` can answer on the controller when nothing is to be done).
``stale_service`` decides itself which active states count as running (it
does not count ``activating``).
"""

from __future__ import annotations

import os
import time

from ansible.module_utils.parsing.convert_bool import boolean


def started_at(state):
    """Wall-clock time the unit entered the active state (systemd keeps it on CLOCK_MONOTONIC)."""
    since_boot = int(state.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    return time.time() - time.monotonic() + since_boot


def stale_paths(paths, state):
    """The ones of ``paths`` changed after the unit of ``state`` (``systemctl show`` properties) started."""
    since = started_at(state)
    return [p for p in paths if os.path.exists(p) and os.path.getmtime(p) > since]


PROPERTIES = ("Id", "UnitFileState", "ActiveState", "ActiveEnterTimestampMonotonic", "NeedDaemonReload")
# what `systemctl is-enabled` answers with exit status 0
ENABLED = frozenset({"enabled", "enabled-runtime", "static", "alias", "indirect", "generated"})
ACTIVE = frozenset({"active", "reloading", "activating"})


def show(module, systemctl, names):
    """The properties of every unit, in the order of ``names`` (one systemctl call)."""
    rc, out, err = module.run_command([systemctl, "show", "--property", ",".join(PROPERTIES), "--", *names],
                                      environ_update={"LANG": "C"})
    if rc:
        module.fail_json(msg="systemctl show %s failed: %s" % (" ".join(names), err.strip()),
                         rc=rc, stdout=out, stderr=err)
    states = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in out.strip().split("\n\n")]
    if len(states) != len(names):
        module.fail_json(msg="systemctl show answered for %d units, not %d" % (len(states), len(names)),
                         stdout=out)
    return states


def plan(units, states):
    """(enable, start, restart with their stale paths) for the units as they are."""
    enable, start, stale = [], [], {}
    for unit, state in zip(units, states):
        name = unit["name"]
        if unit["enabled"] and state.get("UnitFileState") not in ENABLED:
            enable.append(name)
        if state.get("ActiveState") not in ACTIVE:
            if unit["started"]:
                start.append(name)
            continue
        paths = stale_paths(unit["paths"], state)
        if paths:
            stale[name] = paths
    return enable, start, stale


def record(paths, state):
    """What the node's probe keeps of a unit whose files are ``paths``: what service_state would act on."""
    active = state.get("ActiveState") in ACTIVE
    return {"enabled": state.get("UnitFileState") in ENABLED, "active": active,
            "need_reload": state.get("NeedDaemonReload") == "yes", "paths": list(paths),
            "stale": stale_paths(paths, state) if active else []}


def _flag(value):
    """A unit's enabled or started as given (before the module's defaults, both true)."""
    return True if value is None else boolean(value, strict=False)


def satisfied(unit, records):
    """Whether a service_state unit (as given, before defaults) needs nothing, according to ``records``.

    Nothing to enable, start or restart, no reload, and the record was read for the same paths.
    """
    if not isinstance(unit, dict) or not isinstance(unit.get("name"), str) or not isinstance(records, dict):
        return False
    rec = records.get(unit["name"])
    paths = unit.get("paths") or []
    if not isinstance(rec, dict) or not isinstance(paths, list) or rec.get("paths") != paths:
        return False
    if rec.get("need_reload") is not False or (_flag(unit.get("enabled")) and rec.get("enabled") is not True):
        return False
    if rec.get("active") is not True:
        return not _flag(unit.get("started"))
    return rec.get("stale") == []
