"""Binance spot's stop-market orders (STOP_LOSS, TAKE_PROFIT): on the engine, then through the
real ccxt binance client over HTTP."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim.admin_client import AdminClient
from exchange_kernel.sim.engine import (
    Exchange,
    NewOrder,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.symbols import ORDER_TYPES

BTC = "BTC/USDT"
approx = pytest.approx


def _exchange() -> Exchange:
    return Exchange(accounts={"a": "s"})


def _stop(kind: OrderType, side: Side, stop: str, qty: str = "0.01", **extra: Any) -> NewOrder:
    return NewOrder("BTCUSDT", side, kind, quantity=D(qty), stop_price=D(stop), **extra)


# ------------------------------------------------------------------------------------ engine


@pytest.mark.parametrize(
    ("kind", "side", "stop", "quiet_move", "trigger_move"),
    [
        (OrderType.STOP_LOSS, Side.SELL, "29000", "29500", "28800"),
        (OrderType.STOP_LOSS, Side.BUY, "31000", "30500", "31200"),
        (OrderType.TAKE_PROFIT, Side.SELL, "31000", "30500", "31200"),
        (OrderType.TAKE_PROFIT, Side.BUY, "29000", "29500", "28800"),
    ],
)
def test_stop_market_trigger_directions_and_market_fill(
    kind: OrderType, side: Side, stop: str, quiet_move: str, trigger_move: str
) -> None:
    exchange = _exchange()
    before = exchange.holdings()
    order = exchange.place_order("a", _stop(kind, side, stop)).order
    assert (order.status, order.working_time, order.price) == (OrderStatus.NEW, -1, 0)
    assert exchange.set_price("BTCUSDT", D(quiet_move)) == []
    assert order.working_time == -1 and order.status is OrderStatus.NEW
    [trade] = exchange.set_price("BTCUSDT", D(trigger_move))
    # Released as a MARKET order: taker, at the last price the move went to (not the stop).
    assert (trade.order_id, trade.is_maker, trade.price) == (order.order_id, False, D(trigger_move))
    assert order.status is OrderStatus.FILLED and order.executed_qty == D("0.01")
    balances = exchange.accounts["a"].balances
    assert balances["BTC"].locked == 0 and balances["USDT"].locked == 0
    assert exchange.holdings() == before


def test_stop_market_that_would_trigger_immediately_is_refused() -> None:
    exchange = _exchange()
    with pytest.raises(BinanceError) as caught:
        exchange.place_order("a", _stop(OrderType.STOP_LOSS, Side.SELL, "30000"))
    assert caught.value.code == -2010
    with pytest.raises(BinanceError):
        exchange.place_order("a", _stop(OrderType.TAKE_PROFIT, Side.SELL, "29999.99"))


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (_stop(OrderType.STOP_LOSS, Side.SELL, "29000", price=D(28900)), -1106),
        (
            _stop(OrderType.STOP_LOSS, Side.SELL, "29000", time_in_force=TimeInForce.GTC),
            -1106,
        ),
        (NewOrder("BTCUSDT", Side.SELL, OrderType.TAKE_PROFIT, quantity=D("0.01")), -1102),
        (NewOrder("BTCUSDT", Side.SELL, OrderType.STOP_LOSS, stop_price=D(29000)), -1102),
        (_stop(OrderType.STOP_LOSS, Side.SELL, "29000", qty="0.0001"), -1013),  # NOTIONAL
    ],
)
def test_stop_market_parameters(request_: NewOrder, code: int) -> None:
    with pytest.raises(BinanceError) as caught:
        _exchange().place_order("a", request_)
    assert caught.value.code == code


def test_stop_market_buy_holds_funds_at_its_stop_then_at_the_price_it_takes() -> None:
    exchange = _exchange()
    usdt = exchange.accounts["a"].balances["USDT"]
    order = exchange.place_order("a", _stop(OrderType.STOP_LOSS, Side.BUY, "31000", "1")).order
    assert usdt.locked == D(31000)
    [trade] = exchange.set_price("BTCUSDT", D(32000))  # gapped through the stop
    assert trade.price == D(32000) and order.status is OrderStatus.FILLED
    assert usdt.locked == 0 and usdt.free == D(1_000_000) - D(32000)


def test_stop_market_buy_the_account_cannot_pay_for_when_triggered_expires() -> None:
    exchange = _exchange()
    exchange.set_balances("a", {"USDT": D(31000)})
    before = exchange.holdings()
    order = exchange.place_order("a", _stop(OrderType.STOP_LOSS, Side.BUY, "31000", "1")).order
    assert exchange.set_price("BTCUSDT", D(32000)) == []
    assert order.status is OrderStatus.EXPIRED and order.executed_qty == 0
    usdt = exchange.accounts["a"].balances["USDT"]
    assert (usdt.free, usdt.locked) == (D(31000), 0)
    assert exchange.holdings() == before


def test_triggered_stop_market_fills_only_what_the_move_carries() -> None:
    exchange = _exchange()
    order = exchange.place_order("a", _stop(OrderType.STOP_LOSS, Side.SELL, "29000", "1")).order
    [trade] = exchange.set_price("BTCUSDT", D(28900), volume=D("0.4"))
    assert trade.qty == D("0.4")
    assert order.status is OrderStatus.EXPIRED and order.executed_qty == D("0.4")
    assert exchange.accounts["a"].balances["BTC"].locked == 0


def test_stop_market_types_are_in_the_symbols_order_types() -> None:
    assert {"STOP_LOSS", "TAKE_PROFIT"} <= set(ORDER_TYPES)


# ------------------------------------------------------------------------------------- ccxt


async def test_ccxt_stop_loss_rests_untriggered_then_fills_as_a_market_order(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    order = await client.create_order(BTC, "STOP_LOSS", "sell", 0.01, None, {"stopPrice": 29000})
    info = order["info"]
    assert (info["type"], info["stopPrice"], info["status"]) == (
        "STOP_LOSS",
        "29000.00000000",
        "NEW",
    )
    assert "price" not in info or info["price"] == "0.00000000"
    assert await admin.price("BTCUSDT", "29500") == []

    fetched = await client.fetch_order(order["id"], BTC)
    # ccxt parses a spot STOP_LOSS as a 'market' order with a trigger price.
    assert (fetched["type"], fetched["info"]["type"]) == ("market", "STOP_LOSS")
    assert fetched["status"] == "open"
    assert fetched["triggerPrice"] == approx(29000) and fetched["stopPrice"] == approx(29000)
    assert fetched["info"]["price"] == "0.00000000"
    assert fetched["info"]["isWorking"] is False and fetched["info"]["workingTime"] == -1
    assert [o["id"] for o in await client.fetch_open_orders(BTC)] == [order["id"]]

    trades = await admin.price("BTCUSDT", "28800")
    assert [(D(t["price"]), t["is_maker"]) for t in trades] == [(28800, False)]
    fetched = await client.fetch_order(order["id"], BTC)
    assert fetched["status"] == "closed" and fetched["info"]["type"] == "STOP_LOSS"
    assert fetched["filled"] == approx(0.01) and fetched["average"] == approx(28800)
    assert fetched["triggerPrice"] == approx(29000)
    assert await client.fetch_open_orders(BTC) == []


async def test_ccxt_market_with_trigger_price_is_a_stop_loss(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    # ccxt turns a spot 'market' order with triggerPrice (or stopPrice) into STOP_LOSS.
    order = await client.create_order(BTC, "market", "buy", 0.01, None, {"triggerPrice": 31000})
    assert order["info"]["type"] == "STOP_LOSS"
    fetched = await client.fetch_order(order["id"], BTC)
    assert (fetched["type"], fetched["side"], fetched["status"]) == ("market", "buy", "open")
    assert fetched["triggerPrice"] == approx(31000)
    trades = await admin.price("BTCUSDT", "31100")
    assert [t["order_id"] for t in trades] == [int(order["id"])]
    assert (await client.fetch_order(order["id"], BTC))["status"] == "closed"


async def test_ccxt_take_profit_market_and_cancel(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    take = await client.create_order(BTC, "market", "sell", 0.01, None, {"takeProfitPrice": 31000})
    assert take["info"]["type"] == "TAKE_PROFIT"
    fetched = await client.fetch_order(take["id"], BTC)
    assert (fetched["type"], fetched["info"]["type"]) == ("market", "TAKE_PROFIT")
    assert fetched["takeProfitPrice"] == approx(31000)
    canceled = await client.cancel_order(take["id"], BTC)
    assert canceled["status"] == "canceled" and canceled["info"]["stopPrice"] == "31000.00000000"
    assert await admin.price("BTCUSDT", "31500") == []


async def test_ccxt_stop_market_that_would_trigger_immediately_is_refused(
    client: ccxt_async.binance,
) -> None:
    with pytest.raises(ccxt_async.InvalidOrder):
        await client.create_order(BTC, "STOP_LOSS", "sell", 0.01, None, {"stopPrice": 30500})
