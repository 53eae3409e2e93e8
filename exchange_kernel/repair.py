"""Repair a workflow stuck on a nondeterminism error: reset it to before the task that diverged.

An intent whose workflow task keeps failing with `[TMPRL1100] Nondeterminism error` cannot be
queried, modified or cancelled (docs/reliability.md, finding 2). Temporal's remedy is a reset:
a new run that keeps the history up to a workflow task, redoes that task with the current code
and re-applies the signals and updates that arrived after it.

Redoing an intent's work must not place an order twice. Before the reset the intent is sent the
`repaired` signal; it is re-applied to the new run ahead of the redone task, and from then on
every placement of the run looks its client order id up before creating it. So an order the
discarded history placed is found, open or already ended, instead of placed again; a redone
native amend reports the replacement it already placed. What the lookups cannot see: an order
of the discarded history under a placement number the new run never reaches (its path differs,
e.g. a modification arrives earlier than before); `repair` lists the client order ids the
discarded history sent, so they can be checked (docs/operations.md).

The reset point is the task whose commands the replay no longer matches: the error names the
first history event that differs, and that event records which workflow task completed it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHistory

_EVENT_ID = re.compile(r"HistoryEvent\(id: (\d+)")
_NONDETERMINISM = WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR
_TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
INTENT_WORKFLOW = "OrderIntent"
# The activities that send an order, and where their input names its client order id.
_ORDER_SENDING = {"place_order": ("client_order_id",), "amend_order": ("order", "client_order_id")}


class NothingToRepair(Exception):
    """The workflow's latest workflow task did not fail on nondeterminism."""


@dataclass(frozen=True)
class ResetPoint:
    """Where a stuck run is reset to, and why."""

    workflow_id: str
    run_id: str
    # The WorkflowTaskCompleted event of the task that is redone.
    workflow_task_completed_id: int
    # The first event the replay did not match (None when the error did not name one).
    diverged_at: int | None
    error: str
    workflow_type: str = ""
    # Client order ids sent by the exchange activities the reset discards (scheduled after
    # the point), shown by `repair`: the repaired run looks up its own placements before
    # creating them, so only an id among these that it never reaches needs checking by hand.
    discarded_orders: tuple[str, ...] = ()


async def stuck_run(client: Client, workflow_id: str) -> ResetPoint:
    """The reset point of the workflow's latest run (NothingToRepair if it is not stuck)."""
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    history = await handle.fetch_history()
    return find_reset_point(history, description.run_id)


def find_reset_point(history: WorkflowHistory, run_id: str) -> ResetPoint:
    """The reset point of a run whose last workflow task failed on nondeterminism."""
    events = list(history.events)
    failure = _last_task_failure(events)
    if failure is None:
        raise NothingToRepair(
            f"{history.workflow_id}: its last workflow task did not fail on nondeterminism"
        )
    error = failure.workflow_task_failed_event_attributes.failure.message
    match = _EVENT_ID.search(error)
    diverged_at = int(match.group(1)) if match else None
    completed = _completing_task(events, diverged_at)
    return ResetPoint(
        workflow_id=history.workflow_id,
        run_id=run_id,
        workflow_task_completed_id=completed,
        diverged_at=diverged_at,
        error=error,
        workflow_type=events[0].workflow_execution_started_event_attributes.workflow_type.name,
        discarded_orders=_orders_sent_after(events, completed),
    )


async def reset(client: Client, point: ResetPoint, reason: str) -> str:
    """Reset the run to `point`; returns the new run's id. An intent is told first (`repaired`),
    so the new run looks before it places."""
    if point.workflow_type == INTENT_WORKFLOW:
        handle = client.get_workflow_handle(point.workflow_id, run_id=point.run_id)
        await handle.signal("repaired", reason)
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(
                workflow_id=point.workflow_id, run_id=point.run_id
            ),
            reason=reason,
            workflow_task_finish_event_id=point.workflow_task_completed_id,
            request_id=str(uuid.uuid4()),
            reset_reapply_type=ResetReapplyType.RESET_REAPPLY_TYPE_ALL_ELIGIBLE,
            identity="exchange-kernel repair",
        )
    )
    return response.run_id


def last_task_failure(events: Iterable[HistoryEvent]) -> HistoryEvent | None:
    """The last WorkflowTaskFailed event since the run's last completed workflow task (None if
    no try failed since: they completed, or timed out as when a worker dies). Timeouts after a
    failure are passed over: a worker killed while retrying a failing task does not unstick it."""
    for event in reversed(list(events)):
        if event.event_type == _TASK_COMPLETED:
            return None
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            return event
    return None


def _last_task_failure(events: list[HistoryEvent]) -> HistoryEvent | None:
    """The last workflow task's failure, if it failed on nondeterminism (a task completed
    after it means the run recovered by itself)."""
    failure = last_task_failure(events)
    if failure is None or failure.workflow_task_failed_event_attributes.cause != _NONDETERMINISM:
        return None
    return failure


def _completing_task(events: list[HistoryEvent], diverged_at: int | None) -> int:
    """The WorkflowTaskCompleted event whose commands include `diverged_at`; without one, the
    first workflow task (the whole run is redone)."""
    tasks = [e.event_id for e in events if e.event_type == _TASK_COMPLETED]
    if not tasks:
        raise NothingToRepair("the run never completed a workflow task: nothing to redo")
    if diverged_at is None:
        return tasks[0]
    # Commands are written right after the task that issued them: the divergent event belongs
    # to the last task completed before it.
    earlier = [task for task in tasks if task < diverged_at]
    return earlier[-1] if earlier else tasks[0]


def _orders_sent_after(events: list[HistoryEvent], task_completed: int) -> tuple[str, ...]:
    """Client order ids of the order-sending activities scheduled after `task_completed`."""
    sent: list[str] = []
    for event in events:
        if event.event_id <= task_completed:
            continue
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attributes = event.activity_task_scheduled_event_attributes
        path = _ORDER_SENDING.get(attributes.activity_type.name)
        if path is None:
            continue
        for payload in attributes.input.payloads:
            value: Any = _json(payload.data)
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str) and value not in sent:
                sent.append(value)
    return tuple(sent)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None  # an encoded payload (a codec): nothing to read here
