"""Run a module's ``main()`` in-process: ``exit_json``/``fail_json`` end the run with what the module returned."""

from __future__ import annotations

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args


class Done(Exception):
    """Raised by the patched ``exit_json``/``fail_json``; its argument is the result."""


def stop_at_exit(monkeypatch):
    """Make ``exit_json`` and ``fail_json`` raise :class:`Done` (a failure carries ``failed: True``)."""
    def exit_json(self, **kwargs):
        raise Done(kwargs)

    def fail_json(self, **kwargs):
        raise Done(dict(kwargs, failed=True))

    monkeypatch.setattr(AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(AnsibleModule, "fail_json", fail_json)


def run_main(module, args):
    """The result of ``module.main()`` called with ``args``."""
    with patch_module_args(args), pytest.raises(Done) as done:
        module.main()
    return done.value.args[0]
