"""Counts the remote module executions (round trips) of a run, per host and per task.

Used only by benchmarks/site.py (ANSIBLE_CALLBACK_PLUGINS=benchmarks/callback,
ANSIBLE_CALLBACKS_ENABLED=round_trips). A task result counts once per host, a
loop once per item that ran; skipped ones, and the actions that only run on the
controller (set_fact, assert, include_*, ...), do not count, nor do tasks
delegated to the controller, nor the results the collection's actions answered
on the controller (on_controller: files, program and nat_facts with what the
node's probe read). At the end of the run it writes
{"hosts": {host: {"total": n, "changed": n, "tasks": {task: n}}}} as JSON to the
file named by HIGGS_ROUND_TRIPS_FILE.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: round_trips
type: aggregate
short_description: counts the remote module executions per host and task
description:
  - Writes the counts as JSON to the file named by HIGGS_ROUND_TRIPS_FILE.
"""

CONTROLLER_ONLY = frozenset({
    "set_fact", "assert", "debug", "fail", "meta", "include_tasks", "include_role",
    "import_tasks", "import_role", "include_vars", "validate_argument_spec", "add_host",
    "group_by", "set_stats", "pause", "end_play", "end_host", "end_batch",
})
LOCAL = frozenset({"localhost", "127.0.0.1", "::1"})


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "round_trips"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, Counter] = {}
        self.changed: Counter = Counter()

    @staticmethod
    def _remote(result) -> bool:
        action = result._task.action.rsplit(".", 1)[-1]
        if action in CONTROLLER_ONLY or result._result.get("on_controller") is True:
            return False
        delegated = result._result.get("_ansible_delegated_vars") or {}
        if delegated.get("ansible_connection") == "local":
            return False
        return delegated.get("ansible_host", delegated.get("ansible_delegated_host")) not in LOCAL

    def _count(self, result, item: bool) -> None:
        if not item and (result._task.loop is not None or result._task.loop_with):
            return  # a loop: its items were counted one by one
        if not self._remote(result):
            return
        host = result._host.get_name()
        self.tasks.setdefault(host, Counter())[result._task.get_name()] += 1
        if result._result.get("changed"):
            self.changed[host] += 1

    def v2_runner_on_ok(self, result) -> None:
        self._count(result, item=False)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._count(result, item=False)

    def v2_runner_item_on_ok(self, result) -> None:
        self._count(result, item=True)

    def v2_runner_item_on_failed(self, result) -> None:
        self._count(result, item=True)

    def v2_playbook_on_stats(self, stats) -> None:
        path = os.environ.get("HIGGS_ROUND_TRIPS_FILE")
        if not path:
            return
        hosts = {host: {"total": sum(tasks.values()), "changed": self.changed[host], "tasks": dict(tasks)}
                 for host, tasks in self.tasks.items()}
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"hosts": hosts}, out, indent=1)
