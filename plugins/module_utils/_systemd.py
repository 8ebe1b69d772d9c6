# Copyright: Higgs.net node engineering
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a running unit is older than its files, from ``systemctl show``.

Shared by the modules ``service_state`` and ``stale_service``. Each decides
itself which active states count as running (``service_state`` counts
``activating`` too, ``stale_service`` does not).
"""

from __future__ import annotations

import os
import time


def started_at(state):
    """Wall-clock time the unit entered the active state (systemd keeps it on CLOCK_MONOTONIC)."""
    since_boot = int(state.get("ActiveEnterTimestampMonotonic") or 0) / 1e6
    return time.time() - time.monotonic() + since_boot


def stale_paths(paths, state):
    """The ones of ``paths`` changed after the unit of ``state`` (``systemctl show`` properties) started."""
    since = started_at(state)
    return [p for p in paths if os.path.exists(p) and os.path.getmtime(p) > since]
