"""Operator API under `/sim/v1/` (no auth): move prices, inject faults, inspect everything.

Amounts are decimal strings; times are epoch milliseconds; `seq` numbers (one counter for the
whole exchange) order events that share a millisecond.

    POST /sim/v1/price     {"symbol", "price", "volume"?, "taker_liquidity"?}
                           -> {"symbol", "price", "trades": [trade]}
    GET  /sim/v1/prices    -> {"BTCUSDT": "30000", ...}
    GET  /sim/v1/faults    -> fault profile + {"injected": {fault: count}}
    POST /sim/v1/faults    {"error_500", "error_503", "rate_limit_429", "retry_after",
                            "drop_response", "latency_ms": [min, max], "seed", "endpoints",
                            "api_keys", "max_faults", "visibility_lag_ms", "stream_disconnect",
                            "stream_terminate", "stream_drop_event",
                            "stream_delay_ms": [min, max]}  (replaces the profile; omitted =
                           off; visibility_lag_ms and stream_*: see exchange_kernel.sim.faults)
    GET  /sim/v1/orders    ?account=&symbol=&status=  -> {"orders": [order]}
                           (&count=1 -> {"count": n}: how many, without them)
    GET  /sim/v1/trades    ?account=&symbol=          -> {"trades": [trade]}
    GET  /sim/v1/balances  -> {"accounts": {key: {asset: {free, locked}}},
                               "fees_collected": {asset: amt}, "counterparty": {asset: amt}}
    POST /sim/v1/balances  {"account": api key, "balances": {asset: amount}}
                           -> {"account", "balances": {asset: {free, locked}}}
                           (sets those assets' free balances, the others untouched; the
                           difference comes from the counterparty; reset goes back to the
                           balances the sim started with)
    GET  /sim/v1/requests  ?limit=  -> {"total", "counts": {"METHOD /path": n}, "recent": [...]}
    POST /sim/v1/reset     -> {"ok": true}  (also ends every user-data stream:
                           eventStreamTerminated, then the connection closes)

order: order_id, client_order_id, account, symbol, side, type, time_in_force, status, price,
       stop_price, amount, filled, cost, created_at, updated_at, working_time, opened_seq,
       closed_seq, closed_at, history [{status, time, seq}], trade_ids
trade: trade_id, order_id, client_order_id, account, symbol, side, price, qty, quote_qty, fee,
       fee_asset, is_maker, time
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.faults import FaultConfig
from exchange_kernel.sim.model import Order, Trade
from exchange_kernel.sim.state import STATE

routes = web.RouteTableDef()


def _num(value: Decimal) -> str:
    return f"{value:f}"


def order_json(order: Order) -> dict[str, Any]:
    history = [{"status": str(h.status), "time": h.time, "seq": h.seq} for h in order.history]
    closed = None if order.is_open else order.history[-1]
    return {
        "order_id": order.order_id,
        "client_order_id": order.client_order_id,
        "account": order.account,
        "symbol": order.symbol,
        "side": str(order.side),
        "type": str(order.type),
        "time_in_force": str(order.time_in_force) if order.time_in_force else None,
        "status": str(order.status),
        "price": _num(order.price),
        "stop_price": _num(order.stop_price),
        "amount": _num(order.orig_qty),
        "filled": _num(order.executed_qty),
        "cost": _num(order.cummulative_quote_qty),
        "created_at": order.time,
        "updated_at": order.update_time,
        "working_time": order.working_time,
        # The window in which the order was live on the book: [opened_seq, closed_seq].
        "opened_seq": order.history[0].seq,
        "closed_seq": closed.seq if closed else None,
        "closed_at": closed.time if closed else None,
        "history": history,
        "trade_ids": list(order.trade_ids),
    }


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "trade_id": trade.trade_id,
        "order_id": trade.order_id,
        "client_order_id": trade.client_order_id,
        "account": trade.account,
        "symbol": trade.symbol,
        "side": str(trade.side),
        "price": _num(trade.price),
        "qty": _num(trade.qty),
        "quote_qty": _num(trade.quote_qty),
        "fee": _num(trade.commission),
        "fee_asset": trade.commission_asset,
        "is_maker": trade.is_maker,
        "time": trade.time,
    }


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _decimal(body: dict[str, Any], name: str, *, required: bool = False) -> Decimal | None:
    raw = body.get(name)
    if raw is None:
        if required:
            raise _bad(f"{name} is required")
        return None
    try:
        return Decimal(str(raw))
    except InvalidOperation:
        raise _bad(f"{name} is not a number") from None


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _bad("body must be JSON") from None
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    return body


@routes.post("/sim/v1/price")
async def set_price(request: web.Request) -> web.Response:
    """`{"symbol", "price", "volume"?, "taker_liquidity"?}` -> the trades the move caused."""
    exchange = request.app[STATE].exchange
    body = await _body(request)
    symbol = body.get("symbol")
    if not isinstance(symbol, str):
        raise _bad("symbol is required")
    price = _decimal(body, "price", required=True)
    assert price is not None
    volume = _decimal(body, "volume")
    try:
        if "taker_liquidity" in body:
            exchange.set_taker_liquidity(symbol, _decimal(body, "taker_liquidity"))
        trades = exchange.set_price(symbol, price, volume)
    except BinanceError as exc:
        raise _bad(exc.msg) from None
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return web.json_response(
        {"symbol": symbol, "price": _num(price), "trades": [trade_json(t) for t in trades]}
    )


@routes.get("/sim/v1/prices")
async def prices(request: web.Request) -> web.Response:
    exchange = request.app[STATE].exchange
    return web.json_response({sym: _num(market.last) for sym, market in exchange.markets.items()})


@routes.get("/sim/v1/faults")
async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].faults.to_json())


@routes.post("/sim/v1/faults")
async def set_faults(request: web.Request) -> web.Response:
    """Replace the whole fault profile; omitted settings go back to their (off) defaults."""
    faults = request.app[STATE].faults
    try:
        faults.configure(FaultConfig.from_json(await _body(request)))
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    return web.json_response(faults.to_json())


@routes.get("/sim/v1/orders")
async def orders(request: web.Request) -> web.Response:
    """Every order ever placed, oldest first; optional filters `account`, `symbol`, `status`."""
    exchange = request.app[STATE].exchange
    q = request.query
    selected = [
        o
        for o in exchange.orders.values()
        if ("account" not in q or o.account == q["account"])
        and ("symbol" not in q or o.symbol == q["symbol"])
        and ("status" not in q or o.status == q["status"])
    ]
    if q.get("count") == "1":
        return web.json_response({"count": len(selected)})
    return web.json_response({"orders": [order_json(o) for o in selected]})


@routes.get("/sim/v1/trades")
async def trades(request: web.Request) -> web.Response:
    exchange = request.app[STATE].exchange
    q = request.query
    selected = [
        t
        for t in exchange.trades
        if ("account" not in q or t.account == q["account"])
        and ("symbol" not in q or t.symbol == q["symbol"])
    ]
    return web.json_response({"trades": [trade_json(t) for t in selected]})


@routes.get("/sim/v1/balances")
async def balances(request: web.Request) -> web.Response:
    exchange = request.app[STATE].exchange
    return web.json_response(
        {
            "accounts": {
                key: {
                    asset: {"free": _num(b.free), "locked": _num(b.locked)}
                    for asset, b in account.balances.items()
                }
                for key, account in exchange.accounts.items()
            },
            "fees_collected": {a: _num(v) for a, v in exchange.fees_collected.items()},
            "counterparty": {a: _num(v) for a, v in exchange.counterparty.items()},
        }
    )


@routes.post("/sim/v1/balances")
async def set_balances(request: web.Request) -> web.Response:
    exchange = request.app[STATE].exchange
    body = await _body(request)
    key = body.get("account")
    if not isinstance(key, str):
        raise _bad("account (an API key) is required")
    raw = body.get("balances")
    if not isinstance(raw, dict) or not raw:
        raise _bad('balances must be an object like {"USDT": "1000"}')
    amounts: dict[str, Decimal] = {}
    for asset in raw:
        amount = _decimal(raw, asset, required=True)
        assert amount is not None
        if not amount.is_finite():
            raise _bad(f"{asset} is not a number")
        amounts[str(asset).upper()] = amount
    try:
        account = exchange.set_balances(key, amounts)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return web.json_response(
        {
            "account": key,
            "balances": {
                asset: {"free": _num(b.free), "locked": _num(b.locked)}
                for asset, b in account.balances.items()
            },
        }
    )


@routes.get("/sim/v1/requests")
async def requests(request: web.Request) -> web.Response:
    raw_limit = request.query.get("limit")
    try:
        limit = int(raw_limit) if raw_limit is not None else None
    except ValueError:
        raise _bad("limit must be an integer") from None
    return web.json_response(request.app[STATE].requests.to_json(limit))


@routes.post("/sim/v1/reset")
async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})
