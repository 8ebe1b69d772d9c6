"""Put the connector package (roles/relay_connector/files) and tools/ on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
for path in (ROOT / "roles" / "relay_connector" / "files", ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
