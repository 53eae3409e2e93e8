"""IntentGroupWorkflow: OCO and bracket (OTO + OCO) groups of ordinary intents.

Every member is an OrderIntentWorkflow of its own (visible, queryable, modifiable); the group
starts them, hears their progress through `member_update` signals, and cancels or resizes them.
"""

from __future__ import annotations

from decimal import Decimal

from temporalio import workflow
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from exchange_kernel.devserver import intent_search_attributes
    from exchange_kernel.models import (
        GroupKind,
        GroupState,
        IntentChange,
        IntentGroup,
        IntentStart,
        IntentStatus,
        MemberUpdate,
        OcoTrigger,
        OrderIntent,
        workflow_id_for,
    )

ENTRY, TAKE_PROFIT, STOP_LOSS = "entry", "take_profit", "stop_loss"


@workflow.defn(name="IntentGroup")
class IntentGroupWorkflow:
    @workflow.init
    def __init__(self, group: IntentGroup) -> None:
        self.state = GroupState(group=group)
        self.dirty = False
        self.cancels_sent: set[str] = set()
        self.started: set[str] = set()
        self.leg_amounts: dict[str, Decimal] = {}

    @workflow.signal
    def member_update(self, update: MemberUpdate) -> None:
        known = self.state.members.get(update.intent_id)
        if known is not None and known.status.is_terminal:
            return
        if known is not None and update.filled < known.filled:
            return  # an older report overtaken by a newer one
        members = {**self.state.members, update.intent_id: update}
        self.state = self.state.model_copy(update={"members": members})
        self.dirty = True

    @workflow.signal
    def cancel(self, reason: str) -> None:
        if self.state.cancel_reason is None:
            self.state = self.state.model_copy(update={"cancel_reason": reason or "cancelled"})
        self.dirty = True

    @workflow.query(name="state")
    def query_state(self) -> GroupState:
        return self.state

    @workflow.run
    async def run(self, group: IntentGroup) -> GroupState:
        if group.kind is GroupKind.OCO:
            for member in group.member_intents():
                await self._start(member)
        else:
            assert group.entry is not None
            await self._start(group.bracket_intent(ENTRY, group.entry.amount))
        while not self._done():
            await workflow.wait_condition(lambda: self.dirty)
            self.dirty = False
            if group.kind is GroupKind.OCO:
                await self._oco_step()
            else:
                await self._bracket_step()
        self.state = self.state.model_copy(update={"finished": True})
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    # --- OCO -----------------------------------------------------------------------------------

    async def _oco_step(self) -> None:
        group = self.state.group
        members = self.state.members
        if self.state.triggered_by is None:
            for intent_id, update in members.items():
                fired = (
                    update.status is IntentStatus.FILLED
                    if group.trigger is OcoTrigger.FULL_FILL
                    else update.filled > 0
                )
                if fired:
                    self.state = self.state.model_copy(update={"triggered_by": intent_id})
                    self._note(f"{intent_id} filled {update.filled}: cancelling the others")
                    break
        trigger = self.state.triggered_by
        if trigger is not None:
            for member in group.member_intents():
                if member.intent_id != trigger:
                    await self._cancel(member.intent_id, f"OCO: {trigger} filled")
            overfill = {
                intent_id: update.filled
                for intent_id, update in members.items()
                if intent_id != trigger and update.filled > 0
            }
            if overfill != self.state.overfill:
                self.state = self.state.model_copy(update={"overfill": overfill})
                self._note(f"overfill: {overfill}")
        if self.state.cancel_reason is not None:
            for member in group.member_intents():
                await self._cancel(member.intent_id, self.state.cancel_reason)

    # --- bracket -------------------------------------------------------------------------------

    async def _bracket_step(self) -> None:
        group = self.state.group
        entry = self._member(ENTRY)
        entry_filled = entry.filled if entry else Decimal(0)
        take_profit, stop_loss = self._member(TAKE_PROFIT), self._member(STOP_LOSS)
        tp_filled = take_profit.filled if take_profit else Decimal(0)
        sl_filled = stop_loss.filled if stop_loss else Decimal(0)
        position = entry_filled - tp_filled - sl_filled

        if self.state.cancel_reason is not None:
            for leg in (ENTRY, TAKE_PROFIT, STOP_LOSS):
                await self._cancel(group.leg_id(leg), self.state.cancel_reason)
            return
        if entry_filled > 0 and group.leg_id(TAKE_PROFIT) not in self.started:
            self._note(f"entry filled {entry_filled}: protecting it")
            for leg in (TAKE_PROFIT, STOP_LOSS):
                await self._start(group.bracket_intent(leg, entry_filled))
                self.leg_amounts[leg] = entry_filled
            return
        if group.leg_id(TAKE_PROFIT) not in self.started:
            return
        # Each exit leg covers exactly the open position: what the entry filled minus what the
        # exits already sold.
        for leg, leg_filled in ((TAKE_PROFIT, tp_filled), (STOP_LOSS, sl_filled)):
            update = self._member(leg)
            if update is not None and update.status.is_terminal:
                continue
            wanted = leg_filled + position
            if position <= 0:
                await self._cancel(group.leg_id(leg), "bracket: position closed")
            elif wanted != self.leg_amounts.get(leg):
                self.leg_amounts[leg] = wanted
                await self._signal(group.leg_id(leg), "modify", IntentChange(amount=wanted))
        if tp_filled + sl_filled > entry_filled:
            overfill = {
                group.leg_id(TAKE_PROFIT): tp_filled,
                group.leg_id(STOP_LOSS): sl_filled,
            }
            if overfill != self.state.overfill:
                self.state = self.state.model_copy(update={"overfill": overfill})
                self._note(f"overfill: exits sold {tp_filled + sl_filled} of {entry_filled}")

    # --- plumbing ------------------------------------------------------------------------------

    def _member(self, leg: str) -> MemberUpdate | None:
        return self.state.members.get(self.state.group.leg_id(leg))

    def _done(self) -> bool:
        if not self.started:
            return False
        return (
            all(
                intent_id in self.state.members and self.state.members[intent_id].status.is_terminal
                for intent_id in self.started
            )
            and self._nothing_to_start()
        )

    def _nothing_to_start(self) -> bool:
        group = self.state.group
        if group.kind is GroupKind.OCO:
            return True
        entry = self._member(ENTRY)
        return group.leg_id(TAKE_PROFIT) in self.started or (entry is not None and not entry.filled)

    async def _start(self, intent: OrderIntent) -> None:
        self.started.add(intent.intent_id)
        try:
            await workflow.start_child_workflow(
                "OrderIntent",
                IntentStart(intent=intent, local_rules_first=True),
                id=workflow_id_for(intent.intent_id),
                task_queue=workflow.info().task_queue,
                parent_close_policy=ParentClosePolicy.ABANDON,
                search_attributes=intent_search_attributes(intent),
                memo={"summary": intent.summary()},
                static_summary=f"{intent.account}: {intent.summary()} (group {intent.group_id})",
            )
        except WorkflowAlreadyStartedError as exc:  # a member with this id exists already
            self._note(f"could not start {intent.intent_id}: {exc}")

    async def _cancel(self, intent_id: str, reason: str) -> None:
        update = self.state.members.get(intent_id)
        if intent_id in self.cancels_sent or intent_id not in self.started:
            return
        if update is not None and update.status.is_terminal:
            return
        self.cancels_sent.add(intent_id)
        await self._signal(intent_id, "cancel", reason)

    async def _signal(self, intent_id: str, name: str, arg: object) -> None:
        handle = workflow.get_external_workflow_handle(workflow_id_for(intent_id))
        try:
            await handle.signal(name, arg)
        except Exception as exc:  # the member already finished
            self._note(f"{name} {intent_id}: {exc}")

    def _note(self, text: str) -> None:
        self.state = self.state.model_copy(update={"notes": (*self.state.notes, text)[-50:]})
