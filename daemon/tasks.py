"""The arq tasks genrelay runs, by the names they have in the queue: the one home of those names.

Python code names a task through :class:`Task`; the Lua scripts that schedule one (``lib.lua``'s
``enqueue_submit`` and ``notify_app``) get the names as the locals of :func:`lua_names`, which
:mod:`daemon.scripts` puts before the prelude, so no ``.lua`` file spells a task's name.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Task", "lua_names"]


class Task(StrEnum):
    """A task of the arq queue (the ``f`` of its payload)."""

    ACCEPT = "accept_job"
    SUBMIT = "submit_job"
    DELIVER = "deliver_job"
    CANCEL_AT_PROVIDER = "cancel_at_provider"
    DISPATCH_WAITING = "dispatch_waiting"
    SYNC_CAPACITY = "sync_capacity"


# The tasks a Lua script schedules, under the local name the script uses.
_LUA_LOCALS = {"TASK_SUBMIT": Task.SUBMIT, "TASK_DELIVER": Task.DELIVER}


def lua_names() -> str:
    """Lua lines defining ``TASK_SUBMIT`` and ``TASK_DELIVER`` as the tasks' queue names."""
    return "".join(f"local {local} = '{task.value}'\n" for local, task in _LUA_LOCALS.items())
