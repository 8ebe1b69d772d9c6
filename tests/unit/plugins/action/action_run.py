"""The collection's action plugins run with the remote side replaced by a recorder (for their tests)."""

from __future__ import annotations

from types import SimpleNamespace


def recording(action_class, remote):
    """A subclass of ``action_class`` whose module runs are recorded in ``executed`` and answer ``remote``."""

    class Action(action_class):
        def __init__(self, args, diff=False):  # no super().__init__: nothing of a real connection is used
            self._task = SimpleNamespace(args=args, diff=diff)
            self.executed = []

        def _execute_module(self, module_name=None, module_args=None, task_vars=None, **kwargs):
            self.executed.append((module_name, module_args))
            return dict(remote)

    return Action
