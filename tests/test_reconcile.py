"""Specification of exchange_kernel.reconcile: one rule per unit test, then a stateful property
test that drives plan() and the transitions against a small fake exchange with faults."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    ExternalCancelPolicy,
    Fill,
    IntentChange,
    IntentState,
    IntentStatus,
    MarketRules,
    OrderIntent,
    OrderSpec,
    OrderType,
    Placement,
    ReconciliationStatus,
    Side,
    TimeInForce,
    client_order_id,
)
from exchange_kernel.reconcile import (
    Action,
    Amend,
    Cancel,
    ChangeRejected,
    Finish,
    Lookup,
    Place,
    Wait,
    WatchPrice,
    apply_change,
    check_change,
    finish,
    increases_risk,
    observe,
    observe_absent,
    observe_price,
    order_type_on_exchange,
    plan,
    reject,
    request_cancel,
    request_expiry,
    start,
    stop_crossed,
    unknown,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
D = Decimal
ZERO = Decimal(0)


def make_state(
    amount: str = "1",
    price: str | None = "100",
    type: str = "limit",
    time_in_force: str = "GTC",
    stop_price: str | None = None,
    policy: str = "finish",
    rules: MarketRules | None = None,
    intent_id: str = "i-1",
) -> IntentState:
    fields: dict[str, object] = {
        "symbol": "BTC/USDT",
        "side": "buy",
        "type": type,
        "amount": amount,
        "time_in_force": time_in_force,
    }
    if price is not None:
        fields["price"] = price
    if stop_price is not None:
        fields["stop_price"] = stop_price
    spec = OrderSpec.model_validate(fields)
    intent = OrderIntent(intent_id=intent_id, account="main", order=spec, on_external_cancel=policy)
    return IntentState(intent=intent, desired=spec, rules=rules)


def native_rules() -> MarketRules:
    return MarketRules(symbol="BTC/USDT", native_amend=True)


def seen(
    state: IntentState,
    number: int,
    status: str = "open",
    filled: str = "0",
    average: str | None = None,
    fills: tuple[Fill, ...] = (),
    amount: str | None = None,
    price: str | None = None,
) -> ExchangeOrder:
    """The exchange's view of placement `number`."""
    placement = state.placements[number]
    return ExchangeOrder(
        exchange_order_id=f"x{number}",
        client_order_id=placement.client_order_id,
        symbol=state.desired.symbol,
        side=state.desired.side,
        type=state.desired.type.value,
        status=ExchangeOrderStatus(status),
        price=D(price) if price is not None else placement.price,
        stop_price=state.desired.stop_price,
        amount=D(amount) if amount is not None else placement.amount,
        filled=D(filled),
        average_price=D(average) if average is not None else None,
        fills=fills,
    )


def fill(trade_id: str, number: int, amount: str, price: str, fee: str = "0") -> Fill:
    return Fill(
        trade_id=trade_id,
        exchange_order_id=f"x{number}",
        price=D(price),
        amount=D(amount),
        fee=D(fee),
        fee_currency="BTC",
    )


def placed(state: IntentState, **order: object) -> IntentState:
    """Plan a Place, start it, and observe the order the exchange created."""
    action = plan(state)
    assert isinstance(action, Place), action
    state = start(state, action, NOW)
    return observe(state, seen(state, action.placement.number, **order), NOW)  # type: ignore[arg-type]


def change(state: IntentState, price: str | None = None, amount: str | None = None) -> IntentState:
    return apply_change(
        state,
        IntentChange(
            price=D(price) if price is not None else None,
            amount=D(amount) if amount is not None else None,
        ),
        NOW,
    )


# --- placing ----------------------------------------------------------------------------------


def test_new_intent_places_placement_0_under_the_deterministic_client_order_id() -> None:
    action = plan(make_state(amount="2", price="100"))
    assert isinstance(action, Place)
    assert action.placement.number == 0
    assert action.placement.client_order_id == client_order_id("i-1", 0)
    assert action.placement.amount == D(2)
    assert action.placement.price == D(100)
    assert action.placement.revision == 0


def test_plan_is_deterministic() -> None:
    assert plan(make_state()) == plan(make_state())


def test_started_placement_is_outcome_unknown_until_observed() -> None:
    state = make_state()
    state = start(state, plan(state), NOW)
    assert state.placements[0].outcome_unknown
    assert state.reconciliation_status is ReconciliationStatus.UNKNOWN
    assert isinstance(plan(state), Lookup)


def test_order_resting_as_desired_waits_in_sync() -> None:
    state = placed(make_state())
    assert isinstance(plan(state), Wait)
    assert state.status is IntentStatus.OPEN
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC


def test_partly_filled_order_resting_as_desired_waits() -> None:
    state = placed(make_state(amount="2"), filled="0.5")
    assert isinstance(plan(state), Wait)
    assert state.status is IntentStatus.PARTIALLY_FILLED
    assert state.remaining == D("1.5")


def test_rule_violation_at_start_finishes_rejected_naming_the_rule() -> None:
    rules = MarketRules(symbol="BTC/USDT", tick_size=D("0.5"))
    action = plan(make_state(price="100.3", rules=rules))
    assert isinstance(action, Finish)
    assert action.status is IntentStatus.REJECTED
    assert "tick size" in action.reason


def test_exchange_rejection_finishes_rejected_with_its_reason() -> None:
    state = make_state()
    state = start(state, plan(state), NOW)
    state = reject(state, 0, "InsufficientFunds: balance too low", NOW)
    action = plan(state)
    assert action == Finish(
        status=IntentStatus.REJECTED, reason="InsufficientFunds: balance too low"
    )


def test_order_observed_rejected_finishes_rejected() -> None:
    state = placed(make_state(), status="rejected")
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.REJECTED


# --- modifying ---------------------------------------------------------------------------------


def test_price_change_amends_when_the_exchange_amends_natively() -> None:
    state = placed(make_state(amount="2", rules=native_rules()), filled="0.5")
    state = change(state, price="101")
    action = plan(state)
    assert isinstance(action, Amend)
    assert action.replaces == 0
    assert action.placement.number == 1
    assert action.placement.client_order_id == client_order_id("i-1", 1)
    assert action.placement.price == D(101)
    assert action.placement.amount == D("1.5")
    assert action.placement.revision == 1


def test_amend_marks_the_replaced_placement_cancel_requested() -> None:
    state = placed(make_state(rules=native_rules()))
    state = change(state, price="101")
    state = start(state, plan(state), NOW)
    assert state.placements[0].cancel_requested
    assert state.placements[1].outcome_unknown


def test_price_change_without_native_amend_cancels_then_places_the_remaining() -> None:
    state = placed(make_state(amount="2"), filled="0.5")
    state = change(state, price="101")
    action = plan(state)
    assert isinstance(action, Cancel) and action.placement == 0
    state = start(state, action, NOW)
    assert state.placements[0].cancel_requested
    # Not placed again until the cancel is confirmed.
    assert isinstance(plan(state), Cancel)
    state = observe(state, seen(state, 0, status="canceled", filled="0.7"), NOW)
    action = plan(state)
    assert isinstance(action, Place)
    assert action.placement.number == 1
    assert action.placement.price == D(101)
    assert action.placement.amount == D("1.3")


def test_stop_limit_price_change_cancels_even_with_native_amend() -> None:
    state = placed(make_state(type="stop_limit", stop_price="99", rules=native_rules()))
    state = change(state, price="101")
    assert isinstance(plan(state), Cancel)


def test_amount_increase_amends_to_the_new_remaining() -> None:
    state = placed(make_state(amount="2", rules=native_rules()), filled="0.5")
    state = change(state, amount="3")
    action = plan(state)
    assert isinstance(action, Amend) and action.placement.amount == D("2.5")


def test_amount_below_filled_is_rejected() -> None:
    state = placed(make_state(amount="2"), filled="1")
    with pytest.raises(ChangeRejected, match="below the 1 already filled"):
        check_change(state, IntentChange(amount=D("0.5")))
    with pytest.raises(ChangeRejected):
        change(state, amount="0.5")


def test_amount_equal_to_filled_cancels_the_rest_and_finishes_filled() -> None:
    state = placed(make_state(amount="2"), filled="1")
    state = change(state, amount="1")
    action = plan(state)
    assert isinstance(action, Cancel) and action.placement == 0
    state = start(state, action, NOW)
    state = observe(state, seen(state, 0, status="canceled", filled="1"), NOW)
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.FILLED


def test_modification_of_a_terminal_intent_is_rejected() -> None:
    state = placed(make_state(), status="closed", filled="1")
    state = finish(state, plan(state), NOW)  # type: ignore[arg-type]
    assert state.status is IntentStatus.FILLED
    with pytest.raises(ChangeRejected, match="already filled"):
        check_change(state, IntentChange(price=D(99)))


def test_cancel_of_a_terminal_intent_is_rejected() -> None:
    state = finish(make_state(), Finish(status=IntentStatus.EXPIRED, reason="IOC order ended"), NOW)
    with pytest.raises(ChangeRejected, match="already expired"):
        request_cancel(state, "strategy stopped", NOW)


def test_modification_while_cancelling_is_rejected() -> None:
    state = request_cancel(placed(make_state()), "strategy stopped", NOW)
    with pytest.raises(ChangeRejected, match="being cancelled"):
        check_change(state, IntentChange(price=D(99)))


def test_price_change_of_a_market_order_is_rejected() -> None:
    state = make_state(type="market", price=None)
    with pytest.raises(ChangeRejected, match="market"):
        check_change(state, IntentChange(price=D(99)))


def test_change_breaking_a_market_rule_is_rejected_naming_it() -> None:
    rules = MarketRules(symbol="BTC/USDT", tick_size=D(1))
    state = placed(make_state(rules=rules))
    with pytest.raises(ChangeRejected, match="tick size"):
        check_change(state, IntentChange(price=D("100.5")))


def test_accepted_change_bumps_the_revision_and_logs_it() -> None:
    state = change(placed(make_state()), price="99")
    assert state.revision == 1
    assert state.desired.price == D(99)
    assert state.recent_actions[-1].action == "modify"


def test_fill_landing_during_an_amend_is_corrected_by_amending_down() -> None:
    # Observed 0.5 of 2 filled; the amend asks for 1.5 at the new price, but the old order had
    # filled 0.8 before the exchange replaced it. Observing that must shrink the new order.
    state = placed(make_state(amount="2", rules=native_rules()), filled="0.5")
    state = change(state, price="101")
    action = plan(state)
    assert isinstance(action, Amend) and action.placement.amount == D("1.5")
    state = start(state, action, NOW)
    state = observe(state, seen(state, 1), NOW)
    # The replaced order is still believed open: shed it before anything else.
    assert plan(state) == Cancel(placement=0, reason="two live orders for one intent")
    state = start(state, plan(state), NOW)
    state = observe(state, seen(state, 0, status="canceled", filled="0.8"), NOW)
    action = plan(state)
    assert isinstance(action, Amend)
    assert action.replaces == 1
    assert action.placement.amount == D("1.2")


# --- unknown outcomes ----------------------------------------------------------------------------


def test_unknown_outcome_is_looked_up_before_anything_else() -> None:
    state = placed(make_state(amount="2"))
    state = change(state, price="101")
    state = start(state, plan(state), NOW)  # cancel-replace: Cancel(0)
    state = unknown(state, 0)
    state = change(state, amount="3")
    state = request_cancel(state, "strategy stopped", NOW)
    assert isinstance(plan(state), Lookup)
    assert plan(state).placement == 0  # type: ignore[union-attr]
    assert state.reconciliation_status is ReconciliationStatus.UNKNOWN


def test_lookup_that_finds_the_order_adopts_it() -> None:
    state = make_state()
    state = start(state, plan(state), NOW)
    state = unknown(state, 0)
    state = observe(state, seen(state, 0), NOW)
    assert not state.placements[0].outcome_unknown
    assert isinstance(plan(state), Wait)


def test_lookup_that_finds_nothing_places_again_under_a_new_client_order_id() -> None:
    state = make_state(amount="2")
    first = plan(state)
    state = start(state, first, NOW)
    state = unknown(state, 0)
    state = observe_absent(state, 0, NOW)
    action = plan(state)
    assert isinstance(action, Place)
    assert action.placement.number == 1
    assert action.placement.client_order_id != first.placement.client_order_id  # type: ignore[union-attr]
    assert action.placement.amount == D(2)
    assert state.status is not IntentStatus.REJECTED


def test_market_order_that_never_reached_the_exchange_is_placed_again() -> None:
    state = make_state(type="market", price=None)
    state = start(state, plan(state), NOW)
    state = unknown(state, 0)
    state = observe_absent(state, 0, NOW)
    action = plan(state)
    assert isinstance(action, Place), action
    assert action.placement.number == 1


def test_order_arriving_after_a_lookup_found_nothing_is_seen_and_the_duplicate_cancelled() -> None:
    # The request was slow, not lost: it reaches the exchange after the lookup said "absent"
    # and after the kernel placed again under a new client order id.
    state = make_state(amount="2")
    state = start(state, plan(state), NOW)
    state = observe_absent(unknown(state, 0), 0, NOW)
    state = placed(state)
    late = seen(state, 0, filled="1")
    state = observe(state, late, NOW)
    assert state.placements[0].order == late
    assert state.filled == D(1)
    assert plan(state) == Cancel(placement=0, reason="two live orders for one intent")


def test_order_arriving_after_a_lookup_found_nothing_is_cancelled_before_placing_again() -> None:
    state = make_state(amount="2")
    state = start(state, plan(state), NOW)
    state = observe_absent(unknown(state, 0), 0, NOW)
    state = observe(state, seen(state, 0), NOW)
    assert isinstance(plan(state), Cancel)


def test_cancel_that_did_not_take_is_sent_again() -> None:
    state = request_cancel(placed(make_state()), "stop", NOW)
    state = start(state, plan(state), NOW)
    state = unknown(state, 0)
    assert isinstance(plan(state), Lookup)
    state = observe(state, seen(state, 0), NOW)  # still open: the cancel never arrived
    assert isinstance(plan(state), Cancel)


# --- cancelling and external drift ------------------------------------------------------------


def test_cancel_while_live_cancels_then_finishes_canceled() -> None:
    state = request_cancel(placed(make_state()), "strategy stopped", NOW)
    action = plan(state)
    assert isinstance(action, Cancel) and action.placement == 0
    state = start(state, action, NOW)
    state = observe(state, seen(state, 0, status="canceled"), NOW)
    assert plan(state) == Finish(status=IntentStatus.CANCELED, reason="strategy stopped")


def test_cancel_before_anything_was_placed_finishes_canceled() -> None:
    state = request_cancel(make_state(), "changed my mind", NOW)
    assert plan(state) == Finish(status=IntentStatus.CANCELED, reason="changed my mind")


def test_finished_intent_plans_its_outcome_again_whatever_the_observations() -> None:
    state = placed(make_state())
    state = finish(state, Finish(status=IntentStatus.FAILED, reason="gave up: timeout"), NOW)
    state = observe(state, seen(state, 0, status="canceled"), NOW)
    assert plan(state) == Finish(status=IntentStatus.FAILED, reason="gave up: timeout")


def test_second_cancel_request_keeps_the_first_reason() -> None:
    state = request_cancel(make_state(), "first", NOW)
    assert request_cancel(state, "second", NOW).cancel_reason == "first"


def test_external_cancel_finishes_canceled_under_policy_finish() -> None:
    state = placed(make_state())
    state = observe(state, seen(state, 0, status="canceled"), NOW)
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.CANCELED
    assert "outside" in action.reason


def test_external_cancel_places_the_remaining_again_under_policy_restore() -> None:
    state = placed(make_state(amount="2", policy="restore"))
    state = observe(state, seen(state, 0, status="canceled", filled="0.5"), NOW)
    action = plan(state)
    assert isinstance(action, Place)
    assert action.placement.number == 1
    assert action.placement.amount == D("1.5")
    assert action.placement.client_order_id == client_order_id("i-1", 1)


def test_default_external_cancel_policy_is_finish() -> None:
    assert make_state().intent.on_external_cancel is ExternalCancelPolicy.FINISH


# --- fills and outcomes ----------------------------------------------------------------------


def test_filled_order_finishes_filled() -> None:
    state = placed(make_state(amount="2"), status="closed", filled="2")
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.FILLED
    state = finish(state, action, NOW)
    assert state.status is IntentStatus.FILLED
    assert plan(state) == Finish(status=IntentStatus.FILLED, reason=action.reason)


def test_ioc_partial_fill_finishes_expired_keeping_the_fills() -> None:
    state = make_state(amount="2", time_in_force="IOC")
    fills = (fill("t1", 0, "0.5", "100"),)
    state = placed(state, status="expired", filled="0.5", average="100", fills=fills)
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED
    state = finish(state, action, NOW)
    assert state.filled == D("0.5")
    assert state.fills == fills
    assert state.average_price == D(100)


def test_market_order_ending_partly_filled_finishes_expired() -> None:
    state = placed(make_state(type="market", price=None), status="canceled", filled="0.3")
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED


def test_non_resting_order_still_open_waits_for_the_exchange() -> None:
    state = placed(make_state(time_in_force="IOC"))
    assert isinstance(plan(state), Wait)


def test_fills_accumulate_across_placements_with_a_volume_weighted_average_price() -> None:
    state = placed(make_state(amount="4"))
    state = change(state, price="110")
    state = start(state, plan(state), NOW)
    fills0 = (fill("t1", 0, "1", "100", fee="0.001"),)
    state = observe(state, seen(state, 0, "canceled", "1", average="100", fills=fills0), NOW)
    fills1 = (fill("t2", 1, "2", "110", fee="0.002"), fill("t3", 1, "1", "110", fee="0.001"))
    state = placed(state, status="closed", filled="3", average="110", fills=fills1)
    assert state.filled == D(4)
    assert state.average_price == (D(1) * 100 + D(3) * 110) / 4
    assert state.fees == {"BTC": D("0.004")}
    assert [f.trade_id for f in state.fills] == ["t1", "t2", "t3"]
    assert isinstance(plan(state), Finish)


def test_fills_are_deduplicated_by_trade_id() -> None:
    state = placed(make_state(amount="2"))
    first = (fill("t1", 0, "0.5", "100", fee="0.001"),)
    state = observe(state, seen(state, 0, filled="0.5", fills=first), NOW)
    both = (*first, fill("t2", 0, "0.5", "100", fee="0.001"))
    state = observe(state, seen(state, 0, filled="1", fills=both), NOW)
    state = observe(state, seen(state, 0, filled="1", fills=both), NOW)
    assert [f.trade_id for f in state.fills] == ["t1", "t2"]
    assert state.fees == {"BTC": D("0.002")}


def test_an_older_observation_never_steps_back() -> None:
    state = placed(make_state(amount="2"))
    state = observe(state, seen(state, 0, filled="1"), NOW)
    state = observe(state, seen(state, 0, filled="0.5"), NOW)
    assert state.filled == D(1)
    state = observe(state, seen(state, 0, status="closed", filled="2"), NOW)
    state = observe(state, seen(state, 0, status="open", filled="2"), NOW)
    assert state.placements[0].order.status is ExchangeOrderStatus.CLOSED  # type: ignore[union-attr]


def test_observation_of_a_foreign_client_order_id_is_ignored() -> None:
    state = placed(make_state())
    foreign = seen(state, 0).model_copy(update={"client_order_id": "someone-else"})
    assert observe(state, foreign, NOW) == state


def test_two_live_orders_shed_the_older() -> None:
    state = make_state()
    live = [
        Placement(number=n, client_order_id=client_order_id("i-1", n), revision=0, amount=D(1))
        for n in (0, 1)
    ]
    state = state.model_copy(update={"placements": tuple(live)})
    state = observe(state, seen(state, 0), NOW)
    state = observe(state, seen(state, 1), NOW)
    assert plan(state) == Cancel(placement=0, reason="two live orders for one intent")


# --- stops held by the workflow -----------------------------------------------------------------
# Where the exchange has no stop order (or the account says held_stops), the intent holds the
# stop: it watches the last price (WatchPrice) and places a plain market or limit order once the
# price has crossed the stop. Nothing reaches the exchange before that.

HOLDS_STOPS = MarketRules(
    symbol="BTC/USDT",
    native_amend=True,
    held_stops=(OrderType.STOP_LIMIT, OrderType.STOP_MARKET),
)


def held_stop(
    type: str = "stop_market", side: str = "sell", stop: str = "95", price: str | None = None
) -> IntentState:
    spec = OrderSpec.model_validate(
        {
            "symbol": "BTC/USDT",
            "side": side,
            "type": type,
            "amount": "1",
            "stop_price": stop,
            **({"price": price} if price is not None else {}),
        }
    )
    intent = OrderIntent(intent_id="held-1", account="main", order=spec)
    return IntentState(intent=intent, desired=spec, rules=HOLDS_STOPS)


def test_held_stop_watches_the_price_and_places_nothing() -> None:
    state = held_stop()
    action = plan(state)
    assert action == WatchPrice(side="sell", stop_price=D(95), reason=action.reason)
    assert "triggers when last <= 95" in action.reason
    state = start(state, action, NOW)
    assert state.placements == ()
    assert state.stop_held and state.status is IntentStatus.PENDING
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC
    assert state.recent_actions[-1].action == "watch_price"


def test_stop_on_an_exchange_with_stop_orders_is_placed_as_a_stop() -> None:
    state = make_state(type="stop_limit", stop_price="95", rules=native_rules())
    action = plan(state)
    assert isinstance(action, Place) and action.placement.stop_price == D(95)
    assert order_type_on_exchange(state) == (OrderType.STOP_LIMIT, D(95))


@pytest.mark.parametrize(
    ("side", "last", "crossed"),
    [
        ("sell", "95.01", False),
        ("sell", "95", True),
        ("sell", "90", True),
        ("buy", "94.99", False),
        ("buy", "95", True),
        ("buy", "100", True),
    ],
)
def test_a_sell_stop_triggers_at_or_below_a_buy_stop_at_or_above(
    side: str, last: str, crossed: bool
) -> None:
    assert stop_crossed(Side(side), D(95), D(last)) is crossed
    state = observe_price(held_stop(side=side), D(last), NOW)
    assert isinstance(plan(state), Place if crossed else WatchPrice)


def test_held_stop_market_is_released_as_a_market_order_once_crossed() -> None:
    state = observe_price(held_stop(), D("94.9"), NOW)
    assert state.last_price == D("94.9") and state.last_price_at == NOW
    action = plan(state)
    assert isinstance(action, Place)
    assert action.placement.price is None and action.placement.stop_price is None
    assert action.placement.client_order_id == client_order_id("held-1", 0)
    assert "held stop triggered (last price 94.9, last <= 95)" in action.reason
    assert order_type_on_exchange(state) == (OrderType.MARKET, None)
    # The released market order ends by itself: filled, or expired with what it got.
    state = start(state, action, NOW)
    state = observe(state, seen(state, 0, status="expired", filled="0.4"), NOW)
    assert plan(state) == Finish(status=IntentStatus.EXPIRED, reason=plan(state).reason)


def test_held_stop_limit_is_released_as_a_limit_order_at_its_price() -> None:
    state = observe_price(held_stop(type="stop_limit", price="94"), D(95), NOW)
    action = plan(state)
    assert isinstance(action, Place)
    assert action.placement.price == D(94) and action.placement.stop_price is None
    assert order_type_on_exchange(state) == (OrderType.LIMIT, None)
    state = start(state, action, NOW)
    state = observe(state, seen(state, 0), NOW)
    assert plan(state) == Wait(reason="resting as desired")
    assert not state.stop_held and state.status is IntentStatus.OPEN
    # A plain limit order from here on: a new price is amended natively where the exchange can.
    state = change(state, price="93")
    assert isinstance(plan(state), Amend)


def test_cancelling_a_held_stop_finishes_cancelled_without_an_exchange_order() -> None:
    state = start(held_stop(), plan(held_stop()), NOW)
    state = request_cancel(state, "strategy stopped", NOW)
    assert plan(state) == Finish(status=IntentStatus.CANCELED, reason="strategy stopped")
    # even when the price crossed in the meantime
    assert isinstance(plan(observe_price(state, D(90), NOW)), Finish)


def test_a_held_stop_expires_without_an_exchange_order() -> None:
    state = request_expiry(held_stop(), NOW)
    action = plan(state)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED


def test_a_new_stop_price_changes_only_what_is_watched() -> None:
    state = start(held_stop(), plan(held_stop()), NOW)
    state = apply_change(state, IntentChange(stop_price=D(90)), NOW)
    assert state.desired.stop_price == D(90) and state.revision == 1
    state = observe_price(state, D(92), NOW)  # through the old stop, not the new one
    action = plan(state)
    assert isinstance(action, WatchPrice) and action.stop_price == D(90)
    assert isinstance(plan(observe_price(state, D(90), NOW)), Place)


def test_stop_price_change_after_the_held_stop_triggered_is_rejected() -> None:
    state = observe_price(held_stop(type="stop_limit", price="94"), D(95), NOW)
    state = start(state, plan(state), NOW)
    with pytest.raises(ChangeRejected, match="triggered already"):
        check_change(state, IntentChange(stop_price=D(90)))


def test_stop_price_change_of_a_limit_order_is_rejected() -> None:
    with pytest.raises(ChangeRejected, match="a limit order has no stop price"):
        check_change(make_state(), IntentChange(stop_price=D(90)))
    with pytest.raises(ChangeRejected, match="a stop_market order has no price"):
        check_change(held_stop(), IntentChange(price=D(90)))


def test_a_stop_moved_to_trigger_sooner_increases_risk() -> None:
    sell = held_stop().desired
    assert increases_risk(sell, IntentChange(stop_price=D(96)))
    assert not increases_risk(sell, IntentChange(stop_price=D(94)))
    buy = held_stop(side="buy").desired
    assert increases_risk(buy, IntentChange(stop_price=D(94)))
    assert not increases_risk(buy, IntentChange(stop_price=D(96)))


HELD_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("price"), st.sampled_from(["85", "90", "94.99", "95", "99", "105"])),
        st.tuples(st.just("stop"), st.sampled_from(["88", "92", "95", "98", "102"])),
        st.tuples(st.just("fill"), st.just("")),
        st.tuples(st.just("cancel"), st.just("")),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    type=st.sampled_from(["stop_market", "stop_limit"]),
    side=st.sampled_from(["buy", "sell"]),
    events=HELD_EVENTS,
)
def test_held_stop_places_exactly_once_and_only_after_the_price_crossed(
    type: str, side: str, events: list[tuple[str, str]]
) -> None:
    """Prices come and go, the stop moves, the strategy may cancel: the intent never places
    while the last price has not crossed the stop it holds, places exactly once after the
    price crossed (before any cancel), and a cancel before that ends it with no order."""
    state = held_stop(type=type, side=side, price="95" if type == "stop_limit" else None)
    places = 0
    crossed_before_cancel = False
    cancelled = False
    for event, value in events:
        if state.status.is_terminal:
            break
        if event == "price":
            state = observe_price(state, D(value), NOW)
        elif event == "stop":
            try:
                state = apply_change(state, IntentChange(stop_price=D(value)), NOW)
            except ChangeRejected:
                assert state.placements or state.cancel_reason is not None
        elif event == "cancel":
            state = request_cancel(state, "strategy stopped", NOW)
            cancelled = True
        elif event == "fill" and state.live_placement is not None:
            state = observe(state, seen(state, 0, status="closed", filled="1"), NOW)
        for _ in range(5):  # the workflow: act until it waits or finishes
            action = plan(state)
            last, stop = state.last_price, state.desired.stop_price
            assert stop is not None
            crossed = last is not None and stop_crossed(Side(side), stop, last)
            if isinstance(action, WatchPrice):
                assert not crossed and not state.placements and action.stop_price == stop
                break
            if isinstance(action, Place):
                assert crossed and not cancelled and places == 0, (action, state)
                crossed_before_cancel = True
                places += 1
                state = start(state, action, NOW)
                market = type == "stop_market"
                state = observe(state, seen(state, 0, status="expired" if market else "open"), NOW)
                continue
            if isinstance(action, Cancel):
                state = start(state, action, NOW)
                state = observe(state, seen(state, 0, status="canceled"), NOW)
                continue
            if isinstance(action, Finish):
                state = finish(state, action, NOW)
            break
    assert places == (1 if crossed_before_cancel else 0)
    assert len(state.placements) == places
    if cancelled and not crossed_before_cancel:
        assert state.status is IntentStatus.CANCELED and state.placements == ()


# --- the stateful property test -------------------------------------------------------------
#
# A fake exchange (a dict of orders by client order id, not a mock of ccxt) and a fake workflow
# that plans, executes each action against it and records the result through the transitions.
# Faults: a request's answer is lost before or after the exchange committed it (the workflow
# records unknown()), the workflow records nothing after start() at all (crash_*), or the
# exchange refuses the order. The strategy modifies (validly or not) and cancels. The exchange
# fills and cancels on its own; each such event is pushed to the kernel at once (as the account
# sync would) or left for a later poll, cancel or lookup to discover, and its previous snapshot
# may still arrive late, out of order. When an intent finishes, the next one starts.
#
# Races are kept in the model on purpose, not excluded:
# (1) a fill lands between the kernel's last observation and a native amend (atomic in the
#     fake: the old order is cancelled and the new one created in one step), so the amend asks
#     for the stale remaining and the exchange may fill more than the intent amount;
# (2) the strategy reduces the amount while the exchange fills the old, larger order.
# The invariants assert that the kernel over-asks only from a stale view (never when every
# event was pushed), that without a race the exchange never fills more than the intent amount,
# and that once the kernel has observed (a poll) it cancels or amends down: the quiet loop must
# reach "resting as desired" with the exchange's true remaining, or finish.

# lost_*: the request ended without an answer and the workflow records unknown(); crash_*: the
# workflow recorded start() and then nothing at all (say a worker died), before or after the
# exchange committed the request.
FAULTS = ["ok"] * 8 + [
    "lost_before_commit",
    "lost_after_commit",
    "crash_before_commit",
    "crash_after_commit",
    "refused",
]
BEFORE_COMMIT = {"lost_before_commit", "crash_before_commit"}
AFTER_COMMIT = {"lost_after_commit", "crash_after_commit"}
NOT_OPEN = "OrderNotFound: the order to amend is no longer open"


@dataclass
class FakeOrder:
    exchange_order_id: str
    client_order_id: str
    type: str
    price: Decimal | None
    stop_price: Decimal | None
    amount: Decimal
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    status: ExchangeOrderStatus = ExchangeOrderStatus.OPEN
    fills: list[Fill] = field(default_factory=list)
    cancelled_externally: bool = False

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass
class FakeExchange:
    rules: MarketRules | None
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    def live(self) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.status.is_live]

    @property
    def filled(self) -> Decimal:
        return sum((o.filled for o in self.orders.values()), D(0))

    def view(self, coid: str) -> ExchangeOrder | None:
        order = self.orders.get(coid)
        if order is None:
            return None
        return ExchangeOrder(
            exchange_order_id=order.exchange_order_id,
            client_order_id=order.client_order_id,
            symbol="BTC/USDT",
            side="buy",
            type=order.type,
            status=order.status,
            price=order.price,
            stop_price=order.stop_price,
            amount=order.amount,
            filled=order.filled,
            average_price=order.cost / order.filled if order.filled else None,
            fills=tuple(order.fills),
        )

    def refusal(self, spec: OrderSpec, placement: Placement) -> str | None:
        if self.rules is None:
            return None
        priced = spec.model_copy(update={"price": placement.price})
        return "; ".join(self.rules.violations(priced, amount=placement.amount)) or None

    def create(self, spec: OrderSpec, placement: Placement, taker: Decimal) -> str | None:
        """Create the order; the refusal reason if the exchange refuses it."""
        assert placement.client_order_id not in self.orders, "client order id reused"
        refused = self.refusal(spec, placement)
        if refused:
            return refused
        order = FakeOrder(
            exchange_order_id=f"x{next(self.ids)}",
            client_order_id=placement.client_order_id,
            type=spec.type.value,
            price=placement.price,
            stop_price=spec.stop_price,
            amount=placement.amount,
        )
        self.orders[order.client_order_id] = order
        if not _rests(spec):
            # Takes what the book offers at once, then ends by itself.
            quantity = min(taker, order.amount)
            if spec.time_in_force is TimeInForce.FOK and quantity < order.amount:
                quantity = D(0)
            if quantity:
                self.fill(order.client_order_id, quantity)
            if order.status.is_live:
                order.status = ExchangeOrderStatus.EXPIRED
        return None

    def amend(self, old: str, spec: OrderSpec, placement: Placement) -> str | None:
        """Native edit: cancel `old` and create the new order in one atomic step."""
        if not self.orders[old].status.is_live:
            return NOT_OPEN
        refused = self.refusal(spec, placement)
        if refused:
            return refused
        self.orders[old].status = ExchangeOrderStatus.CANCELED
        return self.create(spec, placement, D(0))

    def cancel(self, coid: str) -> None:
        order = self.orders.get(coid)
        if order is not None and order.status.is_live:
            order.status = ExchangeOrderStatus.CANCELED

    def fill(self, coid: str, quantity: Decimal) -> None:
        order = self.orders[coid]
        assert order.status.is_live and 0 < quantity <= order.remaining
        price = order.price if order.price is not None else D(100)
        order.filled += quantity
        order.cost += quantity * price
        order.fills.append(
            Fill(
                trade_id=f"t{next(self.ids)}",
                exchange_order_id=order.exchange_order_id,
                client_order_id=coid,
                price=price,
                amount=quantity,
                fee=quantity / 1000,
                fee_currency="BTC",
            )
        )
        if order.remaining == 0:
            order.status = ExchangeOrderStatus.CLOSED


def _rests(spec: OrderSpec) -> bool:
    return spec.type is not OrderType.MARKET and spec.time_in_force is TimeInForce.GTC


@dataclass
class Kernel:
    """The fake workflow: plans, executes against the fake exchange, records transitions."""

    state: IntentState
    exchange: FakeExchange
    clock: datetime = NOW
    used_client_order_ids: set[str] = field(default_factory=set)
    max_desired: Decimal = ZERO
    raced: bool = False  # a fill or a reduction beyond the intent amount (race 2, or race 1)
    over_asked: bool = False  # an order asked for more than the exchange's true remaining
    refusals: int = 0
    late: list[ExchangeOrder] = field(default_factory=list)  # snapshots not yet delivered

    def now(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def clone(self) -> Kernel:
        twin = copy.copy(self)
        twin.exchange = copy.deepcopy(self.exchange)
        twin.used_client_order_ids = set(self.used_client_order_ids)
        twin.late = []
        return twin

    def fresh(self) -> bool:
        """The kernel has observed the latest state of every exchange order of the intent."""
        return all(
            p.order == self.exchange.view(p.client_order_id)
            for p in self.state.placements
            if p.client_order_id in self.exchange.orders
        )

    def poll(self) -> None:
        """Observe every order of the intent that the exchange has (the polling fallback)."""
        for placement in self.state.placements:
            order = self.exchange.view(placement.client_order_id)
            if order is not None:
                self.state = observe(self.state, order, self.now())

    def step(self, fault: str = "ok", observe_replaced: bool = False, taker: int = 0) -> Action:
        state = self.state
        action = plan(state)
        if state.status.is_terminal:
            assert isinstance(action, Finish) and action.status is state.status
            return action
        self.check(action)
        if isinstance(action, Place | Amend | Cancel):
            state = start(state, action, self.now())
        if isinstance(action, Place | Amend):
            number = action.placement.number
            self.used_client_order_ids.add(action.placement.client_order_id)
            true_remaining = state.desired.amount - self.exchange.filled
            if action.placement.amount > true_remaining:
                # Only a stale view (race 1) may make the kernel ask for more than is left.
                assert self.state.filled < self.exchange.filled, (action, true_remaining)
                self.over_asked = True
        elif isinstance(action, Cancel | Lookup):
            number = action.placement
        coid = (
            state.placements[number].client_order_id
            if not isinstance(action, Wait | Finish)
            else ""
        )

        if isinstance(action, Place | Amend | Cancel) and fault in BEFORE_COMMIT:
            state = self.lost(state, action, fault)
        elif isinstance(action, Place | Amend) and fault == "refused":
            self.refusals += 1
            state = reject(state, number, "InsufficientFunds", self.now())
        elif isinstance(action, Place | Amend):
            if isinstance(action, Place):
                refused = self.exchange.create(state.desired, action.placement, D(taker))
            else:
                old = state.placements[action.replaces].client_order_id
                refused = self.exchange.amend(old, state.desired, action.placement)
            if fault in AFTER_COMMIT:
                state = self.lost(state, action, fault)
            elif refused == NOT_OPEN:
                # Nothing was created; what became of the old order is for a lookup to say.
                assert isinstance(action, Amend)
                state = observe_absent(state, number, self.now())
                state = self.look(state, action.replaces)
            elif refused:
                self.refusals += 1
                state = reject(state, number, refused, self.now())
            else:
                state = self.look(state, number)
                if isinstance(action, Amend) and observe_replaced:
                    state = self.look(state, action.replaces)
        elif isinstance(action, Cancel):
            self.exchange.cancel(coid)
            if fault in AFTER_COMMIT:
                state = self.lost(state, action, fault)
            else:
                state = self.look(state, number)
        elif isinstance(action, Lookup):
            if fault == "ok":  # a failed lookup changes nothing; the next plan asks again
                state = self.look(state, number)
        elif isinstance(action, Finish):
            state = finish(state, action, self.now())
            assert not self.exchange.live(), "finished with a live order on the exchange"
        self.state = state
        return action

    def lost(self, state: IntentState, action: Place | Amend | Cancel, fault: str) -> IntentState:
        number = action.placement if isinstance(action, Cancel) else action.placement.number
        if fault.startswith("lost"):
            state = unknown(state, number)
        after = plan(state)
        if fault.startswith("lost") or not isinstance(action, Cancel):
            # start() alone marks a new order unknown; unknown() marks any placement.
            assert after == Lookup(placement=number, reason=after.reason), after
        else:
            # A cancel whose answer was never recorded is simply asked for again.
            assert after == Cancel(placement=number, reason=after.reason), after
        return state

    def look(self, state: IntentState, number: int) -> IntentState:
        order = self.exchange.view(state.placements[number].client_order_id)
        if order is None:
            return observe_absent(state, number, self.now())
        return observe(state, order, self.now())

    def check(self, action: Action) -> None:
        """What plan may ask for, given what the kernel knows."""
        state = self.state
        if any(p.outcome_unknown for p in state.placements):
            assert isinstance(action, Lookup), f"{action} while an outcome is unknown"
        if isinstance(action, Place | Amend):
            wanted = state.desired.amount - state.filled
            assert 0 < action.placement.amount <= wanted, (action, wanted)
            assert action.placement.number == len(state.placements)
            assert action.placement.price == state.desired.price
            coid = action.placement.client_order_id
            assert coid not in self.used_client_order_ids, f"client order id {coid} reused"
            assert coid not in self.exchange.orders
        if isinstance(action, Place):
            assert state.live_placement is None, "place while an order may be live"
            last = state.placements[-1] if state.placements else None
            if last is not None and last.order is not None and not last.cancel_requested:
                # Never silently re-place an order cancelled outside exchange-kernel.
                if last.order.status is ExchangeOrderStatus.CANCELED:
                    assert state.intent.on_external_cancel is ExternalCancelPolicy.RESTORE
        if isinstance(action, Amend):
            assert state.rules is not None and state.rules.native_amend
            assert state.desired.type is not OrderType.STOP_LIMIT
        if isinstance(action, Wait) and action.reason == "resting as desired" and self.fresh():
            [order] = self.exchange.live()
            assert order.price == state.desired.price
            assert order.remaining == state.desired.amount - state.filled
        if isinstance(action, Finish):
            self.check_finish(action)

    def check_finish(self, action: Finish) -> None:
        state = self.state
        orders = [p.order for p in state.placements if p.order is not None]
        if action.status is IntentStatus.FILLED:
            assert state.filled >= state.desired.amount
        elif action.status is IntentStatus.CANCELED:
            external = any(
                p.order is not None
                and p.order.status is ExchangeOrderStatus.CANCELED
                and not p.cancel_requested
                for p in state.placements
            )
            assert state.cancel_reason is not None or external
            if external:
                assert any(o.cancelled_externally for o in self.exchange.orders.values())
        elif action.status is IntentStatus.EXPIRED:
            observed = any(o.status is ExchangeOrderStatus.EXPIRED for o in orders)
            assert not _rests(state.desired) or observed
        elif action.status is IntentStatus.REJECTED:
            refused = any(p.rejected for p in state.placements)
            assert not refused or self.refusals
            broken = state.rules is not None and state.rules.violations(state.desired)
            observed = any(o.status is ExchangeOrderStatus.REJECTED for o in orders)
            assert refused or observed or (broken and not state.placements)
        else:
            raise AssertionError(f"unexpected outcome {action}")


SPECS = st.sampled_from(
    [
        {"type": "limit", "time_in_force": "GTC"},
        {"type": "limit", "time_in_force": "GTC"},
        {"type": "limit", "time_in_force": "GTC"},
        {"type": "limit", "time_in_force": "GTC"},
        {"type": "limit", "time_in_force": "IOC"},
        {"type": "limit", "time_in_force": "FOK"},
        {"type": "market", "price": None},
        {"type": "stop_limit", "stop_price": "95"},
    ]
)
NATIVE_AMEND = MarketRules(symbol="BTC/USDT", native_amend=True)
RULES = st.one_of(
    st.none(),
    st.just(NATIVE_AMEND),
    st.just(NATIVE_AMEND),
    st.builds(
        MarketRules,
        symbol=st.just("BTC/USDT"),
        tick_size=st.just(D(1)),
        step_size=st.sampled_from([None, D(1)]),
        min_notional=st.sampled_from([None, None, None, D(150)]),
        native_amend=st.booleans(),
    ),
)
WORKFLOW_STEPS = st.lists(st.sampled_from(FAULTS), max_size=3)
AMOUNTS = st.sampled_from(["1", "2", "3", "5", "8", "2.5"])
PRICES = st.sampled_from(["90", "100", "110", "100.5"])


def _active(machine: ReconcileMachine) -> bool:
    return not machine.kernel.state.status.is_terminal


def _resting(machine: ReconcileMachine) -> bool:
    return _active(machine) and bool(machine.kernel.exchange.live())


def _finished(machine: ReconcileMachine) -> bool:
    return not _active(machine)


INTENTS = {
    "kind": SPECS,
    "amount": AMOUNTS,
    "rules": RULES,
    "policy": st.sampled_from(list(ExternalCancelPolicy)),
}


class ReconcileMachine(RuleBasedStateMachine):
    """One intent at a time; when it finishes, the next one starts (new intent id)."""

    kernel: Kernel

    def __init__(self) -> None:
        super().__init__()
        self.intents = 0
        self.client_order_ids: set[str] = set()  # of every exchange order of earlier intents
        self.history: dict[str, object] = {}

    def open_intent(
        self, kind: dict[str, str], amount: str, rules: MarketRules | None, policy: str
    ) -> None:
        fields = {"price": "100", **kind}
        intent_id = f"intent-{self.intents}"
        self.intents += 1
        state = make_state(
            amount=amount,
            policy=policy,
            rules=rules,
            intent_id=intent_id,
            **fields,  # type: ignore[arg-type]
        )
        self.kernel = Kernel(state=state, exchange=FakeExchange(rules=rules))
        self.kernel.max_desired = state.desired.amount
        self.history = {}

    @initialize(**INTENTS)
    def begin(
        self, kind: dict[str, str], amount: str, rules: MarketRules | None, policy: str
    ) -> None:
        self.open_intent(kind, amount, rules, policy)

    @precondition(_finished)
    @rule(**INTENTS)
    def next_intent(
        self, kind: dict[str, str], amount: str, rules: MarketRules | None, policy: str
    ) -> None:
        kernel = self.kernel
        state = kernel.state
        # A finished intent stays finished: it plans its outcome and refuses changes.
        assert plan(state) == Finish(status=state.status, reason=plan(state).reason)
        with pytest.raises(ChangeRejected):
            check_change(state, IntentChange(amount=D(9)))
        with pytest.raises(ChangeRejected):
            request_cancel(state, "strategy stopped", kernel.now())
        # Client order ids are distinct across intents too.
        created = set(kernel.exchange.orders)
        assert not created & self.client_order_ids
        self.client_order_ids |= created
        self.open_intent(kind, amount, rules, policy)

    def run_workflow(
        self, faults: list[str], observe_replaced: bool = False, taker: int = 0
    ) -> None:
        for fault in faults:
            self.kernel.step(fault, observe_replaced, taker)

    # --- the workflow ---

    @precondition(_active)
    @rule(
        faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=3),
        observe_replaced=st.booleans(),
        taker=st.integers(min_value=0, max_value=8),
    )
    def workflow_steps(self, faults: list[str], observe_replaced: bool, taker: int) -> None:
        self.run_workflow(faults, observe_replaced, taker)

    @precondition(_active)
    @rule(then=WORKFLOW_STEPS)
    def workflow_polls(self, then: list[str]) -> None:
        kernel = self.kernel
        kernel.poll()
        # Every order the exchange has is one of the intent's placements: nothing is missed.
        assert kernel.state.filled == kernel.exchange.filled
        assert kernel.fresh()
        self.run_workflow(then)

    # --- the exchange, on its own ---

    @precondition(_resting)
    @rule(
        event=st.sampled_from(["fill", "fill", "fill", "cancel"]),
        quantity=st.sampled_from(["1", "2", "0.5", "all"]),
        pushed=st.sampled_from([True, True, False]),
        then=WORKFLOW_STEPS,
    )
    def exchange_acts(self, event: str, quantity: str, pushed: bool, then: list[str]) -> None:
        kernel = self.kernel
        [order] = kernel.exchange.live()
        before = kernel.exchange.view(order.client_order_id)
        assert before is not None
        kernel.late.append(before)  # may still be delivered, late and out of order
        if event == "fill":
            amount = order.remaining if quantity == "all" else min(D(quantity), order.remaining)
            kernel.exchange.fill(order.client_order_id, amount)
            if kernel.exchange.filled > kernel.state.desired.amount:
                kernel.raced = True
        else:
            kernel.exchange.cancel(order.client_order_id)
            order.cancelled_externally = True
        if pushed:
            seen = kernel.exchange.view(order.client_order_id)
            assert seen is not None
            kernel.state = observe(kernel.state, seen, kernel.now())
        self.run_workflow(then)

    @precondition(lambda self: _active(self) and self.kernel.late)
    @rule(data=st.data(), then=WORKFLOW_STEPS)
    def old_observation_arrives_late(self, data: st.DataObject, then: list[str]) -> None:
        kernel = self.kernel
        snapshot = kernel.late.pop(data.draw(st.integers(0, len(kernel.late) - 1)))
        kernel.state = observe(kernel.state, snapshot, kernel.now())
        self.run_workflow(then)

    # --- the strategy ---

    @precondition(_active)
    @rule(
        wish=st.sampled_from(["modify"] * 8 + ["below_filled", "cancel"]),
        price=st.one_of(st.none(), PRICES),
        amount=st.one_of(st.none(), AMOUNTS),
        then=WORKFLOW_STEPS,
    )
    def strategy_acts(
        self, wish: str, price: str | None, amount: str | None, then: list[str]
    ) -> None:
        self.strategy_wishes(wish, price, amount)
        self.run_workflow(then)

    def strategy_wishes(self, wish: str, price: str | None, amount: str | None) -> None:
        kernel = self.kernel
        before = kernel.state
        if wish == "cancel":
            kernel.state = request_cancel(before, "strategy stopped", kernel.now())
            return
        if wish == "below_filled":
            below = before.filled - D(amount or "1")
            if below > 0:
                with pytest.raises(ChangeRejected):
                    check_change(before, IntentChange(amount=below))
            return
        if price is None and amount is None:
            return
        change = IntentChange(
            price=D(price) if price is not None else None,
            amount=D(amount) if amount is not None else None,
        )
        try:
            after = apply_change(before, change, kernel.now())
        except ChangeRejected:
            return
        assert not before.status.is_terminal
        assert before.cancel_reason is None
        assert change.amount is None or change.amount >= before.filled
        check_change(before, change)  # the check and the transition agree
        kernel.state = after
        kernel.max_desired = max(kernel.max_desired, after.desired.amount)
        if after.desired.amount < kernel.exchange.filled:
            kernel.raced = True  # race 2: the exchange filled what the kernel had not seen

    # --- invariants ---

    @invariant()
    def observations_never_step_back(self) -> None:
        state = self.kernel.state
        history = self.history
        assert state.filled >= history.get("filled", ZERO)  # type: ignore[operator]
        history["filled"] = state.filled
        ended: set[int] = history.setdefault("ended", set())  # type: ignore[assignment]
        for placement in state.placements:
            if placement.order is not None and not placement.order.status.is_live:
                ended.add(placement.number)
            elif placement.number in ended:
                raise AssertionError(f"placement {placement.number} came back to life")

    @invariant()
    def never_two_live_orders_on_the_exchange(self) -> None:
        assert len(self.kernel.exchange.live()) <= 1

    @invariant()
    def never_more_on_the_exchange_than_ever_desired(self) -> None:
        kernel = self.kernel
        if not kernel.over_asked:
            live = sum((o.remaining for o in kernel.exchange.live()), D(0))
            assert kernel.exchange.filled + live <= kernel.max_desired

    @invariant()
    def exchange_never_fills_more_than_the_amount_without_a_race(self) -> None:
        kernel = self.kernel
        if not (kernel.raced or kernel.over_asked):
            assert kernel.state.filled <= kernel.exchange.filled <= kernel.state.desired.amount

    @invariant()
    def kernel_never_sees_more_filled_than_the_exchange(self) -> None:
        assert self.kernel.state.filled <= self.kernel.exchange.filled

    @invariant()
    def fills_are_unique(self) -> None:
        ids = [f.trade_id for f in self.kernel.state.fills]
        assert len(ids) == len(set(ids))

    @invariant()
    def unknown_outcome_shows_in_the_reconciliation_status(self) -> None:
        state = self.kernel.state
        if not state.status.is_terminal and any(p.outcome_unknown for p in state.placements):
            assert state.reconciliation_status is ReconciliationStatus.UNKNOWN

    @invariant()
    def quiet_loop_settles_within_ten_steps(self) -> None:
        twin = self.kernel.clone()
        if not twin.state.status.is_terminal:
            twin.poll()
        for _ in range(10):
            action = twin.step()
            if isinstance(action, Finish):
                assert twin.state.status.is_terminal
                assert not twin.exchange.live()
                return
            if isinstance(action, Wait):
                if _rests(twin.state.desired):
                    assert twin.state.reconciliation_status is ReconciliationStatus.IN_SYNC
                return
        raise AssertionError(f"no Wait or Finish within 10 steps: {twin.state.recent_actions}")


ReconcileMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestReconcileMachine = ReconcileMachine.TestCase
