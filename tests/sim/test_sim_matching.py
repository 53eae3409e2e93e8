"""Matching against the operator-driven last price: priority, partial fills, stops, fees."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import Exchange, SimServer
from exchange_kernel.sim.admin_client import AdminClient
from exchange_kernel.sim.engine import (
    CancelReplaceMode,
    NewOrder,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from exchange_kernel.sim.errors import BinanceError

BTC = "BTC/USDT"
D = Decimal


async def test_price_time_priority_across_accounts(
    client: ccxt_async.binance,
    make_client: Any,
    admin: AdminClient,
    second_account: tuple[str, str],
) -> None:
    other = make_client(*second_account)
    await other.load_markets()
    low = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    early = await other.create_order(BTC, "limit", "buy", 0.01, 29500)
    late = await client.create_order(BTC, "limit", "buy", 0.01, 29500)

    trades = await admin.price("BTCUSDT", "28000", volume="0.015")
    # Best price first, then first come first served; volume runs out inside `late`.
    assert [(t["order_id"], D(t["qty"]), D(t["price"])) for t in trades] == [
        (int(early["id"]), D("0.01"), 29500),
        (int(late["id"]), D("0.005"), 29500),
    ]
    assert {t["account"] for t in trades} == {"paper-demo-key", second_account[0]}
    assert all(t["is_maker"] for t in trades)
    assert (await client.fetch_order(late["id"], BTC))["filled"] == pytest.approx(0.005)
    assert (await client.fetch_order(low["id"], BTC))["filled"] == 0

    # No volume given: everything the move crossed fills.
    trades = await admin.price("BTCUSDT", "27999")
    assert [(t["order_id"], D(t["qty"])) for t in trades] == [
        (int(late["id"]), D("0.005")),
        (int(low["id"]), D("0.01")),
    ]


async def test_sells_fill_lowest_first_and_only_when_crossed(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    high = await client.create_order(BTC, "limit", "sell", 0.01, 31000)
    low = await client.create_order(BTC, "limit", "sell", 0.01, 30500)
    assert await admin.price("BTCUSDT", "30499.99") == []
    trades = await admin.price("BTCUSDT", "30500")
    assert [t["order_id"] for t in trades] == [int(low["id"])]
    trades = await admin.price("BTCUSDT", "32000")
    assert [t["order_id"] for t in trades] == [int(high["id"])]


async def test_crossing_limit_takes_at_the_last_price(client: ccxt_async.binance) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.1, 30500)
    assert order["status"] == "closed"
    assert order["average"] == pytest.approx(30000)  # improvement, not the limit
    [trade] = await client.fetch_my_trades(BTC)
    assert trade["takerOrMaker"] == "taker"
    balance = await client.fetch_balance()
    assert balance["USDT"]["used"] == 0  # the over-reservation at 30500 was handed back
    assert balance["USDT"]["total"] == pytest.approx(1_000_000 - 3000)


async def test_fees_and_balances_add_up_over_http(
    client: ccxt_async.binance, admin: AdminClient, sim: SimServer
) -> None:
    initial = sim.exchange.holdings()
    await client.create_order(BTC, "market", "buy", 1)
    await client.create_order(BTC, "limit", "sell", 0.4, 30500)
    await client.create_order("SOL/USDT", "limit", "buy", 10, 95)
    await admin.price("BTCUSDT", "31000", volume="0.25")
    await admin.price("SOLUSDT", "90")
    await client.create_order(BTC, "market", "sell", 0.2)

    state = await admin.balances()
    demo = state["accounts"]["paper-demo-key"]
    for asset in ("BTC", "USDT", "SOL"):
        total = sum(
            D(acct[asset]["free"]) + D(acct[asset]["locked"]) for acct in state["accounts"].values()
        )
        total += D(state["fees_collected"][asset]) + D(state["counterparty"][asset])
        assert total == initial[asset], asset

    fees = dict.fromkeys(state["fees_collected"], D(0))
    for trade in await admin.trades():
        fees[trade["fee_asset"]] += D(trade["fee"])
    assert fees == {a: D(v) for a, v in state["fees_collected"].items()}
    # 1 BTC bought (fee 0.001 BTC), 0.25 + 0.2 sold: 100 + 1 - 0.001 - 0.45, 0.15 still locked.
    assert D(demo["BTC"]["free"]) + D(demo["BTC"]["locked"]) == D("100.549")
    assert D(demo["BTC"]["locked"]) == D("0.15")
    assert D(demo["SOL"]["free"]) == D("10000") + D("10") - D("0.01")


# ---------------------------------------------------------------------- engine, no HTTP


def _exchange() -> Exchange:
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000))
    return Exchange(accounts={"a": "s"}, clock=lambda: next(ticks))


def _limit(side: Side, qty: str, price: str, **extra: Any) -> NewOrder:
    return NewOrder(
        symbol="BTCUSDT",
        side=side,
        type=extra.pop("type", OrderType.LIMIT),
        quantity=D(qty),
        price=D(price),
        time_in_force=extra.pop("time_in_force", TimeInForce.GTC),
        **extra,
    )


@pytest.mark.parametrize(
    ("kind", "side", "stop", "quiet_move", "trigger_move"),
    [
        (OrderType.STOP_LOSS_LIMIT, Side.SELL, "29000", "29500", "29000"),
        (OrderType.STOP_LOSS_LIMIT, Side.BUY, "31000", "30500", "31000"),
        (OrderType.TAKE_PROFIT_LIMIT, Side.SELL, "31000", "30500", "31000"),
        (OrderType.TAKE_PROFIT_LIMIT, Side.BUY, "29000", "29500", "29000"),
    ],
)
def test_stop_trigger_directions(
    kind: OrderType, side: Side, stop: str, quiet_move: str, trigger_move: str
) -> None:
    exchange = _exchange()
    order = exchange.place_order(
        "a", _limit(side, "0.01", stop, type=kind, stop_price=D(stop))
    ).order
    assert order.working_time == -1
    assert exchange.set_price("BTCUSDT", D(quiet_move)) == []
    assert order.working_time == -1
    [trade] = exchange.set_price("BTCUSDT", D(trigger_move))
    assert (trade.order_id, trade.is_maker, order.status) == (
        order.order_id,
        False,
        OrderStatus.FILLED,
    )


def test_triggered_stop_whose_limit_is_not_crossed_rests() -> None:
    exchange = _exchange()
    order = exchange.place_order(
        "a", _limit(Side.SELL, "0.01", "29500", type=OrderType.STOP_LOSS_LIMIT, stop_price=D(29000))
    ).order
    assert exchange.set_price("BTCUSDT", D(28900)) == []  # triggered; 29500 > 28900: rests
    assert order.is_working and order.status is OrderStatus.NEW
    [trade] = exchange.set_price("BTCUSDT", D(29600))
    assert (trade.price, trade.is_maker) == (D(29500), True)


def test_ioc_stop_expires_unfilled_remainder_when_triggered() -> None:
    exchange = _exchange()
    order = exchange.place_order(
        "a",
        _limit(
            Side.SELL,
            "0.01",
            "29500",
            type=OrderType.STOP_LOSS_LIMIT,
            stop_price=D(29000),
            time_in_force=TimeInForce.IOC,
        ),
    ).order
    assert order.status is OrderStatus.NEW
    exchange.set_price("BTCUSDT", D(28900))
    assert order.status is OrderStatus.EXPIRED
    assert exchange.accounts["a"].balances["BTC"].locked == 0


def test_market_sell_by_quote_quantity() -> None:
    exchange = _exchange()
    placement = exchange.place_order(
        "a",
        NewOrder("BTCUSDT", Side.SELL, OrderType.MARKET, quote_order_qty=D("1000")),
    )
    assert placement.order.executed_qty == D("0.03333")
    assert placement.fills[0].commission_asset == "USDT"


def test_market_order_without_enough_liquidity_expires_partially_filled() -> None:
    exchange = _exchange()
    exchange.set_taker_liquidity("BTCUSDT", D("0.4"))
    placement = exchange.place_order(
        "a", NewOrder("BTCUSDT", Side.BUY, OrderType.MARKET, quantity=D(1))
    )
    assert placement.order.status is OrderStatus.EXPIRED
    assert placement.order.executed_qty == D("0.4")
    assert exchange.accounts["a"].balances["USDT"].locked == 0


def test_cancel_replace_allow_failure_places_even_if_cancel_fails() -> None:
    exchange = _exchange()
    result = exchange.cancel_replace(
        "a",
        _limit(Side.BUY, "0.01", "29000"),
        cancel_order_id=999,
        mode=CancelReplaceMode.ALLOW_FAILURE,
    )
    assert (result.cancel_result, result.new_order_result) == ("FAILURE", "SUCCESS")
    assert result.cancel_error is not None and result.cancel_error.code == -2011
    assert result.placement is not None and result.placement.order.is_open

    stop = exchange.cancel_replace("a", _limit(Side.BUY, "0.01", "29000"), cancel_order_id=999)
    assert (stop.cancel_result, stop.new_order_result) == ("FAILURE", "NOT_ATTEMPTED")


def test_cancel_replace_by_client_order_id() -> None:
    exchange = _exchange()
    old = exchange.place_order("a", _limit(Side.BUY, "0.01", "29000", client_order_id="k1")).order
    # Reusing the id of the order being replaced is fine: it is no longer open by then.
    result = exchange.cancel_replace(
        "a", _limit(Side.BUY, "0.02", "29100", client_order_id="k1"), cancel_client_order_id="k1"
    )
    assert old.status is OrderStatus.CANCELED
    assert result.placement is not None
    assert result.placement.order.client_order_id == "k1"
    assert exchange.get_order("a", "BTCUSDT", client_order_id="k1") is result.placement.order


def test_order_history_orders_every_status_change() -> None:
    exchange = _exchange()
    order = exchange.place_order("a", _limit(Side.BUY, "1", "29000")).order
    exchange.set_price("BTCUSDT", D(28000), D("0.5"))
    exchange.cancel_order("a", "BTCUSDT", order.order_id)
    assert [h.status for h in order.history] == [
        OrderStatus.NEW,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.CANCELED,
    ]
    seqs = [h.seq for h in order.history]
    times = [h.time for h in order.history]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert times == sorted(times)


def test_my_trades_paging() -> None:
    exchange = _exchange()
    for _ in range(5):
        exchange.place_order("a", NewOrder("BTCUSDT", Side.BUY, OrderType.MARKET, quantity=D(1)))
    ids = [t.trade_id for t in exchange.my_trades("a", "BTCUSDT")]
    assert len(ids) == 5
    assert [t.trade_id for t in exchange.my_trades("a", "BTCUSDT", limit=2)] == ids[-2:]
    assert [t.trade_id for t in exchange.my_trades("a", "BTCUSDT", from_id=ids[1], limit=2)] == (
        ids[1:3]
    )


def test_unknown_symbol_and_account() -> None:
    exchange = _exchange()
    with pytest.raises(BinanceError) as raised:
        exchange.set_price("DOGEUSDT", D(1))
    assert raised.value.code == -1121
    with pytest.raises(BinanceError) as raised:
        exchange.place_order("nobody", _limit(Side.BUY, "1", "1"))
    assert raised.value.code == -2015


def test_every_new_order_goes_through_place_order() -> None:
    # Observers (the placement bench) wrap place_order; cancelReplace must not bypass it.
    exchange = _exchange()
    seen: list[str] = []
    original = exchange.place_order

    def observed(api_key: str, request: NewOrder) -> Any:
        placement = original(api_key, request)
        seen.append(placement.order.client_order_id)
        return placement

    exchange.place_order = observed  # type: ignore[method-assign]
    exchange.place_order("a", _limit(Side.BUY, "0.01", "29000", client_order_id="one"))
    exchange.cancel_replace(
        "a", _limit(Side.BUY, "0.01", "28000", client_order_id="two"), cancel_client_order_id="one"
    )
    assert seen == ["one", "two"]
