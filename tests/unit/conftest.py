"""Make the repository importable as ``ansible_collections.higgs.vpn``.

The repository root is the collection root; the unit tests import plugins by
their collection path exactly as Ansible does, through a symlinked tree under
pytest's temporary directory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collection_tree() -> Path:
    base = Path(tempfile.mkdtemp(prefix="higgs-coll-"))
    target = base / "ansible_collections" / "higgs"
    target.mkdir(parents=True)
    os.symlink(ROOT, target / "vpn")
    return base


_BASE = _collection_tree()
sys.path.insert(0, str(_BASE))
