"""Every order type reaches the exchange as the exchange expects it.

End to end, one intent per order type through `IntentClient.submit`, checked in the paper
exchange's own ledger (its admin API: type, time in force, price, stop price, amount, status,
filled) rather than in what the kernel says it did. The paper exchange answers as Binance spot
does, so a parameter sent that the order type does not take is refused (-1106).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentState, IntentStatus, OrderIntent
from tests.conftest import Paper, eventually
from tests.test_intents import exchange_orders, new_intent, resting


def ledger(order: dict[str, Any]) -> dict[str, Any]:
    """What the exchange recorded about one order, figures as Decimals (0: none)."""
    return {
        "type": order["type"],
        "time_in_force": order["time_in_force"],
        "price": Decimal(order["price"]),
        "stop_price": Decimal(order["stop_price"]),
        "amount": Decimal(order["amount"]),
        "status": order["status"],
        "filled": Decimal(order["filled"]),
    }


def row(
    type: str,
    time_in_force: str | None,
    price: str,
    amount: str,
    status: str,
    filled: str,
    stop_price: str = "0",
) -> dict[str, Any]:
    return {
        "type": type,
        "time_in_force": time_in_force,
        "price": Decimal(price),
        "stop_price": Decimal(stop_price),
        "amount": Decimal(amount),
        "status": status,
        "filled": Decimal(filled),
    }


async def ledger_of(paper: Paper, intent: OrderIntent) -> list[dict[str, Any]]:
    return [ledger(o) for o in await exchange_orders(paper, intent)]


async def finished(intents: IntentClient, intent: OrderIntent) -> IntentState:
    return await intents.result(intent.intent_id)


@pytest.fixture
async def sol_at_100(paper: Paper) -> AsyncIterator[None]:
    await paper.move_price("SOL/USDT", "100")
    yield
    await paper.admin(
        "POST", "price", {"symbol": "SOLUSDT", "price": "100", "taker_liquidity": None}
    )


# --- market -------------------------------------------------------------------------------------


async def test_market_order_is_sent_as_a_market_order(
    intents: IntentClient, paper: Paper, sol_at_100: None
) -> None:
    intent = new_intent(symbol="SOL/USDT", amount="2", price=None, type="market")
    await intents.submit(intent)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.FILLED
    assert final.average_price == Decimal("100")
    assert await ledger_of(paper, intent) == [row("MARKET", None, "0", "2", "FILLED", "2")]


# --- limit: GTC, IOC, FOK -----------------------------------------------------------------------


async def test_limit_gtc_rests_on_the_book(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(amount="0.01", price="29000")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    assert await ledger_of(paper, intent) == [row("LIMIT", "GTC", "29000", "0.01", "NEW", "0")]
    await intents.cancel(intent.intent_id)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.CANCELED
    assert await ledger_of(paper, intent) == [row("LIMIT", "GTC", "29000", "0.01", "CANCELED", "0")]


@pytest.mark.parametrize(
    ("time_in_force", "liquidity", "status", "filled", "outcome"),
    [
        # What the book holds fills; the rest expires at once.
        ("IOC", "1", "EXPIRED", "1", IntentStatus.EXPIRED),
        ("IOC", None, "FILLED", "3", IntentStatus.FILLED),
        # All or nothing.
        ("FOK", "1", "EXPIRED", "0", IntentStatus.EXPIRED),
        ("FOK", None, "FILLED", "3", IntentStatus.FILLED),
    ],
)
async def test_limit_ioc_and_fok_take_what_they_can_at_once(
    intents: IntentClient,
    paper: Paper,
    sol_at_100: None,
    time_in_force: str,
    liquidity: str | None,
    status: str,
    filled: str,
    outcome: IntentStatus,
) -> None:
    await paper.admin(
        "POST", "price", {"symbol": "SOLUSDT", "price": "100", "taker_liquidity": liquidity}
    )
    intent = new_intent(symbol="SOL/USDT", amount="3", price="101", time_in_force=time_in_force)
    await intents.submit(intent)
    final = await finished(intents, intent)
    assert final.status is outcome
    assert final.filled == Decimal(filled)
    assert await ledger_of(paper, intent) == [
        row("LIMIT", time_in_force, "101", "3", status, filled)
    ]


async def test_limit_ioc_that_does_not_cross_expires_unfilled(
    intents: IntentClient, paper: Paper, sol_at_100: None
) -> None:
    intent = new_intent(symbol="SOL/USDT", amount="3", price="99", time_in_force="IOC")
    await intents.submit(intent)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.EXPIRED
    assert final.filled == 0
    assert await ledger_of(paper, intent) == [row("LIMIT", "IOC", "99", "3", "EXPIRED", "0")]


# --- post-only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("account", ["paper", "paper-replace"])
async def test_post_only_rests_as_a_maker_order_and_is_amended_as_one(
    intents: IntentClient, paper: Paper, account: str
) -> None:
    # Binance spot's post-only order is LIMIT_MAKER, which takes no timeInForce (-1106 if sent).
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(amount="0.01", price="29000", post_only=True, account=account)
    await intents.submit(intent)
    state = await intents.wait_for(intent.intent_id, lambda s: resting(s) or s.status.is_terminal)
    assert state.status is IntentStatus.OPEN, state.outcome_reason
    assert await ledger_of(paper, intent) == [row("LIMIT_MAKER", None, "29000", "0.01", "NEW", "0")]

    # The replacement (cancelReplace on "paper", cancel then place on "paper-replace") too.
    await intents.modify(intent.intent_id, price="29100")
    await intents.wait_for(
        intent.intent_id, lambda s: resting(s) and s.placements[-1].price == Decimal("29100")
    )
    orders = await ledger_of(paper, intent)
    assert orders[-1] == row("LIMIT_MAKER", None, "29100", "0.01", "NEW", "0")
    assert [o["status"] for o in orders] == ["CANCELED", "NEW"]
    await intents.cancel(intent.intent_id)
    await finished(intents, intent)


async def test_post_only_that_would_take_is_refused_by_the_exchange(
    intents: IntentClient, paper: Paper
) -> None:
    # A post-only buy above the last price would take: the exchange refuses it, and the intent
    # ends rejected with the exchange's reason (never re-placed as a taker order).
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(amount="0.01", price="30100", post_only=True)
    await intents.submit(intent)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.REJECTED
    reason = final.outcome_reason or ""
    assert "OrderImmediatelyFillable" in reason
    assert "Order would immediately match and take" in reason
    assert await exchange_orders(paper, intent) == []


# --- stops --------------------------------------------------------------------------------------


async def test_stop_limit_rests_on_the_exchange_until_the_price_crosses(
    intents: IntentClient, paper: Paper, sol_at_100: None
) -> None:
    intent = new_intent(
        symbol="SOL/USDT", side="sell", amount="1", price="94", stop_price="95", type="stop_limit"
    )
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    assert await ledger_of(paper, intent) == [
        row("STOP_LOSS_LIMIT", "GTC", "94", "1", "NEW", "0", stop_price="95")
    ]

    await paper.move_price("SOL/USDT", "95")
    await intents.resync(intent.intent_id)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.FILLED
    assert final.average_price == Decimal("95")
    assert await ledger_of(paper, intent) == [
        row("STOP_LOSS_LIMIT", "GTC", "94", "1", "FILLED", "1", stop_price="95")
    ]


async def nothing_on_the_exchange_until_the_price_crosses(
    intents: IntentClient, paper: Paper, intent: OrderIntent
) -> None:
    await intents.wait_for(
        intent.intent_id, lambda s: s.stop_held and s.reconciliation_status.value == "in_sync"
    )
    assert await exchange_orders(paper, intent) == []
    await paper.move_price("SOL/USDT", "95")

    async def placed() -> bool:
        return bool(await exchange_orders(paper, intent))

    await eventually("the released order", placed)


async def test_held_stop_limit_is_released_as_a_limit_order(
    intents: IntentClient, paper: Paper, sol_at_100: None
) -> None:
    intent = new_intent(
        symbol="SOL/USDT",
        side="sell",
        amount="1",
        price="94",
        stop_price="95",
        type="stop_limit",
        account="paper-held",
    )
    await intents.submit(intent)
    await nothing_on_the_exchange_until_the_price_crosses(intents, paper, intent)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.FILLED
    assert await ledger_of(paper, intent) == [row("LIMIT", "GTC", "94", "1", "FILLED", "1")]


@pytest.mark.parametrize("account", ["paper", "paper-held"])
async def test_stop_market_is_released_as_a_market_order(
    intents: IntentClient, paper: Paper, sol_at_100: None, account: str
) -> None:
    # Binance spot has no stop-market order (ccxt's has['createStopMarketOrder'] is false): on
    # "paper" as on "paper-held" the workflow holds it and sends a market order once it crosses.
    intent = new_intent(
        symbol="SOL/USDT",
        side="sell",
        amount="1",
        price=None,
        stop_price="95",
        type="stop_market",
        account=account,
    )
    await intents.submit(intent)
    await nothing_on_the_exchange_until_the_price_crosses(intents, paper, intent)
    final = await finished(intents, intent)
    assert final.status is IntentStatus.FILLED
    assert final.average_price == Decimal("95")
    assert await ledger_of(paper, intent) == [row("MARKET", None, "0", "1", "FILLED", "1")]
