"""Specification of exchange_kernel.group_plan: one rule per unit test, then a stateful property
test that drives plan_group() and the recorders against simulated members whose reports arrive
late, twice and out of order."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from exchange_kernel.group_plan import (
    CancelMember,
    Finish,
    GroupAction,
    LoadRules,
    ReleaseMember,
    ResizeMember,
    StartMember,
    Trigger,
    member_ids,
    open_position,
    owned,
    plan_group,
    received,
    record_group,
    record_report,
    request_cancel,
    stop_triggered,
)
from exchange_kernel.models import (
    GroupKind,
    GroupState,
    IntentGroup,
    IntentStatus,
    MarketRules,
    MemberUpdate,
    OcoTrigger,
    OrderIntent,
    OrderSpec,
    OrderType,
)

D = Decimal
OPEN, PARTIAL, FILLED = IntentStatus.OPEN, IntentStatus.PARTIALLY_FILLED, IntentStatus.FILLED
CANCELED = IntentStatus.CANCELED


def oco(trigger: OcoTrigger = OcoTrigger.FIRST_FILL, legs: int = 2) -> GroupState:
    names = ("dip", "rip", "mid")[:legs]
    members = tuple(
        OrderIntent(
            intent_id=f"g.{name}",
            account="paper",
            order=OrderSpec(symbol="BTC/USDT", side="buy", amount="1", price=str(29000 + i)),
        )
        for i, name in enumerate(names)
    )
    group = IntentGroup(
        group_id="g", account="paper", kind=GroupKind.OCO, members=members, trigger=trigger
    )
    return GroupState(group=group)


def bracket() -> GroupState:
    group = IntentGroup(
        group_id="b",
        account="paper",
        kind=GroupKind.BRACKET,
        entry=OrderSpec(symbol="ETH/USDT", side="buy", amount="1", price="1990"),
        take_profit=D("2100"),
        stop_loss=D("1900"),
    )
    return GroupState(group=group)


ENTRY, TP, SL = "b.entry", "b.take_profit", "b.stop_loss"
ETH_RULES = MarketRules(
    symbol="ETH/USDT", step_size=D("0.0001"), min_amount=D("0.0001"), min_notional=D("5")
)


def held_bracket(side: str = "buy") -> GroupState:
    """A bracket started since the held stop-loss patch."""
    prices = ("2100", "1900") if side == "buy" else ("1900", "2100")
    group = IntentGroup(
        group_id="b",
        account="paper",
        kind=GroupKind.BRACKET,
        entry=OrderSpec(symbol="ETH/USDT", side=side, amount="1", price="1990"),
        take_profit=D(prices[0]),
        stop_loss=D(prices[1]),
    )
    return GroupState(group=group, held_stop_loss=True)


def report(
    state: GroupState,
    intent_id: str,
    filled: str,
    status: IntentStatus,
    *,
    triggered: bool = False,
    fees: dict[str, str] | None = None,
) -> GroupState:
    update = MemberUpdate(
        intent_id=intent_id,
        filled=D(filled),
        status=status,
        triggered=triggered,
        fees={k: D(v) for k, v in (fees or {}).items()},
    )
    return record_report(state, update)


def bought(state: GroupState, filled: str, status: IntentStatus = IntentStatus.PARTIALLY_FILLED):
    """The entry filled `filled` in all, paying the paper exchange's 0.1% fee in ETH."""
    return report(state, ENTRY, filled, status, fees={"ETH": str(D(filled) / 1000)})


def settle(state: GroupState, refused: frozenset[str] = frozenset()) -> GroupState:
    """Plan and record until nothing is due (every step carried out; starts of `refused`
    refused; rules loaded as ETH_RULES)."""
    for _ in range(10):
        steps = plan_group(state)
        if not steps:
            return state
        for step in steps:
            failure = None
            if isinstance(step, StartMember) and step.intent.intent_id in refused:
                failure = "workflow already started"
            rules = ETH_RULES if isinstance(step, LoadRules) else None
            state = record_group(state, step, failure, rules=rules)
    raise AssertionError(f"the plan did not settle: {plan_group(state)}")


def kinds(steps: tuple[GroupAction, ...]) -> list[tuple[str, str]]:
    return [
        (step.kind, step.intent.intent_id if isinstance(step, StartMember) else step.intent_id)
        for step in steps
        if not isinstance(step, Finish)
    ]


# --- OCO -----------------------------------------------------------------------------------


def test_oco_starts_every_member_at_once() -> None:
    assert kinds(plan_group(oco(legs=3))) == [
        ("start", "g.dip"),
        ("start", "g.rip"),
        ("start", "g.mid"),
    ]


def test_oco_members_are_started_tagged_with_the_group() -> None:
    steps = plan_group(oco())
    assert all(isinstance(s, StartMember) and s.intent.group_id == "g" for s in steps)


def test_oco_waits_while_members_rest() -> None:
    state = settle(oco())
    state = report(state, "g.dip", "0", OPEN)
    assert plan_group(state) == ()


def test_oco_first_fill_triggers_and_cancels_the_others() -> None:
    state = report(settle(oco(legs=3)), "g.rip", "0.1", PARTIAL)
    assert kinds(plan_group(state)) == [
        ("trigger", "g.rip"),
        ("cancel", "g.dip"),
        ("cancel", "g.mid"),
    ]
    state = settle(state)
    assert state.triggered_by == "g.rip"
    assert state.overfill == {}


def test_oco_cancel_names_the_trigger() -> None:
    state = report(settle(oco()), "g.dip", "1", FILLED)
    cancel = next(s for s in plan_group(state) if isinstance(s, CancelMember))
    assert cancel.reason == "OCO: g.dip filled"


def test_oco_full_fill_trigger_ignores_partial_fills() -> None:
    state = report(settle(oco(OcoTrigger.FULL_FILL)), "g.dip", "0.5", PARTIAL)
    assert plan_group(state) == ()
    state = report(state, "g.dip", "1", FILLED)
    assert kinds(plan_group(state)) == [("trigger", "g.dip"), ("cancel", "g.rip")]


def test_oco_members_firing_in_the_same_look_are_ranked_in_declared_order() -> None:
    state = settle(oco())
    state = report(state, "g.rip", "1", FILLED)
    state = report(state, "g.dip", "0.2", PARTIAL)
    assert plan_group(state)[0] == Trigger(
        intent_id="g.dip", reason="g.dip filled 0.2: cancelling the others"
    )


def test_oco_trigger_is_kept_when_another_member_fills_later() -> None:
    state = settle(report(settle(oco()), "g.rip", "0.1", PARTIAL))
    state = settle(report(state, "g.dip", "1", FILLED))
    assert state.triggered_by == "g.rip"


def test_oco_never_cancels_its_trigger() -> None:
    state = settle(report(settle(oco()), "g.rip", "0.1", PARTIAL))
    assert "g.rip" not in state.cancels_sent


def test_oco_fill_on_a_member_that_should_be_cancelled_is_reported_as_overfill() -> None:
    state = settle(oco())
    state = report(state, "g.dip", "1", FILLED)
    state = report(state, "g.rip", "0.3", PARTIAL)  # both filled in one move
    state = settle(state)
    assert state.overfill == {"g.rip": D("0.3")}
    assert any("overfill" in note for note in state.notes)
    state = settle(report(state, "g.rip", "0.5", CANCELED))
    assert state.overfill == {"g.rip": D("0.5")}


def test_oco_cancel_is_sent_once() -> None:
    state = settle(report(settle(oco()), "g.dip", "0.1", PARTIAL))
    state = report(state, "g.dip", "0.2", PARTIAL)
    assert plan_group(state) == ()
    assert state.cancels_sent == ("g.rip",)


def test_oco_finishes_when_every_member_is_terminal() -> None:
    state = settle(report(settle(oco()), "g.dip", "0.4", PARTIAL))
    state = report(state, "g.rip", "0", CANCELED)
    assert plan_group(state) == ()  # the trigger still works on its rest
    state = report(state, "g.dip", "1", FILLED)
    assert plan_group(state) == (Finish(reason="OCO: g.dip filled"),)
    state = record_group(state, Finish(reason="OCO: g.dip filled"))
    assert state.finished
    assert plan_group(state) == ()


def test_group_cancel_cancels_every_working_member_with_its_reason() -> None:
    state = settle(report(settle(oco()), "g.dip", "0.4", PARTIAL))  # rip cancelled by OCO
    state = request_cancel(state, "done for today")
    assert plan_group(state) == (CancelMember(intent_id="g.dip", reason="done for today"),)


def test_group_cancel_keeps_the_first_reason() -> None:
    state = request_cancel(request_cancel(oco(), "first"), "second")
    assert state.cancel_reason == "first"


def test_group_cancelled_before_any_start_starts_nothing_and_finishes() -> None:
    for state in (oco(), bracket()):
        steps = plan_group(request_cancel(state, "changed my mind"))
        assert steps == (Finish(reason="cancelled: changed my mind"),)


# --- bracket -------------------------------------------------------------------------------


def test_bracket_starts_only_the_entry_at_its_full_amount() -> None:
    (step,) = plan_group(bracket())
    assert isinstance(step, StartMember)
    assert (step.intent.intent_id, step.intent.order.amount) == (ENTRY, D("1"))


def test_bracket_exits_start_on_the_entrys_first_fill_sized_to_it() -> None:
    state = settle(bracket())
    assert plan_group(report(state, ENTRY, "0", OPEN)) == ()
    steps = plan_group(report(state, ENTRY, "0.4", PARTIAL))
    assert [(s.intent.intent_id, s.intent.order.amount) for s in steps] == [  # type: ignore[union-attr]
        (TP, D("0.4")),
        (SL, D("0.4")),
    ]
    assert {s.intent.order.side for s in steps} == {"sell"}  # type: ignore[union-attr]


def test_bracket_exits_follow_the_entrys_fills() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.4", PARTIAL))
    state = report(state, ENTRY, "0.7", PARTIAL)
    reason = "cover the open position 0.7"
    assert plan_group(state) == (
        ResizeMember(intent_id=TP, amount=D("0.7"), reason=reason),
        ResizeMember(intent_id=SL, amount=D("0.7"), reason=reason),
    )
    assert settle(state).sized == {TP: D("0.7"), SL: D("0.7")}


def test_bracket_exit_partial_fill_shrinks_the_other_exit_only() -> None:
    state = settle(report(settle(bracket()), ENTRY, "1", FILLED))
    state = report(state, TP, "0.3", PARTIAL)
    # the take-profit keeps its 1 (0.3 sold + 0.7 open); the stop-loss covers the 0.7 left
    assert plan_group(state) == (
        ResizeMember(intent_id=SL, amount=D("0.7"), reason="cover the open position 0.7"),
    )


def test_bracket_exit_is_never_sized_below_its_own_fills() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.5", PARTIAL))
    state = report(state, SL, "0.2", PARTIAL)
    state = report(state, ENTRY, "0.9", PARTIAL)
    state = settle(state)
    assert state.sized == {TP: D("0.7"), SL: D("0.9")}  # open 0.7; the stop-loss sold 0.2


def test_bracket_position_closed_cancels_the_other_exit() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.7", PARTIAL))
    state = report(state, TP, "0.7", FILLED)
    assert plan_group(state) == (CancelMember(intent_id=SL, reason="bracket: position closed"),)


def test_bracket_exit_whose_cancel_was_sent_is_not_resized() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.7", PARTIAL))
    state = settle(report(state, TP, "0.7", FILLED))  # stop-loss cancel sent
    state = report(state, ENTRY, "0.9", PARTIAL)
    assert plan_group(state) == ()


def test_bracket_exits_that_sell_more_than_the_entry_bought_are_reported_as_overfill() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.5", PARTIAL))
    state = report(state, TP, "0.5", FILLED)
    state = report(state, SL, "0.5", FILLED)  # both exits triggered in one move
    state = settle(state)
    assert state.overfill == {TP: D("0.5"), SL: D("0.5")}
    state = settle(report(state, ENTRY, "1", FILLED))
    assert state.overfill == {TP: D("0.5"), SL: D("0.5")}  # reported, never hidden


def test_bracket_entry_finished_without_fills_finishes_the_group() -> None:
    state = report(settle(bracket()), ENTRY, "0", IntentStatus.EXPIRED)
    assert plan_group(state) == (Finish(reason="every member finished"),)


def test_bracket_finishes_when_entry_and_exits_are_terminal() -> None:
    state = settle(report(settle(bracket()), ENTRY, "1", FILLED))
    state = settle(report(state, SL, "1", FILLED))
    assert plan_group(state) == ()  # the take-profit's cancel is not confirmed yet
    state = report(state, TP, "0", CANCELED)
    assert plan_group(state) == (Finish(reason="every member finished"),)


def test_bracket_cancelled_between_entry_fill_and_exit_start_finishes() -> None:
    # The old workflow waited forever here: the exits were still "to be started".
    state = report(settle(bracket()), ENTRY, "0.4", PARTIAL)
    state = request_cancel(state, "stop")
    assert plan_group(state) == (CancelMember(intent_id=ENTRY, reason="stop"),)
    state = report(settle(state), ENTRY, "0.4", CANCELED)
    assert plan_group(state) == (Finish(reason="cancelled: stop"),)


# --- bracket with a held stop-loss ---------------------------------------------------------


def test_held_bracket_loads_the_rules_with_the_entrys_start() -> None:
    steps = plan_group(held_bracket())
    assert [s.kind for s in steps] == ["start", "load_rules"]
    assert settle(held_bracket()).rules == ETH_RULES


def test_held_bracket_exits_cover_the_fill_less_the_fee_paid_in_the_base_asset() -> None:
    steps = plan_group(bought(settle(held_bracket()), "0.4"))
    assert [(s.intent.intent_id, s.intent.order.amount) for s in steps] == [  # type: ignore[union-attr]
        (TP, D("0.3996")),
        (SL, D("0.3996")),
    ]


def test_held_bracket_stop_loss_is_held_and_released_by_the_group() -> None:
    steps = plan_group(bought(settle(held_bracket()), "0.4"))
    tp, sl = (s.intent for s in steps)  # type: ignore[union-attr]
    assert (tp.order.type, tp.hold_stop) == (OrderType.LIMIT, False)
    assert (sl.order.type, sl.hold_stop, sl.release_by_group) == (OrderType.STOP_LIMIT, True, True)


def test_held_bracket_exits_are_rounded_down_to_the_step_size() -> None:
    state = report(settle(held_bracket()), ENTRY, "0.4", PARTIAL, fees={"ETH": "0.00004001"})
    assert received(state) == D("0.3999")


def test_a_fee_paid_in_another_asset_is_not_deducted() -> None:
    state = report(settle(held_bracket()), ENTRY, "0.4", PARTIAL, fees={"BNB": "0.001"})
    assert received(state) == D("0.4")


def test_a_sell_entrys_buy_back_covers_the_filled_amount() -> None:
    state = report(settle(held_bracket("sell")), ENTRY, "0.4", PARTIAL, fees={"USDT": "0.8"})
    assert received(state) == D("0.4")


def test_runs_before_the_patch_size_exits_to_the_filled_amount() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.4", PARTIAL, fees={"ETH": "0.0004"}))
    assert state.sized == {TP: D("0.4"), SL: D("0.4")}


def test_held_bracket_waits_for_a_position_the_market_takes() -> None:
    state = bought(settle(held_bracket()), "0.002")  # 0.001998 ETH: about 3.8 USDT at 1900
    assert plan_group(state) == ()
    assert [s.kind for s in plan_group(bought(state, "0.01"))] == ["start", "start"]


def test_rules_that_cannot_be_loaded_leave_the_exits_unrounded() -> None:
    state = held_bracket()
    for step in plan_group(state):
        state = record_group(state, step, "BadSymbol" if isinstance(step, LoadRules) else None)
    assert state.rules_failure == "BadSymbol"
    state = report(state, ENTRY, "0.4", PARTIAL, fees={"ETH": "0.00004001"})
    assert received(state) == D("0.39995999")


def stopped(state: GroupState, sl_filled: str = "0") -> GroupState:
    return report(state, SL, sl_filled, OPEN, triggered=True)


def test_triggered_stop_loss_first_cancels_the_take_profit_and_the_entrys_rest() -> None:
    state = stopped(settle(bought(settle(held_bracket()), "0.7")))
    reason = "bracket: the stop-loss triggered"
    assert plan_group(state) == (
        CancelMember(intent_id=ENTRY, reason=reason),
        CancelMember(intent_id=TP, reason=reason),
    )


def test_triggered_stop_loss_waits_for_the_final_fills_of_both() -> None:
    state = settle(stopped(settle(bought(settle(held_bracket()), "0.7"))))
    assert plan_group(state) == ()
    state = report(state, TP, "0", CANCELED)
    assert plan_group(state) == ()  # the entry may still fill
    state = bought(state, "0.8", CANCELED)
    assert plan_group(state) == (
        ResizeMember(intent_id=SL, amount=D("0.7992"), reason="cover the open position 0.7992"),
    )


def test_triggered_stop_loss_is_released_once_sized_to_the_position() -> None:
    state = settle(stopped(settle(bought(settle(held_bracket()), "0.7", FILLED))))
    state = report(state, TP, "0.2", CANCELED)  # sold some before its cancel
    (resize,) = plan_group(state)
    assert resize == ResizeMember(
        intent_id=SL, amount=D("0.4993"), reason="cover the open position 0.4993"
    )
    state = record_group(state, resize)
    (release,) = plan_group(state)
    assert isinstance(release, ReleaseMember) and release.intent_id == SL
    state = record_group(state, release)
    assert state.released == (SL,)
    assert plan_group(state) == ()  # released once
    state = report(state, SL, "0.4993", FILLED)
    assert plan_group(state) == (Finish(reason="every member finished"),)
    assert state.overfill == {}


def test_triggered_stop_loss_with_the_position_closed_is_cancelled() -> None:
    state = settle(stopped(settle(bought(settle(held_bracket()), "0.7", FILLED))))
    state = report(state, TP, "0.6993", FILLED)  # the take-profit sold it all meanwhile
    assert plan_group(state) == (CancelMember(intent_id=SL, reason="bracket: position closed"),)


def test_untriggered_held_stop_loss_follows_the_take_profits_fills() -> None:
    state = settle(bought(settle(held_bracket()), "0.7", FILLED))
    state = report(state, TP, "0.3", PARTIAL)
    assert plan_group(state) == (
        ResizeMember(intent_id=SL, amount=D("0.3993"), reason="cover the open position 0.3993"),
    )


def test_the_state_lists_every_leg_it_started() -> None:
    state = settle(bought(settle(held_bracket()), "0.4"))
    assert state.started == (ENTRY, TP, SL)


# --- OCO with a held stop --------------------------------------------------------------------


def test_oco_triggered_held_stop_fires_and_is_released_once_the_others_are_done() -> None:
    state = settle(oco())
    state = report(state, "g.rip", "0", OPEN, triggered=True)
    assert kinds(plan_group(state)) == [("trigger", "g.rip"), ("cancel", "g.dip")]
    state = settle(state)
    assert state.triggered_by == "g.rip" and state.released == ()
    state = report(state, "g.dip", "0", CANCELED)
    assert kinds(plan_group(state)) == [("release", "g.rip")]
    state = settle(state)
    assert state.released == ("g.rip",)


# --- overfill: reported whatever the group is doing -------------------------------------------


def test_oco_overfill_is_reported_while_the_group_is_cancelled() -> None:
    state = request_cancel(settle(oco()), "done")
    state = settle(report(state, "g.dip", "0.5", PARTIAL))
    state = settle(report(state, "g.rip", "0.2", PARTIAL))
    assert state.overfill == {"g.rip": D("0.2")}


def test_bracket_overfill_is_reported_while_the_group_is_cancelled() -> None:
    state = settle(bought(settle(held_bracket()), "0.4"))
    state = request_cancel(state, "done")
    state = report(state, TP, "0.3996", FILLED)
    state = report(state, SL, "0.1", PARTIAL)
    assert state.overfill == {TP: D("0.3996"), SL: D("0.1")}


def test_exits_selling_more_than_the_entry_brought_in_are_overfill() -> None:
    # The take-profit sold the gross fill: more than the account received, net of the fee.
    state = settle(bought(settle(held_bracket()), "0.4"))
    state = report(state, TP, "0.4", FILLED)
    assert state.overfill == {TP: D("0.4")}


def test_bracket_overfill_is_reported_while_the_stop_loss_waits_for_release() -> None:
    state = settle(stopped(settle(bought(settle(held_bracket()), "0.4"))))
    state = report(state, TP, "0.3996", FILLED)
    state = settle(report(state, SL, "0.1", OPEN, triggered=True))
    assert state.overfill == {TP: D("0.3996"), SL: D("0.1")}


# --- reports and refused starts ------------------------------------------------------------


def test_an_older_report_is_dropped() -> None:
    state = report(settle(bracket()), ENTRY, "0.4", PARTIAL)
    assert report(state, ENTRY, "0.2", PARTIAL) is state


def test_a_duplicate_report_changes_nothing() -> None:
    state = report(settle(bracket()), ENTRY, "0.4", PARTIAL)
    assert report(state, ENTRY, "0.4", PARTIAL) is state


def test_a_terminal_member_stays_terminal() -> None:
    state = report(settle(bracket()), ENTRY, "0.4", CANCELED)
    assert report(state, ENTRY, "0.4", PARTIAL) is state
    assert report(state, ENTRY, "0.5", PARTIAL) is state


def test_a_report_of_an_intent_outside_the_group_is_dropped() -> None:
    # A plain intent labelled with the group's id must not trigger an OCO.
    state = settle(oco())
    assert report(state, "g.stranger", "1", FILLED) is state


def test_a_refused_start_is_not_retried() -> None:
    state = settle(oco(), refused=frozenset({"g.rip"}))
    assert state.started == ("g.dip", "g.rip")
    assert "g.rip" in state.start_refused
    assert plan_group(state) == ()


def test_a_foreign_intent_under_a_members_id_is_left_alone() -> None:
    state = settle(oco(), refused=frozenset({"g.rip"}))
    state = settle(report(state, "g.dip", "1", FILLED))
    assert state.cancels_sent == ()
    assert state.finished


def test_a_refused_member_that_reports_to_the_group_is_the_groups() -> None:
    state = settle(oco(), refused=frozenset({"g.rip"}))
    state = report(state, "g.rip", "0", OPEN)
    state = settle(report(state, "g.dip", "1", FILLED))
    assert state.cancels_sent == ("g.rip",)


def test_the_state_survives_a_round_trip_through_json() -> None:
    state = settle(report(settle(bracket()), ENTRY, "0.4", PARTIAL))
    state = settle(report(request_cancel(state, "x"), TP, "0.1", PARTIAL))
    assert GroupState.model_validate_json(state.model_dump_json()) == state


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    fills=st.lists(st.sampled_from(["0", "0.1", "0.25", "0.5"]), min_size=1, max_size=6),
    end=st.sampled_from([None, FILLED, CANCELED]),
    order=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=20),
)
def test_reports_in_any_order_keep_the_newest(
    fills: list[str], end: IntentStatus | None, order: list[int]
) -> None:
    total, reports = D(0), []
    for amount in fills:
        total += D(amount)
        reports.append(MemberUpdate(intent_id=ENTRY, filled=total, status=OPEN))
    if end is not None:
        reports.append(MemberUpdate(intent_id=ENTRY, filled=total, status=end))
    delivered = [reports[i % len(reports)] for i in order] + reports  # all, some twice
    state = settle(bracket())
    for update in delivered:
        state = record_report(state, update)
    assert state.members[ENTRY].filled == total
    if end is not None:
        assert state.members[ENTRY].status is end


@dataclass
class SimMember:
    """A member intent as it really is (its reports to the group lag behind)."""

    amount: Decimal
    filled: Decimal = field(default_factory=Decimal)
    status: IntentStatus = OPEN
    # A held stop released by its group: fills only once released.
    held: bool = False
    triggered: bool = False
    fees: dict[str, Decimal] = field(default_factory=dict)

    def update(self, intent_id: str) -> MemberUpdate:
        return MemberUpdate(
            intent_id=intent_id,
            filled=self.filled,
            status=self.status,
            triggered=self.held and self.triggered and not self.status.is_terminal,
            fees=self.fees,
        )


class GroupMachine(RuleBasedStateMachine):
    """Members fill, their reports reach the group late, twice and out of order; the group
    plans and its steps are carried out on the simulated members."""

    def __init__(self) -> None:
        super().__init__()
        self.state = oco()
        self.sim: dict[str, SimMember] = {}
        self.inbox: list[MemberUpdate] = []
        self.started: list[str] = []

    @initialize(
        kind=st.sampled_from(["oco", "oco_full", "oco3", "bracket", "held_bracket"]),
        refused=st.sets(st.sampled_from(["g.rip", "b.take_profit"]), max_size=1),
    )
    def choose(self, kind: str, refused: set[str]) -> None:
        self.refused = frozenset(refused)
        if kind == "bracket":
            self.state = bracket()
        elif kind == "held_bracket":
            self.state = held_bracket()
        else:
            trigger = OcoTrigger.FULL_FILL if kind == "oco_full" else OcoTrigger.FIRST_FILL
            self.state = oco(trigger, legs=3 if kind == "oco3" else 2)
        self.step()

    # --- the world -----------------------------------------------------------------------

    def live(self) -> list[str]:
        return sorted(i for i, m in self.sim.items() if not m.status.is_terminal)

    def fillable(self) -> list[str]:
        # A held stop places nothing (so fills nothing) until its group released it.
        return [i for i in self.live() if not (self.sim[i].held and self.sim[i].triggered)]

    @precondition(lambda self: self.fillable())
    @rule(data=st.data(), part=st.sampled_from(["0.1", "0.25", "0.5", "1"]))
    def fill(self, data: st.DataObject, part: str) -> None:
        intent_id = data.draw(st.sampled_from(self.fillable()))
        member = self.sim[intent_id]
        if member.held:  # its stop is crossed: it waits for the group's release
            member.triggered = True
        else:
            before = member.filled
            member.filled = min(member.amount, member.filled + D(part))
            member.status = FILLED if member.filled == member.amount else PARTIAL
            if intent_id == ENTRY and self.state.held_stop_loss:
                fee = (member.filled - before) / 1000  # 0.1%, in ETH
                member.fees = {"ETH": member.fees.get("ETH", D(0)) + fee}
        self.inbox.append(member.update(intent_id))

    @precondition(lambda self: self.live())
    @rule(
        data=st.data(),
        status=st.sampled_from([CANCELED, IntentStatus.EXPIRED]),
        chance=st.integers(min_value=0, max_value=4),
    )
    def ends_by_itself(self, data: st.DataObject, status: IntentStatus, chance: int) -> None:
        if chance:  # rarer than fills: most groups should get far
            return
        intent_id = data.draw(st.sampled_from(self.live()))
        self.sim[intent_id].status = status
        self.inbox.append(self.sim[intent_id].update(intent_id))

    @precondition(lambda self: self.inbox)
    @rule(data=st.data(), again=st.booleans())
    def deliver(self, data: st.DataObject, again: bool) -> None:
        index = data.draw(st.integers(min_value=0, max_value=len(self.inbox) - 1))
        update = self.inbox[index] if again else self.inbox.pop(index)
        self.state = record_report(self.state, update)
        self.step()

    @rule(reason=st.sampled_from(["stop", "done"]), chance=st.integers(min_value=0, max_value=9))
    def cancel_group(self, reason: str, chance: int) -> None:
        if chance:  # rare: a cancelled group has little left to decide
            return
        self.state = request_cancel(self.state, reason)
        self.step()

    # --- the group -------------------------------------------------------------------------

    def step(self) -> None:
        for _ in range(10):
            steps = plan_group(self.state)
            if not steps:
                return
            for action in steps:
                self.check(action)
                failure = self.carry_out(action)
                self.state = record_group(self.state, action, failure)
        raise AssertionError(f"the plan did not settle: {plan_group(self.state)}")

    def carry_out(self, action: GroupAction) -> str | None:
        if isinstance(action, StartMember):
            intent_id = action.intent.intent_id
            self.started.append(intent_id)
            if intent_id in self.refused:
                return "workflow already started"
            self.sim[intent_id] = SimMember(
                amount=action.intent.order.amount, held=action.intent.release_by_group
            )
            self.inbox.append(self.sim[intent_id].update(intent_id))
        elif isinstance(action, CancelMember):
            member = self.sim.get(action.intent_id)
            if member is None or member.status.is_terminal:
                return "workflow execution already completed"
            member.status = CANCELED
            self.inbox.append(member.update(action.intent_id))
        elif isinstance(action, ReleaseMember):
            member = self.sim[action.intent_id]
            if member.status.is_terminal:
                return "workflow execution already completed"
            member.held = False  # placed now: fills like any order
            self.inbox.append(member.update(action.intent_id))
        elif isinstance(action, ResizeMember):
            member = self.sim.get(action.intent_id)
            if member is None or member.status.is_terminal:
                return "workflow execution already completed"
            if action.amount >= member.filled:  # else refused: amount below filled
                member.amount = action.amount
                if member.filled == member.amount:
                    member.status = FILLED
                    self.inbox.append(member.update(action.intent_id))
        return None

    def check(self, action: GroupAction) -> None:
        """What must hold of every step, judged on what the group knew when it planned it."""
        state = self.state
        known = state.members
        assert not state.finished
        if isinstance(action, StartMember):
            intent_id = action.intent.intent_id
            assert intent_id not in self.started, f"{intent_id} started twice"
            assert state.cancel_reason is None, "started a member of a cancelled group"
            if intent_id in (TP, SL):
                assert action.intent.order.amount == open_position(state) > 0
        elif isinstance(action, CancelMember):
            assert action.intent_id in owned(state)
            assert action.intent_id not in state.cancels_sent, "cancel sent twice"
            if state.cancel_reason is None:
                assert action.intent_id != state.triggered_by, "cancelled the trigger"
        elif isinstance(action, ResizeMember):
            assert action.intent_id in owned(state) and action.intent_id in (TP, SL)
            assert action.intent_id not in state.cancels_sent
            own = known[action.intent_id].filled if action.intent_id in known else D(0)
            assert action.amount > own, "sized below what the exit filled"
            assert action.amount - own <= open_position(state), "sized above the position"
        elif isinstance(action, ReleaseMember):
            assert action.intent_id == SL and state.cancel_reason is None
            assert action.intent_id not in state.released, "released twice"
            for other in (ENTRY, TP):  # what it sells is locked by nothing, fills final
                assert other not in owned(state) or known[other].status.is_terminal
            position = open_position(state)
            assert position > 0
            assert state.sized[SL] == known[SL].filled + position, "released unsized"
        elif isinstance(action, Trigger):
            assert state.triggered_by is None
        elif isinstance(action, Finish):
            assert all(known[i].status.is_terminal for i in owned(state) if i in known)
            assert all(i in known for i in owned(state))

    @invariant()
    def started_at_most_once(self) -> None:
        assert len(set(self.state.started)) == len(self.state.started)
        assert list(self.state.started) == self.started

    @invariant()
    def working_exits_cover_the_open_position(self) -> None:
        if self.state.group.kind is not GroupKind.BRACKET or self.state.cancel_reason:
            return
        position = open_position(self.state)
        for intent_id in (TP, SL):
            report = self.state.members.get(intent_id)
            working = (
                intent_id in owned(self.state)
                and intent_id not in self.state.cancels_sent
                and not (report and report.status.is_terminal)
            )
            if working and intent_id == SL and stop_triggered(self.state):
                continue  # sized to the position once the take-profit's fills are final
            if working:
                own = report.filled if report else D(0)
                assert position > 0
                assert self.state.sized[intent_id] == own + position

    @invariant()
    def overfill_is_never_hidden(self) -> None:
        state = self.state
        if state.group.kind is GroupKind.OCO and state.triggered_by is not None:
            for intent_id in member_ids(state.group):
                report = state.members.get(intent_id)
                if intent_id != state.triggered_by and report and report.filled > 0:
                    assert state.overfill.get(intent_id) == report.filled
        if state.group.kind is GroupKind.BRACKET and open_position(state) < 0:
            assert state.overfill

    def teardown(self) -> None:
        # Liveness: cancelled, with every report delivered, the group finishes.
        if not hasattr(self, "refused"):
            return
        self.state = request_cancel(self.state, "teardown")
        self.step()
        for _ in range(20):
            while self.inbox:
                self.state = record_report(self.state, self.inbox.pop(0))
                self.step()
            if self.state.finished:
                return
        raise AssertionError(f"the group never finished: {self.state}")


GroupMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestGroupMachine = GroupMachine.TestCase
