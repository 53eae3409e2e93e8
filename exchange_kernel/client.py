"""IntentClient: what strategy code imports to submit, modify, cancel and inspect intents."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel.connection import TASK_QUEUE, connect
from exchange_kernel.devserver import (
    INTENT_ACCOUNT,
    INTENT_GROUP,
    INTENT_STATUS,
    INTENT_SYMBOL,
    RECONCILIATION_STATUS,
    STRATEGY_ID,
)
from exchange_kernel.models import (
    ID_RE,
    ExchangeOrder,
    IntentChange,
    IntentStart,
    IntentState,
    IntentStatus,
    OrderIntent,
    ReconciliationStatus,
    Value,
    workflow_id_for,
)
from exchange_kernel.workflows.intent import OrderIntentWorkflow


class AlreadyExistsError(Exception):
    """An intent with this id exists with a different spec (or has finished)."""


class IntentNotFound(LookupError):
    pass


class IntentRejected(ValueError):
    """The intent refused a modification or cancellation; the message says why."""


class IntentListing(Value):
    """One row of `list()`: what visibility knows without asking the workflow."""

    intent_id: str
    account: str | None
    symbol: str | None
    group_id: str | None
    status: str | None
    reconciliation_status: str | None
    summary: str | None
    started_at: datetime | None
    closed_at: datetime | None


class IntentClient:
    def __init__(self, client: Client, task_queue: str = TASK_QUEUE) -> None:
        self.temporal = client
        self.task_queue = task_queue

    @classmethod
    async def connect(
        cls,
        address: str | None = None,
        namespace: str | None = None,
        task_queue: str = TASK_QUEUE,
    ) -> IntentClient:
        return cls(await connect(address, namespace), task_queue)

    # --- submitting ----------------------------------------------------------------------------

    async def submit(self, intent: OrderIntent) -> IntentState:
        """Start the intent's workflow; idempotent for the same id and the same spec."""
        attributes = [
            SearchAttributePair(INTENT_ACCOUNT, intent.account),
            SearchAttributePair(INTENT_SYMBOL, intent.order.symbol),
            SearchAttributePair(INTENT_STATUS, IntentStatus.PENDING.value),
            SearchAttributePair(RECONCILIATION_STATUS, ReconciliationStatus.RECONCILING.value),
        ]
        if intent.group_id:
            attributes.append(SearchAttributePair(INTENT_GROUP, intent.group_id))
        if intent.strategy_id:
            attributes.append(SearchAttributePair(STRATEGY_ID, intent.strategy_id))
        summary = intent.summary()
        try:
            await self.temporal.start_workflow(
                OrderIntentWorkflow.run,
                IntentStart(intent=intent),
                id=intent.workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=TypedSearchAttributes(attributes),
                memo={"summary": summary},
                static_summary=f"{intent.account}: {summary}",
            )
        except WorkflowAlreadyStartedError:
            existing = await self.state(intent.intent_id)
            if existing.intent != intent:
                raise AlreadyExistsError(
                    f"intent {intent.intent_id!r} already exists with another spec "
                    f"({existing.intent.summary()}, {existing.status.value})"
                ) from None
            return existing
        return IntentState(intent=intent, desired=intent.order)

    # --- changing ------------------------------------------------------------------------------

    async def modify(
        self,
        intent_id: str,
        *,
        price: Decimal | str | None = None,
        amount: Decimal | str | None = None,
    ) -> IntentState:
        """Change price and/or amount; returns the new state or raises IntentRejected."""
        change = IntentChange(price=price, amount=amount)
        return await self._update(intent_id, "modify", change)

    async def cancel(self, intent_id: str, reason: str = "cancelled by user") -> IntentState:
        return await self._update(intent_id, "cancel", reason)

    async def signal_modify(
        self,
        intent_id: str,
        *,
        price: Decimal | str | None = None,
        amount: Decimal | str | None = None,
    ) -> None:
        """Fire and forget: a rejected change only shows in the intent's recent actions."""
        change = IntentChange(price=price, amount=amount)
        await self._signal(intent_id, "modify", change)

    async def signal_cancel(self, intent_id: str, reason: str = "cancelled by user") -> None:
        await self._signal(intent_id, "cancel", reason)

    async def signal_observed(self, intent_id: str, order: ExchangeOrder) -> None:
        await self._signal(intent_id, "observed", order)

    async def resync(self, intent_id: str) -> None:
        """Have the intent look at the exchange now (a finished intent has nothing to look at)."""
        try:
            await self._signal(intent_id, "resync", None)
        except IntentRejected:
            pass

    # --- reading -------------------------------------------------------------------------------

    async def state(self, intent_id: str) -> IntentState:
        handle = self._handle(intent_id)
        try:
            return await handle.query("state", result_type=IntentState)
        except RPCError as exc:
            raise self._not_found(intent_id, exc) from None
        except WorkflowQueryFailedError as exc:
            raise IntentNotFound(f"intent {intent_id!r} cannot be read: {exc}") from None

    async def result(self, intent_id: str) -> IntentState:
        """Wait until the intent is terminal and return its final state."""
        return await self._handle(intent_id).result()

    async def wait_for(
        self,
        intent_id: str,
        condition: Callable[[IntentState], bool],
        within: timedelta = timedelta(seconds=30),
        interval: timedelta = timedelta(milliseconds=100),
    ) -> IntentState:
        """Poll the intent's state until `condition` holds (TimeoutError after `within`)."""
        async with asyncio.timeout(within.total_seconds()):
            while True:
                state = await self.state(intent_id)
                if condition(state):
                    return state
                await asyncio.sleep(interval.total_seconds())

    async def list(
        self,
        *,
        account: str | None = None,
        symbol: str | None = None,
        group: str | None = None,
        status: IntentStatus | str | None = None,
        strategy: str | None = None,
        limit: int | None = None,
    ) -> list[IntentListing]:
        """Intents by their search attributes, newest first."""
        clauses = ["WorkflowType = 'OrderIntent'"]
        for name, value in (
            ("IntentAccount", account),
            ("IntentSymbol", symbol),
            ("IntentGroup", group),
            ("IntentStatus", None if status is None else IntentStatus(status).value),
            ("StrategyId", strategy),
        ):
            if value is not None:
                clauses.append(f"{name} = '{_quoted(value)}'")
        query = " AND ".join(clauses)
        rows = []
        async for execution in self.temporal.list_workflows(query, limit=limit):
            rows.append(await _listing(execution))
        return rows

    # --- plumbing ------------------------------------------------------------------------------

    def _handle(self, intent_id: str) -> WorkflowHandle:
        if not ID_RE.match(intent_id):
            raise IntentNotFound(f"{intent_id!r} is not a valid intent id")
        return self.temporal.get_workflow_handle(
            workflow_id_for(intent_id), result_type=IntentState
        )

    async def _update(self, intent_id: str, name: str, arg: object) -> IntentState:
        handle = self._handle(intent_id)
        try:
            return await handle.execute_update(name, arg, result_type=IntentState)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise IntentRejected(message) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                # Updates cannot reach a closed workflow; say why if the intent has finished.
                finished = await self.state(intent_id)
                raise IntentRejected(
                    f"intent {intent_id} is already {finished.status.value}"
                ) from None
            raise self._not_found(intent_id, exc) from None

    async def _signal(self, intent_id: str, name: str, arg: object) -> None:
        handle = self._handle(intent_id)
        try:
            if arg is None:
                await handle.signal(name)
            else:
                await handle.signal(name, arg)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                finished = await self.state(intent_id)
                raise IntentRejected(
                    f"intent {intent_id} is already {finished.status.value}"
                ) from None
            raise self._not_found(intent_id, exc) from None

    @staticmethod
    def _not_found(intent_id: str, exc: RPCError) -> Exception:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return IntentNotFound(f"no intent {intent_id!r}")
        if exc.status == RPCStatusCode.FAILED_PRECONDITION:
            return IntentRejected(f"intent {intent_id!r} has finished: {exc.message}")
        return exc


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


async def _listing(execution: WorkflowExecution) -> IntentListing:
    attributes = execution.typed_search_attributes
    memo = await execution.memo()
    closed = execution.status not in (
        None,
        WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING,
    )
    status = attributes.get(INTENT_STATUS)
    if closed and status in (None, IntentStatus.PENDING.value):
        status = f"closed:{execution.status.name.lower()}" if execution.status else status
    return IntentListing(
        intent_id=execution.id.removeprefix("intent-"),
        account=attributes.get(INTENT_ACCOUNT),
        symbol=attributes.get(INTENT_SYMBOL),
        group_id=attributes.get(INTENT_GROUP),
        status=status,
        reconciliation_status=attributes.get(RECONCILIATION_STATUS),
        summary=memo.get("summary") if isinstance(memo, dict) else None,
        started_at=execution.start_time,
        closed_at=execution.close_time,
    )
