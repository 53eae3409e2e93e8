"""Binance's JSON shapes for engine objects.

Field names, presence and formatting (8-decimal strings, integer ids and millisecond times) follow
api.binance.com because ccxt's `parse_*` methods pick fields by name and some decide the market
type from which keys are present.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from exchange_kernel.sim.candles import Candle
from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.model import (
    MARKET_TYPES,
    STOP_TYPES,
    Account,
    BalanceAdjustment,
    BalancePosition,
    Execution,
    ExecutionType,
    Order,
    Side,
    TimeInForce,
    Trade,
)
from exchange_kernel.sim.symbols import ORDER_TYPES, SymbolSpec


def fmt(value: Decimal) -> str:
    return f"{value:.8f}"


def _base_order(order: Order) -> dict[str, Any]:
    return {
        "symbol": order.symbol,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": order.client_order_id,
    }


def _order_state(order: Order) -> dict[str, Any]:
    return {
        "price": fmt(order.price),
        "origQty": fmt(order.orig_qty),
        "executedQty": fmt(order.executed_qty),
        "origQuoteOrderQty": fmt(order.orig_quote_order_qty),
        "cummulativeQuoteQty": fmt(order.cummulative_quote_qty),
        "status": str(order.status),
        "timeInForce": str(order.time_in_force or "GTC"),
        "type": str(order.type),
        "side": str(order.side),
    }


def fill(trade: Trade) -> dict[str, Any]:
    return {
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "commission": fmt(trade.commission),
        "commissionAsset": trade.commission_asset,
        "tradeId": trade.trade_id,
    }


def new_order_response(order: Order, fills: list[Trade], resp_type: str) -> dict[str, Any]:
    """POST /api/v3/order answer for newOrderRespType ACK, RESULT or FULL."""
    body = _base_order(order)
    body["transactTime"] = order.time
    if resp_type == "ACK":
        return body
    body.update(_order_state(order))
    body["workingTime"] = order.working_time
    if order.type in STOP_TYPES:
        body["stopPrice"] = fmt(order.stop_price)
    body["selfTradePreventionMode"] = "NONE"
    if resp_type == "FULL":
        body["fills"] = [fill(t) for t in fills]
    return body


def query_order(order: Order) -> dict[str, Any]:
    """GET /api/v3/order and /api/v3/openOrders element."""
    body = _base_order(order)
    body.update(_order_state(order))
    body.update(
        {
            "stopPrice": fmt(order.stop_price),
            "icebergQty": fmt(Decimal(0)),
            "time": order.time,
            "updateTime": order.update_time,
            "isWorking": order.working_time >= 0,
            "workingTime": order.working_time,
            "selfTradePreventionMode": "NONE",
        }
    )
    return body


def cancel_response(
    order: Order, cancel_client_order_id: str, transact_time: int
) -> dict[str, Any]:
    """DELETE /api/v3/order answer.

    Binance puts the *cancel request's* id in `clientOrderId` and the order's own id in
    `origClientOrderId`; ccxt copies `clientOrderId`, so a parsed cancel result carries the
    cancel id, exactly as against the real exchange.
    """
    body: dict[str, Any] = {
        "symbol": order.symbol,
        "origClientOrderId": order.client_order_id,
        "orderId": order.order_id,
        "orderListId": -1,
        "clientOrderId": cancel_client_order_id,
        "transactTime": transact_time,
    }
    body.update(_order_state(order))
    if order.type in STOP_TYPES:
        body["stopPrice"] = fmt(order.stop_price)
    body["selfTradePreventionMode"] = "NONE"
    return body


def my_trade(trade: Trade) -> dict[str, Any]:
    """GET /api/v3/myTrades element."""
    return {
        "symbol": trade.symbol,
        "id": trade.trade_id,
        "orderId": trade.order_id,
        "orderListId": -1,
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "quoteQty": fmt(trade.quote_qty),
        "commission": fmt(trade.commission),
        "commissionAsset": trade.commission_asset,
        "time": trade.time,
        "isBuyer": trade.side == "BUY",
        "isMaker": trade.is_maker,
        "isBestMatch": True,
    }


def _buyer_is_maker(trade: Trade) -> bool:
    # The exchange is the other side of every fill: the buyer made the price when the account
    # bought as maker, or sold as taker into the exchange's bid.
    return (trade.side is Side.BUY) == trade.is_maker


def agg_trade(trade: Trade) -> dict[str, Any]:
    """GET /api/v3/aggTrades element: each fill is its own aggregate (one taker, one price)."""
    return {
        "a": trade.trade_id,
        "p": fmt(trade.price),
        "q": fmt(trade.qty),
        "f": trade.trade_id,
        "l": trade.trade_id,
        "T": trade.time,
        "m": _buyer_is_maker(trade),
        "M": True,
    }


def public_trade(trade: Trade) -> dict[str, Any]:
    """GET /api/v3/trades and /api/v3/historicalTrades element."""
    return {
        "id": trade.trade_id,
        "price": fmt(trade.price),
        "qty": fmt(trade.qty),
        "quoteQty": fmt(trade.quote_qty),
        "time": trade.time,
        "isBuyerMaker": _buyer_is_maker(trade),
        "isBestMatch": True,
    }


def kline(candle: Candle) -> list[Any]:
    """GET /api/v3/klines element, Binance's twelve columns."""
    return [
        candle.open_time,
        fmt(candle.open),
        fmt(candle.high),
        fmt(candle.low),
        fmt(candle.close),
        fmt(candle.volume),
        candle.close_time,
        fmt(candle.quote_volume),
        candle.count,
        fmt(candle.taker_buy_volume),
        fmt(candle.taker_buy_quote_volume),
        "0",
    ]


def trade_fee(spec: SymbolSpec, fee_rate: Decimal) -> dict[str, Any]:
    """GET /sapi/v1/asset/tradeFee element."""
    rate = f"{fee_rate.normalize():f}"
    return {"symbol": spec.symbol, "makerCommission": rate, "takerCommission": rate}


def account_info(account: Account, fee_rate: Decimal, now: int) -> dict[str, Any]:
    bps = int(fee_rate * 10000)
    return {
        "makerCommission": bps,
        "takerCommission": bps,
        "buyerCommission": 0,
        "sellerCommission": 0,
        "commissionRates": {
            "maker": fmt(fee_rate),
            "taker": fmt(fee_rate),
            "buyer": fmt(Decimal(0)),
            "seller": fmt(Decimal(0)),
        },
        "canTrade": True,
        "canWithdraw": False,
        "canDeposit": False,
        "brokered": False,
        "requireSelfTradePrevention": False,
        "preventSor": False,
        "updateTime": now,
        "accountType": "SPOT",
        "balances": [
            {"asset": asset, "free": fmt(bal.free), "locked": fmt(bal.locked)}
            for asset, bal in account.balances.items()
        ],
        "permissions": ["SPOT"],
    }


def symbol_info(spec: SymbolSpec) -> dict[str, Any]:
    return {
        "symbol": spec.symbol,
        "status": "TRADING",
        "baseAsset": spec.base,
        "baseAssetPrecision": 8,
        "quoteAsset": spec.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(ORDER_TYPES),
        "icebergAllowed": False,
        "ocoAllowed": False,
        "otoAllowed": False,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": False,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": fmt(spec.min_price),
                "maxPrice": fmt(spec.max_price),
                "tickSize": fmt(spec.tick_size),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": fmt(spec.min_qty),
                "maxQty": fmt(spec.max_qty),
                "stepSize": fmt(spec.step_size),
            },
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": fmt(Decimal(0)),
                "maxQty": fmt(spec.market_max_qty),
                "stepSize": fmt(Decimal(0)),
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": fmt(spec.min_notional),
                "applyMinToMarket": True,
                "maxNotional": fmt(spec.max_notional),
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def exchange_info(specs: list[SymbolSpec], now: int) -> dict[str, Any]:
    return {
        "timezone": "UTC",
        "serverTime": now,
        "rateLimits": [
            {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": 6000,
            },
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
        ],
        "exchangeFilters": [],
        "symbols": [symbol_info(spec) for spec in specs],
    }


def depth(exchange: Exchange, symbol: str, limit: int, update_id: int) -> dict[str, Any]:
    bids, asks = exchange.book(symbol, limit)
    return {
        "lastUpdateId": update_id,
        "bids": [[fmt(p), fmt(q)] for p, q in bids],
        "asks": [[fmt(p), fmt(q)] for p, q in asks],
    }


def book_ticker(exchange: Exchange, symbol: str) -> dict[str, Any]:
    bids, asks = exchange.book(symbol, 1)
    return {
        "symbol": symbol,
        "bidPrice": fmt(bids[0][0]),
        "bidQty": fmt(bids[0][1]),
        "askPrice": fmt(asks[0][0]),
        "askQty": fmt(asks[0][1]),
    }


def price_ticker(exchange: Exchange, symbol: str) -> dict[str, Any]:
    return {"symbol": symbol, "price": fmt(exchange.last_price(symbol))}


def ticker_24hr(exchange: Exchange, symbol: str) -> dict[str, Any]:
    stats = exchange.stats_24h(symbol)
    change = stats.last - stats.open
    percent = (change / stats.open * 100).quantize(Decimal("0.001"))
    vwap = stats.quote_volume / stats.volume if stats.volume else stats.last
    body = book_ticker(exchange, symbol)
    # No "time" key: ccxt treats a ticker carrying "time" as a contract ticker.
    return {
        "symbol": symbol,
        "priceChange": fmt(change),
        "priceChangePercent": f"{percent}",
        "weightedAvgPrice": fmt(vwap),
        "prevClosePrice": fmt(stats.open),
        "lastPrice": fmt(stats.last),
        "lastQty": fmt(stats.last_qty),
        "bidPrice": body["bidPrice"],
        "bidQty": body["bidQty"],
        "askPrice": body["askPrice"],
        "askQty": body["askQty"],
        "openPrice": fmt(stats.open),
        "highPrice": fmt(stats.high),
        "lowPrice": fmt(stats.low),
        "volume": fmt(stats.volume),
        "quoteVolume": fmt(stats.quote_volume),
        "openTime": stats.open_time,
        "closeTime": stats.close_time,
        "firstId": stats.first_trade_id,
        "lastId": stats.last_trade_id,
        "count": stats.count,
    }


# ---------------------------------------------------------------------- user-data stream events


def _on_book(order: Order) -> bool:
    """`w`: the order rests (or is about to rest) on the book. MARKET (a triggered STOP_LOSS
    or TAKE_PROFIT too), IOC and FOK orders never rest; a stop-limit rests once triggered; a
    finished order no longer does."""
    return (
        order.is_working
        and order.type not in MARKET_TYPES
        and order.time_in_force not in (TimeInForce.IOC, TimeInForce.FOK)
    )


def execution_report(execution: Execution) -> dict[str, Any]:
    """The `executionReport` event, Binance spot's field names and types.

    A cancel reports the cancel request's id in `c` and the order's own id in `C` (ccxt takes
    `C` when it is not empty); otherwise `C` is empty.
    """
    order = execution.order
    trade = execution.trade
    canceled = execution.execution_type is ExecutionType.CANCELED
    zero = fmt(Decimal(0))
    body: dict[str, Any] = {
        "e": "executionReport",
        "E": execution.time,
        "s": order.symbol,
        "c": order.cancel_client_order_id if canceled else order.client_order_id,
        "S": str(order.side),
        "o": str(order.type),
        "f": str(order.time_in_force or "GTC"),
        "q": fmt(order.orig_qty),
        "p": fmt(order.price),
        "P": fmt(order.stop_price),
        "F": zero,
        "g": -1,
        "C": order.client_order_id if canceled else "",
        "x": str(execution.execution_type),
        "X": str(order.status),
        "r": execution.reject_reason,
        "i": order.order_id,
        "l": fmt(trade.qty) if trade else zero,
        "z": fmt(order.executed_qty),
        "L": fmt(trade.price) if trade else zero,
        "n": fmt(trade.commission) if trade else "0",
        "N": trade.commission_asset if trade else None,
        "T": trade.time if trade else execution.time,
        "t": trade.trade_id if trade else -1,
        "I": execution.execution_id,
        "w": _on_book(order),
        "m": trade.is_maker if trade else False,
        "M": trade is not None,
        "O": order.time,
        "Z": fmt(order.cummulative_quote_qty),
        "Y": fmt(trade.quote_qty) if trade else zero,
        "Q": fmt(order.orig_quote_order_qty),
    }
    # Binance sends the working time only once the order is on the book.
    if order.working_time >= 0:
        body["W"] = order.working_time
    body["V"] = "NONE"
    return body


def outbound_account_position(position: BalancePosition) -> dict[str, Any]:
    """The `outboundAccountPosition` event: the assets a change touched, free and locked."""
    return {
        "e": "outboundAccountPosition",
        "E": position.time,
        "u": position.time,
        "B": [
            {"a": asset, "f": fmt(free), "l": fmt(locked)}
            for asset, free, locked in position.balances
        ],
    }


def balance_update(adjustment: BalanceAdjustment) -> dict[str, Any]:
    """The `balanceUpdate` event: a change that is no trade (a deposit, here the operator)."""
    return {
        "e": "balanceUpdate",
        "E": adjustment.time,
        "a": adjustment.asset,
        "d": fmt(adjustment.delta),
        "T": adjustment.time,
    }


def event_stream_terminated(now: int) -> dict[str, Any]:
    return {"e": "eventStreamTerminated", "E": now}
