"""Every ccxt binance method the project relies on, round-tripped over HTTP against the sim."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import SimServer
from exchange_kernel.sim.admin_client import AdminClient

BTC = "BTC/USDT"
approx = pytest.approx


async def test_load_markets_spot_only_with_binance_filters(
    make_client: Any, sim: SimServer, admin: AdminClient
) -> None:
    client = make_client()
    markets = await client.load_markets()
    assert set(markets) == {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
    btc = markets[BTC]
    assert btc["spot"] is True and btc["type"] == "spot" and btc["active"] is True
    assert (btc["base"], btc["quote"], btc["id"]) == ("BTC", "USDT", "BTCUSDT")
    assert btc["precision"]["amount"] == approx(0.00001)
    assert btc["precision"]["price"] == approx(0.01)
    assert btc["limits"]["amount"] == {"min": approx(0.00001), "max": approx(9000)}
    assert btc["limits"]["price"]["min"] == approx(0.01)
    assert btc["limits"]["cost"]["min"] == approx(5)
    assert btc["limits"]["market"]["max"] == approx(120)
    assert markets["ETH/USDT"]["precision"]["amount"] == approx(0.0001)
    # Spot only: nothing but exchangeInfo was asked for (no sapi margin pairs or currencies).
    assert (await admin.requests())["counts"] == {"GET /api/v3/exchangeInfo": 1}


async def test_fetch_time_is_the_sim_clock(client: ccxt_async.binance) -> None:
    server_time = await client.fetch_time()
    assert server_time == approx(time.time() * 1000, abs=5000)


async def test_fetch_ticker_follows_the_last_price(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    ticker = await client.fetch_ticker(BTC)
    assert ticker["symbol"] == BTC
    assert ticker["last"] == approx(30000)
    await admin.price("BTCUSDT", "31500")
    await admin.price("BTCUSDT", "31000")
    ticker = await client.fetch_ticker(BTC)
    assert ticker["last"] == approx(31000)
    assert ticker["open"] == approx(30000)
    assert ticker["high"] == approx(31500)
    assert ticker["low"] == approx(30000)
    assert ticker["percentage"] == approx(3.333, abs=0.001)
    # The counterparty quotes one tick either side of the last price.
    assert ticker["bid"] == approx(30999.99, abs=1e-9)
    assert ticker["ask"] == approx(31000.01, abs=1e-9)
    assert ticker["timestamp"] == approx(time.time() * 1000, abs=5000)


async def test_fetch_order_book_shows_resting_orders_around_the_last_price(
    client: ccxt_async.binance,
) -> None:
    await client.create_order(BTC, "limit", "buy", 0.5, 29000)
    await client.create_order(BTC, "limit", "buy", 0.25, 29000)
    await client.create_order(BTC, "limit", "sell", 0.25, 31000)
    book = await client.fetch_order_book(BTC, limit=5)
    assert book["symbol"] == BTC
    # The sim's counterparty quotes one tick either side of the last price: a real spread.
    assert book["bids"][0][0] == approx(29999.99, abs=1e-9)
    assert book["asks"][0][0] == approx(30000.01, abs=1e-9)
    assert [29000, 0.75] in [[approx(p), approx(q)] for p, q in book["bids"]]
    assert book["bids"][1] == [approx(29000), approx(0.75)]
    assert book["asks"][1] == [approx(31000), approx(0.25)]
    assert book["nonce"] > 0


async def test_fetch_balance_reports_free_and_locked(client: ccxt_async.binance) -> None:
    balance = await client.fetch_balance()
    assert balance["USDT"] == {"free": approx(1_000_000), "used": 0, "total": approx(1_000_000)}
    assert balance["BTC"]["free"] == approx(100)
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await client.create_order(BTC, "limit", "sell", 0.5, 31000)
    balance = await client.fetch_balance()
    assert balance["USDT"]["used"] == approx(290)
    assert balance["USDT"]["free"] == approx(1_000_000 - 290)
    assert balance["BTC"]["used"] == approx(0.5)
    assert balance["BTC"]["total"] == approx(100)


async def test_limit_order_rests_then_fills_as_maker_when_price_moves_through(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    assert order["status"] == "open"
    assert order["type"] == "limit" and order["side"] == "buy"
    assert (order["amount"], order["filled"], order["remaining"]) == (
        approx(0.01),
        approx(0),
        approx(0.01),
    )
    assert order["price"] == approx(29000)
    assert order["timeInForce"] == "GTC"
    assert order["clientOrderId"].startswith("x-TKT5PX2F")

    trades = await admin.price("BTCUSDT", "28900")
    assert [(t["order_id"], Decimal(t["price"]), t["is_maker"]) for t in trades] == [
        (int(order["id"]), 29000, True)
    ]

    filled = await client.fetch_order(order["id"], BTC)
    assert filled["status"] == "closed"
    assert filled["filled"] == approx(0.01) and filled["remaining"] == approx(0)
    assert filled["average"] == approx(29000)
    assert filled["cost"] == approx(290)
    assert filled["lastTradeTimestamp"] is not None

    [trade] = await client.fetch_my_trades(BTC)
    assert trade["order"] == order["id"]
    assert trade["takerOrMaker"] == "maker"
    assert trade["fee"] == {"cost": approx(0.00001), "currency": "BTC"}

    balance = await client.fetch_balance()
    assert balance["BTC"]["free"] == approx(100 + 0.01 - 0.00001)
    assert balance["USDT"]["total"] == approx(1_000_000 - 290)
    assert balance["USDT"]["used"] == approx(0)


async def test_market_orders_take_at_the_last_price_and_pay_fees_in_the_received_asset(
    client: ccxt_async.binance,
) -> None:
    buy = await client.create_order(BTC, "market", "buy", 0.5)
    assert buy["status"] == "closed"
    assert buy["filled"] == approx(0.5) and buy["remaining"] == approx(0)
    assert buy["average"] == approx(30000)
    assert buy["cost"] == approx(15000)
    assert buy["fee"] == {"cost": approx(0.0005), "currency": "BTC"}
    assert len(buy["trades"]) == 1 and buy["trades"][0]["price"] == approx(30000)

    sell = await client.create_order(BTC, "market", "sell", 0.1)
    assert sell["status"] == "closed"
    assert sell["fee"] == {"cost": approx(3), "currency": "USDT"}

    balance = await client.fetch_balance()
    assert balance["BTC"]["total"] == approx(100 + 0.5 - 0.0005 - 0.1)
    assert balance["USDT"]["total"] == approx(1_000_000 - 15000 + 3000 - 3)


async def test_market_buy_by_cost_uses_quote_order_qty(client: ccxt_async.binance) -> None:
    order = await client.create_market_buy_order_with_cost(BTC, 100)
    assert order["info"]["origQuoteOrderQty"] == "100.00000000"
    # 100 / 30000 = 0.0033333.. floored to the 0.00001 step.
    assert order["filled"] == approx(0.00333)
    assert order["cost"] == approx(99.9)
    assert order["status"] == "closed"


async def test_post_only_becomes_limit_maker(client: ccxt_async.binance) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"postOnly": True})
    assert order["info"]["type"] == "LIMIT_MAKER"
    assert order["postOnly"] is True
    assert order["type"] == "limit"
    assert order["status"] == "open"
    with pytest.raises(ccxt_async.OrderImmediatelyFillable):
        await client.create_order(BTC, "limit", "buy", 0.01, 30500, {"postOnly": True})


async def test_stop_loss_limit_via_trigger_price_triggers_on_the_way_down(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    order = await client.create_order(BTC, "limit", "sell", 0.01, 28900, {"triggerPrice": 29000})
    assert order["info"]["type"] == "STOP_LOSS_LIMIT"
    assert order["triggerPrice"] == approx(29000)
    assert order["status"] == "open"
    assert await admin.price("BTCUSDT", "29500") == []
    fetched = await client.fetch_order(order["id"], BTC)
    assert fetched["status"] == "open" and fetched["info"]["isWorking"] is False

    trades = await admin.price("BTCUSDT", "28950")
    # Triggered, and the 28900 limit is through the market: it takes at the new price.
    assert [(Decimal(t["price"]), t["is_maker"]) for t in trades] == [(28950, False)]
    fetched = await client.fetch_order(order["id"], BTC)
    assert fetched["status"] == "closed"
    assert fetched["average"] == approx(28950)
    assert fetched["triggerPrice"] == approx(29000)


async def test_stop_loss_price_and_take_profit_price_params(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    stop = await client.create_order(BTC, "limit", "sell", 0.01, 27000, {"stopLossPrice": 27500})
    assert stop["info"]["type"] == "STOP_LOSS_LIMIT"
    take = await client.create_order(BTC, "limit", "sell", 0.01, 31000, {"takeProfitPrice": 31000})
    assert take["info"]["type"] == "TAKE_PROFIT_LIMIT"
    assert take["takeProfitPrice"] == approx(31000)
    trades = await admin.price("BTCUSDT", "31000")
    assert [t["order_id"] for t in trades] == [int(take["id"])]
    assert (await client.fetch_order(stop["id"], BTC))["status"] == "open"
    with pytest.raises(ccxt_async.OrderImmediatelyFillable):
        # A stop-loss sell above the market would fire at once: Binance refuses it.
        await client.create_order(BTC, "limit", "sell", 0.01, 32000, {"stopLossPrice": 32000})


async def test_ioc_and_fok(client: ccxt_async.binance, admin: AdminClient) -> None:
    missed = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"timeInForce": "IOC"})
    assert (missed["status"], missed["filled"]) == ("expired", approx(0))
    assert missed["timeInForce"] == "IOC"

    full = await client.create_order(BTC, "limit", "buy", 0.01, 30100, {"timeInForce": "FOK"})
    assert (full["status"], full["filled"], full["average"]) == ("closed", approx(0.01), 30000)

    # Cap what one taker order can get, to see IOC partials and FOK refusals.
    await admin.price("BTCUSDT", "30000", taker_liquidity="0.004")
    partial = await client.create_order(BTC, "limit", "buy", 0.01, 30100, {"timeInForce": "IOC"})
    assert (partial["status"], partial["filled"]) == ("expired", approx(0.004))
    refused = await client.create_order(BTC, "limit", "buy", 0.01, 30100, {"timeInForce": "FOK"})
    assert (refused["status"], refused["filled"]) == ("expired", approx(0))
    balance = await client.fetch_balance()
    assert balance["USDT"]["used"] == approx(0)


async def test_fetch_order_by_id_and_by_client_order_id(client: ccxt_async.binance) -> None:
    order = await client.create_order(
        BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "intent-42"}
    )
    assert order["clientOrderId"] == "intent-42"
    by_id = await client.fetch_order(order["id"], BTC)
    by_client_id = await client.fetch_order(None, BTC, {"clientOrderId": "intent-42"})
    by_orig = await client.fetch_order(None, BTC, {"origClientOrderId": "intent-42"})
    assert by_id["id"] == by_client_id["id"] == by_orig["id"] == order["id"]
    assert by_client_id["clientOrderId"] == "intent-42"
    assert by_id["timestamp"] == order["timestamp"]


async def test_cancel_by_id_and_by_client_order_id(client: ccxt_async.binance) -> None:
    first = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "c-1"})
    second = await client.create_order(BTC, "limit", "buy", 0.02, 29000, {"clientOrderId": "c-2"})

    canceled = await client.cancel_order(first["id"], BTC)
    assert canceled["id"] == first["id"]
    assert canceled["status"] == "canceled"
    # Binance quirk: clientOrderId of a cancel answer is the *cancel request's* id.
    assert canceled["info"]["origClientOrderId"] == "c-1"
    assert canceled["clientOrderId"] != "c-1"

    canceled = await client.cancel_order(None, BTC, {"clientOrderId": "c-2"})
    assert canceled["id"] == second["id"] and canceled["status"] == "canceled"
    assert (await client.fetch_order(second["id"], BTC))["status"] == "canceled"
    balance = await client.fetch_balance()
    assert balance["USDT"]["used"] == approx(0)


async def test_fetch_open_orders_with_and_without_symbol(
    make_client: Any, admin: AdminClient
) -> None:
    client = make_client(options={"fetchOpenOrders": {"warnWithoutSymbol": False}})
    await client.load_markets()
    btc = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    eth = await client.create_order("ETH/USDT", "limit", "sell", 0.1, 2100)
    await client.create_order(BTC, "market", "buy", 0.01)
    assert [o["id"] for o in await client.fetch_open_orders(BTC)] == [btc["id"]]
    everything = await client.fetch_open_orders()
    assert {(o["id"], o["symbol"]) for o in everything} == {
        (btc["id"], BTC),
        (eth["id"], "ETH/USDT"),
    }
    assert all(o["status"] == "open" for o in everything)


async def test_fetch_open_orders_without_symbol_needs_ccxt_opt_in(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    with pytest.raises(ccxt_async.ExchangeError, match="warnWithoutSymbol"):
        await client.fetch_open_orders()
    assert "GET /api/v3/openOrders" not in (await admin.requests())["counts"]


async def test_edit_order_is_cancel_replace(client: ccxt_async.binance, admin: AdminClient) -> None:
    assert client.has["editOrder"] is True
    original = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    edited = await client.edit_order(
        original["id"], BTC, "limit", "buy", 0.02, 28500, {"clientOrderId": "edit-1"}
    )
    assert edited["id"] != original["id"]
    assert edited["clientOrderId"] == "edit-1"
    assert (edited["status"], edited["price"], edited["amount"]) == ("open", 28500, 0.02)
    assert (await client.fetch_order(original["id"], BTC))["status"] == "canceled"
    assert [o["id"] for o in await client.fetch_open_orders(BTC)] == [edited["id"]]
    balance = await client.fetch_balance()
    assert balance["USDT"]["used"] == approx(0.02 * 28500)

    old, new = await admin.orders()
    # The old order closed before the new one opened: never both live.
    assert old["closed_seq"] < new["opened_seq"]
    assert (await admin.requests())["counts"]["POST /api/v3/order/cancelReplace"] == 1


async def test_cancel_all_orders(client: ccxt_async.binance) -> None:
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await client.create_order(BTC, "limit", "sell", 0.01, 31000)
    keep = await client.create_order("ETH/USDT", "limit", "buy", 0.1, 1900)
    canceled = await client.cancel_all_orders(BTC)
    assert len(canceled) == 2
    assert all(o["status"] == "canceled" for o in canceled)
    assert [o["id"] for o in await client.fetch_open_orders("ETH/USDT")] == [keep["id"]]


async def test_partial_fills_then_cancel(client: ccxt_async.binance, admin: AdminClient) -> None:
    order = await client.create_order(BTC, "limit", "buy", 1, 29000)
    await admin.price("BTCUSDT", "28900", volume="0.3")
    partial = await client.fetch_order(order["id"], BTC)
    assert partial["status"] == "open"
    assert partial["info"]["status"] == "PARTIALLY_FILLED"
    assert (partial["filled"], partial["remaining"]) == (approx(0.3), approx(0.7))
    canceled = await client.cancel_order(order["id"], BTC)
    assert (canceled["status"], canceled["filled"]) == ("canceled", approx(0.3))
    balance = await client.fetch_balance()
    assert balance["USDT"]["used"] == approx(0)
    assert balance["USDT"]["total"] == approx(1_000_000 - 0.3 * 29000)
    assert balance["BTC"]["total"] == approx(100 + 0.3 * 0.999)


async def test_fetch_my_trades_fields_and_filters(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    first = await client.create_order(BTC, "market", "buy", 0.01)
    second = await client.create_order(BTC, "limit", "sell", 0.02, 30500)
    await admin.price("BTCUSDT", "30600")
    await client.create_order("ETH/USDT", "market", "buy", 0.1)

    trades = await client.fetch_my_trades(BTC)
    assert [(t["order"], t["side"], t["takerOrMaker"]) for t in trades] == [
        (first["id"], "buy", "taker"),
        (second["id"], "sell", "maker"),
    ]
    sell = trades[1]
    assert sell["symbol"] == BTC
    assert (sell["price"], sell["amount"], sell["cost"]) == (30500, 0.02, approx(610))
    assert sell["fee"] == {"cost": approx(0.61), "currency": "USDT"}
    assert sell["id"] and sell["timestamp"] is not None
    assert int(trades[0]["id"]) < int(sell["id"])

    only_second = await client.fetch_my_trades(BTC, params={"orderId": second["id"]})
    assert [t["id"] for t in only_second] == [sell["id"]]
    since = await client.fetch_my_trades(BTC, since=sell["timestamp"])
    assert sell["id"] in [t["id"] for t in since]
    assert await client.fetch_order_trades(second["id"], BTC) == only_second


async def test_other_account_is_isolated(
    client: ccxt_async.binance, make_client: Any, sim: SimServer, second_account: tuple[str, str]
) -> None:
    other = make_client(*second_account)
    await other.load_markets()
    mine = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    assert await other.fetch_open_orders(BTC) == []
    with pytest.raises(ccxt_async.OrderNotFound):
        await other.fetch_order(mine["id"], BTC)
    theirs = await other.create_order(BTC, "market", "sell", 1)
    assert theirs["status"] == "closed"
    assert sim.exchange.accounts[second_account[0]].balances["BTC"].free == Decimal(99)
    assert sim.exchange.accounts["paper-demo-key"].balances["BTC"].free == Decimal(100)


async def test_order_history_endpoints(client: ccxt_async.binance) -> None:
    filled = await client.create_order(BTC, "market", "buy", 0.01)
    canceled = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await client.cancel_order(canceled["id"], BTC)
    resting = await client.create_order(BTC, "limit", "buy", 0.01, 28000)
    everything = await client.fetch_orders(BTC)
    assert [(o["id"], o["status"]) for o in everything] == [
        (filled["id"], "closed"),
        (canceled["id"], "canceled"),
        (resting["id"], "open"),
    ]
    assert [o["id"] for o in await client.fetch_closed_orders(BTC)] == [filled["id"]]
    assert [o["id"] for o in await client.fetch_canceled_orders(BTC)] == [canceled["id"]]
    assert [o["id"] for o in await client.fetch_orders(BTC, limit=1)] == [resting["id"]]
    since = await client.fetch_orders(BTC, since=resting["timestamp"])
    assert resting["id"] in [o["id"] for o in since]


async def test_tickers_prices_and_time_difference(client: ccxt_async.binance) -> None:
    tickers = await client.fetch_tickers()
    assert set(tickers) == {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
    assert tickers["SOL/USDT"]["last"] == approx(100)
    bids_asks = await client.fetch_bids_asks([BTC, "ETH/USDT"])
    assert bids_asks["ETH/USDT"]["bid"] == approx(1999.99, abs=1e-9)
    assert bids_asks["ETH/USDT"]["ask"] == approx(2000.01, abs=1e-9)
    last_prices = await client.fetch_last_prices([BTC])
    assert last_prices[BTC]["price"] == approx(30000)
    difference = await client.load_time_difference()
    assert abs(difference) < 1000


async def test_test_orders_are_validated_but_never_placed(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"test": True})
    with pytest.raises(ccxt_async.BadRequest, match="NOTIONAL"):
        await client.create_order(BTC, "limit", "buy", 0.0001, 29000, {"test": True})
    assert await admin.orders() == []
    assert (await admin.requests())["counts"]["POST /api/v3/order/test"] == 2


async def test_edit_order_by_client_order_id_can_keep_that_id(client: ccxt_async.binance) -> None:
    await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "amend-me"})
    edited = await client.edit_order(
        None,
        BTC,
        "limit",
        "buy",
        0.02,
        28800,
        {"cancelOrigClientOrderId": "amend-me", "clientOrderId": "amend-me"},
    )
    assert edited["clientOrderId"] == "amend-me"
    current = await client.fetch_order(None, BTC, {"clientOrderId": "amend-me"})
    assert (current["id"], current["price"], current["status"]) == (edited["id"], 28800, "open")
    assert len(await client.fetch_open_orders(BTC)) == 1
