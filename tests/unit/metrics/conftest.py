"""Put the metrics collector (roles/metrics/files) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

FILES = Path(__file__).resolve().parents[3] / "roles" / "metrics" / "files"
if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
