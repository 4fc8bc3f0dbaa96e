"""Task states and the transitions the API allows."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    OPEN = "open"
    DONE = "done"
    CANCELLED = "cancelled"


class TaskCommand(StrEnum):
    ASSIGN = "assign"
    COMPLETE = "complete"
    CANCEL = "cancel"


# What a command did, as the API's errors and the CRM push's `task_event` name it.
DONE = {TaskCommand.ASSIGN: "assigned", TaskCommand.COMPLETE: "completed",
        TaskCommand.CANCEL: "cancelled"}  # fmt: skip


def next_status(current: TaskStatus, command: TaskCommand) -> TaskStatus | None:
    """The status after `command`, or None when the transition is not allowed."""
    match (current, command):
        case (TaskStatus.OPEN, TaskCommand.ASSIGN):
            return TaskStatus.OPEN
        case (TaskStatus.OPEN, TaskCommand.COMPLETE):
            return TaskStatus.DONE
        case (TaskStatus.OPEN, TaskCommand.CANCEL):
            return TaskStatus.CANCELLED
    return None
