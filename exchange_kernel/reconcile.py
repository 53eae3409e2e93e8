"""The reconciler: every decision about an intent, from its state alone, with no I/O.

`plan(state, now)` returns exactly one next `Action`. The workflow executes it and records what
came back with `begin` (before the exchange call) and `record` (after it), then asks again:
level-triggered, like a Kubernetes controller (`Reconcile` returning a result and a requeue
time, here `Wait.after`). Every input of a decision is a field of `IntentState`, so a run
continued as new decides exactly as its predecessor would have. Nothing here trusts memory over
observation: an action whose outcome is unknown is followed by a lookup before anything else.

A placement (one exchange order of the intent) moves through `PlacementPhase`s only by the
transition table `TRANSITIONS`; an observation that would move it backwards (a filled order seen
open again, delivered late) changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from exchange_kernel import client_ids
from exchange_kernel.models import (
    ActionRecord,
    ExchangeOrder,
    ExchangeOrderStatus,
    ExternalCancelPolicy,
    Fill,
    IntentChange,
    IntentState,
    IntentStatus,
    Judgment,
    MarketRules,
    MemberUpdate,
    Money,
    OrderIntent,
    OrderSpec,
    OrderType,
    PendingChange,
    Placement,
    PlacementPhase,
    ReconciliationStatus,
    Refusal,
    Settled,
    Side,
    TimeInForce,
    Value,
    client_order_id,
)

# The view of a resting order is `stale` (not `in_sync`) once the kernel has not looked at the
# exchange for it for this long (a watched intent: once the account sync says its rounds lapsed).
# The default: an intent may set its own (`OrderIntent.stale_after`, see `stale_bound`).
STALE_AFTER = timedelta(seconds=30)
# An intent that polls its own order (no account sync) looks again after POLL_FIRST, doubling
# while nothing changes, up to POLL_CEILING (below STALE_AFTER, so a healthy poll stays fresh).
POLL_FIRST = timedelta(seconds=1)
POLL_CEILING = timedelta(seconds=15)
# Consecutive placements, amends or cancels that exhausted their budget before the intent is
# given up (failed). Lookups never give up: a look is harmless, and the status says `unknown`.
MAX_UNANSWERED_CALLS = 3
# Exchanges' reads lag their writes: an order created a moment ago may not be found yet. A
# write whose answer was lost is looked up only this long after it gave up, so "not found" is
# proof that it never reached the exchange (the place activity waits as long before it creates
# again: `activities.exchange.find_visible`).
VISIBILITY_GRACE = timedelta(seconds=5)
RECENT_ACTIONS = 20
# Ended placements kept one by one (their observations and trades); older ones are compacted
# into `IntentState.settled`. Their late observations are then ignored: the trade-id dedupe
# horizon is the kept placements. A placement that a lookup did not find is kept longer (it
# may still appear, exchanges' reads lag their writes) unless NOT_FOUND_HORIZON has passed.
KEEP_ENDED = 8
NOT_FOUND_HORIZON = timedelta(hours=1)
KEEP_JUDGMENTS = 20
# Exchange order ids of compacted placements kept for visibility (ExchangeOrderIds stays far
# below Temporal's 2,048-byte limit for a keyword list).
SETTLED_ORDER_IDS = 8


# --- actions: what plan() asks the workflow to do ------------------------------------------------


class LoadRules(Value):
    kind: Literal["load_rules"] = "load_rules"
    reason: str


class Place(Value):
    kind: Literal["place"] = "place"
    placement: Placement
    reason: str


class Amend(Value):
    """Replace the live order `replaces` with `placement` in one exchange call (native edit)."""

    kind: Literal["amend"] = "amend"
    replaces: int
    placement: Placement
    reason: str


class Cancel(Value):
    kind: Literal["cancel"] = "cancel"
    number: int
    reason: str


class Lookup(Value):
    kind: Literal["lookup"] = "lookup"
    number: int
    # A poll or a resync of an order resting as desired: nothing diverges, the view is renewed
    # (the intent stays `in_sync`); otherwise an outcome is unknown until the lookup answers.
    routine: bool = False
    reason: str


class WatchPrice(Value):
    """A held stop has not triggered: watch the last price until it crosses `stop_price` (or
    `after` passes: the intent's expiry). Nothing is on the exchange; the crossing price is
    recorded and the next plan releases the order (`Place`)."""

    kind: Literal["watch_price"] = "watch_price"
    side: Side
    stop_price: Money
    after: timedelta | None = None
    reason: str


class Watch(Value):
    """Register with the account's sync, which then pushes every change of the intent's orders
    (and the kill switch); `placement` is the number of the order it is to recognise."""

    kind: Literal["watch"] = "watch"
    placement: int
    reason: str


class Unwatch(Value):
    kind: Literal["unwatch"] = "unwatch"
    reason: str


class Report(Value):
    """Tell the intent's group (OCO, bracket) how far it has filled and where it stands."""

    kind: Literal["report"] = "report"
    update: MemberUpdate
    reason: str


class Expire(Value):
    """The intent's good-till time has come: from now on it cancels and finishes expired."""

    kind: Literal["expire"] = "expire"
    reason: str


class Judge(Value):
    """Decide a pending change now that no order is live: apply it (`rejection` None) or not."""

    kind: Literal["judge"] = "judge"
    number: int
    rejection: str | None = None
    reason: str


class Revert(Value):
    """Go back to the last accepted revision: the account is halted and what is desired now
    adds risk to it (a change accepted just before the halt, not yet on the exchange)."""

    kind: Literal["revert"] = "revert"
    reason: str


class Wait(Value):
    """Nothing to do until something changes, or `after` has passed (None: until a change)."""

    kind: Literal["wait"] = "wait"
    after: timedelta | None = None
    reason: str


class Finish(Value):
    """End the intent with `status` (on a finished intent: nothing left to do, return)."""

    kind: Literal["finish"] = "finish"
    status: IntentStatus
    reason: str


Action = (
    LoadRules
    | Place
    | Amend
    | Cancel
    | Lookup
    | WatchPrice
    | Watch
    | Unwatch
    | Report
    | Expire
    | Judge
    | Revert
    | Wait
    | Finish
)


# --- outcomes: what executing an action gave ------------------------------------------------------


class Observed(Value):
    """The exchange's answer: the order as it has it now, or None (it has no such order)."""

    kind: Literal["observed"] = "observed"
    order: ExchangeOrder | None


class Amended(Value):
    """A native edit's answer: the new order and the replaced one, each None if not found."""

    kind: Literal["amended"] = "amended"
    replaced: ExchangeOrder | None
    order: ExchangeOrder | None


class Refused(Value):
    """The exchange refused (non-retryable): nothing was created or changed."""

    kind: Literal["refused"] = "refused"
    reason: str


class Unanswered(Value):
    """The call exhausted its budget without an answer: nothing may be assumed. `at`: when it
    gave up (a write may have reached the exchange until then)."""

    kind: Literal["unanswered"] = "unanswered"
    error: str
    at: datetime | None = None


class RulesLoaded(Value):
    kind: Literal["rules_loaded"] = "rules_loaded"
    rules: MarketRules
    halted: str | None = None  # the account's kill switch as its sync had it then


class PriceCrossed(Value):
    kind: Literal["price_crossed"] = "price_crossed"
    price: Money


class Abandoned(Value):
    """A watch ended early because the plan changed (a change, a cancel, an expiry)."""

    kind: Literal["abandoned"] = "abandoned"


class Sent(Value):
    """A message to another workflow: delivered, or not (`note` says why)."""

    kind: Literal["sent"] = "sent"
    delivered: bool
    note: str = ""


Outcome = Observed | Amended | Refused | Unanswered | RulesLoaded | PriceCrossed | Abandoned | Sent


class ChangeRejected(ValueError):
    """A modification or cancellation that the intent cannot take, with the reason."""


# --- the placement phase table --------------------------------------------------------------------


class Event(StrEnum):
    """What can happen to a placement."""

    SEEN_OPEN = "seen_open"
    SEEN_FILLED = "seen_filled"
    SEEN_CANCELED = "seen_canceled"
    SEEN_EXPIRED = "seen_expired"
    SEEN_REJECTED = "seen_rejected"
    NOT_FOUND = "not_found"  # a lookup (or a cancel) found no such order
    NOT_SENT = "not_sent"  # the request was given up before it was sent
    REFUSED = "refused"  # the exchange refused to create it
    CANCEL_SENT = "cancel_sent"  # the kernel cancels it (or replaces it by an amend)
    AMEND_NOT_SENT = "amend_not_sent"  # the amend that was to replace it was never sent


SEEN = {
    ExchangeOrderStatus.OPEN: Event.SEEN_OPEN,
    ExchangeOrderStatus.CLOSED: Event.SEEN_FILLED,
    ExchangeOrderStatus.CANCELED: Event.SEEN_CANCELED,
    ExchangeOrderStatus.EXPIRED: Event.SEEN_EXPIRED,
    ExchangeOrderStatus.REJECTED: Event.SEEN_REJECTED,
}

P = PlacementPhase
_ENDINGS = {
    Event.SEEN_FILLED: P.FILLED,
    Event.SEEN_EXPIRED: P.EXPIRED,
    Event.SEEN_REJECTED: P.REJECTED,
}
# phase -> event -> next phase. An event a phase does not list changes nothing: that is how a
# late or reordered observation is ignored. Final phases list only their own observation (a
# newer look at the same ended order, e.g. with its trades).
TRANSITIONS: dict[PlacementPhase, dict[Event, PlacementPhase]] = {
    P.PLACING: {
        **_ENDINGS,
        Event.SEEN_OPEN: P.OPEN,
        Event.SEEN_CANCELED: P.CANCELED_ELSEWHERE,
        Event.NOT_FOUND: P.NOT_FOUND,
        Event.NOT_SENT: P.NOT_SENT,
        Event.REFUSED: P.REFUSED,
    },
    P.OPEN: {
        **_ENDINGS,
        Event.SEEN_OPEN: P.OPEN,
        Event.SEEN_CANCELED: P.CANCELED_ELSEWHERE,
        # Seen before, gone now (exchanges archive old orders): keep the last observation.
        Event.NOT_FOUND: P.OPEN,
        Event.CANCEL_SENT: P.CANCELING,
    },
    P.CANCELING: {
        **_ENDINGS,
        Event.SEEN_OPEN: P.CANCELING,
        Event.SEEN_CANCELED: P.CANCELED,
        # Gone after the kernel's own cancel: cancelled, with the fills last seen.
        Event.NOT_FOUND: P.CANCELED,
        Event.CANCEL_SENT: P.CANCELING,
        Event.AMEND_NOT_SENT: P.OPEN,
    },
    P.NOT_FOUND: {
        **_ENDINGS,
        # A request only delayed created the order after all: the intent has moved past it.
        Event.SEEN_OPEN: P.CANCELING,
        Event.SEEN_CANCELED: P.CANCELED,
        Event.NOT_FOUND: P.NOT_FOUND,
    },
    P.NOT_SENT: {},
    P.REFUSED: {},
    P.FILLED: {Event.SEEN_FILLED: P.FILLED},
    P.CANCELED: {Event.SEEN_CANCELED: P.CANCELED, Event.NOT_FOUND: P.CANCELED},
    P.CANCELED_ELSEWHERE: {
        Event.SEEN_CANCELED: P.CANCELED_ELSEWHERE,
        Event.NOT_FOUND: P.CANCELED_ELSEWHERE,
    },
    P.EXPIRED: {Event.SEEN_EXPIRED: P.EXPIRED, Event.NOT_FOUND: P.EXPIRED},
    P.REJECTED: {Event.SEEN_REJECTED: P.REJECTED},
}
del P


def advance(phase: PlacementPhase, event: Event) -> PlacementPhase | None:
    """The phase `event` moves a placement to, or None when the table ignores it."""
    return TRANSITIONS[phase].get(event)


# --- deciding ---------------------------------------------------------------------------------


def plan(state: IntentState, now: datetime) -> Action:
    """The one next step that brings the exchange closer to the intent."""
    if state.status.is_terminal:
        report = _report_due(state)
        if report is not None:
            return report
        if state.watched:
            return Unwatch(reason=f"intent {state.status.value}")
        return Finish(status=state.status, reason=state.outcome_reason or state.status.value)
    report = _report_due(state)
    if report is not None:
        return report
    return _converge(state, now)


def _converge(state: IntentState, now: datetime) -> Action:
    """The next step towards the exchange matching the intent (reports and finishing aside)."""
    if state.rules is None:
        if state.rules_failure is not None:
            status = IntentStatus.REJECTED if state.rules_refused else IntentStatus.FAILED
            return Finish(status=status, reason=state.rules_failure)
        return LoadRules(reason=f"market rules of {state.desired.symbol}")

    if state.unanswered >= MAX_UNANSWERED_CALLS:
        return Finish(
            status=IntentStatus.FAILED,
            reason=f"gave up after {state.unanswered} unanswered exchange calls: "
            f"{state.last_error}",
        )

    for placement in state.placements:
        if placement.phase is PlacementPhase.PLACING:
            gave_up = placement.unanswered_at
            if gave_up is not None and now < gave_up + VISIBILITY_GRACE:
                return Wait(
                    after=gave_up + VISIBILITY_GRACE - now,
                    reason=f"outcome of {placement.client_order_id} unknown: looked up once "
                    "the exchange's reads have caught up with its writes",
                )
            return Lookup(
                number=placement.number,
                reason=f"outcome of the last request for {placement.client_order_id} is unknown",
            )

    if not state.next_placement:
        broken = state.rules.violations(state.desired)
        if broken:
            return Finish(status=IntentStatus.REJECTED, reason="; ".join(broken))

    expires_at = state.intent.expires_at
    if (
        expires_at is not None
        and now >= expires_at
        and not state.expiring
        and state.cancel_reason is None
    ):
        return Expire(reason=f"expired at {expires_at.isoformat()}")

    live = [p for p in state.placements if p.live]
    if len(live) > 1:
        # Only a late order (one a lookup had not found) can make two: shed the older.
        return Cancel(number=live[0].number, reason="two live orders for one intent")
    current = live[0] if live else None

    if state.filled >= state.desired.amount:
        if current is not None:
            return Cancel(number=current.number, reason="intent amount is filled")
        return Finish(status=IntentStatus.FILLED, reason=f"filled {state.filled}")

    if state.cancel_reason is not None:
        if current is not None:
            return Cancel(number=current.number, reason=f"cancel: {state.cancel_reason}")
        outcome = IntentStatus.EXPIRED if state.expiring else IntentStatus.CANCELED
        return Finish(status=outcome, reason=state.cancel_reason)

    if state.pending_changes:
        pending = state.pending_changes[0]
        if current is not None:
            # A lower amount is judged on final fills: once the order is cancelled nothing
            # more can fill, so the reduction can never be accepted on a view the exchange has
            # already overtaken (then the remaining is placed again, at the new amount or not).
            return Cancel(
                number=current.number,
                reason=f"change {pending.number} lowers the amount: cancel first, judge it on "
                "the order's final fills",
            )
        return Judge(
            number=pending.number,
            rejection=_rejection(state, pending.change),
            reason=f"change {pending.number}: {describe_change(pending.change)}",
        )

    if state.halted is not None and state.accepted is not None and _adds_risk(state):
        return Revert(
            reason=f"account {state.intent.account} is halted ({state.halted}): revision "
            f"{state.revision} adds risk, back to revision {state.accepted_revision}"
        )
    if current is not None:
        return _plan_live(state, current, now)
    return _plan_idle(state, now)


def _adds_risk(state: IntentState) -> bool:
    """What is desired adds risk to the last revision the exchange accepted."""
    accepted, desired = state.accepted, state.desired
    if accepted is None or desired.reduce_only or accepted == desired:
        return False
    change = IntentChange(price=desired.price, amount=desired.amount, stop_price=desired.stop_price)
    return increases_risk(accepted, change)


def _plan_live(state: IntentState, current: Placement, now: datetime) -> Action:
    desired = state.desired
    order = current.order
    assert order is not None  # live and not PLACING: observed
    if current.phase is PlacementPhase.CANCELING:
        # Asked to cancel and still open (or the answer was lost): ask again.
        return Cancel(number=current.number, reason="order still open after cancel")
    newest = state.placements[-1]
    if (
        newest.number > current.number
        and newest.phase in (PlacementPhase.REFUSED, PlacementPhase.REJECTED)
        and newest.spec == desired
    ):
        # The exchange refuses what is desired and there is no accepted revision to go back
        # to (an edit of an order the intent did not place itself).
        refusal = newest.refusal or "rejected"
        return Cancel(number=current.number, reason=f"its replacement was refused: {refusal}")
    if state.resync_at is not None and (
        current.observed_at is None or current.observed_at < state.resync_at
    ):
        return Lookup(
            number=current.number, routine=True, reason="resync: look at the exchange now"
        )
    if not _rests(state):
        return _wait(state, current, now, "waiting for the exchange to finish the order")
    wanted_remaining = desired.amount - state.filled
    # A released held stop is a plain order: its stop price is behind it, not on the exchange.
    stop_differs = not state.holds_stop and desired.stop_price != current.stop_price
    price_differs = desired.price != current.price or stop_differs
    if not price_differs and order.remaining == wanted_remaining:
        return _wait(state, current, now, "resting as desired")
    changes = []
    if price_differs:
        changes.append(f"price {current.price} -> {desired.price}")
    if order.remaining != wanted_remaining:
        changes.append(f"remaining {order.remaining} -> {wanted_remaining}")
    reason = ", ".join(changes)
    native = state.rules is not None and state.rules.native_amend
    # A stop order on the exchange is cancelled and placed again (an edit of its trigger is
    # not what ccxt's editOrder promises); a released held stop is a plain order.
    if native and (not desired.type.is_stop or state.holds_stop):
        return Amend(
            replaces=current.number,
            placement=_next_placement(state, wanted_remaining),
            reason=f"amend: {reason}",
        )
    return Cancel(number=current.number, reason=f"replace: {reason}")


def _wait(state: IntentState, current: Placement, now: datetime, reason: str) -> Action:
    """Wait for a change; an intent that no account sync watches looks again on its own."""
    watch = _watch_due(state, current.number)
    if watch is not None:
        return watch
    after = _until_expiry(state, now)
    if not state.watched:
        seen = current.observed_at
        due = now if seen is None else seen + state.poll_interval
        if due <= now:
            return Lookup(
                number=current.number, routine=True, reason=f"poll ({state.poll_interval} since)"
            )
        after = due - now if after is None else min(after, due - now)
    return Wait(after=after, reason=reason)


def _watch_due(state: IntentState, number: int) -> Watch | None:
    """Registration with the account sync, when it is possible and not done yet."""
    if state.watched or state.watch_refused:
        return None
    if not state.stop_held:
        placement = state.placement(number)
        exchange = state.rules.exchange if state.rules is not None else None
        if not client_ids.belongs_to(
            placement.client_order_id, state.intent.intent_id, number, exchange
        ):
            return None  # an adopted order carries another client order id: polled
    return Watch(placement=number, reason="resting: observed by the account sync from now on")


def _until_expiry(state: IntentState, now: datetime) -> timedelta | None:
    expires_at = state.intent.expires_at
    if expires_at is None or state.expiring or state.cancel_reason is not None:
        return None
    return max(expires_at - now, timedelta(milliseconds=1))


def _plan_idle(state: IntentState, now: datetime) -> Action:
    """Nothing live: place (again), or finish. A remainder the market's minimums refuse is not
    placed: the intent ends with what it filled (it would be refused, and a refusal of the
    intent's own revision ends it `rejected`, though nothing was wrong with the intent)."""
    action = _plan_idle_step(state, now)
    last = state.placements[-1] if state.placements else None
    refused_again = (
        isinstance(action, Finish)
        and action.status is IntentStatus.REJECTED
        and last is not None
        and last.phase in (PlacementPhase.REFUSED, PlacementPhase.REJECTED)
    )
    if state.filled > 0 and (isinstance(action, Place) or refused_again):
        dust = unplaceable_remainder(state)
        if dust is not None:
            return Finish(status=IntentStatus.EXPIRED, reason=dust)
    return action


def unplaceable_remainder(state: IntentState) -> str | None:
    """Why the rest of the intent (its amount less its fills) cannot be placed on its own: below
    the market's minimum amount or minimum notional; None when it can (or nothing is known)."""
    rules, desired = state.rules, state.desired
    remaining = desired.amount - state.filled
    if rules is None or remaining <= 0:
        return None
    why = None
    if rules.min_amount and remaining < rules.min_amount:
        why = f"below the minimum amount {rules.min_amount}"
    elif desired.price is not None and rules.min_notional:
        notional = remaining * desired.price
        if notional < rules.min_notional:
            why = f"notional {notional} is below the minimum notional {rules.min_notional}"
    if why is None:
        return None
    return (
        f"the remaining {remaining} cannot be placed ({why}): ended with {state.filled} of "
        f"{desired.amount} filled"
    )


def _plan_idle_step(state: IntentState, now: datetime) -> Action:
    desired = state.desired
    remaining = desired.amount - state.filled
    if not state.placements:
        if state.holds_stop:
            # Released while halted too: a stop is how a position is protected.
            return _plan_held_stop(state, remaining, now)
        if state.halted is not None and not desired.reduce_only:
            # The kill switch: no new risk (a halt set after the client's check, before the
            # workflow started, reaches it through its rules load).
            return Finish(
                status=IntentStatus.REJECTED,
                reason=f"account {state.intent.account} is halted ({state.halted}): no new "
                "risk is placed",
            )
        return Place(placement=_next_placement(state, remaining), reason="new intent")
    last = state.placements[-1]
    phase = last.phase
    refused = phase in (PlacementPhase.REFUSED, PlacementPhase.REJECTED)
    if refused and (last.spec is None or last.spec == desired):
        # The exchange refuses the order the intent wants, and it has no other to go back to
        # (a refused modification went back to the last accepted revision: placed again below).
        reason = last.refusal or "the exchange rejected the order"
        return Finish(status=IntentStatus.REJECTED, reason=reason)
    if refused:
        return Place(
            placement=_next_placement(state, remaining),
            reason=f"place the last accepted revision again (remaining {remaining})",
        )
    withdrawn = phase in (
        PlacementPhase.CANCELED,
        PlacementPhase.NOT_FOUND,
        PlacementPhase.NOT_SENT,
    )
    if withdrawn and not _rests(state):
        # Cancelled by us, or never reached the exchange: a market/IOC/FOK order that never
        # ran has not expired; place it again.
        return Place(
            placement=_next_placement(state, remaining), reason=f"place remaining {remaining}"
        )
    if phase is PlacementPhase.EXPIRED or not _rests(state):
        return Finish(
            status=IntentStatus.EXPIRED,
            reason=f"{desired.time_in_force.value} order ended with {state.filled} filled",
        )
    if phase is PlacementPhase.CANCELED_ELSEWHERE:
        if state.intent.on_external_cancel is ExternalCancelPolicy.FINISH:
            return Finish(
                status=IntentStatus.CANCELED,
                reason="the order was cancelled on the exchange outside exchange-kernel",
            )
        return Place(
            placement=_next_placement(state, remaining),
            reason="restore: the order was cancelled on the exchange outside exchange-kernel",
        )
    # Cancelled by us to be replaced, never found, or filled while the intent grew.
    return Place(placement=_next_placement(state, remaining), reason=f"place remaining {remaining}")


def _plan_held_stop(state: IntentState, remaining: Decimal, now: datetime) -> Action:
    """A stop the workflow holds: release it once the last price has crossed, else watch."""
    desired = state.desired
    assert desired.stop_price is not None  # a stop type: validated by OrderSpec
    condition = trigger_condition(desired.side, desired.stop_price)
    last = state.last_price
    if last is None or not stop_crossed(desired.side, desired.stop_price, last):
        # Registered with the account sync although nothing is on the exchange yet: the kill
        # switch reaches the intents it watches (halt, cancel-all).
        watch = _watch_due(state, state.next_placement)
        if watch is not None:
            return watch
        seen = "" if last is None else f"; last price seen {last}"
        return WatchPrice(
            side=desired.side,
            stop_price=desired.stop_price,
            after=_until_expiry(state, now),
            reason=f"stop held by the workflow: triggers when {condition}{seen}",
        )
    if state.intent.release_by_group and not state.released:
        return Wait(
            reason=f"held stop triggered (last price {last}, {condition}): waiting for the "
            "group to free what it sells"
        )
    released = desired.type.released_as
    at = "market" if desired.price is None else f"{desired.price}"
    return Place(
        placement=_next_placement(state, remaining),
        reason=f"held stop triggered (last price {last}, {condition}): released as a "
        f"{released.value} order @ {at}",
    )


def _report_due(state: IntentState) -> Report | None:
    if state.intent.group_id is None or state.group_missing:
        return None
    update = MemberUpdate(
        intent_id=state.intent.intent_id,
        filled=state.filled,
        status=state.status,
        triggered=awaits_release(state),
        fees=state.fees,
    )
    if state.group_reported == update:
        return None
    return Report(update=update, reason=f"{state.status.value}, filled {state.filled}")


def awaits_release(state: IntentState) -> bool:
    """A held stop of a group that has triggered and waits for the group's release."""
    desired = state.desired
    if not (state.intent.release_by_group and state.stop_held and not state.released):
        return False
    last = state.last_price
    assert desired.stop_price is not None
    return last is not None and stop_crossed(desired.side, desired.stop_price, last)


def release(state: IntentState, now: datetime) -> IntentState:
    """The group freed what the triggered stop sells: it may place now."""
    if state.released:
        return state
    return refresh(
        note(state.model_copy(update={"released": True}), "released", "by its group", now), now
    )


def stop_crossed(side: Side, stop_price: Decimal, last: Decimal) -> bool:
    """A sell stop triggers when the last price is at or below it, a buy stop at or above."""
    return last <= stop_price if side is Side.SELL else last >= stop_price


def trigger_condition(side: Side, stop_price: Decimal) -> str:
    """The stop's trigger for people: `last <= 29000` (sell), `last >= 31000` (buy)."""
    return f"last {'<=' if side is Side.SELL else '>='} {stop_price}"


def _rests(state: IntentState) -> bool:
    """Only GTC limit orders rest (a stop waiting on the exchange too); market, IOC and FOK
    orders end by themselves, and so does a held stop-market once released."""
    order_type = state.desired.type
    if state.holds_stop:
        order_type = order_type.released_as
    return order_type is not OrderType.MARKET and state.desired.time_in_force is TimeInForce.GTC


def _next_placement(state: IntentState, amount: Decimal) -> Placement:
    number = state.next_placement
    exchange = state.rules.exchange if state.rules is not None else None
    return Placement(
        number=number,
        client_order_id=client_order_id(state.intent.intent_id, number, exchange),
        revision=state.revision,
        price=state.desired.price,
        # A held stop is released as a plain order: nothing on the exchange has a stop price.
        stop_price=None if state.holds_stop else state.desired.stop_price,
        amount=amount,
        spec=state.desired,
    )


def adopted(intent: OrderIntent, order: ExchangeOrder) -> IntentState:
    """The state of an intent that adopts an open exchange order (an orphan): the order is its
    live placement 0 and its accepted revision, so the intent goes on from there (a refused
    change goes back to it)."""
    placement = Placement(
        number=0,
        client_order_id=order.client_order_id,
        revision=0,
        price=order.price,
        stop_price=order.stop_price,
        amount=order.amount,
        phase=PlacementPhase.OPEN,
        order=order.model_copy(update={"fills": ()}),
        fills=order.fills,
        spec=intent.order,
    )
    return IntentState(
        intent=intent,
        desired=intent.order,
        placements=(placement,),
        next_placement=1,
        accepted=intent.order,
        accepted_revision=0,
        poll_interval=POLL_FIRST,
    )


def order_type_on_exchange(state: IntentState) -> tuple[OrderType, Decimal | None]:
    """The type and stop price of the intent's exchange orders: a held stop's released order
    is a plain market or limit order; every other intent sends its own type and stop."""
    if state.holds_stop:
        return state.desired.type.released_as, None
    return state.desired.type, state.desired.stop_price


def stale_bound(state: IntentState) -> timedelta:
    """How old the view of the intent's order may get before it is `stale`: the intent's own
    bound, else STALE_AFTER. Read from the state, never from a patched global: what a run
    decides must not depend on anything its history does not hold."""
    return state.intent.stale_after or STALE_AFTER


def poll_ceiling(state: IntentState) -> timedelta:
    """The longest wait between an unwatched intent's looks: below half its stale bound, so a
    healthy poll stays fresh."""
    return min(POLL_CEILING, stale_bound(state) / 2)


def is_stale(state: IntentState, now: datetime) -> bool:
    """The kernel's view of the intent's live order is older than its stale bound."""
    live = state.live_placement
    if live is None or live.phase is PlacementPhase.PLACING or state.status.is_terminal:
        return False
    if state.watched:
        return state.watch_lapsed_since is not None
    return live.observed_at is None or now - live.observed_at > stale_bound(state)


# --- recording (pure state transitions) -------------------------------------------------------


def begin(state: IntentState, action: Action, now: datetime) -> IntentState:
    """Record that `action` is about to be executed; a new order is then PLACING (unknown)."""
    if not isinstance(action, Place | Amend | Cancel | Lookup | WatchPrice):
        return state  # messages and bookkeeping: `record` logs what is worth it
    state = _log(state, action, now)
    if isinstance(action, Place | Amend):
        state = state.model_copy(
            update={
                "placements": (*state.placements, action.placement),
                "next_placement": action.placement.number + 1,
            }
        )
    if isinstance(action, Amend):
        state = _move(state, action.replaces, Event.CANCEL_SENT, now, observed=False)
    if isinstance(action, Cancel):
        state = _move(state, action.number, Event.CANCEL_SENT, now, observed=False)
    return refresh(state, now)


def record(
    state: IntentState, action: Action, outcome: Outcome | None, now: datetime
) -> IntentState:
    """Record what executing `action` gave (after `begin`). The one recorder of the workflow and
    of the property test. `now` is when the request was sent: an answer shows the exchange as
    of some moment after it, so a resync (or a change) that arrived while the call was under
    way is not taken as covered by it."""
    if isinstance(outcome, Unanswered):
        state = _unanswered(state, action, outcome.error, now)
        if isinstance(action, Place | Amend) and outcome.at is not None:
            placement = state.placement(action.placement.number)
            state = _replace(state, placement.model_copy(update={"unanswered_at": outcome.at}))
        return refresh(state, now)
    match action:
        case LoadRules():
            if isinstance(outcome, RulesLoaded):
                state = state.model_copy(update={"rules": outcome.rules})
                if outcome.halted is not None:
                    state = set_halted(state, outcome.halted, now)
            elif isinstance(outcome, Refused):
                state = state.model_copy(
                    update={"rules_failure": outcome.reason, "rules_refused": True}
                )
        case Place(placement=placement):
            if isinstance(outcome, Observed) and outcome.order is not None:
                state = observe(state, outcome.order, now)
            elif isinstance(outcome, Observed):
                state = observe_absent(state, placement.number, now)
            elif isinstance(outcome, Refused):
                state = _refuse(state, placement.number, outcome.reason, now)
                state = _refused_revision(state, placement.number, outcome.reason, now)
            state = _answered(state, poll_reset=True)
        case Amend(replaces=replaces, placement=placement):
            if isinstance(outcome, Amended):
                state = _record_amend(state, replaces, placement.number, outcome, now)
            elif isinstance(outcome, Refused):
                # Nothing was changed: the old order stays as it was (a lookup says how).
                state = _refuse(state, placement.number, outcome.reason, now)
                state = _move(state, replaces, Event.AMEND_NOT_SENT, now, observed=False)
                state = _refused_revision(state, placement.number, outcome.reason, now)
            state = _answered(state, poll_reset=True)
        case Cancel(number=number) | Lookup(number=number):
            if isinstance(outcome, Observed):
                before = _fingerprint(state, number)
                if outcome.order is None:
                    state = observe_absent(state, number, now)
                else:
                    state = observe(state, outcome.order, now)
                quiet = isinstance(action, Lookup) and _fingerprint(state, number) == before
                state = _answered(state, poll_reset=not quiet, write=isinstance(action, Cancel))
        case WatchPrice():
            if isinstance(outcome, PriceCrossed):
                state = observe_price(state, outcome.price, now)
                state = _answered(state, poll_reset=True, write=False)
        case Watch():
            if isinstance(outcome, Sent):
                if outcome.delivered:
                    state = state.model_copy(update={"watched": True, "watch_lapsed_since": None})
                else:
                    state = state.model_copy(update={"watch_refused": True})
                    state = note(
                        state, "polling", f"no account sync to watch it: {outcome.note}", now
                    )
        case Unwatch():
            state = state.model_copy(update={"watched": False})
        case Report(update=update):
            if isinstance(outcome, Sent) and outcome.delivered:
                state = state.model_copy(update={"group_reported": update})
            elif isinstance(outcome, Sent):
                # A group id used as a plain label, with no group workflow: nothing to tell.
                state = state.model_copy(update={"group_missing": True})
        case Expire(reason=reason):
            state = _log(state, action, now)
            state = state.model_copy(update={"cancel_reason": reason, "expiring": True})
        case Judge():
            state = _log(state, action, now)
            state = _judge(state, action, now)
        case Revert(reason=reason):
            state = _log(state, action, now)
            if state.accepted is not None:
                refusal = Refusal(
                    revision=state.revision, reason=reason, reverted_to=state.accepted_revision
                )
                state = state.model_copy(
                    update={
                        "desired": state.accepted,
                        "refusals": (*state.refusals, refusal)[-KEEP_JUDGMENTS:],
                    }
                )
        case Finish():
            state = _finish(state, action, now)
            return state
    return refresh(compact(state, now), now)


def _record_amend(
    state: IntentState, replaces: int, new: int, outcome: Amended, now: datetime
) -> IntentState:
    before = state.placement(replaces).filled  # what the plan saw
    if outcome.replaced is not None:
        state = observe(state, outcome.replaced, now)
    if outcome.order is not None:
        return observe(state, outcome.order, now)
    if outcome.replaced is not None and outcome.replaced.status.is_live:
        # Not made: the old order stays, the new one was never placed. If the old one changed
        # since it was planned (a fill), the next plan starts again from what was observed; if
        # not, the exchange refused the edit: like any refused order, back to the last accepted
        # revision (else the same edit would be sent again and again).
        state = _move(state, replaces, Event.AMEND_NOT_SENT, now, observed=False)
        if outcome.replaced.filled == before:
            state = _refuse(state, new, "the exchange did not make the edit", now)
            return _refused_revision(state, new, "the exchange did not make the edit", now)
        return refresh(_move(state, new, Event.NOT_SENT, now, observed=True), now)
    return observe_absent(state, new, now)


def _unanswered(state: IntentState, action: Action, error: str, now: datetime) -> IntentState:
    """A call without an answer changes no phase: a PLACING order stays unknown (a lookup comes
    next), a CANCELING one is cancelled again; only writes count towards giving up."""
    if isinstance(action, LoadRules):
        return state.model_copy(update={"rules_failure": f"could not load market rules: {error}"})
    state = note(state, "exchange call failed", error, now)
    if isinstance(action, Place | Amend | Cancel):
        state = state.model_copy(update={"unanswered": state.unanswered + 1})
    return state.model_copy(update={"last_error": error})


def _answered(state: IntentState, *, poll_reset: bool, write: bool = True) -> IntentState:
    """The exchange answered: a write's answer starts the give-up count again (a lookup's does
    not: reads that work do not make writes that time out succeed); a poll that found no
    change backs off (an action, or a change seen, looks again soon)."""
    interval = POLL_FIRST if poll_reset else min(state.poll_interval * 2, poll_ceiling(state))
    update: dict[str, object] = {"poll_interval": interval}
    if write:
        update["unanswered"] = 0
    return state.model_copy(update=update)


def _fingerprint(state: IntentState, number: int) -> tuple[object, ...]:
    try:
        placement = state.placement(number)
    except KeyError:
        return ()
    order = placement.order
    return (placement.phase, order.filled if order else None, order.status if order else None)


def observe(state: IntentState, order: ExchangeOrder, now: datetime) -> IntentState:
    """Merge an observed exchange order into the placement with its client order id (a kept
    one: observations of compacted placements, and of foreign ids, are ignored)."""
    for placement in state.placements:
        if placement.client_order_id == order.client_order_id:
            break
    else:
        return state
    phase = advance(placement.phase, SEEN[order.status])
    known = placement.order
    if phase is None or (known is not None and order.filled < known.filled):
        return state  # late or reordered: it would step back
    updated = placement.model_copy(
        update={
            "phase": phase,
            "order": order.model_copy(update={"fills": ()}),
            "fills": _merge_fills(placement.fills, order.fills, now),
            "observed_at": now,
        }
    )
    state = _replace(state, updated).model_copy(update={"last_sync_at": now})
    if placement.phase in (PlacementPhase.PLACING, PlacementPhase.NOT_FOUND):
        state = _accepted(state, updated)
    return refresh(state, now)


def _accepted(state: IntentState, placement: Placement) -> IntentState:
    """The exchange took the placement's order: its revision is the last accepted one."""
    if placement.phase is PlacementPhase.REJECTED or placement.spec is None:
        return state
    if state.accepted_revision is not None and placement.revision < state.accepted_revision:
        return state
    return state.model_copy(
        update={"accepted": placement.spec, "accepted_revision": placement.revision}
    )


def _refused_revision(state: IntentState, number: int, reason: str, now: datetime) -> IntentState:
    """The exchange refused the order of placement `number`. If that was a modification's order
    and it is still what is desired, the intent goes back to the last accepted revision (placed
    again if cancel-replace already cancelled it): a refused change never ends the intent."""
    placement = state.placement(number)
    if placement.phase is not PlacementPhase.REFUSED or placement.spec is None:
        return state
    accepted = state.accepted
    revert = (
        accepted is not None
        and placement.spec == state.desired
        and placement.spec != accepted
        and accepted.amount >= state.filled
    )
    refusal = Refusal(
        revision=placement.revision,
        reason=f"refused by the exchange: {reason}",
        reverted_to=state.accepted_revision if revert else None,
    )
    state = state.model_copy(update={"refusals": (*state.refusals, refusal)[-KEEP_JUDGMENTS:]})
    if not revert or accepted is None:
        return state
    state = state.model_copy(update={"desired": accepted})
    return note(
        state,
        "modify refused",
        f"the exchange refused revision {placement.revision} ({reason}): back to revision "
        f"{state.accepted_revision}, {accepted.summary()}",
        now,
    )


def change_settled(state: IntentState, revision: int, now: datetime) -> bool:
    """The change that made `revision` is settled: its order is on the exchange (or needs none:
    the intent is in sync), the exchange refused it, or the intent has finished."""
    if state.status.is_terminal or refusal_of(state, revision) is not None:
        return True
    if state.accepted_revision is not None and state.accepted_revision >= revision:
        return True
    if state.pending_changes or any(p.phase is PlacementPhase.PLACING for p in state.placements):
        return False
    # Nothing left to do for it but wait. A look at the exchange due first (a resync, a poll)
    # does not settle it: the change's own step may come after that look, and an answer given
    # before the look would depend on whether the loop ran first in the workflow task.
    action = _converge(state.model_copy(update={"status": IntentStatus.PENDING}), now)
    return isinstance(action, Wait | WatchPrice | Watch)


def refusal_of(state: IntentState, revision: int) -> Refusal | None:
    return next((r for r in state.refusals if r.revision == revision), None)


def observe_absent(state: IntentState, number: int, now: datetime) -> IntentState:
    """The exchange has no order with this placement's client order id."""
    return refresh(_move(state, number, Event.NOT_FOUND, now, observed=True), now)


def observe_price(state: IntentState, price: Decimal, now: datetime) -> IntentState:
    """A last price seen for a held stop (the watch reports the one that crossed it)."""
    state = state.model_copy(update={"last_price": price, "last_price_at": now})
    return refresh(state, now)


def _refuse(state: IntentState, number: int, reason: str, now: datetime) -> IntentState:
    state = _move(state, number, Event.REFUSED, now, observed=True, refusal=reason)
    return state.model_copy(update={"last_sync_at": now})


def _move(
    state: IntentState,
    number: int,
    event: Event,
    now: datetime,
    *,
    observed: bool,
    refusal: str | None = None,
) -> IntentState:
    """Move placement `number` by `event` through the phase table (unchanged if it ignores it)."""
    try:
        placement = state.placement(number)
    except KeyError:
        return state
    phase = advance(placement.phase, event)
    if phase is None:
        return state
    update: dict[str, object] = {"phase": phase}
    if observed:
        update["observed_at"] = now
    if phase is PlacementPhase.REFUSED:
        update["refusal"] = refusal or "refused"
    return _replace(state, placement.model_copy(update=update))


def _replace(state: IntentState, placement: Placement) -> IntentState:
    # model_validate, not model_copy: the phase's invariants (an observed phase has an order)
    # are checked on every transition.
    checked = Placement.model_validate(placement.model_dump())
    placements = tuple(checked if p.number == placement.number else p for p in state.placements)
    return state.model_copy(update={"placements": placements})


def _merge_fills(known: tuple[Fill, ...], new: tuple[Fill, ...], now: datetime) -> tuple[Fill, ...]:
    """`known` and the trades of `new` not in it (by trade id), stamped `known_at` now."""
    ids = {f.trade_id for f in known}
    merged = list(known)
    for fill in new:
        if fill.trade_id not in ids:
            merged.append(fill.model_copy(update={"known_at": now}))
            ids.add(fill.trade_id)
    return tuple(merged)


def compact(state: IntentState, now: datetime) -> IntentState:
    """Fold ended placements beyond the last KEEP_ENDED into `settled` (bounded state)."""
    ended = [p for p in state.placements if not p.live]
    if len(ended) <= KEEP_ENDED:
        return state
    candidates = ended[:-KEEP_ENDED]
    folded = [
        p
        for p in candidates
        if p.phase.is_final
        or (p.observed_at is not None and now - p.observed_at > NOT_FOUND_HORIZON)
    ]
    if not folded:
        return state
    settled = state.settled
    fees = dict(settled.fees)
    ids = list(settled.exchange_order_ids)
    filled, cost = settled.filled, settled.cost
    for placement in folded:
        filled += placement.filled
        cost += placement.cost
        for fill in placement.fills:
            if fill.fee and fill.fee_currency:
                fees[fill.fee_currency] = fees.get(fill.fee_currency, Decimal(0)) + fill.fee
        if placement.order is not None and placement.order.exchange_order_id:
            ids.append(placement.order.exchange_order_id)
    gone = {p.number for p in folded}
    return state.model_copy(
        update={
            "placements": tuple(p for p in state.placements if p.number not in gone),
            "settled": Settled(
                placements=settled.placements + len(folded),
                filled=filled,
                cost=cost,
                fees=fees,
                exchange_order_ids=tuple(ids[-SETTLED_ORDER_IDS:]),
            ),
        }
    )


def _finish(state: IntentState, action: Finish, now: datetime) -> IntentState:
    state = _log(state, action, now)
    # Changes still waiting for a judgment cannot apply to a finished intent.
    judgments = tuple(
        Judgment(
            number=p.number,
            rejection=f"intent {state.intent.intent_id} is already {action.status.value}",
            revision=state.revision,
        )
        for p in state.pending_changes
        if p.answered
    )
    return state.model_copy(
        update={
            "status": action.status,
            "outcome_reason": action.reason,
            "reconciliation_status": ReconciliationStatus.IN_SYNC,
            "pending_changes": (),
            "judgments": (*state.judgments, *judgments)[-KEEP_JUDGMENTS:],
        }
    )


# --- inputs from outside: changes, cancels, the kill switch, pushed observations ---------------


def check_change(state: IntentState, change: IntentChange) -> None:
    """Raise ChangeRejected naming the problem if `change` cannot apply to this intent."""
    rejection = _rejection(state, change)
    if rejection is not None:
        raise ChangeRejected(rejection)


def _rejection(state: IntentState, change: IntentChange) -> str | None:
    if state.status.is_terminal:
        return f"intent {state.intent.intent_id} is already {state.status.value}"
    if state.cancel_reason is not None:
        return f"intent {state.intent.intent_id} is being cancelled"
    desired = state.desired
    if change.price is not None and desired.price is None:
        return f"price: a {desired.type.value} order has no price to change"
    if change.stop_price is not None:
        if not desired.type.is_stop:
            return f"stop_price: a {desired.type.value} order has no stop price"
        if state.holds_stop and state.next_placement:
            return "stop_price: the held stop has triggered already; its order is on the exchange"
    if change.amount is not None and change.amount < state.filled:
        return f"amount {change.amount} is below the {state.filled} already filled"
    if state.halted is not None and increases_risk(desired, change):
        return (
            f"account {state.intent.account} is halted ({state.halted}): only cancels and "
            "changes that reduce risk are accepted"
        )
    new_spec = _changed_spec(state, change)
    if state.rules is not None:
        remaining = new_spec.amount - state.filled
        if remaining > 0:
            broken = state.rules.violations(new_spec, amount=remaining)
            if broken:
                return "; ".join(broken)
    return None


def lowers_amount(state: IntentState, change: IntentChange) -> bool:
    return change.amount is not None and change.amount < state.desired.amount


def receive_change(
    state: IntentState, change: IntentChange, now: datetime, *, answered: bool = False
) -> tuple[IntentState, int]:
    """Take a change (signal or update): refused at once if the known view refuses it; a change
    that lowers the amount (and any change behind one) waits to be judged on final fills
    (`Judge`); any other applies now. Returns the state and the change's number."""
    check_change(state, change)
    number = state.changes_received
    state = state.model_copy(update={"changes_received": number + 1})
    if state.pending_changes or lowers_amount(state, change):
        pending = PendingChange(number=number, change=change, at=now, answered=answered)
        record_ = ActionRecord(
            at=now, action="change pending", reason=f"{number}: {describe_change(change)}"
        )
        state = state.model_copy(
            update={
                "pending_changes": (*state.pending_changes, pending),
                "recent_actions": (*state.recent_actions, record_)[-RECENT_ACTIONS:],
            }
        )
        return refresh(state, now), number
    return apply_change(state, change, now), number


def _judge(state: IntentState, action: Judge, now: datetime) -> IntentState:
    pending = next(p for p in state.pending_changes if p.number == action.number)
    rest = tuple(p for p in state.pending_changes if p.number != action.number)
    state = state.model_copy(update={"pending_changes": rest})
    if action.rejection is None:
        state = apply_change(state, pending.change, now)
    else:
        state = note(state, "modify rejected", action.rejection, now)
    if not pending.answered:
        return state  # a signal: its refusal is in the recent actions, nobody waits for it
    # Kept for the update that waits for it: Temporal admits a few updates in flight per
    # workflow (10 by default), far fewer than KEEP_JUDGMENTS.
    judgment = Judgment(number=action.number, rejection=action.rejection, revision=state.revision)
    return state.model_copy(update={"judgments": (*state.judgments, judgment)[-KEEP_JUDGMENTS:]})


def judgment(state: IntentState, number: int) -> Judgment | None:
    for item in state.judgments:
        if item.number == number:
            return item
    return None


def increases_risk(desired: OrderSpec, change: IntentChange) -> bool:
    """A larger amount, or a price moved towards the market (a buy higher, a sell lower), or a
    stop moved to trigger sooner (a buy stop lower, a sell stop higher)."""
    if change.amount is not None and change.amount > desired.amount:
        return True
    if change.price is not None and desired.price is not None:
        if desired.side is Side.BUY:
            if change.price > desired.price:
                return True
        elif change.price < desired.price:
            return True
    if change.stop_price is not None and desired.stop_price is not None:
        if desired.side is Side.BUY:
            return change.stop_price < desired.stop_price
        return change.stop_price > desired.stop_price
    return False


def set_halted(state: IntentState, reason: str | None, now: datetime) -> IntentState:
    if state.halted == reason:
        return state
    state = state.model_copy(update={"halted": reason})
    return note(state, "halted" if reason else "resumed", reason or "kill switch off", now)


def apply_change(state: IntentState, change: IntentChange, now: datetime) -> IntentState:
    check_change(state, change)
    desired = _changed_spec(state, change)
    state = state.model_copy(update={"desired": desired, "revision": state.revision + 1})
    return refresh(note(state, "modify", describe_change(change), now), now)


def check_cancel(state: IntentState) -> None:
    if state.status.is_terminal:
        raise ChangeRejected(f"intent {state.intent.intent_id} is already {state.status.value}")


def request_cancel(state: IntentState, reason: str, now: datetime) -> IntentState:
    check_cancel(state)
    if state.cancel_reason is not None:
        return state
    state = state.model_copy(update={"cancel_reason": reason})
    return refresh(note(state, "cancel requested", reason, now), now)


def request_resync(state: IntentState, now: datetime) -> IntentState:
    """Look at the live order now (level-triggered: done unless it is observed after `now`)."""
    return refresh(state.model_copy(update={"resync_at": now}), now)


def mark_repaired(state: IntentState, reason: str, now: datetime) -> IntentState:
    """`exchange-kernel repair` reset the run: an order of the discarded history may exist
    under any placement's client order id, so every placement looks before it creates."""
    return note(state.model_copy(update={"repaired": True}), "repaired", reason, now)


def watch_lapsed(state: IntentState, since: datetime | None, now: datetime) -> IntentState:
    """The account sync says its view lapsed (`since`: its last completed round) or is back
    (None); a lapsed view makes a resting intent `stale`."""
    if state.watch_lapsed_since == since:
        return state
    state = state.model_copy(update={"watch_lapsed_since": since})
    what = "account sync lapsed" if since is not None else "account sync back"
    detail = f"no completed round since {since.isoformat()}" if since else "rounds complete again"
    return refresh(note(state, what, detail, now), now)


def note(state: IntentState, action: str, reason: str, now: datetime) -> IntentState:
    """Add a line to the intent's recent actions (a decision or an event worth seeing)."""
    record_ = ActionRecord(at=now, action=action, reason=reason)
    return state.model_copy(
        update={"recent_actions": (*state.recent_actions, record_)[-RECENT_ACTIONS:]}
    )


def derive_status(state: IntentState) -> IntentStatus:
    """The non-terminal status that the observations show."""
    if state.status.is_terminal:
        return state.status
    if state.filled > 0:
        return IntentStatus.PARTIALLY_FILLED
    if any(p.phase in (PlacementPhase.OPEN, PlacementPhase.CANCELING) for p in state.placements):
        return IntentStatus.OPEN
    return IntentStatus.PENDING


def reconciliation(state: IntentState, now: datetime) -> ReconciliationStatus:
    """How the exchange compares with the intent, as of `now`."""
    if state.status.is_terminal:
        return ReconciliationStatus.IN_SYNC
    if any(p.phase is PlacementPhase.PLACING for p in state.placements):
        return ReconciliationStatus.UNKNOWN
    action = _converge(state.model_copy(update={"status": IntentStatus.PENDING}), now)
    settled = isinstance(action, Wait | WatchPrice | Watch) or (
        isinstance(action, Lookup) and action.routine
    )
    if not settled:
        return ReconciliationStatus.RECONCILING
    return ReconciliationStatus.STALE if is_stale(state, now) else ReconciliationStatus.IN_SYNC


def refresh(state: IntentState, now: datetime) -> IntentState:
    """Derive status and reconciliation status again from the state."""
    if state.status.is_terminal:
        return state
    state = state.model_copy(update={"status": derive_status(state)})
    return state.model_copy(update={"reconciliation_status": reconciliation(state, now)})


def _log(state: IntentState, action: Action, now: datetime) -> IntentState:
    return note(state, action.kind, action.reason, now)


def _changed_spec(state: IntentState, change: IntentChange) -> OrderSpec:
    update: dict[str, Decimal] = {}
    if change.price is not None:
        update["price"] = change.price
    if change.amount is not None:
        update["amount"] = change.amount
    if change.stop_price is not None:
        update["stop_price"] = change.stop_price
    # Rebuild through validation so that the changed spec obeys the same rules as a new one.
    return OrderSpec.model_validate({**state.desired.model_dump(), **update})


def describe_change(change: IntentChange) -> str:
    parts = []
    if change.price is not None:
        parts.append(f"price -> {change.price}")
    if change.amount is not None:
        parts.append(f"amount -> {change.amount}")
    if change.stop_price is not None:
        parts.append(f"stop_price -> {change.stop_price}")
    return ", ".join(parts)
