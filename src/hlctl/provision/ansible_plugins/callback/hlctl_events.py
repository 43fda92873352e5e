"""Ansible callback that writes one JSON line per task result to hlctl's event pipe.

Loaded by ``ansible-playbook`` (not by hlctl): hlctl sets ANSIBLE_CALLBACK_PLUGINS to this
directory, enables ``hlctl_events`` and passes the pipe's file descriptor in
``HLCTL_EVENTS_FD``. Results of ``no_log`` tasks are reported without their content.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: hlctl_events
    type: notification
    short_description: JSON lines of task results for hlctl's progress display
    description:
      - Writes one JSON object per task result, and the play recap, to the file
        descriptor in the HLCTL_EVENTS_FD environment variable.
    requirements:
      - enabled in callbacks_enabled (hlctl does this)
"""

_HIDDEN = "output hidden by no_log"


# Ansible wraps an exception from a filter in three layers of "failed:"; the last is ours.
_FILTER_FAILED = re.compile(r"The filter plugin '[^']+' failed: (.*)$", re.S)


def _message(result: dict[str, Any]) -> str:
    if result.get("_ansible_no_log"):
        return _HIDDEN
    msg = result.get("msg") or result.get("stderr") or result.get("reason") or ""
    match = _FILTER_FAILED.search(str(msg))
    if match:
        return match.group(1).strip()
    if not msg and isinstance(result.get("results"), list):  # a loop: the first failed item
        for item in result["results"]:
            if isinstance(item, dict) and item.get("failed"):
                return _HIDDEN if item.get("_ansible_no_log") else str(item.get("msg", ""))
    return str(msg)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "hlctl_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fd = os.environ.get("HLCTL_EVENTS_FD", "")
        self._fd = int(fd) if fd.isdigit() else None

    def _emit(self, event: dict[str, Any]) -> None:
        if self._fd is None:
            return
        event["t"] = time.time()
        try:
            os.write(self._fd, (json.dumps(event, default=str) + "\n").encode())
        except OSError:
            self._fd = None  # hlctl went away; Ansible carries on

    def _result(self, status: str, result: Any, **extra: Any) -> None:
        task = result._task
        self._emit({"event": "result", "status": status, "host": result._host.get_name(),
                    "task": task.get_name(), "role": getattr(task._role, "_role_name", None),
                    "msg": _message(result._result) if status in ("failed", "unreachable")
                    else "", **extra})

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._emit({"event": "play", "name": play.get_name()})

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._emit({"event": "task", "task": task.get_name()})

    def v2_runner_on_ok(self, result: Any) -> None:
        if result._task.action in ("include_tasks", "ansible.builtin.include_tasks",
                                   "include_role", "ansible.builtin.include_role"):
            return
        self._result("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("failed", result, ignored=ignore_errors)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("unreachable", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result("skipped", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._emit({"event": "stats", "hosts": {
            host: stats.summarize(host) for host in sorted(stats.processed)}})
