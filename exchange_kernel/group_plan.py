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
  started, each covering the open position (what the entry brought in - exits filled) and
  resized to it as it changes; when the position is closed, the exits still working are
  cancelled.
- Bracket with a held stop-loss (`GroupState.held_stop_loss`, every bracket started since the
  patch): on spot, a take-profit and a stop-loss that each lock the whole position cannot both
  rest (the second is refused: insufficient balance). The take-profit rests on the exchange;
  the stop-loss is held by its own workflow, which locks nothing and watches the price. What
  the entry brought in is its filled amount less the fee a buy pays in the base asset, rounded
  down to the market's step size (the rules are loaded with the entry's start); the exits
  start once that meets the market's minimums. When the stop-loss triggers, it reports
  `triggered` and waits: the group cancels the take-profit (and the entry's rest: a bracket
  that stops out buys no more), and once both are terminal (their fills final) sizes the
  stop-loss to the open position and releases it (`ReleaseMember`), or cancels it if the
  position is closed. The stop-loss sells the position once, with nothing locked beside it.
- A held stop of an OCO member (`release_by_group`) that triggers fires the group like a fill;
  it is released once every other member is terminal.
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
    MarketRules,
    MemberUpdate,
    Money,
    OcoTrigger,
    OrderIntent,
    Side,
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


class ReleaseMember(Value):
    """A held stop that triggered (`OrderIntent.release_by_group`) may place its order now:
    nothing else of the group locks what it sells."""

    kind: Literal["release"] = "release"
    intent_id: str
    reason: str


class LoadRules(Value):
    """Bracket with a held stop-loss: the market's rules, before any exit is sized."""

    kind: Literal["load_rules"] = "load_rules"
    symbol: str
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


GroupAction = (
    StartMember | CancelMember | ResizeMember | ReleaseMember | LoadRules | Trigger | Finish
)


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
            report = state.members[trigger]
            fired = "triggered" if report.triggered else f"filled {report.filled}"
            reason = f"{trigger} {fired}: cancelling the others"
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
    elif (
        trigger is not None
        and not cancelling
        and awaits_release(state, trigger)
        and all(is_terminal(state, i) for i in owned(state) if i != trigger)
    ):
        # A triggered held stop sells only once nothing else of the group can fill.
        reason = "OCO: every other member is done"
        steps.append(ReleaseMember(intent_id=trigger, reason=reason))
    return tuple(steps)


def _fired(state: GroupState, intent_id: str) -> bool:
    report = state.members.get(intent_id)
    if report is None:
        return False
    if report.triggered:  # a held stop about to sell: it fires whatever the trigger rule
        return True
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
    steps: list[GroupAction] = []
    if entry_id not in state.started:
        entry = group.bracket_intent(ENTRY, group.entry.amount)
        steps.append(StartMember(intent=entry, reason="bracket entry"))
    if state.held_stop_loss and state.rules is None and state.rules_failure is None:
        reason = "step size and minimums of the exits"
        steps.append(LoadRules(symbol=group.entry.symbol, reason=reason))
    if steps:
        return tuple(steps)
    if stop_triggered(state):
        return _plan_stop_out(state)
    position = open_position(state)
    unstarted = [leg for leg in EXITS if group.leg_id(leg) not in state.started]
    if unstarted:
        if position <= 0 or not _protectable(state, position):
            return ()
        reason = f"entry filled {filled(state, entry_id)}: protecting {position}"
        return tuple(
            StartMember(
                intent=group.bracket_intent(leg, position, held_stop=state.held_stop_loss),
                reason=reason,
            )
            for leg in unstarted
        )
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


def _plan_stop_out(state: GroupState) -> tuple[GroupAction, ...]:
    """The held stop-loss triggered and waits: free what it sells (cancel the take-profit, and
    the entry's rest), then once their fills are final size it to the position and release it."""
    group = state.group
    stop_loss = group.leg_id(STOP_LOSS)
    others = (group.leg_id(ENTRY), group.leg_id(TAKE_PROFIT))
    cancels = tuple(
        CancelMember(intent_id=intent_id, reason="bracket: the stop-loss triggered")
        for intent_id in others
        if _cancellable(state, intent_id)
    )
    if cancels:
        return cancels
    if not all(is_terminal(state, i) for i in others if i in owned(state)):
        return ()  # cancels sent: their final fills decide what the stop-loss sells
    if not awaits_release(state, stop_loss) or stop_loss in state.cancels_sent:
        return ()
    position = open_position(state)
    if position <= 0:
        return (CancelMember(intent_id=stop_loss, reason="bracket: position closed"),)
    wanted = filled(state, stop_loss) + position
    if wanted != state.sized.get(stop_loss):
        reason = f"cover the open position {position}"
        return (ResizeMember(intent_id=stop_loss, amount=wanted, reason=reason),)
    # Released only after the resize was delivered (a plan later): the stop-loss places the
    # amount it was last sized to.
    reason = f"the take-profit is done: sell the open position {position}"
    return (ReleaseMember(intent_id=stop_loss, reason=reason),)


def _protectable(state: GroupState, position: Decimal) -> bool:
    """The exits would meet the market's minimums (a first fill too small to sell is protected
    once the entry has filled more: an exit refused now would never be started again)."""
    rules, group = state.rules, state.group
    if rules is None:
        return True
    if rules.min_amount and position < rules.min_amount:
        return False
    prices = [group.take_profit, group.stop_loss_limit or group.stop_loss]
    lowest = min(price for price in prices if price is not None)
    return not (rules.min_notional and position * lowest < rules.min_notional)


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
    """Bracket: what the entry brought in (`received`) and the exits have not closed yet."""
    group = state.group
    exits = sum((filled(state, group.leg_id(leg)) for leg in EXITS), Decimal(0))
    return received(state) - exits


def received(state: GroupState) -> Decimal:
    """Bracket: what the entry brought into the account, all that its exits may sell.

    With a held stop-loss: a buy entry's fee paid in the base asset (Binance spot's default)
    never reached the account, and an exit sells whole steps only, so the amount is net of that
    fee and rounded down to the step size. A sell entry pays its fee in the quote asset: its
    buy-back exits cover the filled amount. Runs before the patch: the filled amount."""
    group = state.group
    assert group.entry is not None
    entry_id = group.leg_id(ENTRY)
    amount = filled(state, entry_id)
    if not state.held_stop_loss:
        return amount
    report = state.members.get(entry_id)
    if group.entry.side is Side.BUY and report is not None:
        base = group.entry.symbol.split("/")[0]
        amount -= report.fees.get(base, Decimal(0))
    step = state.rules.step_size if state.rules is not None else None
    if step:
        amount = (amount // step) * step
    return max(amount, Decimal(0))


def stop_triggered(state: GroupState) -> bool:
    """Bracket: its held stop-loss has triggered (waiting for the release, or released)."""
    stop_loss = state.group.leg_id(STOP_LOSS)
    return state.held_stop_loss and (
        stop_loss in state.released or awaits_release(state, stop_loss)
    )


def awaits_release(state: GroupState, intent_id: str) -> bool:
    """A member's held stop triggered and waits for the group's release."""
    report = state.members.get(intent_id)
    return (
        report is not None
        and report.triggered
        and not report.status.is_terminal
        and intent_id in owned(state)
        and intent_id not in state.released
    )


def _cancellable(state: GroupState, intent_id: str) -> bool:
    return (
        intent_id in owned(state)
        and intent_id not in state.cancels_sent
        and not is_terminal(state, intent_id)
    )


# --- recorders: the state after what happened ----------------------------------------------


def record_group(
    state: GroupState,
    action: GroupAction,
    failure: str | None = None,
    rules: MarketRules | None = None,
) -> GroupState:
    """The state after the workflow executed `action`; `failure` says why it could not (a
    start refused, a signal to a member that is gone); `rules`: what `LoadRules` loaded."""
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
        case ReleaseMember(intent_id=intent_id):
            update["released"] = (*state.released, intent_id)
            note = f"release {intent_id}: {action.reason}"
        case LoadRules(symbol=symbol):
            if rules is not None:
                update["rules"] = rules
            else:
                update["rules_failure"] = failure or "no rules"
            note = f"rules of {symbol}: step size {rules.step_size if rules else 'unknown'}"
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
    return {
        intent_id: filled(state, intent_id)
        for intent_id in bracket_exit_ids(group)
        if filled(state, intent_id) > 0
    }


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
