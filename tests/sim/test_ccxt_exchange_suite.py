"""ccxt's own exchange tests, run against the paper exchange with the real ccxt binance client.

ccxt ships the tests it runs against live exchanges in its package
(`ccxt/test/exchange/async/test_*.py`, structure validators in `ccxt/test/exchange/base/`).
Each test here calls ccxt's test function for one spot method that ccxt's binance implements,
with no skipped properties (ccxt's `skip-tests.json` mechanism stays empty), so a validator
that fails fails the test. `tests/sim/conftest.py` prints the tally at the end of the run.

Three methods have no test function of their own in ccxt: `fetchOrder` and `cancelOrder` are
steps of ccxt's `createOrder` test (which runs here too), and each also gets a test here that
calls those same ccxt steps and validators on its own; `fetchTime` is checked with ccxt's
timestamp assertion. Where ccxt's Python port of a test helper is broken for every exchange,
the harness replaces the helper (fixture `ccxt_create_order_helpers`); no assertion is changed.
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from types import ModuleType
from typing import Any

import ccxt.async_support as ccxt_async
import pytest
from ccxt.base.decimal_to_precision import TICK_SIZE
from ccxt.test.exchange.base import test_shared_methods

# Renamed: pytest would collect ccxt's validator as a test of this module.
from ccxt.test.exchange.base.test_order import test_order as validate_order

from exchange_kernel.sim import SimServer
from exchange_kernel.sim.admin_client import AdminClient

BTC = "BTC/USDT"
ETH = "ETH/USDT"
# ccxt's per-exchange skip list (its skip-tests.json) for these runs: nothing skipped.
NO_SKIPS: dict[str, Any] = {}
# Except one property, which real Binance spot lacks as well: its depth answer carries no time
# (ccxt's binance reads the order book's timestamp from "T", which only the futures APIs send),
# and the sim answers as Binance does. ccxt's validator checks everything else.
ORDER_BOOK_SKIPS: dict[str, Any] = {
    "timestamp": "Binance spot /api/v3/depth has no timestamp",
    "datetime": "same",
}

pytestmark = pytest.mark.ccxt_suite


def ccxt_test_module(method: str) -> ModuleType:
    """The module of ccxt's test for a unified method, named as ccxt's own runner names it."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower().replace("o_h_l_c_v", "ohlcv")
    # `async` is a keyword, so the package cannot be imported with an import statement.
    return importlib.import_module(f"ccxt.test.exchange.async.test_{snake}")


def ccxt_test(method: str) -> Callable[..., Awaitable[Any]]:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower().replace("o_h_l_c_v", "ohlcv")
    return getattr(ccxt_test_module(method), f"test_{snake}")


@pytest.fixture
async def exchange(make_client: Any) -> ccxt_async.binance:
    client = make_client()
    await client.load_markets()
    return client


@pytest.fixture
async def traded(exchange: ccxt_async.binance, admin: AdminClient) -> dict[str, Any]:
    """An account with history on BTC/USDT, so the list validators have entries to check:
    a taker fill, a maker fill through a price move, a canceled and a resting order."""
    taker = await exchange.create_order(BTC, "market", "buy", 0.01)
    maker = await exchange.create_order(BTC, "limit", "sell", 0.02, 30100)
    await admin.price("BTCUSDT", "30150")
    canceled = await exchange.create_order(BTC, "limit", "buy", 0.01, 29000)
    await exchange.cancel_order(canceled["id"], BTC)
    resting = await exchange.create_order(BTC, "limit", "buy", 0.01, 29500)
    await admin.price("BTCUSDT", "30120")
    assert len(await exchange.fetch_my_trades(BTC)) == 2
    return {"taker": taker, "maker": maker, "canceled": canceled, "resting": resting}


# ---------------------------------------------------------------------- ccxt's broken helpers


async def _fetch_best_bid_ask(exchange: Any, method: str, symbol: str) -> list[Any]:
    # ccxt's Python port of fetchBestBidAsk is synchronous: it calls the async
    # fetch_order_book without awaiting it and then finds no bid or ask, for every async
    # exchange. This awaits the same call (binance has fetchOrderBook, ccxt's first choice);
    # the assertion is ccxt's.
    orderbook = await exchange.fetch_order_book(symbol)
    best_bid = exchange.safe_number(exchange.safe_list(orderbook["bids"], 0), 0)
    best_ask = exchange.safe_number(exchange.safe_list(orderbook["asks"], 0), 0)
    log_text = test_shared_methods.log_template(exchange, method, {})
    assert best_bid is not None and best_ask is not None, (
        f"{log_text} {exchange.id} could not get best bid/ask for {symbol} using "
        f"fetchOrderBook while testing {method}"
    )
    return [best_bid, best_ask]


async def _fetch_order(
    exchange: Any, symbol: str, order_id: str, skipped_properties: dict[str, Any]
) -> Any:
    # ccxt's Python port of fetchOrder (the test helper) is synchronous too and returns an
    # unawaited coroutine; the same search, awaited: the singular lookups first, then the lists.
    for name in ("fetchOrder", "fetchOpenOrder", "fetchClosedOrder", "fetchCanceledOrder"):
        if exchange.has.get(name):
            found = await getattr(exchange, name)(order_id, symbol)
            if found["id"] == order_id:
                return found
    since = exchange.milliseconds() - 1000 * 60 * 5
    for name in ("fetchOrders", "fetchOpenOrders", "fetchClosedOrders", "fetchCanceledOrders"):
        if exchange.has.get(name):
            for order in await getattr(exchange, name)(symbol, since):
                if order["id"] == order_id:
                    return order
    return None


@pytest.fixture
def ccxt_create_order_helpers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """ccxt's createOrder test module, with the helpers its Python port breaks replaced."""
    module = ccxt_test_module("createOrder")
    # The port uses `time`, `math` and `Error` without importing or defining them.
    monkeypatch.setattr(module, "time", time, raising=False)
    monkeypatch.setattr(module, "math", math, raising=False)
    monkeypatch.setattr(module, "Error", Exception, raising=False)
    monkeypatch.setattr(test_shared_methods, "fetch_best_bid_ask", _fetch_best_bid_ask)
    monkeypatch.setattr(test_shared_methods, "fetch_order", _fetch_order)

    async def tco_create_order_safe(
        exchange: Any,
        symbol: str,
        order_type: str,
        side: str,
        amount: Any,
        price: Any = None,
        params: dict[str, Any] | None = None,
        skipped_properties: dict[str, Any] | None = None,
    ) -> Any:
        # ccxt's version concatenates the float amount (and a None price) into its debug
        # message, a TypeError in Python before any order is sent. Same steps and validator.
        params = params or {}
        skipped_properties = skipped_properties or {}
        module.tco_debug(
            exchange,
            symbol,
            f"Executing createOrder {order_type} {side} {amount} {price} {exchange.json(params)}",
        )
        order = await exchange.create_order(symbol, order_type, side, amount, price, params)
        try:
            module.test_order(
                exchange, skipped_properties, "createOrder", order, symbol, int(time.time() * 1000)
            )
        except Exception:
            if order_type != "market":
                await module.tco_try_cancel_order(exchange, symbol, order, skipped_properties)
            raise
        return order

    def tco_get_minimum_amount_for_limit_price(
        exchange: Any, market: Any, price: float, predefined_amount: float | None = None
    ) -> float:
        # ccxt's version rounds up with decimal_to_precision(..., ROUND_UP), a mode that ccxt's
        # Python decimal_to_precision refuses (an assert), for every exchange. The same amount,
        # rounded up to the amount step with Decimal.
        assert exchange.precisionMode == TICK_SIZE  # binance's; the port covers only this mode
        amount = module.tco_mininum_amount(exchange, market)
        minimum_cost = module.tco_mininum_cost(exchange, market)
        if minimum_cost is not None and amount * price < minimum_cost:
            amount = minimum_cost / price
        if predefined_amount is not None:
            amount = max(amount, predefined_amount)
        step = Decimal(str(market["precision"]["amount"]))
        amount = (amount + float(step)) * 1.1
        return float(math.ceil(Decimal(str(amount)) / step) * step)

    def tco_debug(exchange: Any, symbol: str, message: str) -> bool:
        # ccxt's reads exchange['id'], and ccxt's Python exchanges are not subscriptable.
        print(f" >>>>> testCreateOrder [{exchange.id} : {symbol}] {message}")
        return True

    async def test_create_order(exchange: Any, skipped_properties: Any, symbol: str) -> bool:
        # ccxt's concatenates the float balances into a debug message (a TypeError in Python,
        # for every exchange) between its checks and its scenarios. Its checks (the asserts,
        # unchanged) and its two scenarios, in its order.
        log_prefix = test_shared_methods.log_template(exchange, "createOrder", [symbol])
        has_cancel_order = (exchange.has["cancelOrder"] is not None) and (
            exchange.has["cancelOrder"] is not False
        )
        has_cancel_orders = (exchange.has["cancelOrders"] is not None) and (
            exchange.has["cancelOrders"] is not False
        )
        has_cancel_all_orders = (exchange.has["cancelAllOrders"] is not None) and (
            exchange.has["cancelAllOrders"] is not False
        )
        assert has_cancel_order or has_cancel_orders or has_cancel_all_orders, (
            log_prefix + " does not have cancelOrder|cancelOrders|canelAllOrders method, which "
            "is needed to make tests for `createOrder` method. Skipping the test..."
        )
        multiplier = 1.045
        market = exchange.market(symbol)
        is_swap_future = (market["swap"]) or (market["future"])
        has_fetch_balance = (exchange.has["fetchBalance"] is not None) and (
            exchange.has["fetchBalance"] is not False
        )
        assert has_fetch_balance, (
            log_prefix + " does not have fetchBalance() method, which is needed to make tests "
            "for `createOrder` method. Skipping the test..."
        )
        balance = await exchange.fetch_balance()
        initial_base_balance = balance[market["base"]]["free"]
        initial_quote_balance = balance[market["quote"]]["free"]
        assert initial_quote_balance is not None, (
            log_prefix + " - testing account not have balance of" + market["quote"] + " in "
            "fetchBalance() which is required to test"
        )
        tco_debug(
            exchange,
            symbol,
            f"fetched balance for {symbol} : {initial_base_balance} {market['base']}/"
            f"{initial_quote_balance} {market['quote']}",
        )
        [best_bid, best_ask] = await test_shared_methods.fetch_best_bid_ask(
            exchange, "createOrder", symbol
        )
        for side in ("buy", "sell") if is_swap_future else ("buy",):
            await module.tco_create_unfillable_order(
                exchange,
                market,
                log_prefix,
                skipped_properties,
                best_bid,
                best_ask,
                multiplier,
                side,
            )
        for side in ("buy", "sell") if is_swap_future else ("buy",):
            await module.tco_create_fillable_order(
                exchange,
                market,
                log_prefix,
                skipped_properties,
                best_bid,
                best_ask,
                multiplier,
                side,
            )
        return True

    monkeypatch.setattr(module, "tco_debug", tco_debug)
    monkeypatch.setattr(module, "test_create_order", test_create_order)
    monkeypatch.setattr(module, "tco_create_order_safe", tco_create_order_safe)
    monkeypatch.setattr(
        module, "tco_get_minimum_amount_for_limit_price", tco_get_minimum_amount_for_limit_price
    )
    return module


# ---------------------------------------------------------------------- markets & public data


async def test_ccxt_load_markets(exchange: ccxt_async.binance) -> None:
    await ccxt_test("loadMarkets")(exchange, NO_SKIPS)


async def test_ccxt_fetch_markets(exchange: ccxt_async.binance) -> None:
    class ListAsDict:
        # ccxt's Python fetchMarkets test treats the result as a dict (a JavaScript array is an
        # object keyed by index), but fetch_markets returns a list in Python, for every
        # exchange. Hand the test the list keyed by position, which is what it indexes by.
        def __getattr__(self, name: str) -> Any:
            return getattr(exchange, name)

        async def fetch_markets(self, params: dict[str, Any] | None = None) -> dict[int, Any]:
            return dict(enumerate(await exchange.fetch_markets(params or {})))

    await ccxt_test("fetchMarkets")(ListAsDict(), NO_SKIPS)


async def test_ccxt_fetch_ticker(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    await ccxt_test("fetchTicker")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_tickers(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    await ccxt_test("fetchTickers")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_last_prices(exchange: ccxt_async.binance) -> None:
    await ccxt_test("fetchLastPrices")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_order_book(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    await ccxt_test("fetchOrderBook")(exchange, ORDER_BOOK_SKIPS, BTC)


async def test_ccxt_fetch_l2_order_book(
    exchange: ccxt_async.binance, traded: dict[str, Any]
) -> None:
    await ccxt_test("fetchL2OrderBook")(exchange, ORDER_BOOK_SKIPS, BTC)


async def test_ccxt_fetch_trades(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    assert await exchange.fetch_trades(BTC), "the public tape shows the account's fills"
    await ccxt_test("fetchTrades")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_ohlcv(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    assert await exchange.fetch_ohlcv(BTC, "1m"), "the candle the market started in"
    await ccxt_test("fetchOHLCV")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_status(exchange: ccxt_async.binance) -> None:
    await ccxt_test("fetchStatus")(exchange, NO_SKIPS)
    assert (await exchange.fetch_status())["status"] == "ok"


async def test_ccxt_fetch_time(exchange: ccxt_async.binance) -> None:
    # No fetchTime test in ccxt (its runner lists the method and finds no file): ccxt's
    # timestamp assertion on the answer instead.
    server_time = await exchange.fetch_time()
    test_shared_methods.assert_timestamp(
        exchange, NO_SKIPS, "fetchTime", {"timestamp": server_time}, exchange.milliseconds()
    )


# ---------------------------------------------------------------------- account & orders


async def test_ccxt_fetch_trading_fee(exchange: ccxt_async.binance) -> None:
    await ccxt_test("fetchTradingFee")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_trading_fees(exchange: ccxt_async.binance) -> None:
    await ccxt_test("fetchTradingFees")(exchange, NO_SKIPS)


async def test_ccxt_fetch_balance(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    await ccxt_test("fetchBalance")(exchange, NO_SKIPS)


async def test_ccxt_create_order(
    exchange: ccxt_async.binance, ccxt_create_order_helpers: ModuleType, sim: SimServer
) -> None:
    await ccxt_create_order_helpers.test_create_order(exchange, NO_SKIPS, BTC)
    # Its scenarios: a resting buy canceled, a crossing buy filled and a market sell closing it.
    statuses = sorted(str(o.status) for o in sim.exchange.orders.values())
    assert statuses == ["CANCELED", "FILLED", "FILLED"]


async def test_ccxt_fetch_order(
    exchange: ccxt_async.binance, ccxt_create_order_helpers: ModuleType, traded: dict[str, Any]
) -> None:
    for name, state in (("resting", "open"), ("taker", "closed"), ("canceled", "canceled")):
        order_id = traded[name]["id"]
        fetched = await test_shared_methods.fetch_order(exchange, BTC, order_id, NO_SKIPS)
        assert fetched is not None and fetched["id"] == order_id
        validate_order(exchange, NO_SKIPS, "fetchOrder", fetched, BTC, exchange.milliseconds())
        test_shared_methods.assert_order_state(
            exchange, NO_SKIPS, "fetchOrder", fetched, state, True
        )


async def test_ccxt_cancel_order(
    exchange: ccxt_async.binance, ccxt_create_order_helpers: ModuleType
) -> None:
    module = ccxt_create_order_helpers
    [best_bid, best_ask] = await test_shared_methods.fetch_best_bid_ask(
        exchange, "cancelOrder", BTC
    )
    # ccxt's first createOrder scenario (an unfillable buy, fetched, then canceled with
    # cancelOrder), then the canceled order as fetchOrder sees it.
    await module.tco_create_unfillable_order(
        exchange, exchange.market(BTC), "cancelOrder", NO_SKIPS, best_bid, best_ask, 1.045, "buy"
    )
    [canceled] = await exchange.fetch_orders(BTC)
    validate_order(exchange, NO_SKIPS, "cancelOrder", canceled, BTC, exchange.milliseconds())
    test_shared_methods.assert_order_state(
        exchange, NO_SKIPS, "cancelOrder", canceled, "canceled", True
    )
    # cancelOrder's own answer on another one, with ccxt's cancel step and order validator.
    resting = await exchange.create_order(BTC, "limit", "buy", 0.001, 25000)
    await module.tco_cancel_order(exchange, BTC, resting["id"])
    fetched = await exchange.fetch_order(resting["id"], BTC)
    test_shared_methods.assert_order_state(
        exchange, NO_SKIPS, "cancelOrder", fetched, "canceled", True
    )


async def test_ccxt_fetch_open_orders(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    assert [o["id"] for o in await exchange.fetch_open_orders(BTC)] == [traded["resting"]["id"]]
    await ccxt_test("fetchOpenOrders")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_closed_orders(
    exchange: ccxt_async.binance, traded: dict[str, Any]
) -> None:
    # ccxt's binance emulates it from allOrders, keeping status "closed" (not "canceled").
    assert len(await exchange.fetch_closed_orders(BTC)) == 2
    await ccxt_test("fetchClosedOrders")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_orders(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    assert len(await exchange.fetch_orders(BTC)) == 4
    await ccxt_test("fetchOrders")(exchange, NO_SKIPS, BTC)


async def test_ccxt_fetch_my_trades(exchange: ccxt_async.binance, traded: dict[str, Any]) -> None:
    await ccxt_test("fetchMyTrades")(exchange, NO_SKIPS, BTC)
