"""The reconciler: pure decisions from desired and observed state, no I/O.

`plan(state)` looks at an `IntentState` and returns exactly one next `Action`. The workflow
executes it, records what it observed with the `record_*` functions below, and asks again:
level-triggered, like a Kubernetes controller. Nothing here trusts memory over observation: an
action whose outcome is unknown is followed by a lookup before anything else.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from exchange_kernel.models import (
    ActionRecord,
    ExchangeOrder,
    ExchangeOrderStatus,
    ExternalCancelPolicy,
    Fill,
    IntentChange,
    IntentState,
    IntentStatus,
    Money,
    OrderSpec,
    OrderType,
    Placement,
    ReconciliationStatus,
    Side,
    TimeInForce,
    Value,
    client_order_id,
)

RECENT_ACTIONS = 20
ABSENT = "absent"  # ExchangeOrder.type of a placement that a lookup did not find


class Place(Value):
    kind: Literal["place"] = "place"
    placement: Placement
    reason: str


class Amend(Value):
    """Replace the live order with `placement` in one exchange call (native edit)."""

    kind: Literal["amend"] = "amend"
    replaces: int
    placement: Placement
    reason: str


class Cancel(Value):
    kind: Literal["cancel"] = "cancel"
    placement: int
    reason: str


class Lookup(Value):
    kind: Literal["lookup"] = "lookup"
    placement: int
    reason: str


class Wait(Value):
    kind: Literal["wait"] = "wait"
    reason: str


class WatchPrice(Value):
    """A held stop has not triggered: watch the last price until it crosses `stop_price`.

    Nothing is on the exchange. The workflow observes a crossing price (`observe_price`) and
    plans again, which releases the order (`Place`)."""

    kind: Literal["watch_price"] = "watch_price"
    side: Side
    stop_price: Money
    reason: str


class Finish(Value):
    kind: Literal["finish"] = "finish"
    status: IntentStatus
    reason: str


Action = Place | Amend | Cancel | Lookup | Wait | WatchPrice | Finish


class ChangeRejected(ValueError):
    """A modification or cancellation that the intent cannot take, with the reason."""


def plan(state: IntentState) -> Action:
    """The one next step that brings the exchange closer to the intent."""
    if state.status.is_terminal:
        return Finish(status=state.status, reason=state.outcome_reason or state.status.value)

    for placement in state.placements:
        if placement.outcome_unknown:
            return Lookup(
                placement=placement.number,
                reason=f"outcome of the last request for {placement.client_order_id} is unknown",
            )

    if not state.placements and state.rules is not None:
        broken = state.rules.violations(state.desired)
        if broken:
            return Finish(status=IntentStatus.REJECTED, reason="; ".join(broken))

    desired = state.desired
    filled = state.filled
    live = [p for p in state.placements if p.live]
    if len(live) > 1:
        # Cannot happen through plan(); if observation ever shows it, shed the older order.
        return Cancel(placement=live[0].number, reason="two live orders for one intent")
    current = live[0] if live else None

    if filled >= desired.amount:
        if current is not None:
            return Cancel(placement=current.number, reason="intent amount is filled")
        return Finish(status=IntentStatus.FILLED, reason=f"filled {filled}")

    if state.cancel_reason is not None:
        if current is not None:
            return Cancel(placement=current.number, reason=f"cancel: {state.cancel_reason}")
        outcome = IntentStatus.EXPIRED if state.expiring else IntentStatus.CANCELED
        return Finish(status=outcome, reason=state.cancel_reason)

    if current is not None:
        return _plan_live(state, current)
    return _plan_idle(state)


def _plan_live(state: IntentState, current: Placement) -> Action:
    desired = state.desired
    order = current.order
    if order is None:
        return Lookup(placement=current.number, reason="placed order not yet observed")
    if current.cancel_requested:
        # We asked for a cancel and still see it open: the cancel did not take; ask again.
        return Cancel(placement=current.number, reason="order still open after cancel")
    if not _rests(state):
        return Wait(reason="waiting for the exchange to finish the order")
    wanted_remaining = desired.amount - state.filled
    # A released held stop is a plain order: its stop price is behind it, not on the exchange.
    stop_differs = not state.holds_stop and desired.stop_price != current.stop_price
    price_differs = desired.price != current.price or stop_differs
    if not price_differs and order.remaining == wanted_remaining:
        return Wait(reason="resting as desired")
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
    return Cancel(placement=current.number, reason=f"replace: {reason}")


def _plan_idle(state: IntentState) -> Action:
    desired = state.desired
    remaining = desired.amount - state.filled
    if not state.placements:
        if state.holds_stop:
            return _plan_held_stop(state, remaining)
        return Place(placement=_next_placement(state, remaining), reason="new intent")
    last = state.placements[-1]
    if last.rejected is not None:
        return Finish(status=IntentStatus.REJECTED, reason=last.rejected)
    assert last.order is not None  # not live and not rejected means observed
    status = last.order.status
    if status is ExchangeOrderStatus.REJECTED:
        return Finish(status=IntentStatus.REJECTED, reason="the exchange rejected the order")
    if status is ExchangeOrderStatus.CANCELED and last.cancel_requested and not _rests(state):
        # Cancelled by us, or never reached the exchange (observe_absent): a market/IOC/FOK
        # order that never ran has not expired; place it again.
        return Place(
            placement=_next_placement(state, remaining), reason=f"place remaining {remaining}"
        )
    if status is ExchangeOrderStatus.EXPIRED or not _rests(state):
        return Finish(
            status=IntentStatus.EXPIRED,
            reason=f"{desired.time_in_force.value} order ended with {state.filled} filled",
        )
    if status is ExchangeOrderStatus.CANCELED and not last.cancel_requested:
        if state.intent.on_external_cancel is ExternalCancelPolicy.FINISH:
            return Finish(
                status=IntentStatus.CANCELED,
                reason="the order was cancelled on the exchange outside exchange-kernel",
            )
        return Place(
            placement=_next_placement(state, remaining),
            reason="restore: the order was cancelled on the exchange outside exchange-kernel",
        )
    # Cancelled by us to be replaced, or filled while the intent grew: place what is left.
    return Place(placement=_next_placement(state, remaining), reason=f"place remaining {remaining}")


def _plan_held_stop(state: IntentState, remaining: Decimal) -> Action:
    """A stop the workflow holds: release it once the last price has crossed, else watch."""
    desired = state.desired
    assert desired.stop_price is not None  # a stop type: validated by OrderSpec
    condition = trigger_condition(desired.side, desired.stop_price)
    last = state.last_price
    if last is None or not stop_crossed(desired.side, desired.stop_price, last):
        seen = "" if last is None else f"; last price seen {last}"
        return WatchPrice(
            side=desired.side,
            stop_price=desired.stop_price,
            reason=f"stop held by the workflow: triggers when {condition}{seen}",
        )
    released = desired.type.released_as
    at = "market" if desired.price is None else f"{desired.price}"
    return Place(
        placement=_next_placement(state, remaining),
        reason=f"held stop triggered (last price {last}, {condition}): released as a "
        f"{released.value} order @ {at}",
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
    number = len(state.placements)
    # In the form of the account's exchange (`client_ids`); rules without an exchange (recorded
    # before it was known) give the kernel's own form, so old histories replay unchanged.
    exchange = state.rules.exchange if state.rules is not None else None
    return Placement(
        number=number,
        client_order_id=client_order_id(state.intent.intent_id, number, exchange),
        revision=state.revision,
        price=state.desired.price,
        # A held stop is released as a plain order: nothing on the exchange has a stop price.
        stop_price=None if state.holds_stop else state.desired.stop_price,
        amount=amount,
    )


def order_type_on_exchange(state: IntentState) -> tuple[OrderType, Decimal | None]:
    """The type and stop price of the intent's exchange orders: a held stop's released order
    is a plain market or limit order; every other intent sends its own type and stop."""
    if state.holds_stop:
        return state.desired.type.released_as, None
    return state.desired.type, state.desired.stop_price


# --- recording what happened (pure state transitions) -------------------------------------


def start(state: IntentState, action: Action, now: datetime) -> IntentState:
    """Record that `action` is about to be executed; a placement is then live until observed."""
    state = _log(state, action, now)
    if isinstance(action, Place | Amend):
        # Until the exchange answers, the new order's outcome is unknown.
        placement = action.placement.model_copy(update={"outcome_unknown": True})
        state = state.model_copy(update={"placements": (*state.placements, placement)})
    if isinstance(action, Amend):
        state = _update_placement(state, action.replaces, cancel_requested=True)
    if isinstance(action, Cancel):
        state = _update_placement(state, action.placement, cancel_requested=True)
    return _refresh(state)


def observe(state: IntentState, order: ExchangeOrder, now: datetime) -> IntentState:
    """Merge an observed exchange order into the placement with its client order id."""
    for placement in state.placements:
        if placement.client_order_id != order.client_order_id:
            continue
        known = placement.order
        if known is not None and _older(order, known):
            return state
        fills = _merge_fills(state.fills, order.fills)
        state = _update_placement(
            state, placement.number, order=order, outcome_unknown=False, rejected=None
        )
        state = state.model_copy(update={"fills": fills, "last_sync_at": now})
        return _refresh(state)
    return state


def observe_absent(state: IntentState, number: int, now: datetime) -> IntentState:
    """The exchange has no order with this placement's client order id."""
    placement = state.placements[number]
    if placement.order is None:
        # It never reached the exchange. That is not a rejection of the intent: close the
        # placement as if cancelled by us, so that the next plan places the remaining amount
        # again under a fresh client order id.
        state = _update_placement(
            state,
            number,
            outcome_unknown=False,
            cancel_requested=True,
            order=_absent_order(placement, state),
        )
    else:
        # Seen before, gone now (exchanges archive old orders): keep the last observation.
        state = _update_placement(state, number, outcome_unknown=False)
    return _refresh(state.model_copy(update={"last_sync_at": now}))


def observe_price(state: IntentState, price: Decimal, now: datetime) -> IntentState:
    """A last price seen for a held stop (the watch reports the one that crossed it)."""
    state = state.model_copy(update={"last_price": price, "last_price_at": now})
    return _refresh(state)


def amend_skipped(state: IntentState, replaced: int, new: int, now: datetime) -> IntentState:
    """The amend was not sent (the old order changed since it was planned): the old order is
    not being cancelled, the new one was never placed; plan again from what was observed."""
    state = _update_placement(state, replaced, cancel_requested=False)
    return observe_absent(state, new, now)


def reject(state: IntentState, number: int, reason: str, now: datetime) -> IntentState:
    """The exchange refused the placement (non-retryable): nothing was created."""
    state = _update_placement(state, number, outcome_unknown=False, rejected=reason)
    return _refresh(state.model_copy(update={"last_sync_at": now}))


def unknown(state: IntentState, number: int) -> IntentState:
    """A request for this placement ended without an answer: only a lookup can tell."""
    return _refresh(_update_placement(state, number, outcome_unknown=True))


def finish(state: IntentState, action: Finish, now: datetime) -> IntentState:
    state = _log(state, action, now)
    state = state.model_copy(
        update={
            "status": action.status,
            "outcome_reason": action.reason,
            "reconciliation_status": ReconciliationStatus.IN_SYNC,
        }
    )
    return state


def check_change(state: IntentState, change: IntentChange) -> None:
    """Raise ChangeRejected naming the problem if `change` cannot apply to this intent."""
    if state.status.is_terminal:
        raise ChangeRejected(f"intent {state.intent.intent_id} is already {state.status.value}")
    if state.cancel_reason is not None:
        raise ChangeRejected(f"intent {state.intent.intent_id} is being cancelled")
    desired = state.desired
    if change.price is not None and desired.price is None:
        raise ChangeRejected(f"price: a {desired.type.value} order has no price to change")
    if change.stop_price is not None:
        if not desired.type.is_stop:
            raise ChangeRejected(f"stop_price: a {desired.type.value} order has no stop price")
        if state.holds_stop and state.placements:
            raise ChangeRejected(
                "stop_price: the held stop has triggered already; its order is on the exchange"
            )
    if change.amount is not None and change.amount < state.filled:
        raise ChangeRejected(f"amount {change.amount} is below the {state.filled} already filled")
    if state.halted is not None and increases_risk(desired, change):
        raise ChangeRejected(
            f"account {state.intent.account} is halted ({state.halted}): only cancels and "
            "changes that reduce risk are accepted"
        )
    new_spec = _changed_spec(state, change)
    if state.rules is not None:
        remaining = new_spec.amount - state.filled
        if remaining > 0:
            broken = state.rules.violations(new_spec, amount=remaining)
            if broken:
                raise ChangeRejected("; ".join(broken))


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
    record = ActionRecord(
        at=now, action="halted" if reason else "resumed", reason=reason or "kill switch off"
    )
    return state.model_copy(
        update={
            "halted": reason,
            "recent_actions": (*state.recent_actions, record)[-RECENT_ACTIONS:],
        }
    )


def apply_change(state: IntentState, change: IntentChange, now: datetime) -> IntentState:
    check_change(state, change)
    desired = _changed_spec(state, change)
    record = ActionRecord(at=now, action="modify", reason=_describe_change(change))
    state = state.model_copy(
        update={
            "desired": desired,
            "revision": state.revision + 1,
            "recent_actions": (*state.recent_actions, record)[-RECENT_ACTIONS:],
        }
    )
    return _refresh(state)


def check_cancel(state: IntentState) -> None:
    if state.status.is_terminal:
        raise ChangeRejected(f"intent {state.intent.intent_id} is already {state.status.value}")


def request_cancel(state: IntentState, reason: str, now: datetime) -> IntentState:
    check_cancel(state)
    if state.cancel_reason is not None:
        return state
    record = ActionRecord(at=now, action="cancel requested", reason=reason)
    return state.model_copy(
        update={
            "cancel_reason": reason,
            "recent_actions": (*state.recent_actions, record)[-RECENT_ACTIONS:],
        }
    )


def request_expiry(state: IntentState, now: datetime) -> IntentState:
    """The intent's good-till time has come: cancel what is live, finish as expired."""
    if state.status.is_terminal or state.expiring:
        return state
    expires_at = state.intent.expires_at
    reason = f"expired at {expires_at.isoformat() if expires_at else now.isoformat()}"
    record = ActionRecord(at=now, action="expire", reason=reason)
    return state.model_copy(
        update={
            "cancel_reason": reason,
            "expiring": True,
            "recent_actions": (*state.recent_actions, record)[-RECENT_ACTIONS:],
        }
    )


def derive_status(state: IntentState) -> IntentStatus:
    """The non-terminal status that the observations show."""
    if state.status.is_terminal:
        return state.status
    if state.filled > 0:
        return IntentStatus.PARTIALLY_FILLED
    if any(p.order is not None and p.order.status.is_live for p in state.placements):
        return IntentStatus.OPEN
    return IntentStatus.PENDING


def _refresh(state: IntentState) -> IntentState:
    if state.status.is_terminal:
        return state
    if any(p.outcome_unknown for p in state.placements):
        reconciliation = ReconciliationStatus.UNKNOWN
    elif isinstance(
        plan(state.model_copy(update={"status": IntentStatus.PENDING})), Wait | WatchPrice
    ):
        reconciliation = ReconciliationStatus.IN_SYNC
    else:
        reconciliation = ReconciliationStatus.RECONCILING
    return state.model_copy(
        update={"status": derive_status(state), "reconciliation_status": reconciliation}
    )


def _log(state: IntentState, action: Action, now: datetime) -> IntentState:
    record = ActionRecord(at=now, action=action.kind, reason=action.reason)
    return state.model_copy(
        update={"recent_actions": (*state.recent_actions, record)[-RECENT_ACTIONS:]}
    )


def _update_placement(state: IntentState, number: int, **fields: object) -> IntentState:
    placements = tuple(
        p.model_copy(update=fields) if p.number == number else p for p in state.placements
    )
    return state.model_copy(update={"placements": placements})


def _older(new: ExchangeOrder, known: ExchangeOrder) -> bool:
    """Observations can arrive out of order (poll vs pushed); never step back."""
    if known.type == ABSENT:
        # Not an observation but the record of a lookup that found nothing: a request that
        # was only delayed can still create the order later, and then it must be seen.
        return False
    if known.status.is_live is False and new.status.is_live:
        return True
    return new.filled < known.filled


def _merge_fills(known: tuple[Fill, ...], new: tuple[Fill, ...]) -> tuple[Fill, ...]:
    ids = {f.trade_id for f in known}
    merged = list(known)
    for fill in new:
        if fill.trade_id not in ids:
            merged.append(fill)
            ids.add(fill.trade_id)
    return tuple(merged)


def _absent_order(placement: Placement, state: IntentState) -> ExchangeOrder:
    return ExchangeOrder(
        exchange_order_id="",
        client_order_id=placement.client_order_id,
        symbol=state.desired.symbol,
        side=state.desired.side,
        type=ABSENT,
        status=ExchangeOrderStatus.CANCELED,
        amount=placement.amount,
    )


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


def _describe_change(change: IntentChange) -> str:
    parts = []
    if change.price is not None:
        parts.append(f"price -> {change.price}")
    if change.amount is not None:
        parts.append(f"amount -> {change.amount}")
    if change.stop_price is not None:
        parts.append(f"stop_price -> {change.stop_price}")
    return ", ".join(parts)
