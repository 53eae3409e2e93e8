"""Specification of exchange_kernel.models: what a valid intent is, and what is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    Fill,
    IntentChange,
    IntentState,
    MarketRules,
    OrderIntent,
    OrderSpec,
    OrderType,
    Placement,
    PlacementPhase,
    ReconciliationStatus,
    Side,
    TimeInForce,
    client_order_id,
    intent_digest,
)

BINANCE_CLIENT_ORDER_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


def spec(**fields: object) -> OrderSpec:
    values: dict[str, object] = {
        "symbol": "BTC/USDT",
        "side": "buy",
        "amount": "0.5",
        "price": "30000",
    }
    values.update(fields)
    return OrderSpec.model_validate({k: v for k, v in values.items() if v is not None})


def intent(**fields: object) -> OrderIntent:
    values: dict[str, object] = {"intent_id": "i-1", "account": "main", "order": spec()}
    values.update(fields)
    return OrderIntent.model_validate(values)


def refused(build, field: str) -> None:  # type: ignore[no-untyped-def]
    """`build()` raises a ValidationError that names `field` (in its location or its message)."""
    with pytest.raises(ValidationError) as caught:
        build()
    named = [
        e
        for e in caught.value.errors()
        if field in [str(part) for part in e["loc"]] or f"{field}:" in e["msg"] or field in e["msg"]
    ]
    assert named, f"no error names {field!r}: {caught.value.errors()}"


# --- OrderSpec: invalid structure is refused at construction ------------------------------


@pytest.mark.parametrize("amount", ["0", "-1", "-0.0001", "-0"])
def test_non_positive_amount_is_rejected_naming_amount(amount: str) -> None:
    refused(lambda: spec(amount=amount), "amount")


@pytest.mark.parametrize("amount", ["NaN", "sNaN", "Infinity", "-Infinity"])
def test_non_finite_amount_is_rejected_naming_amount(amount: str) -> None:
    refused(lambda: spec(amount=amount), "amount")


def test_float_amount_is_rejected_naming_amount() -> None:
    refused(lambda: spec(amount=0.5), "amount")


def test_float_price_is_rejected_naming_price() -> None:
    refused(lambda: spec(price=30000.5), "price")


def test_amount_at_the_magnitude_limit_is_rejected_naming_amount() -> None:
    refused(lambda: spec(amount="1e15"), "amount")


def test_amount_with_more_than_18_decimals_is_rejected_naming_amount() -> None:
    refused(lambda: spec(amount="0.0000000000000000001"), "amount")


def test_amount_with_more_than_18_decimals_beyond_context_precision_is_rejected() -> None:
    # 31 significant digits: more than the default decimal context (28) can normalize exactly.
    refused(lambda: spec(amount="0.1000000000000000000000000000001"), "amount")


def test_amount_with_18_decimals_is_accepted() -> None:
    assert spec(amount="0.000000000000000001").amount == Decimal("1e-18")


def test_non_positive_price_is_rejected_naming_price() -> None:
    refused(lambda: spec(price="0"), "price")


def test_limit_without_price_is_rejected_naming_price() -> None:
    refused(lambda: spec(price=None), "price")


def test_market_with_price_is_rejected_naming_price() -> None:
    refused(lambda: spec(type="market", price="30000"), "price")


def test_market_with_stop_price_is_rejected_naming_stop_price() -> None:
    refused(lambda: spec(type="market", price=None, stop_price="29000"), "stop_price")


def test_market_post_only_is_rejected_naming_post_only() -> None:
    refused(lambda: spec(type="market", price=None, post_only=True), "post_only")


def test_stop_limit_without_stop_price_is_rejected_naming_stop_price() -> None:
    refused(lambda: spec(type="stop_limit"), "stop_price")


def test_limit_with_stop_price_is_rejected_naming_stop_price() -> None:
    refused(lambda: spec(stop_price="29000"), "stop_price")


def test_post_only_ioc_is_rejected_naming_post_only() -> None:
    refused(lambda: spec(post_only=True, time_in_force="IOC"), "post_only")


def test_unknown_field_is_rejected_naming_it() -> None:
    refused(lambda: spec(quantity="1"), "quantity")


def test_unknown_field_on_intent_is_rejected_naming_it() -> None:
    refused(lambda: intent(on_external_cancell="restore"), "on_external_cancell")


@pytest.mark.parametrize(
    "symbol",
    ["btc/usdt", "BTCUSDT", "BTC-USDT", "BTC/USDT/X", "/USDT", "BTC/", "BTC/USDT\n", " BTC/USDT"],
)
def test_bad_symbol_form_is_rejected_naming_symbol(symbol: str) -> None:
    refused(lambda: spec(symbol=symbol), "symbol")


def test_unknown_side_is_rejected_naming_side() -> None:
    refused(lambda: spec(side="long"), "side")


# --- OrderIntent: identifiers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "intent_id", ["", "x" * 129, "ordre-é", "id with space", "abc\n", "a/b", "😀"]
)
def test_bad_intent_id_is_rejected_naming_intent_id(intent_id: str) -> None:
    refused(lambda: intent(intent_id=intent_id), "intent_id")


def test_intent_id_of_128_characters_is_accepted() -> None:
    assert intent(intent_id="x" * 128).intent_id == "x" * 128


def test_bad_account_is_rejected_naming_account() -> None:
    refused(lambda: intent(account="my account"), "account")


def test_bad_group_id_is_rejected_naming_group_id() -> None:
    refused(lambda: intent(group_id=""), "group_id")


def test_too_many_tags_are_rejected_naming_tags() -> None:
    refused(lambda: intent(tags={f"k{i}": "v" for i in range(33)}), "tags")


# --- valid specs build ----------------------------------------------------------------------


def test_valid_limit_spec_builds_with_gtc_default() -> None:
    built = spec()
    assert built.type is OrderType.LIMIT
    assert built.time_in_force is TimeInForce.GTC
    assert built.amount == Decimal("0.5")
    assert built.price == Decimal("30000")


def test_valid_market_spec_builds() -> None:
    built = spec(type="market", price=None, side="sell", time_in_force="IOC")
    assert built.price is None
    assert built.side is Side.SELL


def test_valid_stop_limit_spec_builds() -> None:
    built = spec(type="stop_limit", stop_price="29500")
    assert built.stop_price == Decimal("29500")


def test_integer_amount_is_accepted_as_decimal() -> None:
    assert spec(amount=2).amount == Decimal(2)


def test_spec_is_frozen() -> None:
    with pytest.raises(ValidationError):
        spec().amount = Decimal(1)  # type: ignore[misc]


def test_base_and_quote_come_from_the_symbol() -> None:
    assert (spec().base, spec().quote) == ("BTC", "USDT")


def test_workflow_id_is_intent_prefixed() -> None:
    assert intent(intent_id="abc").workflow_id == "intent-abc"


# --- summary ----------------------------------------------------------------------------------


def test_limit_summary_reads_side_amount_symbol_price() -> None:
    assert spec().summary() == "buy 0.5 BTC/USDT @ 30000"


def test_market_summary_says_at_market() -> None:
    assert spec(type="market", price=None, side="sell").summary() == "sell 0.5 BTC/USDT @ market"


def test_stop_limit_summary_names_the_stop() -> None:
    assert (
        spec(type="stop_limit", price="29000", stop_price="29500").summary()
        == "buy 0.5 BTC/USDT @ 29000 stop 29500"
    )


def test_intent_summary_is_its_order_summary() -> None:
    assert intent().summary() == "buy 0.5 BTC/USDT @ 30000"


# --- client order ids -------------------------------------------------------------------------


def test_client_order_id_is_deterministic() -> None:
    assert client_order_id("i-1", 3) == client_order_id("i-1", 3)


def test_client_order_id_is_marked_as_exchange_kernel_and_names_the_placement() -> None:
    coid = client_order_id("i-1", 7)
    assert coid.startswith("ek-")
    assert coid.endswith("-7")
    assert intent_digest("i-1") in coid


@settings(max_examples=300, deadline=None)
@given(intent_id=st.text(), placement=st.integers(min_value=0, max_value=10**12))
def test_client_order_id_fits_binance_whatever_the_intent_id(
    intent_id: str, placement: int
) -> None:
    coid = client_order_id(intent_id, placement)
    assert len(coid) <= 36
    assert BINANCE_CLIENT_ORDER_ID.match(coid)
    assert coid == client_order_id(intent_id, placement)


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(st.text(), st.integers(0, 1000)),
    b=st.tuples(st.text(), st.integers(0, 1000)),
)
def test_client_order_ids_differ_across_intents_and_placements(
    a: tuple[str, int], b: tuple[str, int]
) -> None:
    if a != b:
        assert client_order_id(*a) != client_order_id(*b)


def test_client_order_ids_of_many_placements_are_distinct() -> None:
    ids = {client_order_id("i-1", n) for n in range(1000)}
    assert len(ids) == 1000


# --- market rules -------------------------------------------------------------------------


def test_rules_accept_a_conforming_order() -> None:
    rules = MarketRules(
        symbol="BTC/USDT", tick_size=Decimal("0.01"), step_size=Decimal("0.001"), min_notional=10
    )
    assert rules.violations(spec(amount="0.5", price="30000.01")) == []


def test_rules_name_the_tick_size() -> None:
    rules = MarketRules(symbol="BTC/USDT", tick_size=Decimal("0.5"))
    [broken] = rules.violations(spec(price="30000.3"))
    assert "tick size" in broken and "0.5" in broken


def test_rules_name_the_tick_size_of_the_stop_price() -> None:
    rules = MarketRules(symbol="BTC/USDT", tick_size=Decimal("0.5"))
    [broken] = rules.violations(spec(type="stop_limit", price="30000", stop_price="29999.9"))
    assert broken.startswith("stop_price") and "tick size" in broken


def test_rules_name_the_step_size() -> None:
    rules = MarketRules(symbol="BTC/USDT", step_size=Decimal("0.1"))
    [broken] = rules.violations(spec(amount="0.55"))
    assert "step size" in broken


def test_rules_name_the_min_notional() -> None:
    rules = MarketRules(symbol="BTC/USDT", min_notional=Decimal(100))
    [broken] = rules.violations(spec(amount="0.001", price="30000"))
    assert "minimum notional" in broken


def test_rules_name_min_and_max_amount_and_price() -> None:
    rules = MarketRules(symbol="BTC/USDT", min_amount=1, max_amount=2, min_price=10, max_price=20)
    assert any("minimum amount" in b for b in rules.violations(spec(amount="0.5", price=15)))
    assert any("maximum amount" in b for b in rules.violations(spec(amount="3", price=15)))
    assert any("minimum price" in b for b in rules.violations(spec(amount="1", price=5)))
    assert any("maximum price" in b for b in rules.violations(spec(amount="1", price=25)))


def test_rules_check_the_given_amount_instead_of_the_specs() -> None:
    rules = MarketRules(symbol="BTC/USDT", step_size=Decimal("0.1"))
    assert rules.violations(spec(amount="0.5"), amount=Decimal("0.25")) != []


def test_rules_skip_notional_for_a_market_order() -> None:
    rules = MarketRules(symbol="BTC/USDT", min_notional=Decimal(100))
    assert rules.violations(spec(type="market", price=None, amount="0.0001")) == []


# --- changes ----------------------------------------------------------------------------------


def test_change_without_price_or_amount_is_rejected() -> None:
    with pytest.raises(ValidationError, match="price or an amount"):
        IntentChange()


def test_change_with_non_positive_amount_is_rejected_naming_amount() -> None:
    refused(lambda: IntentChange(amount=Decimal(0)), "amount")


def test_change_with_float_price_is_rejected_naming_price() -> None:
    refused(lambda: IntentChange.model_validate({"price": 1.5}), "price")


def test_change_with_unknown_field_is_rejected_naming_it() -> None:
    refused(lambda: IntentChange.model_validate({"price": "1", "stop": "2"}), "stop")


def test_change_with_only_a_price_builds() -> None:
    assert IntentChange(price=Decimal(1)).amount is None


# --- serialization ------------------------------------------------------------------------


def test_decimals_round_trip_through_json_mode_exactly() -> None:
    original = spec(amount="0.123456789012345678", price="12345.000000001")
    data = original.model_dump(mode="json")
    assert data["amount"] == "0.123456789012345678"
    again = OrderSpec.model_validate(data)
    assert again == original
    assert str(again.amount) == "0.123456789012345678"


@settings(max_examples=200, deadline=None)
@given(
    amount=st.decimals(
        min_value=Decimal("1e-18"),
        max_value=Decimal("999999999999999"),
        places=8,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_any_valid_amount_round_trips_through_json_mode(amount: Decimal) -> None:
    original = spec(amount=amount)
    assert OrderSpec.model_validate(original.model_dump(mode="json")) == original


def test_intent_state_round_trips_through_json_mode() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    fill = Fill(
        trade_id="t1",
        exchange_order_id="x1",
        price=Decimal("30000.1"),
        amount=Decimal("0.2"),
        fee=Decimal("0.0002"),
        fee_currency="BTC",
        timestamp=at,
    )
    order = ExchangeOrder(
        exchange_order_id="x1",
        client_order_id=client_order_id("i-1", 0),
        symbol="BTC/USDT",
        side=Side.BUY,
        type="limit",
        status=ExchangeOrderStatus.OPEN,
        price=Decimal("30000.1"),
        amount=Decimal("0.5"),
        filled=Decimal("0.2"),
        average_price=Decimal("30000.1"),
    )
    placement = Placement(
        number=0,
        client_order_id=order.client_order_id,
        revision=0,
        price=Decimal("30000.1"),
        amount=Decimal("0.5"),
        phase=PlacementPhase.OPEN,
        order=order,
        fills=(fill,),
        observed_at=at,
    )
    state = IntentState(
        intent=intent(),
        desired=spec(),
        placements=(placement,),
        next_placement=1,
        rules=MarketRules(symbol="BTC/USDT", tick_size=Decimal("0.1")),
        reconciliation_status=ReconciliationStatus.STALE,
        last_sync_at=at,
    )
    again = IntentState.model_validate(state.model_dump(mode="json"))
    assert again == state
    assert again.placements[0].phase is PlacementPhase.OPEN
    assert again.reconciliation_status is ReconciliationStatus.STALE
    assert again.fills == (fill,)
    assert again.filled == Decimal("0.2")
    assert again.fees == {"BTC": Decimal("0.0002")}


def test_report_gives_derived_values_as_strings() -> None:
    state = IntentState(intent=intent(), desired=spec())
    report = state.report()
    assert report["filled"] == "0"
    assert report["remaining"] == "0.5"
    assert report["average_price"] is None
