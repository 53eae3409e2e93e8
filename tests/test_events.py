"""Specification of exchange_kernel.events: which steps of an intent are events, and how the
tail of events is kept. Each step is taken as the workflow takes it (`events.record` of the
state before and after), on the reconciler's own functions."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from temporalio.contrib.pydantic import pydantic_data_converter

from exchange_kernel import events
from exchange_kernel.events import KEEP_EVENTS, appended, derive, since
from exchange_kernel.models import (
    IntentChange,
    IntentEventKind,
    IntentStart,
    IntentState,
    IntentStatus,
)
from exchange_kernel.reconcile import (
    Observed,
    Place,
    Refused,
    begin,
    note,
    observe,
    plan,
    receive_change,
    record,
    request_cancel,
)
from tests.test_reconcile import (
    NATIVE,
    NOW,
    SECOND,
    act,
    cancelled,
    change,
    fill,
    make_state,
    placed,
    seen,
    step,
)

D = Decimal
K = IntentEventKind


def recorded(before: IntentState, after: IntentState) -> IntentState:
    return events.record(before, after, NOW)


def kinds(state: IntentState) -> list[IntentEventKind]:
    return [e.kind for e in state.events]


def resting(amount: str = "1", **fields: object) -> IntentState:
    """Placed and open on the exchange, with the step's events (open)."""
    state = make_state(amount=amount, **fields)  # type: ignore[arg-type]
    return recorded(state, placed(state))


def test_a_placed_order_seen_open_is_a_status_event() -> None:
    state = resting()
    [event] = state.events
    assert (event.seq, event.kind) == (1, K.STATUS)
    assert (event.previous_status, event.status) == (IntentStatus.PENDING, IntentStatus.OPEN)
    assert event.intent_id == "i-1" and event.at == NOW
    assert state.event_seq == 1


def test_new_trades_are_fill_events_then_the_status_they_moved() -> None:
    state = resting(amount="1")
    trades = (fill("t1", 0, "0.3", "100"), fill("t2", 0, "0.2", "100", fee="0.001"))
    after = recorded(state, observe(state, seen(state, 0, filled="0.5", fills=trades), NOW))
    new = after.events[1:]
    assert [e.kind for e in new] == [K.FILL, K.FILL, K.STATUS]
    assert [e.seq for e in new] == [2, 3, 4]
    assert [e.fill.trade_id for e in new[:2]] == ["t1", "t2"]  # type: ignore[union-attr]
    assert [e.filled for e in new] == [D("0.3"), D("0.5"), D("0.5")]
    assert new[1].fill is not None and new[1].fill.fee == D("0.001")
    assert new[1].fill.fee_currency == "BTC"
    assert new[2].status is IntentStatus.PARTIALLY_FILLED
    assert new[2].previous_status is IntentStatus.OPEN


def test_a_trade_seen_again_is_no_new_event() -> None:
    state = resting(amount="1")
    order = seen(state, 0, filled="0.3", fills=(fill("t1", 0, "0.3", "100"),))
    once = recorded(state, observe(state, order, NOW))
    again = recorded(once, observe(once, order, NOW + SECOND))
    assert again.events == once.events and again.event_seq == once.event_seq


def test_the_last_fill_of_an_intent_comes_before_its_filled_status() -> None:
    state = resting(amount="1")
    done = seen(state, 0, status="closed", filled="1", fills=(fill("t1", 0, "1", "100"),))
    state = recorded(state, observe(state, done, NOW))
    state = recorded(state, step(state))  # Finish filled
    assert kinds(state)[1:] == [K.FILL, K.STATUS, K.STATUS]
    final = state.events[-1]
    assert (final.previous_status, final.status) == (
        IntentStatus.PARTIALLY_FILLED,
        IntentStatus.FILLED,
    )
    assert final.reason and final.filled == D(1)


def test_an_accepted_modification_is_an_event_with_its_revision_and_desired_order() -> None:
    state = resting()
    state = recorded(state, change(state, price="101"))
    event = state.events[-1]
    assert event.kind is K.MODIFICATION_ACCEPTED
    assert event.revision == 1
    assert event.desired is not None and event.desired.price == D(101)


def test_a_change_refused_at_once_is_a_refused_modification() -> None:
    state = resting()
    # What the workflow's `modify` signal records when the known view refuses a change.
    after = note(state, "modify rejected", "amount 0.1 is below the 0.5 already filled", NOW)
    event = recorded(state, after).events[-1]
    assert event.kind is K.MODIFICATION_REFUSED
    assert event.reason == "amount 0.1 is below the 0.5 already filled"
    assert event.revision is None


def test_a_reduction_judged_below_the_final_fills_is_a_refused_modification() -> None:
    state = resting(amount="2")
    state = recorded(state, change(state, amount="1"))
    assert kinds(state) == [K.STATUS]  # pending: nothing decided yet
    state = recorded(state, cancelled(state, filled="1.5"))
    state = recorded(state, step(state))  # Judge: refused
    refused = [e for e in state.events if e.kind is K.MODIFICATION_REFUSED]
    assert len(refused) == 1
    assert refused[0].reason == "amount 1 is below the 1.5 already filled"


def test_a_modification_the_exchange_refuses_names_the_revision_gone_back_to() -> None:
    state = resting(rules=NATIVE)
    state = recorded(state, change(state, price="101"))
    state = recorded(state, step(state, Refused(reason="PostOnly: would cross")))
    event = state.events[-1]
    assert event.kind is K.MODIFICATION_REFUSED
    assert (event.revision, event.reverted_to) == (1, 0)
    assert event.reason == "refused by the exchange: PostOnly: would cross"
    assert event.desired is not None and event.desired.price == D(100)


def test_a_refused_first_order_is_no_refused_modification() -> None:
    state = make_state()
    state = recorded(state, step(state, Refused(reason="InsufficientFunds")))
    state = recorded(state, step(state))  # Finish rejected
    assert kinds(state) == [K.STATUS]
    assert state.events[0].status is IntentStatus.REJECTED
    assert state.events[0].reason is not None and "InsufficientFunds" in state.events[0].reason


def test_changes_pending_when_the_intent_finishes_are_refused_modifications() -> None:
    state = resting(amount="2")
    state, _ = receive_change(state, IntentChange(amount=D(1)), NOW)
    done = cancelled(state, status="closed", filled="2")
    state = recorded(state, done)
    state = recorded(state, step(state))  # Finish filled
    refused = [e for e in state.events if e.kind is K.MODIFICATION_REFUSED]
    assert [e.reason for e in refused] == ["intent i-1 is already filled"]
    assert state.events[-1].kind is K.STATUS  # the refusal comes before the final status


def test_a_cancel_request_is_an_event_and_the_cancellation_a_status() -> None:
    state = resting()
    state = recorded(state, request_cancel(state, "strategy stopped", NOW))
    assert state.events[-1].kind is K.CANCEL_REQUESTED
    assert state.events[-1].reason == "strategy stopped"
    state = recorded(state, cancelled(state))
    state = recorded(state, step(state))  # Finish canceled
    assert state.events[-1].kind is K.STATUS
    assert state.events[-1].status is IntentStatus.CANCELED


def test_a_step_that_changes_nothing_a_watcher_sees_is_no_event() -> None:
    state = resting()
    action = plan(state, NOW + 3 * SECOND)  # a routine look
    looked = act(state, action, None, NOW + 3 * SECOND)
    assert derive(state, looked, NOW) == []
    assert derive(state, state, NOW) == []


def test_begin_and_record_apart_give_the_events_of_both_together() -> None:
    state = make_state()
    action = plan(state, NOW)
    assert isinstance(action, Place)
    begun = recorded(state, begin(state, action, NOW))
    assert begun.events == ()
    answered = record(begun, action, Observed(order=seen(begun, action.placement.number)), NOW)
    assert kinds(recorded(begun, answered)) == [K.STATUS]


def test_the_tail_keeps_the_most_recent_events_and_the_seq_goes_on() -> None:
    state = resting()
    for i in range(100):
        state = recorded(state, change(state, price=str(101 + i % 2)))
    assert len(state.events) == KEEP_EVENTS
    assert state.event_seq == 101
    assert [e.seq for e in state.events] == list(range(101 - KEEP_EVENTS + 1, 102))


def test_events_and_their_seq_survive_continue_as_new() -> None:
    state = resting()
    state = recorded(state, change(state, price="101"))
    start = IntentStart(intent=state.intent, state=state)
    payload = pydantic_data_converter.payload_converter.to_payloads([start])
    [carried] = pydantic_data_converter.payload_converter.from_payloads(payload, [IntentStart])
    assert carried.state.events == state.events
    assert carried.state.event_seq == 2


def test_since_gives_the_events_after_a_seq_and_no_gap_while_they_are_kept() -> None:
    state = resting()
    state = recorded(state, change(state, price="101"))
    found, gap = since(state, 1)
    assert [e.seq for e in found] == [2] and not gap
    assert since(state, 2) == ((), False)
    assert since(state, 0) == (state.events, False)


def test_since_reports_a_gap_when_events_after_the_seq_were_dropped() -> None:
    state = resting()
    for i in range(KEEP_EVENTS + 5):
        state = recorded(state, change(state, price=str(101 + i % 2)))
    found, gap = since(state, 3)
    assert gap and found == state.events
    found, gap = since(state, state.events[0].seq - 1)
    assert not gap and found == state.events


def test_a_seq_past_the_last_one_is_a_gap_answered_with_every_kept_event() -> None:
    state = resting()
    assert since(state, 5) == (state.events, True)


def test_appended_finds_what_was_added_to_a_trimmed_tail() -> None:
    assert appended([1, 2, 3], [1, 2, 3, 4]) == [4]
    assert appended([1, 2, 3], [2, 3, 4]) == [4]  # trimmed to three
    assert appended([1, 2, 3], [3, 4, 5]) == [4, 5]
    assert appended([1, 2, 3], [1, 2, 3]) == []
    assert appended([1, 2, 3], [7, 8, 9]) == [7, 8, 9]
    assert appended([], [1]) == [1]
    assert appended([1, 1], [1, 1, 1]) == [1]


@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=9), max_size=4),
        min_size=1,
        max_size=12,
    )
)
def test_every_trade_is_one_fill_event_however_often_and_in_whatever_order_it_is_seen(
    looks: list[list[int]],
) -> None:
    """Observations carry any subset of ten trades of 0.1 each, repeated and out of order; the
    order's filled amount never goes back. Every distinct trade is one fill event, once."""
    state = resting(amount="1")
    seen_trades: set[int] = set()
    for look in looks:
        seen_trades.update(look)
        trades = tuple(fill(f"t{n}", 0, "0.1", "100") for n in look)
        order = seen(state, 0, filled=str(D("0.1") * len(seen_trades)), fills=trades)
        state = recorded(state, observe(state, order, NOW))
    fills = [e.fill.trade_id for e in state.events if e.kind is K.FILL and e.fill]
    assert sorted(fills) == sorted(f"t{n}" for n in seen_trades)
    seqs = [e.seq for e in state.events]
    assert seqs == sorted(set(seqs))
    assert all(e.filled <= state.filled for e in state.events)
