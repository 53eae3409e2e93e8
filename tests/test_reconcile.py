"""Specification of exchange_kernel.reconcile: one rule per unit test, then a stateful property
test that drives plan() -> begin() -> record() against a small fake exchange with faults.

The workflow only executes: it asks `plan(state, now)` for one action, records `begin` before
the exchange call and `record` with what came back. Every test here does the same, by hand or
through `act`; none of them decides anything the reconciler should decide.
"""

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
from pydantic import ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter

from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    ExternalCancelPolicy,
    Fill,
    IntentChange,
    IntentStart,
    IntentState,
    IntentStatus,
    MarketRules,
    OrderIntent,
    OrderSpec,
    OrderType,
    Placement,
    PlacementPhase,
    ReconciliationStatus,
    Refusal,
    Side,
    TimeInForce,
    client_order_id,
)
from exchange_kernel.reconcile import (
    KEEP_ENDED,
    MAX_UNANSWERED_CALLS,
    POLL_CEILING,
    POLL_FIRST,
    STALE_AFTER,
    TRANSITIONS,
    VISIBILITY_GRACE,
    Abandoned,
    Action,
    Amend,
    Amended,
    Cancel,
    ChangeRejected,
    Event,
    Expire,
    Finish,
    Judge,
    LoadRules,
    Lookup,
    Observed,
    Outcome,
    Place,
    PriceCrossed,
    Refused,
    Report,
    RulesLoaded,
    Sent,
    Unanswered,
    Unwatch,
    Wait,
    Watch,
    WatchPrice,
    advance,
    begin,
    check_change,
    increases_risk,
    is_stale,
    judgment,
    mark_repaired,
    observe,
    observe_price,
    order_type_on_exchange,
    plan,
    receive_change,
    reconciliation,
    record,
    refresh,
    refusal_of,
    request_cancel,
    request_resync,
    set_halted,
    stop_crossed,
    unplaceable_remainder,
    watch_lapsed,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
D = Decimal
ZERO = Decimal(0)
PLAIN = MarketRules(symbol="BTC/USDT")
NATIVE = MarketRules(symbol="BTC/USDT", native_amend=True)


def make_state(
    amount: str = "1",
    price: str | None = "100",
    type: str = "limit",
    time_in_force: str = "GTC",
    stop_price: str | None = None,
    policy: str = "finish",
    rules: MarketRules | None = PLAIN,
    intent_id: str = "i-1",
    expires_at: datetime | None = None,
    group_id: str | None = None,
    sync: str = "polled",
) -> IntentState:
    """An intent; `sync`: "polled" (no account sync: it looks on its own), "watched" (the
    account sync pushes its orders' changes) or "new" (it has not tried to register yet)."""
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
    intent = OrderIntent(
        intent_id=intent_id,
        account="main",
        order=spec,
        on_external_cancel=policy,
        expires_at=expires_at,
        group_id=group_id,
    )
    return IntentState(
        intent=intent,
        desired=spec,
        rules=rules,
        watched=sync == "watched",
        watch_refused=sync == "polled",
    )


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
    placement = state.placement(number)
    return ExchangeOrder(
        exchange_order_id=f"x{number}",
        client_order_id=placement.client_order_id,
        symbol=state.desired.symbol,
        side=state.desired.side,
        type=state.desired.type.value,
        status=ExchangeOrderStatus(status),
        price=D(price) if price is not None else placement.price,
        stop_price=placement.stop_price,
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


def act(
    state: IntentState, action: Action, outcome: Outcome | None, now: datetime = NOW
) -> IntentState:
    """What the workflow does with an action: begin, execute (here: `outcome`), record."""
    return record(begin(state, action, now), action, outcome, now)


def step(
    state: IntentState,
    outcome: Outcome | None = None,
    now: datetime = NOW,
    expect: type | None = None,
) -> IntentState:
    """Plan at `now`, check the action's kind, and execute it with `outcome`."""
    action = plan(state, now)
    if expect is not None:
        assert isinstance(action, expect), action
    return act(state, action, outcome, now)


def answer(order: ExchangeOrder | None) -> Observed:
    return Observed(order=order)


def placed(state: IntentState, now: datetime = NOW, **order: object) -> IntentState:
    """Plan a Place, begin it, and record the order the exchange created."""
    action = plan(state, now)
    assert isinstance(action, Place), action
    state = begin(state, action, now)
    created = seen(state, action.placement.number, **order)  # type: ignore[arg-type]
    return record(state, action, answer(created), now)


def cancelled(state: IntentState, now: datetime = NOW, **order: object) -> IntentState:
    """Plan a Cancel and record the order as the exchange ended it (`status` canceled)."""
    action = plan(state, now)
    assert isinstance(action, Cancel), action
    state = begin(state, action, now)
    order.setdefault("status", "canceled")
    return record(state, action, answer(seen(state, action.number, **order)), now)  # type: ignore[arg-type]


def change(
    state: IntentState,
    price: str | None = None,
    amount: str | None = None,
    now: datetime = NOW,
    answered: bool = False,
) -> IntentState:
    """A change from the strategy: a signal, or (`answered`) an update that waits for it."""
    state, _ = receive_change(
        state,
        IntentChange(
            price=D(price) if price is not None else None,
            amount=D(amount) if amount is not None else None,
        ),
        now,
        answered=answered,
    )
    return state


def finished(state: IntentState, now: datetime = NOW) -> IntentState:
    """Plan, check it is a Finish, record it."""
    return step(state, now=now, expect=Finish)


def phases(state: IntentState) -> list[PlacementPhase]:
    return [p.phase for p in state.placements]


# --- market rules ---------------------------------------------------------------------------


def test_an_intent_without_market_rules_loads_them_first() -> None:
    state = make_state(rules=None)
    action = plan(state, NOW)
    assert isinstance(action, LoadRules) and "BTC/USDT" in action.reason
    state = act(state, action, RulesLoaded(rules=PLAIN))
    assert state.rules == PLAIN
    assert isinstance(plan(state, NOW), Place)


def test_market_rules_the_exchange_refuses_finish_rejected() -> None:
    state = step(make_state(rules=None), Refused(reason="BadSymbol: no such market"))
    assert plan(state, NOW) == Finish(
        status=IntentStatus.REJECTED, reason="BadSymbol: no such market"
    )


def test_market_rules_that_could_not_be_loaded_finish_failed() -> None:
    state = step(make_state(rules=None), Unanswered(error="RequestTimeout"))
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FAILED
    assert "RequestTimeout" in action.reason


# --- placing ----------------------------------------------------------------------------------


def test_new_intent_places_placement_0_under_the_deterministic_client_order_id() -> None:
    action = plan(make_state(amount="2", price="100"), NOW)
    assert isinstance(action, Place)
    assert action.placement.number == 0
    assert action.placement.client_order_id == client_order_id("i-1", 0)
    assert action.placement.amount == D(2)
    assert action.placement.price == D(100)
    assert action.placement.revision == 0
    assert action.placement.phase is PlacementPhase.PLACING


def test_plan_is_deterministic() -> None:
    assert plan(make_state(), NOW) == plan(make_state(), NOW)


def test_begun_placement_is_placing_and_unknown_until_observed() -> None:
    state = make_state()
    state = begin(state, plan(state, NOW), NOW)
    assert phases(state) == [PlacementPhase.PLACING]
    assert state.next_placement == 1
    assert state.reconciliation_status is ReconciliationStatus.UNKNOWN
    assert plan(state, NOW) == Lookup(number=0, reason=plan(state, NOW).reason)


def test_order_resting_as_desired_waits_in_sync() -> None:
    state = placed(make_state())
    assert phases(state) == [PlacementPhase.OPEN]
    assert plan(state, NOW) == Wait(after=POLL_FIRST, reason="resting as desired")
    assert state.status is IntentStatus.OPEN
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC


def test_partly_filled_order_resting_as_desired_waits() -> None:
    state = placed(make_state(amount="2"), filled="0.5")
    assert isinstance(plan(state, NOW), Wait)
    assert state.status is IntentStatus.PARTIALLY_FILLED
    assert state.remaining == D("1.5")


def test_rule_violation_at_start_finishes_rejected_naming_the_rule() -> None:
    rules = MarketRules(symbol="BTC/USDT", tick_size=D("0.5"))
    action = plan(make_state(price="100.3", rules=rules), NOW)
    assert isinstance(action, Finish)
    assert action.status is IntentStatus.REJECTED
    assert "tick size" in action.reason


def test_exchange_refusal_finishes_rejected_with_its_reason() -> None:
    state = step(make_state(), Refused(reason="InsufficientFunds: balance too low"))
    assert phases(state) == [PlacementPhase.REFUSED]
    assert state.placements[0].refusal == "InsufficientFunds: balance too low"
    assert plan(state, NOW) == Finish(
        status=IntentStatus.REJECTED, reason="InsufficientFunds: balance too low"
    )


def test_order_observed_rejected_finishes_rejected() -> None:
    state = placed(make_state(), status="rejected")
    assert phases(state) == [PlacementPhase.REJECTED]
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.REJECTED


# --- watching and polling ---------------------------------------------------------------------


def test_a_resting_order_registers_with_the_account_sync() -> None:
    state = placed(make_state(sync="new"))
    action = plan(state, NOW)
    assert isinstance(action, Watch) and action.placement == 0
    state = act(state, action, Sent(delivered=True))
    assert state.watched
    # Watched: nothing to poll, it waits for a change.
    assert plan(state, NOW + timedelta(hours=1)) == Wait(after=None, reason="resting as desired")


def test_without_an_account_sync_the_intent_polls_on_its_own() -> None:
    state = placed(make_state(sync="new"))
    state = step(state, Sent(delivered=False, note="no sync workflow"), expect=Watch)
    assert state.watch_refused and not state.watched
    assert plan(state, NOW) == Wait(after=POLL_FIRST, reason="resting as desired")
    assert state.recent_actions[-1].action == "polling"


def test_a_poll_is_a_lookup_once_the_wait_is_over() -> None:
    state = placed(make_state())
    wait = plan(state, NOW)
    assert isinstance(wait, Wait) and wait.after == POLL_FIRST
    assert isinstance(plan(state, NOW + POLL_FIRST / 2), Wait)
    action = plan(state, NOW + POLL_FIRST)
    assert isinstance(action, Lookup) and action.number == 0
    assert action.reason.startswith("poll")
    # A routine look: nothing diverges, the intent stays in sync while it is under way.
    assert action.routine
    assert reconciliation(state, NOW + POLL_FIRST) is ReconciliationStatus.IN_SYNC


def test_a_quiet_poll_backs_off_up_to_the_ceiling_and_a_change_seen_resets_it() -> None:
    state = placed(make_state(amount="2"))
    now = NOW
    intervals = []
    for _ in range(8):
        now += state.poll_interval
        state = step(state, answer(seen(state, 0)), now=now, expect=Lookup)
        intervals.append(state.poll_interval)
    assert intervals[:3] == [2 * SECOND, 4 * SECOND, 8 * SECOND]
    assert intervals[-1] == POLL_CEILING
    now += state.poll_interval
    state = step(state, answer(seen(state, 0, filled="0.5")), now=now, expect=Lookup)
    assert state.poll_interval == POLL_FIRST


def test_a_watched_intent_waits_only_until_its_expiry() -> None:
    state = placed(make_state(sync="watched", expires_at=NOW + timedelta(minutes=5)))
    assert plan(state, NOW) == Wait(after=timedelta(minutes=5), reason="resting as desired")


def test_a_finished_watched_intent_unwatches_before_it_finishes() -> None:
    state = placed(make_state(sync="watched"), status="closed", filled="1")
    state = finished(state)
    action = plan(state, NOW)
    assert isinstance(action, Unwatch)
    state = act(state, action, Sent(delivered=True))
    assert isinstance(plan(state, NOW), Finish)


# --- staleness and resyncs --------------------------------------------------------------------


def test_a_polled_intent_is_stale_past_the_bound_since_its_last_observation() -> None:
    state = placed(make_state())
    late = NOW + STALE_AFTER + SECOND
    assert not is_stale(state, NOW + STALE_AFTER)
    assert is_stale(state, late)
    assert reconciliation(state, late) is ReconciliationStatus.STALE
    assert refresh(state, late).reconciliation_status is ReconciliationStatus.STALE


def test_an_intent_with_its_own_stale_bound_is_judged_and_polled_by_it() -> None:
    """`OrderIntent.stale_after`: the bound is the intent's input (in its state), not a global
    a process could change under a running workflow; polls stay below half of it."""
    state = placed(make_state(amount="2"))
    state = state.model_copy(
        update={"intent": state.intent.model_copy(update={"stale_after": 4 * SECOND})}
    )
    assert not is_stale(state, NOW + 4 * SECOND)
    assert is_stale(state, NOW + 5 * SECOND)
    now = NOW
    for _ in range(5):
        now += state.poll_interval
        state = step(state, answer(seen(state, 0)), now=now, expect=Lookup)
    assert state.poll_interval == 2 * SECOND  # half the bound, not POLL_CEILING


def test_a_fresh_lookup_brings_a_stale_intent_back_in_sync() -> None:
    state = placed(make_state())
    late = NOW + STALE_AFTER + SECOND
    state = step(state, answer(seen(state, 0)), now=late, expect=Lookup)
    assert not is_stale(state, late)
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC


def test_a_watched_intent_is_stale_while_the_account_sync_has_lapsed() -> None:
    state = placed(make_state(sync="watched"))
    much_later = NOW + 10 * STALE_AFTER
    assert reconciliation(state, much_later) is ReconciliationStatus.IN_SYNC
    state = watch_lapsed(state, NOW, NOW + SECOND)
    assert state.watch_lapsed_since == NOW
    assert state.reconciliation_status is ReconciliationStatus.STALE
    state = watch_lapsed(state, None, NOW + 2 * SECOND)
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC


def test_an_intent_with_nothing_live_is_never_stale() -> None:
    state = finished(placed(make_state(), status="closed", filled="1"))
    assert not is_stale(state, NOW + 10 * STALE_AFTER)
    assert not is_stale(make_state(), NOW + 10 * STALE_AFTER)


def test_a_resync_looks_up_the_live_order_at_once() -> None:
    state = placed(make_state(sync="watched"))
    state = request_resync(state, NOW + SECOND)
    action = plan(state, NOW + SECOND)
    assert isinstance(action, Lookup) and action.number == 0 and action.routine
    assert action.reason.startswith("resync")
    # Done once the order was observed at or after the request.
    state = act(state, action, answer(seen(state, 0)), NOW + 2 * SECOND)
    assert isinstance(plan(state, NOW + 2 * SECOND), Wait)


def test_a_resync_asked_while_a_lookup_is_under_way_looks_again() -> None:
    # The answer shows the exchange as of some moment after the request was sent, maybe before
    # the resync: it is recorded as of when it was sent, and does not cover the resync.
    state = placed(make_state())
    sent = NOW + POLL_FIRST
    action = plan(state, sent)
    assert isinstance(action, Lookup)
    state = begin(state, action, sent)
    state = request_resync(state, sent + SECOND)
    state = record(state, action, answer(seen(state, 0)), sent)
    again = plan(state, sent + 2 * SECOND)
    assert isinstance(again, Lookup) and again.reason.startswith("resync")


def test_a_resync_is_done_by_any_observation_after_the_request() -> None:
    state = request_resync(placed(make_state(sync="watched")), NOW + SECOND)
    state = observe(state, seen(state, 0), NOW + 2 * SECOND)  # pushed by the account sync
    assert isinstance(plan(state, NOW + 2 * SECOND), Wait)


# --- modifying ---------------------------------------------------------------------------------


def test_price_change_amends_when_the_exchange_amends_natively() -> None:
    state = placed(make_state(amount="2", rules=NATIVE), filled="0.5")
    state = change(state, price="101")
    action = plan(state, NOW)
    assert isinstance(action, Amend)
    assert action.replaces == 0
    assert action.placement.number == 1
    assert action.placement.client_order_id == client_order_id("i-1", 1)
    assert action.placement.price == D(101)
    assert action.placement.amount == D("1.5")
    assert action.placement.revision == 1


def test_amend_marks_the_replaced_placement_canceling_and_the_new_one_placing() -> None:
    state = placed(make_state(rules=NATIVE))
    state = change(state, price="101")
    state = begin(state, plan(state, NOW), NOW)
    assert phases(state) == [PlacementPhase.CANCELING, PlacementPhase.PLACING]


def test_an_answered_amend_records_both_orders() -> None:
    state = placed(make_state(rules=NATIVE))
    state = change(state, price="101")
    action = plan(state, NOW)
    state = begin(state, action, NOW)
    outcome = Amended(replaced=seen(state, 0, status="canceled"), order=seen(state, 1))
    state = record(state, action, outcome, NOW)
    assert phases(state) == [PlacementPhase.CANCELED, PlacementPhase.OPEN]
    assert isinstance(plan(state, NOW), Wait)


def test_an_amend_not_sent_because_the_old_order_filled_is_planned_again_from_its_fills() -> None:
    # The exchange activity does not edit an order that filled since the plan: it reports the
    # old order (still open, more filled) and no new one.
    state = placed(make_state(amount="2", rules=NATIVE))
    state = change(state, price="101")
    action = plan(state, NOW)
    assert isinstance(action, Amend) and action.placement.amount == D(2)
    state = begin(state, action, NOW)
    state = record(state, action, Amended(replaced=seen(state, 0, filled="0.8"), order=None), NOW)
    assert phases(state) == [PlacementPhase.OPEN, PlacementPhase.NOT_SENT]
    again = plan(state, NOW)
    assert isinstance(again, Amend)
    assert again.replaces == 0 and again.placement.number == 2
    assert again.placement.amount == D("1.2")


def test_a_refused_amend_goes_back_to_the_last_accepted_revision() -> None:
    state = placed(make_state(rules=NATIVE))
    state = change(state, price="101")
    state = step(state, Refused(reason="PostOnly: would cross"), expect=Amend)
    assert phases(state) == [PlacementPhase.OPEN, PlacementPhase.REFUSED]
    assert state.desired.price == D(100)  # the revision whose order the exchange took
    assert refusal_of(state, 1) == Refusal(
        revision=1, reason="refused by the exchange: PostOnly: would cross", reverted_to=0
    )
    assert state.recent_actions[-1].action == "modify refused"
    assert plan(state, NOW) == Wait(after=POLL_FIRST, reason="resting as desired")


def test_a_refused_replacement_places_the_last_accepted_revision_again() -> None:
    state = placed(make_state(amount="2"), filled="0.5")
    state = change(state, price="101")
    state = cancelled(state, filled="0.5")
    state = step(state, Refused(reason="InsufficientFunds"), expect=Place)
    assert state.desired.price == D(100)
    action = plan(state, NOW)
    assert isinstance(action, Place)
    assert (action.placement.price, action.placement.amount) == (D(100), D("1.5"))
    assert "last accepted revision" in action.reason


MINIMUMS = MarketRules(symbol="BTC/USDT", min_amount=D("0.00001"), min_notional=D("5"))


def test_a_remainder_below_the_minimum_notional_is_not_placed_again() -> None:
    """chaos-1-0112: a new price accepted, then the order filled on to 0.00397 of 0.0041 while
    it was cancelled to be replaced; the remainder (3.8 USDT) was refused by the NOTIONAL
    filter, so was rev 1's, and the intent ended `rejected`. It ends `expired` with what it
    filled, saying why, and nothing is placed."""
    state = placed(make_state(amount="0.0041", price="29000", rules=MINIMUMS), filled="0.003")
    state = change(state, price="29100")
    state = cancelled(state, filled="0.00397")
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED
    assert "remaining 0.00013" in action.reason and "minimum notional 5" in action.reason
    assert "0.00397 of 0.0041 filled" in action.reason


def test_a_remainder_below_the_minimum_amount_after_a_replace_is_not_placed() -> None:
    rules = MarketRules(symbol="BTC/USDT", min_amount=D("0.1"))
    state = placed(make_state(amount="2", rules=rules), filled="0.5")
    state = change(state, price="101")
    state = begin(state, plan(state, NOW), NOW)
    state = record(
        state,
        Cancel(number=0, reason="replace"),
        answer(seen(state, 0, status="canceled", filled="1.95")),
        NOW,
    )
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED
    assert "below the minimum amount 0.1" in action.reason


def test_a_remainder_the_minimums_allow_is_placed_again() -> None:
    state = placed(make_state(amount="2", rules=MINIMUMS), filled="0.5")
    state = change(state, price="101")
    state = cancelled(state, filled="0.5")
    assert isinstance(plan(state, NOW), Place)


def test_a_refused_first_order_has_no_revision_to_go_back_to() -> None:
    state = step(make_state(), Refused(reason="InsufficientFunds"), expect=Place)
    assert refusal_of(state, 0) == Refusal(
        revision=0, reason="refused by the exchange: InsufficientFunds", reverted_to=None
    )
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.REJECTED


def test_price_change_without_native_amend_cancels_then_places_the_remaining() -> None:
    state = placed(make_state(amount="2"), filled="0.5")
    state = change(state, price="101")
    action = plan(state, NOW)
    assert isinstance(action, Cancel) and action.number == 0
    state = begin(state, action, NOW)
    assert phases(state) == [PlacementPhase.CANCELING]
    # Not placed again until the cancel is confirmed.
    assert isinstance(plan(state, NOW), Cancel)
    state = record(state, action, answer(seen(state, 0, status="canceled", filled="0.7")), NOW)
    action = plan(state, NOW)
    assert isinstance(action, Place)
    assert action.placement.number == 1
    assert action.placement.price == D(101)
    assert action.placement.amount == D("1.3")


def test_stop_limit_price_change_cancels_even_with_native_amend() -> None:
    state = placed(make_state(type="stop_limit", stop_price="99", rules=NATIVE))
    state = change(state, price="101")
    assert isinstance(plan(state, NOW), Cancel)


def test_amount_increase_amends_to_the_new_remaining() -> None:
    state = placed(make_state(amount="2", rules=NATIVE), filled="0.5")
    state = change(state, amount="3")
    assert state.desired.amount == D(3) and not state.pending_changes
    action = plan(state, NOW)
    assert isinstance(action, Amend) and action.placement.amount == D("2.5")


def test_amount_below_filled_is_rejected() -> None:
    state = placed(make_state(amount="2"), filled="1")
    with pytest.raises(ChangeRejected, match="below the 1 already filled"):
        check_change(state, IntentChange(amount=D("0.5")))
    with pytest.raises(ChangeRejected):
        change(state, amount="0.5")
    assert state.changes_received == 0


def test_a_reduction_waits_while_the_order_is_cancelled_and_is_judged_on_its_final_fills() -> None:
    state = placed(make_state(amount="2"))
    state, number = receive_change(state, IntentChange(amount=D(1)), NOW, answered=True)
    assert number == 0
    assert state.desired.amount == D(2)  # not applied yet
    assert [p.number for p in state.pending_changes] == [0]
    action = plan(state, NOW)
    assert isinstance(action, Cancel) and "lowers the amount" in action.reason
    state = act(state, action, answer(seen(state, 0, status="canceled", filled="0.5")))
    action = plan(state, NOW)
    assert action == Judge(number=0, rejection=None, reason=action.reason)
    state = act(state, action, None)
    assert state.desired.amount == D(1) and state.revision == 1
    assert not state.pending_changes
    assert judgment(state, 0) == state.judgments[-1]
    assert state.judgments[-1].rejection is None
    action = plan(state, NOW)
    assert isinstance(action, Place) and action.placement.amount == D("0.5")


def test_a_reduction_below_a_fill_that_landed_before_the_cancel_is_rejected() -> None:
    state = change(placed(make_state(amount="2")), amount="1", answered=True)
    # The exchange fills 1.5 between the change and the cancel: the final fills decide.
    state = cancelled(state, filled="1.5")
    action = plan(state, NOW)
    assert isinstance(action, Judge)
    assert action.rejection == "amount 1 is below the 1.5 already filled"
    state = act(state, action, None)
    assert state.desired.amount == D(2) and state.revision == 0
    assert judgment(state, 0) is not None
    assert judgment(state, 0).rejection == action.rejection  # type: ignore[union-attr]
    assert state.recent_actions[-1].action == "modify rejected"
    action = plan(state, NOW)
    assert isinstance(action, Place) and action.placement.amount == D("0.5")


def test_a_reduction_to_exactly_the_final_fills_finishes_filled() -> None:
    state = change(placed(make_state(amount="2")), amount="1")
    state = cancelled(state, filled="1")
    state = step(state, expect=Judge)
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FILLED
    state = act(state, action, None)
    assert state.filled == state.desired.amount == D(1)


def test_a_change_behind_a_pending_reduction_waits_its_turn() -> None:
    state = change(placed(make_state(amount="2")), amount="1")
    state, number = receive_change(state, IntentChange(price=D(99)), NOW)
    assert [p.number for p in state.pending_changes] == [0, number]
    assert state.desired.price == D(100)
    state = cancelled(state)
    state = step(state, expect=Judge)
    state = step(state, expect=Judge)
    assert (state.desired.amount, state.desired.price) == (D(1), D(99))
    assert state.revision == 2


def test_a_signalled_reduction_that_is_rejected_leaves_only_a_recorded_action() -> None:
    state = change(placed(make_state(amount="2")), amount="1")
    state = cancelled(state, filled="1.5")
    state = step(state, expect=Judge)
    assert not state.pending_changes
    assert judgment(state, 0) is None  # nobody waits for a signal's answer
    assert state.recent_actions[-1].action == "modify rejected"


def test_pending_changes_are_rejected_when_the_intent_finishes() -> None:
    state = change(placed(make_state(amount="2")), amount="1", answered=True)
    # The order fills completely before the cancel: the intent is done, the change is moot.
    state = cancelled(state, status="closed", filled="2")
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FILLED
    state = act(state, action, None)
    assert not state.pending_changes
    verdict = judgment(state, 0)
    assert verdict is not None and verdict.rejection == "intent i-1 is already filled"


def test_pending_changes_are_rejected_when_the_intent_is_cancelled() -> None:
    state = change(placed(make_state(amount="2")), amount="1", answered=True)
    state = request_cancel(state, "strategy stopped", NOW)
    state = cancelled(state)
    state = finished(state)
    assert state.status is IntentStatus.CANCELED
    assert judgment(state, 0).rejection == "intent i-1 is already canceled"  # type: ignore[union-attr]


def test_modification_of_a_terminal_intent_is_rejected() -> None:
    state = finished(placed(make_state(), status="closed", filled="1"))
    assert state.status is IntentStatus.FILLED
    with pytest.raises(ChangeRejected, match="already filled"):
        check_change(state, IntentChange(price=D(99)))


def test_cancel_of_a_terminal_intent_is_rejected() -> None:
    state = act(make_state(), Finish(status=IntentStatus.EXPIRED, reason="IOC order ended"), None)
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


def test_a_halted_account_refuses_changes_that_add_risk_and_takes_reductions() -> None:
    state = set_halted(placed(make_state(amount="2")), "kill switch", NOW)
    with pytest.raises(ChangeRejected, match="halted"):
        check_change(state, IntentChange(amount=D(3)))
    with pytest.raises(ChangeRejected, match="halted"):
        check_change(state, IntentChange(price=D(101)))  # a buy moved towards the market
    check_change(state, IntentChange(amount=D(1)))
    check_change(state, IntentChange(price=D(99)))
    assert set_halted(state, None, NOW).halted is None


def test_fill_landing_during_an_amend_is_corrected_by_amending_down() -> None:
    # Observed 0.5 of 2 filled; the amend asks for 1.5 at the new price, but the old order had
    # filled 0.8 before the exchange replaced it. Observing that must shrink the new order.
    state = placed(make_state(amount="2", rules=NATIVE), filled="0.5")
    state = change(state, price="101")
    action = plan(state, NOW)
    assert isinstance(action, Amend) and action.placement.amount == D("1.5")
    state = begin(state, action, NOW)
    replaced = seen(state, 0, status="canceled", filled="0.8")
    outcome = Amended(replaced=replaced, order=seen(state, 1))
    state = record(state, action, outcome, NOW)
    action = plan(state, NOW)
    assert isinstance(action, Amend)
    assert action.replaces == 1
    assert action.placement.amount == D("1.2")


def test_an_amend_that_did_not_report_the_replaced_order_sheds_it_first() -> None:
    state = placed(make_state(amount="2", rules=NATIVE), filled="0.5")
    state = change(state, price="101")
    state = step(state, Amended(replaced=None, order=None), expect=Amend)
    # Nothing known of either: the new one was not found, the old one is still canceling.
    assert phases(state) == [PlacementPhase.CANCELING, PlacementPhase.NOT_FOUND]
    action = plan(state, NOW)
    assert isinstance(action, Cancel) and action.number == 0


# --- unknown outcomes ----------------------------------------------------------------------------


def test_unknown_outcome_is_looked_up_before_anything_else() -> None:
    state = make_state(amount="2")
    state = step(state, Unanswered(error="RequestTimeout"), expect=Place)
    state = change(state, amount="3")
    state = request_cancel(state, "strategy stopped", NOW)
    action = plan(state, NOW)
    assert isinstance(action, Lookup) and action.number == 0
    assert state.reconciliation_status is ReconciliationStatus.UNKNOWN


def test_a_lost_write_is_looked_up_only_once_the_exchanges_reads_caught_up() -> None:
    state = step(make_state(), Unanswered(error="RequestTimeout", at=NOW), expect=Place)
    assert phases(state) == [PlacementPhase.PLACING]
    action = plan(state, NOW + SECOND)
    assert isinstance(action, Wait) and action.after == VISIBILITY_GRACE - SECOND
    assert state.reconciliation_status is ReconciliationStatus.UNKNOWN
    action = plan(state, NOW + VISIBILITY_GRACE)
    assert isinstance(action, Lookup) and not action.routine


def test_an_unanswered_lookup_is_looked_up_again_and_never_gives_up() -> None:
    state = step(make_state(), Unanswered(error="RequestTimeout"), expect=Place)
    for _ in range(3 * MAX_UNANSWERED_CALLS):
        state = step(state, Unanswered(error="RequestTimeout"), expect=Lookup)
    assert isinstance(plan(state, NOW), Lookup)
    assert state.reconciliation_status is ReconciliationStatus.UNKNOWN


def test_lookup_that_finds_the_order_adopts_it() -> None:
    state = step(make_state(), Unanswered(error="RequestTimeout"), expect=Place)
    state = step(state, answer(seen(state, 0)), expect=Lookup)
    assert phases(state) == [PlacementPhase.OPEN]
    assert isinstance(plan(state, NOW), Wait)


def test_lookup_that_finds_nothing_places_again_under_a_new_client_order_id() -> None:
    state = make_state(amount="2")
    first = plan(state, NOW)
    assert isinstance(first, Place)
    state = act(state, first, Unanswered(error="RequestTimeout"))
    state = step(state, answer(None), expect=Lookup)
    assert phases(state) == [PlacementPhase.NOT_FOUND]
    action = plan(state, NOW)
    assert isinstance(action, Place)
    assert action.placement.number == 1
    assert action.placement.client_order_id != first.placement.client_order_id
    assert action.placement.amount == D(2)
    assert state.status is not IntentStatus.REJECTED


def test_market_order_that_never_reached_the_exchange_is_placed_again() -> None:
    state = make_state(type="market", price=None)
    state = step(state, Unanswered(error="RequestTimeout"), expect=Place)
    state = step(state, answer(None), expect=Lookup)
    action = plan(state, NOW)
    assert isinstance(action, Place), action
    assert action.placement.number == 1


def test_order_arriving_after_a_lookup_found_nothing_is_seen_and_the_duplicate_cancelled() -> None:
    # The request was slow, not lost: it reaches the exchange after the lookup said "absent"
    # and after the kernel placed again under a new client order id.
    state = make_state(amount="2")
    state = step(state, Unanswered(error="RequestTimeout"), expect=Place)
    state = step(state, answer(None), expect=Lookup)
    state = placed(state)
    late = seen(state, 0, filled="1")
    state = observe(state, late, NOW)
    assert phases(state) == [PlacementPhase.CANCELING, PlacementPhase.OPEN]
    assert state.placement(0).order == late
    assert state.filled == D(1)
    assert plan(state, NOW) == Cancel(number=0, reason="two live orders for one intent")


def test_order_arriving_after_a_lookup_found_nothing_is_cancelled_before_placing_again() -> None:
    state = step(make_state(amount="2"), Unanswered(error="RequestTimeout"), expect=Place)
    state = step(state, answer(None), expect=Lookup)
    state = observe(state, seen(state, 0), NOW)
    action = plan(state, NOW)
    assert isinstance(action, Cancel) and action.number == 0


def test_an_unanswered_cancel_is_sent_again() -> None:
    state = request_cancel(placed(make_state()), "stop", NOW)
    state = step(state, Unanswered(error="RequestTimeout"), expect=Cancel)
    assert phases(state) == [PlacementPhase.CANCELING]
    assert isinstance(plan(state, NOW), Cancel)


def test_a_cancel_that_did_not_take_is_sent_again() -> None:
    state = request_cancel(placed(make_state()), "stop", NOW)
    state = step(state, answer(seen(state, 0)), expect=Cancel)  # still open
    assert phases(state) == [PlacementPhase.CANCELING]
    action = plan(state, NOW)
    assert isinstance(action, Cancel) and action.number == 0


def test_unanswered_writes_give_up_failed_naming_the_last_error() -> None:
    state = request_cancel(placed(make_state()), "stop", NOW)
    for attempt in range(MAX_UNANSWERED_CALLS):
        assert state.unanswered == attempt
        state = step(state, Unanswered(error=f"ExchangeNotAvailable {attempt}"), expect=Cancel)
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FAILED
    assert f"gave up after {MAX_UNANSWERED_CALLS} unanswered" in action.reason
    assert f"ExchangeNotAvailable {MAX_UNANSWERED_CALLS - 1}" in action.reason


def test_an_answer_resets_the_count_of_unanswered_writes() -> None:
    state = request_cancel(placed(make_state()), "stop", NOW)
    for _ in range(MAX_UNANSWERED_CALLS - 1):
        state = step(state, Unanswered(error="RequestTimeout"), expect=Cancel)
    state = step(state, answer(seen(state, 0)), expect=Cancel)  # answered: still open
    assert state.unanswered == 0
    state = step(state, Unanswered(error="RequestTimeout"), expect=Cancel)
    assert isinstance(plan(state, NOW), Cancel)


def test_a_lookups_answer_does_not_reset_the_count_of_unanswered_writes() -> None:
    # Reads that work do not make writes that time out succeed.
    state = make_state()
    for attempt in range(MAX_UNANSWERED_CALLS):
        if attempt:
            state = step(state, answer(None), expect=Lookup)
            assert state.unanswered == attempt
        state = step(state, Unanswered(error="RequestTimeout"), expect=Place)
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FAILED


def test_an_edit_the_exchange_keeps_not_making_is_not_sent_again_and_again() -> None:
    state = change(placed(make_state(amount="2", rules=NATIVE)), price="101")
    for _ in range(MAX_UNANSWERED_CALLS + 2):
        action = plan(state, NOW)
        if not isinstance(action, Amend):
            break
        state = act(state, action, Amended(replaced=seen(state, 0), order=None))
    assert not isinstance(plan(state, NOW), Amend), state.next_placement


def test_unanswered_lookups_do_not_count_towards_giving_up() -> None:
    state = placed(make_state())
    now = NOW
    for _ in range(2 * MAX_UNANSWERED_CALLS):
        now += POLL_CEILING
        state = step(state, Unanswered(error="RequestTimeout"), now=now, expect=Lookup)
    assert state.unanswered == 0


# --- cancelling, expiry and external drift ------------------------------------------------------


def test_cancel_while_live_cancels_then_finishes_canceled() -> None:
    state = request_cancel(placed(make_state()), "strategy stopped", NOW)
    assert plan(state, NOW) == Cancel(number=0, reason="cancel: strategy stopped")
    state = cancelled(state)
    assert phases(state) == [PlacementPhase.CANCELED]
    assert plan(state, NOW) == Finish(status=IntentStatus.CANCELED, reason="strategy stopped")


def test_cancel_that_finds_no_order_after_it_was_seen_keeps_the_last_observation() -> None:
    state = request_cancel(placed(make_state(amount="2"), filled="0.5"), "stop", NOW)
    state = step(state, answer(None), expect=Cancel)
    assert phases(state) == [PlacementPhase.CANCELED]
    assert state.filled == D("0.5")
    assert isinstance(plan(state, NOW), Finish)


# A cancel's "not found" is final: the cancel activity believes it only once the exchange's
# reads have caught up with its writes (`activities.exchange.find_visible`); the machine below
# runs with read lag to hold the reconciler to that contract.


def test_cancel_before_anything_was_placed_finishes_canceled() -> None:
    state = request_cancel(make_state(), "changed my mind", NOW)
    assert plan(state, NOW) == Finish(status=IntentStatus.CANCELED, reason="changed my mind")


def test_finished_intent_plans_its_outcome_again_whatever_the_observations() -> None:
    state = placed(make_state())
    state = act(state, Finish(status=IntentStatus.FAILED, reason="gave up: timeout"), None)
    state = observe(state, seen(state, 0, status="canceled"), NOW)
    assert plan(state, NOW) == Finish(status=IntentStatus.FAILED, reason="gave up: timeout")


def test_second_cancel_request_keeps_the_first_reason() -> None:
    state = request_cancel(make_state(), "first", NOW)
    assert request_cancel(state, "second", NOW).cancel_reason == "first"


def test_an_intent_expires_when_its_time_has_come() -> None:
    expires_at = NOW + timedelta(minutes=1)
    state = placed(make_state(expires_at=expires_at, sync="watched"))
    assert plan(state, expires_at - SECOND) == Wait(after=SECOND, reason="resting as desired")
    action = plan(state, expires_at)
    assert isinstance(action, Expire)
    state = act(state, action, None, expires_at)
    assert state.expiring and state.cancel_reason == action.reason
    state = cancelled(state, now=expires_at)
    action = plan(state, expires_at)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED


def test_an_intent_past_its_expiry_before_it_placed_finishes_expired_without_an_order() -> None:
    state = make_state(expires_at=NOW - SECOND)
    state = step(state, expect=Expire)
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED
    assert state.placements == ()


def test_external_cancel_finishes_canceled_under_policy_finish() -> None:
    state = placed(make_state())
    state = observe(state, seen(state, 0, status="canceled"), NOW)
    assert phases(state) == [PlacementPhase.CANCELED_ELSEWHERE]
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.CANCELED
    assert "outside" in action.reason


def test_external_cancel_places_the_remaining_again_under_policy_restore() -> None:
    state = placed(make_state(amount="2", policy="restore"))
    state = observe(state, seen(state, 0, status="canceled", filled="0.5"), NOW)
    action = plan(state, NOW)
    assert isinstance(action, Place)
    assert action.placement.number == 1
    assert action.placement.amount == D("1.5")
    assert action.placement.client_order_id == client_order_id("i-1", 1)


def test_default_external_cancel_policy_is_finish() -> None:
    assert make_state().intent.on_external_cancel is ExternalCancelPolicy.FINISH


# --- groups -----------------------------------------------------------------------------------


def test_a_group_member_reports_its_progress_once_per_change() -> None:
    state = make_state(amount="2", group_id="g-1")
    action = plan(state, NOW)
    assert isinstance(action, Report)
    assert (action.update.filled, action.update.status) == (ZERO, IntentStatus.PENDING)
    state = act(state, action, Sent(delivered=True))
    assert isinstance(plan(state, NOW), Place)
    state = placed(state, filled="0.5")
    action = plan(state, NOW)
    assert isinstance(action, Report) and action.update.filled == D("0.5")


def test_a_group_id_without_a_group_workflow_stops_reporting() -> None:
    state = make_state(group_id="label-only")
    state = step(state, Sent(delivered=False, note="workflow not found"), expect=Report)
    assert state.group_missing
    assert isinstance(plan(state, NOW), Place)


# --- fills and outcomes ----------------------------------------------------------------------


def test_filled_order_finishes_filled() -> None:
    state = placed(make_state(amount="2"), status="closed", filled="2")
    assert phases(state) == [PlacementPhase.FILLED]
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FILLED
    state = act(state, action, None)
    assert state.status is IntentStatus.FILLED
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC
    assert plan(state, NOW) == Finish(status=IntentStatus.FILLED, reason=action.reason)


def test_ioc_partial_fill_finishes_expired_keeping_the_fills() -> None:
    state = make_state(amount="2", time_in_force="IOC")
    fills = (fill("t1", 0, "0.5", "100"),)
    state = placed(state, status="expired", filled="0.5", average="100", fills=fills)
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED
    state = act(state, action, None)
    assert state.filled == D("0.5")
    # Kept as observed, stamped with when the intent learnt of them.
    assert state.fills == tuple(f.model_copy(update={"known_at": NOW}) for f in fills)
    assert state.average_price == D(100)


def test_market_order_ending_partly_filled_finishes_expired() -> None:
    state = placed(make_state(type="market", price=None), status="canceled", filled="0.3")
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED


def test_non_resting_order_still_open_waits_for_the_exchange() -> None:
    state = placed(make_state(time_in_force="IOC"))
    action = plan(state, NOW)
    assert isinstance(action, Wait) and "finish the order" in action.reason


def test_fills_accumulate_across_placements_with_a_volume_weighted_average_price() -> None:
    state = placed(make_state(amount="4"))
    state = change(state, price="110")
    fills0 = (fill("t1", 0, "1", "100", fee="0.001"),)
    state = cancelled(state, filled="1", average="100", fills=fills0)
    fills1 = (fill("t2", 1, "2", "110", fee="0.002"), fill("t3", 1, "1", "110", fee="0.001"))
    state = placed(state, status="closed", filled="3", average="110", fills=fills1)
    assert state.filled == D(4)
    assert state.average_price == (D(1) * 100 + D(3) * 110) / 4
    assert state.fees == {"BTC": D("0.004")}
    assert [f.trade_id for f in state.fills] == ["t1", "t2", "t3"]
    assert isinstance(plan(state, NOW), Finish)


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
    assert phases(state) == [PlacementPhase.FILLED]
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
    state = state.model_copy(update={"placements": tuple(live), "next_placement": 2})
    state = observe(state, seen(state, 0), NOW)
    state = observe(state, seen(state, 1), NOW)
    assert plan(state, NOW) == Cancel(number=0, reason="two live orders for one intent")


# --- the placement phase table -------------------------------------------------------------------

ALLOWED = [
    (phase, event, target)
    for phase, moves in TRANSITIONS.items()
    for event, target in moves.items()
]


def test_every_phase_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(PlacementPhase)


@pytest.mark.parametrize(("phase", "event", "target"), ALLOWED, ids=lambda v: str(v))
def test_every_allowed_transition(
    phase: PlacementPhase, event: Event, target: PlacementPhase
) -> None:
    assert advance(phase, event) is target


@pytest.mark.parametrize("phase", list(PlacementPhase))
def test_events_a_phase_does_not_list_change_nothing(phase: PlacementPhase) -> None:
    for event in Event:
        if event not in TRANSITIONS[phase]:
            assert advance(phase, event) is None


@pytest.mark.parametrize("phase", [p for p in PlacementPhase if p.is_final])
def test_an_ended_placement_never_becomes_live_again(phase: PlacementPhase) -> None:
    for event in Event:
        target = advance(phase, event)
        assert target is None or target is phase


def test_only_a_placement_never_found_can_come_back_and_then_it_is_cancelled() -> None:
    # The one way from "not live" to "live": a request only delayed created the order after
    # the lookup: the intent has moved past it, so it is cancelled, never adopted.
    back = [
        (phase, event, target)
        for phase, event, target in ALLOWED
        if not phase.is_live and target.is_live
    ]
    assert back == [(PlacementPhase.NOT_FOUND, Event.SEEN_OPEN, PlacementPhase.CANCELING)]


def _order(phase: PlacementPhase) -> ExchangeOrder:
    return ExchangeOrder(
        exchange_order_id="x0",
        client_order_id=client_order_id("i-1", 0),
        symbol="BTC/USDT",
        side=Side.BUY,
        type="limit",
        status=ExchangeOrderStatus.OPEN,
        price=D(100),
        amount=D(1),
    )


@pytest.mark.parametrize("phase", list(PlacementPhase))
def test_a_placement_carries_an_observed_order_exactly_in_the_observed_phases(
    phase: PlacementPhase,
) -> None:
    base = {
        "number": 0,
        "client_order_id": client_order_id("i-1", 0),
        "revision": 0,
        "amount": D(1),
        "phase": phase,
        "refusal": "refused" if phase is PlacementPhase.REFUSED else None,
    }
    if phase.is_observed:
        Placement.model_validate({**base, "order": _order(phase)})
        with pytest.raises(ValidationError, match="needs an observed order"):
            Placement.model_validate(base)
    else:
        Placement.model_validate(base)
        with pytest.raises(ValidationError, match="cannot have an observed order"):
            Placement.model_validate({**base, "order": _order(phase)})


def test_a_refusal_reason_goes_only_with_phase_refused() -> None:
    base = {"number": 0, "client_order_id": "ek-x-0", "revision": 0, "amount": D(1)}
    with pytest.raises(ValidationError, match="refusal"):
        Placement.model_validate({**base, "phase": PlacementPhase.REFUSED})
    with pytest.raises(ValidationError, match="refusal"):
        Placement.model_validate({**base, "refusal": "no"})


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
    type: str = "stop_market",
    side: str = "sell",
    stop: str = "95",
    price: str | None = None,
    expires_at: datetime | None = None,
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
    intent = OrderIntent(intent_id="held-1", account="main", order=spec, expires_at=expires_at)
    return IntentState(intent=intent, desired=spec, rules=HOLDS_STOPS, watch_refused=True)


def test_held_stop_watches_the_price_and_places_nothing() -> None:
    state = held_stop()
    action = plan(state, NOW)
    assert action == WatchPrice(side="sell", stop_price=D(95), reason=action.reason)
    assert "triggers when last <= 95" in action.reason
    state = act(state, action, Abandoned())
    assert state.placements == ()
    assert state.stop_held and state.status is IntentStatus.PENDING
    assert state.reconciliation_status is ReconciliationStatus.IN_SYNC
    assert state.recent_actions[-1].action == "watch_price"


def test_a_held_stop_registers_with_the_account_sync_first() -> None:
    state = held_stop().model_copy(update={"watch_refused": False})
    action = plan(state, NOW)
    assert action == Watch(placement=0, reason=action.reason)


def test_a_held_stop_watches_only_until_its_expiry() -> None:
    action = plan(held_stop(expires_at=NOW + timedelta(minutes=2)), NOW)
    assert isinstance(action, WatchPrice) and action.after == timedelta(minutes=2)


def test_stop_on_an_exchange_with_stop_orders_is_placed_as_a_stop() -> None:
    state = make_state(type="stop_limit", stop_price="95", rules=NATIVE)
    action = plan(state, NOW)
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
    assert isinstance(plan(state, NOW), Place if crossed else WatchPrice)


def test_the_price_that_crossed_is_recorded_and_releases_the_order() -> None:
    state = step(held_stop(), PriceCrossed(price=D("94.9")), expect=WatchPrice)
    assert state.last_price == D("94.9") and state.last_price_at == NOW
    assert isinstance(plan(state, NOW), Place)


def test_held_stop_market_is_released_as_a_market_order_once_crossed() -> None:
    state = observe_price(held_stop(), D("94.9"), NOW)
    assert state.last_price == D("94.9") and state.last_price_at == NOW
    action = plan(state, NOW)
    assert isinstance(action, Place)
    assert action.placement.price is None and action.placement.stop_price is None
    assert action.placement.client_order_id == client_order_id("held-1", 0)
    assert "held stop triggered (last price 94.9, last <= 95)" in action.reason
    assert order_type_on_exchange(state) == (OrderType.MARKET, None)
    # The released market order ends by itself: filled, or expired with what it got.
    state = placed(state, status="expired", filled="0.4")
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED


def test_held_stop_limit_is_released_as_a_limit_order_at_its_price() -> None:
    state = observe_price(held_stop(type="stop_limit", price="94"), D(95), NOW)
    action = plan(state, NOW)
    assert isinstance(action, Place)
    assert action.placement.price == D(94) and action.placement.stop_price is None
    assert order_type_on_exchange(state) == (OrderType.LIMIT, None)
    state = placed(state)
    assert plan(state, NOW) == Wait(after=POLL_FIRST, reason="resting as desired")
    assert not state.stop_held and state.status is IntentStatus.OPEN
    # A plain limit order from here on: a new price is amended natively where the exchange can.
    state = change(state, price="93")
    assert isinstance(plan(state, NOW), Amend)


def test_cancelling_a_held_stop_finishes_cancelled_without_an_exchange_order() -> None:
    state = step(held_stop(), Abandoned(), expect=WatchPrice)
    state = request_cancel(state, "strategy stopped", NOW)
    assert plan(state, NOW) == Finish(status=IntentStatus.CANCELED, reason="strategy stopped")
    # even when the price crossed in the meantime
    assert isinstance(plan(observe_price(state, D(90), NOW), NOW), Finish)


def test_a_held_stop_expires_without_an_exchange_order() -> None:
    state = held_stop(expires_at=NOW + SECOND)
    state = step(state, now=NOW + SECOND, expect=Expire)
    action = plan(state, NOW + SECOND)
    assert isinstance(action, Finish) and action.status is IntentStatus.EXPIRED
    assert state.placements == ()


def test_a_new_stop_price_changes_only_what_is_watched() -> None:
    state = step(held_stop(), Abandoned(), expect=WatchPrice)
    state, _ = receive_change(state, IntentChange(stop_price=D(90)), NOW)
    assert state.desired.stop_price == D(90) and state.revision == 1
    state = observe_price(state, D(92), NOW)  # through the old stop, not the new one
    action = plan(state, NOW)
    assert isinstance(action, WatchPrice) and action.stop_price == D(90)
    assert isinstance(plan(observe_price(state, D(90), NOW), NOW), Place)


def test_stop_price_change_after_the_held_stop_triggered_is_rejected() -> None:
    state = observe_price(held_stop(type="stop_limit", price="94"), D(95), NOW)
    state = begin(state, plan(state, NOW), NOW)
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
    cancelled_ = False
    for event, value in events:
        if state.status.is_terminal:
            break
        if event == "price":
            state = observe_price(state, D(value), NOW)
        elif event == "stop":
            try:
                state, _ = receive_change(state, IntentChange(stop_price=D(value)), NOW)
            except ChangeRejected:
                assert state.placements or state.cancel_reason is not None
        elif event == "cancel":
            state = request_cancel(state, "strategy stopped", NOW)
            cancelled_ = True
        elif event == "fill" and state.live_placement is not None:
            state = observe(state, seen(state, 0, status="closed", filled="1"), NOW)
        for _ in range(5):  # the workflow: act until it waits or finishes
            action = plan(state, NOW)
            last, stop = state.last_price, state.desired.stop_price
            assert stop is not None
            crossed = last is not None and stop_crossed(Side(side), stop, last)
            if isinstance(action, WatchPrice):
                assert not crossed and not state.placements and action.stop_price == stop
                state = act(state, action, Abandoned())
                break
            if isinstance(action, Place):
                assert crossed and not cancelled_ and places == 0, (action, state)
                crossed_before_cancel = True
                places += 1
                state = begin(state, action, NOW)
                market = type == "stop_market"
                status = "expired" if market else "open"
                state = record(state, action, answer(seen(state, 0, status=status)), NOW)
                continue
            if isinstance(action, Cancel):
                state = act(state, action, answer(seen(state, 0, status="canceled")))
                continue
            if isinstance(action, Finish) and not state.status.is_terminal:
                state = act(state, action, None)
            break
    assert places == (1 if crossed_before_cancel else 0)
    assert len(state.placements) == places
    if cancelled_ and not crossed_before_cancel:
        assert state.status is IntentStatus.CANCELED and state.placements == ()


# --- continue-as-new: every input of a decision lives in the state ----------------------------


def continued_as_new(state: IntentState) -> IntentState:
    """The state as the next run gets it: IntentStart(state=...) through the data converter."""
    converter = pydantic_data_converter.payload_converter
    payloads = converter.to_payloads([IntentStart(intent=state.intent, state=state)])
    [start] = converter.from_payloads(payloads, [IntentStart])
    assert isinstance(start, IntentStart) and start.state is not None
    return start.state


def _unanswered_cancels(count: int) -> IntentState:
    state = request_cancel(placed(make_state()), "stop", NOW)
    for _ in range(count):
        state = step(state, Unanswered(error="RequestTimeout"), expect=Cancel)
    return state


def _backed_off() -> IntentState:
    state = placed(make_state())
    for n in range(3):
        state = step(state, answer(seen(state, 0)), now=NOW + (n + 1) * POLL_CEILING)
    return state


def _reported() -> IntentState:
    return step(make_state(group_id="g-1"), Sent(delivered=True), expect=Report)


# name -> (state, the kind of action it leads to, the field it carries)
CARRIED: dict[str, tuple[IntentState, type, str]] = {
    "unanswered count": (_unanswered_cancels(MAX_UNANSWERED_CALLS - 1), Cancel, "unanswered"),
    "unanswered count at the limit": (
        _unanswered_cancels(MAX_UNANSWERED_CALLS),
        Finish,
        "unanswered",
    ),
    "pending resync": (
        request_resync(placed(make_state(sync="watched")), NOW + SECOND),
        Lookup,
        "resync_at",
    ),
    "repaired": (mark_repaired(placed(make_state()), "reset by repair", NOW), Wait, "repaired"),
    "rules failure": (
        step(make_state(rules=None), Unanswered(error="RequestTimeout")),
        Finish,
        "rules_failure",
    ),
    "rules refused": (
        step(make_state(rules=None), Refused(reason="BadSymbol")),
        Finish,
        "rules_refused",
    ),
    "expiry": (
        step(placed(make_state(expires_at=NOW + SECOND)), now=NOW + SECOND, expect=Expire),
        Cancel,
        "expiring",
    ),
    "watched": (placed(make_state(sync="watched")), Wait, "watched"),
    "watch refused": (placed(make_state(sync="polled")), Wait, "watch_refused"),
    "watch lapsed": (
        watch_lapsed(placed(make_state(sync="watched")), NOW, NOW),
        Wait,
        "watch_lapsed_since",
    ),
    "group reported": (_reported(), Place, "group_reported"),
    "pending changes": (change(placed(make_state(amount="2")), amount="1"), Cancel, "pending"),
    "poll interval": (_backed_off(), Wait, "poll_interval"),
}


@pytest.mark.parametrize("name", list(CARRIED))
def test_decisions_are_the_same_after_continue_as_new(name: str) -> None:
    state, kind, carried = CARRIED[name]
    again = continued_as_new(state)
    assert again == state
    assert isinstance(plan(state, NOW), kind), plan(state, NOW)
    for later in (SECOND, 20 * SECOND, STALE_AFTER * 2, timedelta(hours=2)):
        now = NOW + later
        assert plan(again, now) == plan(state, now), (name, carried)
        assert reconciliation(again, now) is reconciliation(state, now)


def test_the_repaired_flag_survives_continue_as_new() -> None:
    state = mark_repaired(placed(make_state()), "reset by repair", NOW)
    assert state.repaired
    assert continued_as_new(state).repaired
    assert continued_as_new(continued_as_new(state)).repaired


def test_an_unanswered_write_after_continue_as_new_still_counts_towards_giving_up() -> None:
    state = continued_as_new(_unanswered_cancels(MAX_UNANSWERED_CALLS - 1))
    state = step(state, Unanswered(error="RequestTimeout"), expect=Cancel)
    action = plan(state, NOW)
    assert isinstance(action, Finish) and action.status is IntentStatus.FAILED


def test_a_pending_change_is_judged_after_continue_as_new() -> None:
    state = continued_as_new(change(placed(make_state(amount="2")), amount="1", answered=True))
    state = continued_as_new(cancelled(state, filled="0.5"))
    state = step(state, expect=Judge)
    assert state.desired.amount == D(1)
    assert judgment(continued_as_new(state), 0) == judgment(state, 0)


# --- bounded state ------------------------------------------------------------------------------


def test_state_stays_bounded_over_thousands_of_cancel_replace_modifications() -> None:
    state = placed(make_state(amount="100000", sync="watched"))
    filled, cost, fees = ZERO, ZERO, ZERO
    ids = {state.placements[0].client_order_id}
    now = NOW
    for n in range(3000):
        now += SECOND
        price = D(101 + n % 2)
        state = change(state, price=str(price), now=now)
        action = plan(state, now)
        assert isinstance(action, Cancel)
        state = begin(state, action, now)
        old = state.placement(action.number)
        quantity, fee = D("0.25") + D(n % 3) / 100, D("0.0001")
        trade = Fill(
            trade_id=f"t{n}",
            exchange_order_id=f"x{action.number}",
            price=old.price,  # type: ignore[arg-type]
            amount=quantity,
            fee=fee,
            fee_currency="BNB",
        )
        final = seen(
            state, action.number, "canceled", str(quantity), str(old.price), fills=(trade,)
        )
        state = record(state, action, answer(final), now)
        filled += quantity
        cost += quantity * old.price  # type: ignore[operator]
        fees += fee
        action = plan(state, now)
        assert isinstance(action, Place)
        assert action.placement.client_order_id not in ids
        ids.add(action.placement.client_order_id)
        state = begin(state, action, now)
        state = record(state, action, answer(seen(state, action.placement.number)), now)
    size = len(state.model_dump_json())
    assert size < 64 * 1024, size
    assert len(continued_as_new(state).model_dump_json()) == size
    assert state.filled == filled
    assert state.average_price == cost / filled
    assert state.fees == {"BNB": fees}
    assert len(ids) == 3001 == state.next_placement
    assert state.settled.placements + len(state.placements) == state.next_placement
    assert len([p for p in state.placements if not p.live]) == KEEP_ENDED


def test_observations_of_compacted_placements_are_ignored() -> None:
    state = placed(make_state(amount="100", sync="watched"))
    first = seen(state, 0, status="canceled", filled="1")
    for n in range(KEEP_ENDED + 2):
        state = change(state, price=str(101 + n % 2))
        state = cancelled(state, filled="1")
        state = placed(state)
    with pytest.raises(KeyError):
        state.placement(0)
    assert state.settled.placements >= 1
    assert observe(state, first, NOW) == state


# --- the stateful property test -------------------------------------------------------------
#
# A fake exchange (orders by client order id, fills, external cancels, refusals, a native edit;
# not a mock of ccxt) and a driver that does only what the workflow does: for the action plan()
# returns it calls begin(), computes the outcome from the fake exchange with injected faults,
# then calls record(). The driver decides nothing: whatever it chooses is a fault or an exchange
# event. Faults: a request's answer is lost before or after the exchange committed it
# (Unanswered), the exchange refuses (Refused), or a fill lands on the old order between the
# edit's check of its fills and the edit itself (the one window the kernel cannot see: the edit
# then asks for the remaining the kernel knew, and the exchange may fill more than the intent
# amount; tracked as `raced`). The strategy modifies, cancels and asks for resyncs; the exchange
# fills and cancels on its own, its observation pushed at once (as the account sync would) or
# left for a poll; older snapshots arrive late, out of order and twice; time passes, so polls,
# expiries and staleness happen. When an intent finishes, the next one starts.

# "amend_race" is a fault of a native edit only; to every other call it is "ok".
FAULTS = [
    *["ok"] * 14,
    *["amend_race"] * 4,
    *["lost_before_commit", "lost_after_commit"] * 2,
    "refused",
]


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
    created_at: datetime = NOW

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


@dataclass
class FakeExchange:
    rules: MarketRules
    # Read-after-write lag (shorter than VISIBILITY_GRACE): for this long after an order is
    # created, lookups do not see it; the matching engine does (it fills, a cancel finds it).
    lag: timedelta = timedelta(0)
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]
    last_price: Decimal = Decimal(100)
    now: datetime = NOW

    def read(self, coid: str) -> ExchangeOrder | None:
        """What a lookup answers (a create's or an edit's own answer is `view`)."""
        order = self.orders.get(coid)
        if order is None or self.now - order.created_at < self.lag:
            return None
        return self.view(coid)

    def live(self) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.status.is_live]

    @property
    def filled(self) -> Decimal:
        return sum((o.filled for o in self.orders.values()), ZERO)

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

    def create(self, state: IntentState, placement: Placement, taker: Decimal) -> str | None:
        """Create the order; the refusal reason if the exchange refuses it."""
        assert placement.client_order_id not in self.orders, "client order id reused"
        priced = state.desired.model_copy(update={"price": placement.price})
        refused = "; ".join(self.rules.violations(priced, amount=placement.amount))
        if refused:
            return refused
        order_type, stop_price = order_type_on_exchange(state)
        order = FakeOrder(
            exchange_order_id=f"x{next(self.ids)}",
            client_order_id=placement.client_order_id,
            type=order_type.value,
            price=placement.price,
            stop_price=stop_price,
            amount=placement.amount,
            created_at=self.now,
        )
        self.orders[order.client_order_id] = order
        tif = state.desired.time_in_force
        if order_type is OrderType.MARKET or tif is not TimeInForce.GTC:
            # Takes what the book offers at once, then ends by itself.
            quantity = min(taker, order.amount)
            if tif is TimeInForce.FOK and quantity < order.amount:
                quantity = ZERO
            if quantity:
                self.fill(order.client_order_id, quantity)
            if order.status.is_live:
                order.status = ExchangeOrderStatus.EXPIRED
        return None

    def cancel(self, coid: str) -> None:
        order = self.orders.get(coid)
        if order is not None and order.status.is_live:
            order.status = ExchangeOrderStatus.CANCELED

    def fill(self, coid: str, quantity: Decimal) -> None:
        order = self.orders[coid]
        assert order.status.is_live and 0 < quantity <= order.remaining
        price = order.price if order.price is not None else self.last_price
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


def _rests(state: IntentState) -> bool:
    order_type, _ = order_type_on_exchange(state)
    return order_type is not OrderType.MARKET and state.desired.time_in_force is TimeInForce.GTC


def check_transitions(before: IntentState, after: IntentState, ended: set[int]) -> None:
    """Every phase change is an entry of TRANSITIONS; an ended placement stays as it ended."""
    old = {p.number: p.phase for p in before.placements}
    for placement in after.placements:
        number, phase = placement.number, placement.phase
        if number not in old:
            assert number >= before.next_placement, f"placement {number} came back"
            assert phase is PlacementPhase.PLACING, placement
            continue
        previous = old[number]
        assert phase is previous or phase in TRANSITIONS[previous].values(), (previous, phase)
        if number in ended:
            assert phase is previous, f"placement {number} ended {previous}, now {phase}"
        if phase.is_final:
            ended.add(number)
    gone = set(old) - {p.number for p in after.placements}
    assert after.settled.placements - before.settled.placements == len(gone)


@dataclass
class Kernel:
    """The driver: plan -> begin -> (the fake exchange, with a fault) -> record. I/O only."""

    state: IntentState
    exchange: FakeExchange
    clock: datetime
    used: set[str]  # every client order id ever sent, of every intent
    max_desired: Decimal = ZERO
    raced: bool = False
    refusals: int = 0
    late: list[ExchangeOrder] = field(default_factory=list)  # snapshots not yet delivered
    ended: set[int] = field(default_factory=set)

    def tick(self) -> datetime:
        self.clock += timedelta(milliseconds=1)
        self.exchange.now = self.clock
        return self.clock

    def set(self, state: IntentState) -> None:
        check_transitions(self.state, state, self.ended)
        self.state = state
        self.max_desired = max(self.max_desired, state.desired.amount)

    def clone(self) -> Kernel:
        twin = copy.copy(self)
        twin.exchange = copy.deepcopy(self.exchange)
        twin.used = set(self.used)
        twin.ended = set(self.ended)
        twin.late = []
        return twin

    def fresh(self) -> bool:
        """The kernel has observed the latest state of every exchange order of the intent."""
        return all(
            p.order is not None
            and p.order
            == self.exchange.view(p.client_order_id).model_copy(  # type: ignore[union-attr]
                update={"fills": ()}
            )
            for p in self.state.placements
            if p.client_order_id in self.exchange.orders
        )

    def step(self, fault: str = "ok", taker: Decimal = ZERO) -> tuple[Action, Outcome | None]:
        now = self.tick()
        self.set(refresh(self.state, now))
        action = plan(self.state, now)
        if isinstance(action, Wait) or (
            isinstance(action, Finish) and self.state.status.is_terminal
        ):
            return action, None
        self.check(action)
        self.set(begin(self.state, action, now))
        outcome = self.execute(action, fault, taker)
        self.set(record(self.state, action, outcome, now))
        if isinstance(action, Finish):
            self.check_finish(action)
        if isinstance(action, Judge) and action.rejection is None and not self.raced:
            # A reduction accepted on final fills never leaves more filled than desired.
            assert self.exchange.filled <= self.state.desired.amount
        return action, outcome

    def execute(self, action: Action, fault: str, taker: Decimal) -> Outcome | None:
        """The exchange's answer to `action`, with `fault` injected. No decision here."""
        exchange = self.exchange
        lost = fault in ("lost_before_commit", "lost_after_commit")
        match action:
            case LoadRules():
                if lost:
                    return Unanswered(error="RequestTimeout")
                if fault == "refused":
                    return Refused(reason="BadSymbol: market closed")
                return RulesLoaded(rules=exchange.rules)
            case Place(placement=placement):
                self.used.add(placement.client_order_id)
                if fault == "lost_before_commit":
                    return Unanswered(error="RequestTimeout", at=self.clock)
                if fault == "refused":
                    self.refusals += 1
                    return Refused(reason="InsufficientFunds: balance too low")
                refused = exchange.create(self.state, placement, taker)
                if fault == "lost_after_commit":
                    return Unanswered(error="RequestTimeout", at=self.clock)
                if refused:
                    self.refusals += 1
                    return Refused(reason=refused)
                return Observed(order=exchange.view(placement.client_order_id))
            case Amend(replaces=replaces, placement=placement):
                self.used.add(placement.client_order_id)
                if fault == "lost_before_commit":
                    return Unanswered(error="RequestTimeout", at=self.clock)
                if fault == "refused":
                    self.refusals += 1
                    return Refused(reason="InvalidOrder: the edit was refused")
                # As the amend activity: it edits only an order it finds open with the fills
                # the plan saw; else it reports what it found.
                old = self.state.placement(replaces)
                new = placement.client_order_id
                current = exchange.read(old.client_order_id)
                if current is None or not current.status.is_live:
                    # The replacement is looked up past the grace (`find_visible`).
                    return Amended(replaced=current, order=exchange.view(new))
                if current.filled != old.filled:
                    return Amended(replaced=current, order=None)
                target = exchange.orders[old.client_order_id]
                if fault == "amend_race":
                    exchange.fill(target.client_order_id, min(D("0.5"), target.remaining))
                    self.raced = True
                order = None
                if target.status.is_live:
                    refused = exchange.create(self.state, placement, ZERO)
                    if refused:
                        self.refusals += 1
                        return Refused(reason=refused)
                    target.status = ExchangeOrderStatus.CANCELED
                    order = exchange.view(new)  # the edit's own answer
                if fault == "lost_after_commit":
                    return Unanswered(error="RequestTimeout", at=self.clock)
                return Amended(replaced=exchange.read(old.client_order_id), order=order)
            case Cancel(number=number):
                coid = self.state.placement(number).client_order_id
                if fault == "lost_before_commit":
                    return Unanswered(error="RequestTimeout")
                exchange.cancel(coid)
                if fault == "lost_after_commit":
                    return Unanswered(error="RequestTimeout")
                # As the activity: a "not found" is believed after the grace (no lag then).
                return Observed(order=exchange.view(coid))
            case Lookup(number=number):
                if lost:
                    return Unanswered(error="RequestTimeout")
                return Observed(order=exchange.read(self.state.placement(number).client_order_id))
            case WatchPrice(side=side, stop_price=stop_price):
                if lost:
                    return Unanswered(error="RequestTimeout")
                if stop_crossed(side, stop_price, exchange.last_price):
                    return PriceCrossed(price=exchange.last_price)
                return Abandoned()  # its wait ended (expiry, a change) before the price crossed
            case Watch() | Report():
                delivered = fault != "refused"
                return Sent(delivered=delivered, note="" if delivered else "no such workflow")
            case Unwatch():
                return Sent(delivered=True)
        return None  # bookkeeping: expire, judge, finish

    def check(self, action: Action) -> None:
        """What plan may ask for, given what the kernel knows."""
        state = self.state
        if any(p.phase is PlacementPhase.PLACING for p in state.placements):
            assert isinstance(action, Lookup | Report | Finish), f"{action} while unknown"
        if isinstance(action, Place | Amend):
            wanted = state.desired.amount - state.filled
            assert 0 < action.placement.amount <= wanted, (action, wanted)
            assert action.placement.number == state.next_placement
            assert action.placement.price == state.desired.price
            coid = action.placement.client_order_id
            assert coid not in self.used, f"client order id {coid} reused"
            assert coid not in self.exchange.orders
        if isinstance(action, Place):
            assert state.live_placement is None, "place while an order may be live"
            # Nothing live: the kernel's fills are final, so it never asks for more than is left.
            assert action.placement.amount <= state.desired.amount - self.exchange.filled
            last = state.placements[-1] if state.placements else None
            if last is not None and last.phase is PlacementPhase.CANCELED_ELSEWHERE:
                # Never silently re-place an order cancelled outside exchange-kernel.
                assert state.intent.on_external_cancel is ExternalCancelPolicy.RESTORE
        if isinstance(action, Amend):
            assert state.rules is not None and state.rules.native_amend
            assert not (state.desired.type.is_stop and not state.holds_stop)

    def check_finish(self, action: Finish) -> None:
        state = self.state
        status = action.status
        if status in (IntentStatus.FILLED, IntentStatus.CANCELED, IntentStatus.EXPIRED):
            assert not self.exchange.live(), f"finished {status} with a live order"
        if status is IntentStatus.FILLED:
            assert state.filled >= state.desired.amount
        elif status is IntentStatus.CANCELED:
            external = any(o.cancelled_externally for o in self.exchange.orders.values())
            assert state.cancel_reason is not None or external
        elif status is IntentStatus.EXPIRED:
            observed = any(p.phase is PlacementPhase.EXPIRED for p in state.placements)
            # ... or the rest of it is below the market's minimums: it cannot be placed.
            dust = unplaceable_remainder(state) is not None
            assert state.expiring or not _rests(state) or observed or dust
        elif status is IntentStatus.REJECTED:
            assert (
                self.refusals
                or state.rules_refused
                or state.placements == ()
                or any(p.phase is PlacementPhase.REJECTED for p in state.placements)
            )
        else:
            assert status is IntentStatus.FAILED
            assert state.unanswered >= MAX_UNANSWERED_CALLS or state.rules_failure


KINDS = st.sampled_from(
    [
        *[{"type": "limit", "time_in_force": "GTC"}] * 8,
        {"type": "limit", "time_in_force": "IOC"},
        {"type": "limit", "time_in_force": "FOK"},
        {"type": "market", "price": None},
        {"type": "stop_limit", "stop_price": "95"},
        {"type": "stop_market", "price": None, "stop_price": "95"},
    ]
)
EXCHANGE_RULES = st.builds(
    MarketRules,
    symbol=st.just("BTC/USDT"),
    tick_size=st.sampled_from([None, None, None, D(1)]),
    step_size=st.sampled_from([None, None, None, D(1)]),
    min_notional=st.sampled_from([None] * 7 + [D(150)]),
    native_amend=st.sampled_from([True, True, False]),
    held_stops=st.sampled_from([(), (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)]),
)
INTENTS = {
    "kind": KINDS,
    "amount": st.sampled_from(["1", "2", "3", "5", "8", "8", "13", "2.5"]),
    "rules": EXCHANGE_RULES,
    "policy": st.sampled_from(list(ExternalCancelPolicy)),
    "expires_in": st.sampled_from([None, None, 30, 600]),
    "group_id": st.sampled_from([None, None, "g-1"]),
    # A new intent loads them (LoadRules); a run continued as new carries them.
    "rules_loaded": st.sampled_from([False, True, True]),
    # Read-after-write lag (seconds), below VISIBILITY_GRACE.
    "lag": st.sampled_from([0, 0, 2]),
}
WORKFLOW_STEPS = st.lists(st.sampled_from(FAULTS), max_size=3)
AMOUNTS = st.sampled_from(["1", "2", "3", "5", "8", "2.5"])
PRICES = st.sampled_from(["90", "100", "110", "100.5"])


def _active(machine: ReconcileMachine) -> bool:
    return not machine.kernel.state.status.is_terminal


def _resting(machine: ReconcileMachine) -> bool:
    return _active(machine) and bool(machine.kernel.exchange.live())


def _finished(machine: ReconcileMachine) -> bool:
    return not _active(machine)


class ReconcileMachine(RuleBasedStateMachine):
    """One intent at a time; when it finishes, the next one starts (new intent id)."""

    kernel: Kernel

    def __init__(self) -> None:
        super().__init__()
        self.intents = 0
        self.used: set[str] = set()
        self.clock = NOW

    def open_intent(
        self,
        kind: dict[str, str | None],
        amount: str,
        rules: MarketRules,
        policy: str,
        expires_in: int | None,
        group_id: str | None,
        rules_loaded: bool,
        lag: int,
    ) -> None:
        fields = {"price": "100", **kind}
        intent_id = f"intent-{self.intents}"
        self.intents += 1
        expires_at = None if expires_in is None else self.clock + timedelta(seconds=expires_in)
        state = make_state(
            amount=amount,
            policy=policy,
            rules=rules if rules_loaded else None,
            intent_id=intent_id,
            expires_at=expires_at,
            group_id=group_id,
            sync="new",
            **fields,  # type: ignore[arg-type]
        )
        self.kernel = Kernel(
            state=state,
            exchange=FakeExchange(rules=rules, lag=timedelta(seconds=lag), now=self.clock),
            clock=self.clock,
            used=self.used,
            max_desired=state.desired.amount,
        )

    @initialize(**INTENTS)
    def first_intent(self, **intent: object) -> None:
        self.open_intent(**intent)  # type: ignore[arg-type]

    @precondition(_finished)
    @rule(**INTENTS)
    def next_intent(self, **intent: object) -> None:
        kernel = self.kernel
        for _ in range(5):  # unwatch, the last report
            action, _ = kernel.step()
        state = kernel.state
        # A finished intent stays finished: it plans its outcome and refuses changes.
        assert action == Finish(status=state.status, reason=action.reason)  # type: ignore[union-attr]
        assert not state.pending_changes
        with pytest.raises(ChangeRejected):
            receive_change(state, IntentChange(amount=D(9)), kernel.clock)
        with pytest.raises(ChangeRejected):
            request_cancel(state, "strategy stopped", kernel.clock)
        self.clock = kernel.clock
        self.open_intent(**intent)  # type: ignore[arg-type]

    def run_workflow(self, faults: list[str], taker: int = 0) -> None:
        for fault in faults:
            self.kernel.step(fault, D(taker))

    # --- the workflow ---

    @precondition(_active)
    @rule(
        faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=4),
        taker=st.integers(min_value=0, max_value=8),
    )
    def workflow_steps(self, faults: list[str], taker: int) -> None:
        self.run_workflow(faults, taker)

    @precondition(_active)
    @rule(
        seconds=st.sampled_from([0.5, 1, 2, 5, 20, 45, 700]),
        then=WORKFLOW_STEPS,
    )
    def time_passes(self, seconds: float, then: list[str]) -> None:
        self.kernel.clock += timedelta(seconds=seconds)
        self.run_workflow(then)

    # --- the exchange, on its own ---

    @precondition(_resting)
    @rule(
        event=st.sampled_from(["fill"] * 5 + ["cancel"]),
        quantity=st.sampled_from(["1", "1", "2", "0.5", "0.5", "all"]),
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
        else:
            kernel.exchange.cancel(order.client_order_id)
            order.cancelled_externally = True
        after = kernel.exchange.view(order.client_order_id)
        assert after is not None
        kernel.late.append(after)  # delivered (again) later
        if pushed:
            kernel.set(observe(kernel.state, after, kernel.tick()))
        self.run_workflow(then)

    @precondition(lambda self: _active(self) and self.kernel.late)
    @rule(data=st.data(), twice=st.booleans(), then=WORKFLOW_STEPS)
    def old_observation_arrives_late(
        self, data: st.DataObject, twice: bool, then: list[str]
    ) -> None:
        kernel = self.kernel
        index = data.draw(st.integers(0, len(kernel.late) - 1))
        snapshot = kernel.late[index] if twice else kernel.late.pop(index)
        kernel.set(observe(kernel.state, snapshot, kernel.tick()))
        self.run_workflow(then)

    @precondition(_active)
    @rule(price=st.sampled_from(["85", "94", "95", "100", "105"]), then=WORKFLOW_STEPS)
    def last_price_moves(self, price: str, then: list[str]) -> None:
        self.kernel.exchange.last_price = D(price)
        self.run_workflow(then)

    # --- the strategy ---

    @precondition(_active)
    @rule(
        wish=st.sampled_from(["modify"] * 8 + ["below_filled", "cancel", "resync", "resync"]),
        price=st.one_of(st.none(), PRICES),
        amount=st.one_of(st.none(), AMOUNTS),
        then=WORKFLOW_STEPS,
    )
    def strategy_acts(
        self, wish: str, price: str | None, amount: str | None, then: list[str]
    ) -> None:
        kernel = self.kernel
        now = kernel.tick()
        state = kernel.state
        if wish == "cancel":
            kernel.set(request_cancel(state, "strategy stopped", now))
        elif wish == "resync":
            kernel.set(request_resync(state, now))
        elif wish == "below_filled":
            below = state.filled - D(amount or "1")
            if below > 0:
                with pytest.raises(ChangeRejected):
                    receive_change(state, IntentChange(amount=below), now)
        elif price is not None or amount is not None:
            wish_ = IntentChange(
                price=D(price) if price is not None else None,
                amount=D(amount) if amount is not None else None,
            )
            try:
                after, _ = receive_change(state, wish_, now)
            except ChangeRejected:
                pass
            else:
                assert state.cancel_reason is None
                assert wish_.amount is None or wish_.amount >= state.filled
                kernel.set(after)
        self.run_workflow(then)

    # --- invariants ---

    @invariant()
    def never_two_live_orders_on_the_exchange(self) -> None:
        assert len(self.kernel.exchange.live()) <= 1

    @invariant()
    def kernel_never_sees_more_filled_than_the_exchange(self) -> None:
        assert self.kernel.state.filled <= self.kernel.exchange.filled

    @invariant()
    def with_nothing_live_the_kernel_knows_every_fill(self) -> None:
        state = self.kernel.state
        if state.live_placement is None:
            assert state.filled == self.kernel.exchange.filled

    @invariant()
    def fills_are_unique_by_trade_id(self) -> None:
        ids = [f.trade_id for f in self.kernel.state.fills]
        assert len(ids) == len(set(ids))

    @invariant()
    def filled_never_exceeds_the_amount_without_a_race(self) -> None:
        kernel = self.kernel
        if not kernel.raced:
            assert kernel.exchange.filled <= kernel.state.desired.amount
            live = sum((o.remaining for o in kernel.exchange.live()), ZERO)
            assert kernel.exchange.filled + live <= kernel.max_desired

    @invariant()
    def unknown_outcome_shows_in_the_reconciliation_status(self) -> None:
        state = self.kernel.state
        if not state.status.is_terminal and any(
            p.phase is PlacementPhase.PLACING for p in state.placements
        ):
            assert state.reconciliation_status is ReconciliationStatus.UNKNOWN

    @invariant()
    def quiet_loop_settles_within_ten_steps(self) -> None:
        twin = self.kernel.clone()
        for _ in range(10):
            action, outcome = twin.step()
            if isinstance(action, Finish):
                assert twin.state.status.is_terminal
                return
            if isinstance(action, WatchPrice) and isinstance(outcome, Abandoned):
                return
            if isinstance(action, Wait):
                if action.reason == "resting as desired" and twin.fresh():
                    [order] = twin.exchange.live()
                    state = twin.state
                    assert order.price == state.desired.price
                    assert order.remaining == state.desired.amount - state.filled
                return
        raise AssertionError(f"no Wait or Finish within 10 steps: {twin.state.recent_actions}")


ReconcileMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestReconcileMachine = ReconcileMachine.TestCase
