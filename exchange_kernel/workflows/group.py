"""IntentGroupWorkflow: OCO and bracket (OTO + OCO) groups of ordinary intents.

Every member is an OrderIntentWorkflow of its own (visible, queryable, modifiable); the group
starts them, hears their progress through `member_update` signals, and cancels or resizes them.
It only executes: every decision is `group_plan.plan_group`'s, made from the `GroupState`
alone, which is all the workflow keeps (and carries over a continue-as-new).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, FailureError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from exchange_kernel import group_plan
    from exchange_kernel.activities.errors import EXCHANGE_RETRY
    from exchange_kernel.devserver import intent_search_attributes
    from exchange_kernel.group_plan import (
        CancelMember,
        GroupAction,
        LoadRules,
        ReleaseMember,
        ResizeMember,
        StartMember,
    )
    from exchange_kernel.models import (
        GroupKind,
        GroupState,
        IntentChange,
        IntentGroup,
        IntentStart,
        MarketRequest,
        MarketRules,
        MemberUpdate,
        OrderIntent,
        workflow_id_for,
    )

# Loading the market's rules: a slow exchange is retried this long, then the exits are sized
# without them (their own checks judge them).
RULES_BUDGET = timedelta(minutes=2)
RULES_CALL_TIMEOUT = timedelta(seconds=15)


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
        fresh = self.state.group.kind is GroupKind.BRACKET and not self.state.started
        if fresh and not self.state.held_stop_loss:
            # Every bracket holds its stop-loss while the take-profit rests (0.2.0 baseline).
            self.state = self.state.model_copy(update={"held_stop_loss": True})
        while not self.state.finished:
            steps = group_plan.plan_group(self.state)
            if steps:
                outcomes = await asyncio.gather(*(self._execute(step) for step in steps))
                for step, outcome in zip(steps, outcomes, strict=True):
                    if isinstance(outcome, MarketRules):
                        self.state = group_plan.record_group(self.state, step, rules=outcome)
                    else:
                        self.state = group_plan.record_group(self.state, step, outcome)
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

    async def _execute(self, step: GroupAction) -> str | MarketRules | None:
        """Carry out one step; None when done (the rules for `LoadRules`), else why it could
        not be."""
        match step:
            case StartMember(intent=intent):
                return await self._start(intent)
            case CancelMember(intent_id=intent_id, reason=reason):
                return await self._signal(intent_id, "cancel", reason)
            case ResizeMember(intent_id=intent_id, amount=amount):
                return await self._signal(intent_id, "modify", IntentChange(amount=amount))
            case ReleaseMember(intent_id=intent_id):
                return await self._signal(intent_id, "release")
            case LoadRules(symbol=symbol):
                return await self._load_rules(symbol)
            case _:  # Trigger, Finish: decisions with nothing to carry out
                return None

    async def _load_rules(self, symbol: str) -> MarketRules | str:
        request = MarketRequest(account=self.state.group.account, symbol=symbol)
        try:
            return await workflow.execute_activity(
                "load_market",
                request,
                result_type=MarketRules,
                # The activity runs on the workflow's own queue, as the intents' rules do.
                task_queue=workflow.info().task_queue,
                start_to_close_timeout=RULES_CALL_TIMEOUT,
                schedule_to_close_timeout=RULES_BUDGET,
                retry_policy=EXCHANGE_RETRY,
                summary=f"market rules of {symbol}",
            )
        except ActivityError as error:
            return str(error.cause or error)

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

    async def _signal(self, intent_id: str, name: str, *args: object) -> str | None:
        handle = workflow.get_external_workflow_handle(workflow_id_for(intent_id))
        try:
            await handle.signal(name, args=args)
        except FailureError as exc:  # the member already finished
            return str(exc) or type(exc).__name__
        return None
