"""IntentGroupWorkflow: OCO and bracket (OTO + OCO) groups of ordinary intents.

Every member is an OrderIntentWorkflow of its own (visible, queryable, modifiable); the group
starts them, hears their progress through `member_update` signals, and cancels or resizes them.
It only executes: every decision is `group_plan.plan_group`'s, made from the `GroupState`
alone, which is all the workflow keeps (and carries over a continue-as-new).
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from exchange_kernel import group_plan
    from exchange_kernel.devserver import intent_search_attributes
    from exchange_kernel.group_plan import CancelMember, GroupAction, ResizeMember, StartMember
    from exchange_kernel.models import (
        GroupState,
        IntentChange,
        IntentGroup,
        IntentStart,
        MemberUpdate,
        OrderIntent,
        workflow_id_for,
    )


@workflow.defn(name="IntentGroup")
class IntentGroupWorkflow:
    @workflow.init
    def __init__(self, group: IntentGroup, state: GroupState | None = None) -> None:
        # `state`: only on continue-as-new, the state carried over.
        self.state = state if state is not None else GroupState(group=group)

    @workflow.signal
    def member_update(self, update: MemberUpdate) -> None:
        self.state = group_plan.record_report(self.state, update)

    @workflow.signal
    def cancel(self, reason: str) -> None:
        self.state = group_plan.request_cancel(self.state, reason)

    @workflow.query(name="state")
    def query_state(self) -> GroupState:
        return self.state

    @workflow.run
    async def run(self, group: IntentGroup, state: GroupState | None = None) -> GroupState:
        while not self.state.finished:
            steps = group_plan.plan_group(self.state)
            if steps:
                failures = await asyncio.gather(*(self._execute(step) for step in steps))
                for step, failure in zip(steps, failures, strict=True):
                    self.state = group_plan.record_group(self.state, step, failure)
                continue
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(args=[self.state.group, self.state])
            await self._wait_for_news(self.state)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    async def _wait_for_news(self, planned: GroupState) -> None:
        # Signal handlers replace the state when a report or a cancellation changes it.
        await workflow.wait_condition(
            lambda: self.state is not planned or workflow.info().is_continue_as_new_suggested()
        )

    async def _execute(self, step: GroupAction) -> str | None:
        """Carry out one step; None when done, else why it could not be."""
        match step:
            case StartMember(intent=intent):
                return await self._start(intent)
            case CancelMember(intent_id=intent_id, reason=reason):
                return await self._signal(intent_id, "cancel", reason)
            case ResizeMember(intent_id=intent_id, amount=amount):
                return await self._signal(intent_id, "modify", IntentChange(amount=amount))
            case _:  # Trigger, Finish: decisions with nothing to carry out
                return None

    async def _start(self, intent: OrderIntent) -> str | None:
        try:
            await workflow.start_child_workflow(
                "OrderIntent",
                IntentStart(intent=intent),
                id=workflow_id_for(intent.intent_id),
                task_queue=workflow.info().task_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
                # A finished member is never run a second time under its id (its client order
                # ids would be reused: a second order on the exchange).
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=intent_search_attributes(intent),
                memo={"summary": intent.summary()},
                static_summary=f"{intent.account}: {intent.summary()} (group {intent.group_id})",
            )
        except WorkflowAlreadyStartedError as exc:  # an intent with this id exists already
            return str(exc) or "an intent with this id exists already"
        return None

    async def _signal(self, intent_id: str, name: str, arg: object) -> str | None:
        handle = workflow.get_external_workflow_handle(workflow_id_for(intent_id))
        try:
            await handle.signal(name, arg)
        except FailureError as exc:  # the member already finished
            return str(exc) or type(exc).__name__
        return None
