"""The task, sequence and alert API (`/v1`): thin routes over `queries`."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from services.actions import queries
from services.actions.db import RequestDatabase
from services.actions.queries import RequeueFilter, TaskFilter, TransitionRefused
from services.actions.tasks import DONE, TaskCommand, TaskStatus
from shared.clock import Clock
from shared.contracts import ID_MAX_CHARS, EventTime
from shared.domain.playbook_model import Priority
from shared.http import (
    KEYED_NO_UNKNOWN_QUERY,
    PROBLEM_JSON,
    PROBLEM_RESPONSES,
    ProblemError,
    SourceDep,
    invalid_query,
)
from shared.logging import get_logger

log = get_logger(__name__)
MAX_ID = 2**63 - 1


def _digits_only(value: object) -> object:
    """A path's task id as written, digits only: int() also reads " 7", "+7", "7_0" and
    other scripts' digits, so one task answered to many paths."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("a task id is digits only")
    return value


TaskId = Annotated[
    int, BeforeValidator(_digits_only), Path(ge=1, le=MAX_ID, description="Task id.")
]
NO_NUL = r"^[^\x00]+$"  # Postgres text cannot hold NUL: refuse it as input (422, never a 500)
CustomerQuery = Annotated[str | None, Query(min_length=1, max_length=ID_MAX_CHARS, pattern=NO_NUL)]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such task", "content": {PROBLEM_JSON: {}}}
}
_CURSOR = re.compile(r"id:([0-9]{1,19})")
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "Transition not allowed", "content": {PROBLEM_JSON: {}}},
    412: {
        "description": "Changed since the version `If-Match` names",
        "content": {PROBLEM_JSON: {}},
    },
}
_ETAG = {"ETag": {"description": "The task's version, for `If-Match` on a PATCH.",
                  "schema": {"type": "string"}}}  # fmt: skip
IfMatch = Annotated[
    str | None,
    Header(max_length=1024, description="Change the task only if it is still this version"
           " (its `ETag`; `*`: any): another agent's change meanwhile is a 412."),
]  # fmt: skip
# A body that is not JSON at all is a 400 (shared/http.py), one over 64 KiB a 413 (BodyLimit).
_NOT_JSON: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not valid JSON", "content": {PROBLEM_JSON: {}}},
    413: {"description": "The body is over 64 KiB", "content": {PROBLEM_JSON: {}}},
}


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TaskOut(_Out):
    id: int
    customer_id: str
    tier_change_id: str
    playbook: str
    title: str
    queue: str
    assignee: str | None
    priority: Literal["low", "normal", "high", "urgent"]
    status: TaskStatus
    due_at: datetime
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    overdue: bool


class TaskPage(_Out):
    items: list[TaskOut]
    next_cursor: str | None


class StepOut(_Out):
    index: int
    name: str
    channel: str
    due_at: datetime
    status: Literal["scheduled", "sent", "cancelled", "failed"]
    sent_at: datetime | None
    attempts: int
    last_error: str | None


class EnrolmentOut(_Out):
    id: int
    customer_id: str
    sequence: str
    playbook: str
    tier_change_id: str
    status: Literal["active", "completed", "failed", "exited"]
    exit_reason: str | None
    enrolled_at: datetime
    ended_at: datetime | None
    steps: list[StepOut]


class EnrolmentPage(_Out):
    items: list[EnrolmentOut]
    next_cursor: str | None


class AlertOut(_Out):
    id: int
    customer_id: str
    tier_change_id: str | None
    playbook: str | None
    audience: str | None
    channel: str
    status: Literal["pending", "sent", "dead", "cancelled"]
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    idempotency_key: str


class AlertPage(_Out):
    items: list[AlertOut]
    next_cursor: str | None


def _visible(name: str) -> str:
    # A zero-width space is not whitespace to the strip, and assigned the task to nobody.
    if all(unicodedata.category(c)[0] in "CZ" for c in name):
        raise ValueError("needs a visible character, not only spaces or invisible ones")
    return name


class AssignTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["assign"]
    # Stripped: a blank name was stored as the assignee.
    assignee: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=NO_NUL),
        AfterValidator(_visible),
    ]


class CompleteTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["complete"]


class CancelTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["cancel"]


TaskPatch = Annotated[AssignTask | CompleteTask | CancelTask, Field(discriminator="action")]


class RequeueDead(BaseModel):
    """Which dead deliveries to send again, once their cause (a revoked webhook token, a
    rotated secret, an SMTP outage) is fixed."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["alert", "task"] = Field(
        description="Alerts, or task pushes to the CRM (sequence steps are not sent late)."
    )
    channel: Literal["webhook", "email", "log"] | None = Field(None, description="Only these.")
    # Text only, as event times: pydantic alone reads a number as Unix seconds.
    created_from: EventTime | None = Field(None, description="Created at or after this.")
    created_until: EventTime | None = Field(None, description="Created before this.")

    @field_validator("created_until")
    @classmethod
    def _after_from(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        since = info.data.get("created_from")
        if until is not None and since is not None and until <= since:
            # An empty window requeued nothing and answered 200, as if nothing were dead.
            raise ValueError("must be later than created_from")
        return until


class Requeued(_Out):
    requeued: int = Field(description="Dead deliveries put back to be sent.")


def encode_cursor(last_id: int) -> str:
    """An opaque cursor for the page after `last_id`."""
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id a cursor points after; 422 for anything we did not hand out."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    # Exactly what encode_cursor writes: int() also takes " 7", "+7", "7_0", Arabic digits.
    if (found := _CURSOR.fullmatch(text)) and (value := int(found[1])) <= MAX_ID:
        return value
    raise invalid_query("cursor", "Not a cursor this API handed out", "cursor")


def _page(rows: list[dict[str, object]], limit: int) -> tuple[list[dict[str, object]], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]["id"]
    assert isinstance(last, int)
    return rows, encode_cursor(last)


def _database(request: Request) -> RequestDatabase:
    database: RequestDatabase = request.app.state.database
    return database


def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock.now()


def _task(row: dict[str, object], now: datetime) -> TaskOut:
    due = row["due_at"]
    overdue = row["status"] == "open" and isinstance(due, datetime) and due < now
    return TaskOut.model_validate({**row, "overdue": overdue})


def api_router() -> APIRouter:
    """Routes of /v1 (every one needs an API key)."""
    router = APIRouter(
        prefix="/v1", responses=PROBLEM_RESPONSES, dependencies=KEYED_NO_UNKNOWN_QUERY
    )

    @router.get("/tasks", tags=["tasks"], summary="List tasks (filters, cursor pagination)")
    async def list_tasks(
        request: Request, _: SourceDep, customer_id: CustomerQuery = None,
        queue: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL)] = None,
        status: TaskStatus | None = None,
        overdue: Annotated[bool | None, Query(description="Open and past due.")] = None,
        assignee: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=NO_NUL,
                              description="Assigned to this name (as stored: stripped).")
        ] = None,
        priority: Priority | None = None,
        limit: Limit = 50, cursor: Cursor = None,
    ) -> TaskPage:  # fmt: skip
        now = _now(request)
        after = decode_cursor(cursor)
        found = TaskFilter(customer_id, queue, status, overdue, assignee, priority)
        async with _database(request).connection() as conn:
            rows = await queries.list_tasks(conn, found, now=now, after=after, limit=limit)
        items, next_cursor = _page(rows, limit)
        return TaskPage(items=[_task(r, now) for r in items], next_cursor=next_cursor)

    @router.get(
        "/tasks/{task_id}", tags=["tasks"], summary="One task",
        description="Its `ETag` header is the version a PATCH's `If-Match` takes.",
        responses={200: {"headers": _ETAG}, **_NOT_FOUND},
    )  # fmt: skip
    async def get_task(
        request: Request, response: Response, _: SourceDep, task_id: TaskId
    ) -> TaskOut:
        async with _database(request).connection() as conn:
            row = await queries.get_task(conn, task_id)
        if row is None:
            raise ProblemError(404, "Not found", f"No task {task_id}.")
        response.headers["ETag"] = queries.task_etag(row)
        return _task(row, _now(request))

    @router.patch(
        "/tasks/{task_id}", tags=["tasks"], summary="Assign, complete or cancel a task",
        responses={200: {"headers": _ETAG}, **_NOT_JSON, **_NOT_FOUND, **_CONFLICT},
    )  # fmt: skip
    async def patch_task(
        request: Request, response: Response, _: SourceDep, task_id: TaskId,
        patch: Annotated[TaskPatch, Body()], if_match: IfMatch = None,
    ) -> TaskOut:  # fmt: skip
        now = _now(request)
        assignee = patch.assignee if isinstance(patch, AssignTask) else None
        try:
            async with _database(request).connection() as conn:
                command = TaskCommand(patch.action)
                row = await queries.update_task(
                    conn,
                    task_id,
                    command,
                    assignee=assignee,
                    now=now,
                    if_match=if_match,
                    push=request.app.state.crm_push,
                )
        except TransitionRefused as exc:
            detail = f"Task {task_id} is {exc.status}; it cannot be {DONE[command]}."
            raise ProblemError(409, "Conflict", detail) from exc
        except queries.ChangedMeanwhile as exc:
            detail = (f"Task {task_id} changed since the version If-Match names (now"
                      f" {exc.etag}): read it again, then decide.")  # fmt: skip
            raise ProblemError(412, "Precondition failed", detail) from exc
        if row is None:
            raise ProblemError(404, "Not found", f"No task {task_id}.")
        response.headers["ETag"] = queries.task_etag(row)
        return _task(row, now)

    @router.get("/sequences/enrollments", tags=["sequences"], summary="Enrolments and steps")
    async def enrollments(
        request: Request, _: SourceDep, customer_id: CustomerQuery = None, limit: Limit = 50,
        cursor: Cursor = None,
    ) -> EnrolmentPage:  # fmt: skip
        after = decode_cursor(cursor)
        async with _database(request).connection() as conn:
            rows = await queries.list_enrolments(conn, customer_id, after=after, limit=limit)
        items, next_cursor = _page(rows, limit)
        return EnrolmentPage.model_validate({"items": items, "next_cursor": next_cursor})

    @router.post(
        "/deliveries/requeue", tags=["alerts"], responses=_NOT_JSON,
        summary="Send dead alerts or task pushes again",
        description="Dead deliveries of one kind (optionally one channel and a window of "
        "creation times) become pending again, their attempts counted from zero and their "
        "idempotency keys unchanged, and go out in the next dispatch round. Deliveries that "
        "went out after all (`sent_at` set), and pushes of a task no longer as they show it (a"
        " task closed since, but for the push of its last change), stay dead.",
    )  # fmt: skip
    async def requeue(
        request: Request, source: SourceDep, which: Annotated[RequeueDead, Body()]
    ) -> Requeued:
        async with _database(request).connection() as conn:
            n = await queries.requeue_dead(conn, RequeueFilter(
                which.kind, which.channel, which.created_from, which.created_until
            ))  # fmt: skip
        log.info("dead deliveries requeued", requeued=n, kind=which.kind, channel=which.channel,
                 source=source)  # fmt: skip
        return Requeued(requeued=n)

    @router.get("/alerts", tags=["alerts"], summary="Alert deliveries and their outcome")
    async def alerts(
        request: Request, _: SourceDep, customer_id: CustomerQuery = None, limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AlertPage:  # fmt: skip
        after = decode_cursor(cursor)
        async with _database(request).connection() as conn:
            rows = await queries.list_alerts(conn, customer_id, after=after, limit=limit)
        items, next_cursor = _page(rows, limit)
        return AlertPage.model_validate({"items": items, "next_cursor": next_cursor})

    return router
