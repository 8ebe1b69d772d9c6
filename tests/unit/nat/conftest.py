"""Put the NAT traversal agent (roles/nat_traversal/files) on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PATH = ROOT / "roles" / "nat_traversal" / "files"
if str(PATH) not in sys.path:
    sys.path.insert(0, str(PATH))
