"""Fixtures of the action plugins' tests."""

from __future__ import annotations

import pytest
from ansible.plugins.action import ActionBase


@pytest.fixture
def no_base_run(monkeypatch):
    """ActionBase.run without its connection work (temporary directories, check-mode support checks)."""
    monkeypatch.setattr(ActionBase, "run", lambda self, tmp=None, task_vars=None: {})
