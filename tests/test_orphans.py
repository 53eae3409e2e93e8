"""Orphans and drift: orders no running intent owns are found, adopted or cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal

import pytest

from exchange_kernel import client as client_module
from exchange_kernel.client import IntentClient, IntentRejected
from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    IntentStatus,
    OrderType,
    Side,
    client_order_id,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, binance_client
from tests.conftest import Paper
from tests.test_intents import new_intent, resting


@pytest.fixture(autouse=True)
def _no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The grace period hides orders younger than 10 s (visibility lag); tests are faster.
    monkeypatch.setattr(client_module, "ORPHAN_GRACE", client_module.timedelta(0))


async def test_orphans_are_found_adopted_and_cancelled(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    by_hand = binance_client(paper.base_url, DEMO_API_KEY, DEMO_SECRET)
    try:
        manual = await by_hand.create_order(
            "BTC/USDT", "limit", "buy", "0.01", "20000", {"clientOrderId": "by-hand-1"}
        )
        assert manual["clientOrderId"] == "by-hand-1"
        # A crashed predecessor: its workflow is gone (terminated), its order is not.
        lost = new_intent(price="20500")
        await intents.submit(lost)
        await intents.wait_for(lost.intent_id, resting)
        await intents.temporal.get_workflow_handle(lost.workflow_id).terminate("crash")
        # A healthy intent is not an orphan.
        healthy = new_intent(price="20600")
        await intents.submit(healthy)
        await intents.wait_for(healthy.intent_id, resting)
        await asyncio.sleep(1.5)  # let visibility catch up with the search attributes

        found = {o.order.client_order_id: o for o in await intents.orphans("paper")}
        assert found["by-hand-1"].kind == "manual"
        lost_id = client_order_id(lost.intent_id, 0)
        assert found[lost_id].kind == "kernel"
        assert found[lost_id].intent_id == lost.intent_id
        assert client_order_id(healthy.intent_id, 0) not in found

        adopted = await intents.adopt(found[lost_id].order, "paper", f"{lost.intent_id}-adopted")
        assert adopted.placements[0].client_order_id == lost_id
        state = await intents.wait_for(adopted.intent.intent_id, resting)
        assert state.filled == 0
        moved = await intents.modify(adopted.intent.intent_id, price="20400")
        assert moved.desired.price == Decimal("20400")
        await intents.wait_for(
            adopted.intent.intent_id,
            lambda s: resting(s) and s.placements[-1].price == Decimal("20400"),
        )

        cancelled = await intents.cancel_orphan("paper", "BTC/USDT", "by-hand-1")
        assert cancelled is not None and cancelled.status.value == "canceled"
        await asyncio.sleep(1.5)
        left = {o.order.client_order_id for o in await intents.orphans("paper")}
        assert "by-hand-1" not in left and lost_id not in left

        for intent_id in (adopted.intent.intent_id, healthy.intent_id):
            await intents.cancel(intent_id)
            final = await intents.result(intent_id)
            assert final.status is IntentStatus.CANCELED
    finally:
        await by_hand.close()


async def test_a_stop_market_order_is_adopted_as_a_stop_market_intent(
    intents: IntentClient, paper: Paper
) -> None:
    """A stop-market order has a stop price and no price: its intent is a stop_market (not a
    stop_limit without a limit, which no OrderSpec allows). The order is given as ccxt reports
    a Binance spot STOP_LOSS order (the test below places one on the paper exchange)."""
    order = ExchangeOrder(
        exchange_order_id="990001",
        client_order_id="by-hand-stop-market",
        symbol="BTC/USDT",
        side=Side.SELL,
        type="stop_loss",
        status=ExchangeOrderStatus.OPEN,
        stop_price=Decimal("25000"),
        amount=Decimal("0.01"),
    )
    intent_id = f"adopted-sm-{uuid.uuid4().hex[:8]}"
    adopted = await intents.adopt(order, "paper", intent_id)
    assert adopted.desired.type is OrderType.STOP_MARKET
    assert adopted.desired.price is None and adopted.desired.stop_price == Decimal("25000")
    assert adopted.placements[0].order == order
    state = await intents.state(intent_id)
    assert state.intent.order.type is OrderType.STOP_MARKET
    # Not on the exchange: its first look finds nothing (cancelled, as far as it can tell).
    with contextlib.suppress(IntentRejected):
        await intents.cancel(intent_id)
    assert (await intents.result(intent_id)).status is IntentStatus.CANCELED


async def test_a_stop_market_orphan_placed_by_hand_is_adopted(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    by_hand = binance_client(paper.base_url, DEMO_API_KEY, DEMO_SECRET)
    try:
        await by_hand.create_order(
            "BTC/USDT",
            "STOP_LOSS",
            "sell",
            "0.01",
            None,
            {"stopPrice": "25000", "clientOrderId": "by-hand-sm-1"},
        )
        await asyncio.sleep(1.5)  # let visibility catch up
        # No intent runs, so the account sync watches no symbol: name the order's.
        orphans = await intents.orphans("paper", ("BTC/USDT",))
        found = {o.order.client_order_id: o for o in orphans}
        orphan = found["by-hand-sm-1"]
        assert orphan.kind == "manual"
        assert orphan.order.stop_price == Decimal("25000") and orphan.order.price is None
        intent_id = f"adopted-sm-{uuid.uuid4().hex[:8]}"
        adopted = await intents.adopt(orphan.order, "paper", intent_id)
        assert adopted.desired.type is OrderType.STOP_MARKET
        state = await intents.wait_for(intent_id, resting)
        assert state.placements[-1].client_order_id == "by-hand-sm-1"
        await intents.cancel(intent_id)
        final = await intents.result(intent_id)
        assert final.status is IntentStatus.CANCELED
        live = [o for o in await paper.orders_of("by-hand-sm-1") if o["status"] == "NEW"]
        assert not live
    finally:
        await by_hand.close()
