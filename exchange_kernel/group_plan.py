"""The group planner: pure decisions for OCO and bracket groups, no I/O.

`plan_group(state)` looks at a `GroupState` and returns every step due now, in the order to
take them (an empty tuple: nothing to do until a member reports or the group is cancelled). The
group workflow executes the steps, records each outcome with `record_group`, and plans again:
level-triggered, like `reconcile.plan` for one intent. Members' reports are recorded with
`record_report`, a cancellation of the group with `request_cancel`. Every input of a decision is
a field of the state, so nothing is lost to a continue-as-new.

The rules:
- OCO: every member is started at once. The first member to fire (`first_fill`: any fill;
  `full_fill`: filled completely) triggers the group, and every other member is cancelled.
  Members that fire in the same look are ranked in the group's declared order.
- Bracket: the entry is started; once it has filled anything, a take-profit and a stop-loss are
  started, each covering the open position (entry filled - exits filled) and resized to it as
  it changes; when the position is closed, the exits still working are cancelled.
- Fills that land on legs that should have been cancelled (an OCO member other than the trigger,
  exits that sold more than the entry bought) are reported in `overfill`, never hidden.
- A cancellation of the group cancels every member still working; nothing more is started.
- The group is done when every member it started (and owns) is terminal and nothing is left to
  start or cancel.

A member whose start was refused (an intent with that id existed already) is owned by the group
only once it reports to it: a foreign intent under the same id is neither cancelled, resized nor
waited for.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from exchange_kernel.models import (
    GroupKind,
    GroupState,
    IntentGroup,
    IntentStatus,
    MemberUpdate,
    Money,
    OcoTrigger,
    OrderIntent,
    Value,
)

ENTRY, TAKE_PROFIT, STOP_LOSS = "entry", "take_profit", "stop_loss"
EXITS = (TAKE_PROFIT, STOP_LOSS)
NOTES_KEPT = 50


class StartMember(Value):
    """Start the member's own intent workflow."""

    kind: Literal["start"] = "start"
    intent: OrderIntent
    reason: str


class CancelMember(Value):
    kind: Literal["cancel"] = "cancel"
    intent_id: str
    reason: str


class ResizeMember(Value):
    """Modify a bracket exit leg to `amount` in all (its fills included)."""

    kind: Literal["resize"] = "resize"
    intent_id: str
    amount: Money
    reason: str


class Trigger(Value):
    """OCO: this member's fill decides the group. A decision with no effect of its own: it is
    recorded, and the cancellations of the other members follow from it."""

    kind: Literal["trigger"] = "trigger"
    intent_id: str
    reason: str


class Finish(Value):
    kind: Literal["finish"] = "finish"
    reason: str


GroupAction = StartMember | CancelMember | ResizeMember | Trigger | Finish


# --- the planner ---------------------------------------------------------------------------


def plan_group(state: GroupState) -> tuple[GroupAction, ...]:
    """Every step due now towards the group's goal; `()` while it waits for news."""
    if state.finished:
        return ()
    if state.group.kind is GroupKind.OCO:
        steps = _plan_oco(state)
    else:
        steps = _plan_bracket(state)
    if steps:
        return steps
    if all(is_terminal(state, intent_id) for intent_id in owned(state)):
        return (Finish(reason=_outcome(state)),)
    return ()


def _plan_oco(state: GroupState) -> tuple[GroupAction, ...]:
    group = state.group
    ids = [member.intent_id for member in group.members]
    steps: list[GroupAction] = []
    if state.cancel_reason is None and state.triggered_by is None:
        steps.extend(
            StartMember(intent=member, reason="OCO member")
            for member in group.member_intents()
            if member.intent_id not in state.started
        )
    trigger = state.triggered_by
    if trigger is None:
        trigger = next((intent_id for intent_id in ids if _fired(state, intent_id)), None)
        if trigger is not None:
            filled = state.members[trigger].filled
            reason = f"{trigger} filled {filled}: cancelling the others"
            steps.append(Trigger(intent_id=trigger, reason=reason))
    cancelling: set[str] = set()
    if trigger is not None:
        for intent_id in ids:
            if intent_id != trigger and _cancellable(state, intent_id):
                steps.append(CancelMember(intent_id=intent_id, reason=f"OCO: {trigger} filled"))
                cancelling.add(intent_id)
    if state.cancel_reason is not None:
        steps.extend(
            CancelMember(intent_id=intent_id, reason=state.cancel_reason)
            for intent_id in ids
            if intent_id not in cancelling and _cancellable(state, intent_id)
        )
    return tuple(steps)


def _fired(state: GroupState, intent_id: str) -> bool:
    report = state.members.get(intent_id)
    if report is None:
        return False
    if state.group.trigger is OcoTrigger.FULL_FILL:
        return report.status is IntentStatus.FILLED
    return report.filled > 0


def _plan_bracket(state: GroupState) -> tuple[GroupAction, ...]:
    group = state.group
    assert group.entry is not None
    entry_id = group.leg_id(ENTRY)
    if state.cancel_reason is not None:
        return tuple(
            CancelMember(intent_id=intent_id, reason=state.cancel_reason)
            for intent_id in bracket_ids(group)
            if _cancellable(state, intent_id)
        )
    if entry_id not in state.started:
        entry = group.bracket_intent(ENTRY, group.entry.amount)
        return (StartMember(intent=entry, reason="bracket entry"),)
    position = open_position(state)
    unstarted = [leg for leg in EXITS if group.leg_id(leg) not in state.started]
    if unstarted:
        if position <= 0:
            return ()
        reason = f"entry filled {filled(state, entry_id)}: protecting it"
        return tuple(
            StartMember(intent=group.bracket_intent(leg, position), reason=reason)
            for leg in unstarted
        )
    steps: list[GroupAction] = []
    for leg in EXITS:
        intent_id = group.leg_id(leg)
        if not _cancellable(state, intent_id):
            continue
        if position <= 0:
            steps.append(CancelMember(intent_id=intent_id, reason="bracket: position closed"))
            continue
        # Each exit leg covers exactly the open position: what the entry bought minus what the
        # exits already sold. Its amount counts its own fills, which a modify cannot go below.
        wanted = filled(state, intent_id) + position
        if wanted != state.sized.get(intent_id):
            reason = f"cover the open position {position}"
            steps.append(ResizeMember(intent_id=intent_id, amount=wanted, reason=reason))
    return tuple(steps)


def _outcome(state: GroupState) -> str:
    if state.triggered_by is not None:
        return f"OCO: {state.triggered_by} filled"
    if state.cancel_reason is not None:
        return f"cancelled: {state.cancel_reason}"
    if not owned(state):
        return "no member could be started"
    return "every member finished"


# --- what the planner reads ----------------------------------------------------------------


def member_ids(group: IntentGroup) -> tuple[str, ...]:
    if group.kind is GroupKind.OCO:
        return tuple(member.intent_id for member in group.members)
    return bracket_ids(group)


def bracket_ids(group: IntentGroup) -> tuple[str, ...]:
    return tuple(group.leg_id(leg) for leg in (ENTRY, *EXITS))


def filled(state: GroupState, intent_id: str) -> Decimal:
    report = state.members.get(intent_id)
    return report.filled if report is not None else Decimal(0)


def is_terminal(state: GroupState, intent_id: str) -> bool:
    report = state.members.get(intent_id)
    return report is not None and report.status.is_terminal


def owned(state: GroupState) -> tuple[str, ...]:
    """The members this group started, or whose refused start turned out to be its own (it
    reported to the group)."""
    return tuple(
        intent_id
        for intent_id in state.started
        if intent_id not in state.start_refused or intent_id in state.members
    )


def open_position(state: GroupState) -> Decimal:
    """Bracket: what the entry bought (or sold) and the exits have not closed yet."""
    group = state.group
    exits = sum((filled(state, group.leg_id(leg)) for leg in EXITS), Decimal(0))
    return filled(state, group.leg_id(ENTRY)) - exits


def _cancellable(state: GroupState, intent_id: str) -> bool:
    return (
        intent_id in owned(state)
        and intent_id not in state.cancels_sent
        and not is_terminal(state, intent_id)
    )


# --- recorders: the state after what happened ----------------------------------------------


def record_group(state: GroupState, action: GroupAction, failure: str | None = None) -> GroupState:
    """The state after the workflow executed `action`; `failure` says why it could not (a
    start refused, a signal to a member that is gone)."""
    update: dict[str, object] = {}
    match action:
        case StartMember(intent=intent):
            intent_id = intent.intent_id
            update["started"] = (*state.started, intent_id)
            if failure is not None:
                update["start_refused"] = {**state.start_refused, intent_id: failure}
            elif intent_id in bracket_exit_ids(state.group):
                update["sized"] = {**state.sized, intent_id: intent.order.amount}
            note = f"start {intent_id}: {action.reason}"
        case CancelMember(intent_id=intent_id):
            update["cancels_sent"] = (*state.cancels_sent, intent_id)
            note = f"cancel {intent_id}: {action.reason}"
        case ResizeMember(intent_id=intent_id, amount=amount):
            update["sized"] = {**state.sized, intent_id: amount}
            note = f"resize {intent_id} to {amount}: {action.reason}"
        case Trigger(intent_id=intent_id):
            update["triggered_by"] = intent_id
            note = action.reason
        case Finish():
            update["finished"] = True
            note = f"finished: {action.reason}"
    if failure is not None:
        note = f"{note} (failed: {failure})"
    return _refresh(_note(state.model_copy(update=update), note))


def bracket_exit_ids(group: IntentGroup) -> tuple[str, ...]:
    if group.kind is not GroupKind.BRACKET:
        return ()
    return tuple(group.leg_id(leg) for leg in EXITS)


def record_report(state: GroupState, update: MemberUpdate) -> GroupState:
    """The state after a member's report. Reports arrive late, twice or out of order: a
    member's filled never goes down and a terminal member stays as it ended, so an older report
    is dropped (the same state is returned). Reports of intents that are not members of the
    group (a plain intent labelled with the group id) are dropped too."""
    if update.intent_id not in member_ids(state.group):
        return state
    known = state.members.get(update.intent_id)
    if known is not None and (
        known.status.is_terminal or update.filled < known.filled or update == known
    ):
        return state
    members = {**state.members, update.intent_id: update}
    return _refresh(state.model_copy(update={"members": members}))


def request_cancel(state: GroupState, reason: str) -> GroupState:
    """The group is to be cancelled (the first reason is kept)."""
    if state.cancel_reason is not None:
        return state
    return state.model_copy(update={"cancel_reason": reason or "cancelled"})


def overfill(state: GroupState) -> dict[str, Decimal]:
    """Fills on legs that should have been cancelled, by member; empty when there are none."""
    group = state.group
    if group.kind is GroupKind.OCO:
        trigger = state.triggered_by
        if trigger is None:
            return {}
        return {
            intent_id: filled(state, intent_id)
            for intent_id in member_ids(group)
            if intent_id != trigger and filled(state, intent_id) > 0
        }
    if open_position(state) >= 0:
        return {}
    return {intent_id: filled(state, intent_id) for intent_id in bracket_exit_ids(group)}


def _refresh(state: GroupState) -> GroupState:
    # Once seen, an overfill stays reported (a later entry fill may cover a bracket's, but the
    # exits did sell more than was bought at the time).
    found = overfill(state)
    if not found or found == state.overfill:
        return state
    state = state.model_copy(update={"overfill": found})
    return _note(state, f"overfill: {_describe(found)}")


def _describe(amounts: dict[str, Decimal]) -> str:
    return ", ".join(f"{intent_id} filled {amount}" for intent_id, amount in amounts.items())


def _note(state: GroupState, text: str) -> GroupState:
    return state.model_copy(update={"notes": (*state.notes, text)[-NOTES_KEPT:]})
