"""The Binance spot REST endpoints ccxt's `binance` class uses, served from the engine."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from aiohttp import web

from exchange_kernel.sim import errors, params, wire
from exchange_kernel.sim.auth import authenticate, request_params
from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.faults import FAULT_KEY
from exchange_kernel.sim.model import (
    Account,
    CancelReplaceMode,
    Order,
    generate_client_order_id,
)
from exchange_kernel.sim.state import STATE, SimState

log = logging.getLogger(__name__)

ERROR_CODE_KEY = web.RequestKey("sim_error_code", int)

routes = web.RouteTableDef()

SignedHandler = Callable[[SimState, Account, params.Params], Awaitable[web.Response]]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


async def _raw(request: web.Request) -> tuple[str, str]:
    # The signature covers the bytes as sent, so read the undecoded query string and body.
    raw_query = request.rel_url.raw_query_string
    raw_body = (await request.read()).decode("utf-8", "replace") if request.can_read_body else ""
    return raw_query, raw_body


async def _public_params(request: web.Request) -> params.Params:
    return request_params(*await _raw(request))


def signed(handler: SignedHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Binance TRADE / USER_DATA security: the handler only runs for a verified account."""

    @wraps(handler)
    async def endpoint(request: web.Request) -> web.Response:
        state = request.app[STATE]
        raw_query, raw_body = await _raw(request)
        account = authenticate(
            state.exchange,
            request.headers.get("X-MBX-APIKEY"),
            raw_query,
            raw_body,
            state.now(),
        )
        return await handler(state, account, request_params(raw_query, raw_body))

    return endpoint


# ---------------------------------------------------------------------- middleware


@web.middleware
async def binance_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except BinanceError as exc:
        request[ERROR_CODE_KEY] = exc.code
        return _json(exc.body(), status=exc.http_status)
    except web.HTTPException:
        raise
    except Exception as exc:  # a sim bug must surface as an error answer, not a hang
        log.exception("sim failed on %s %s", request.method, request.path)
        request[ERROR_CODE_KEY] = -1000
        body = {
            "code": -1000,
            "msg": f"An unknown error occurred while processing the request. (sim: {exc!r})",
        }
        return _json(body, status=500)


@web.middleware
async def request_recorder(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/sim/"):
        return await handler(request)
    state = request.app[STATE]
    status: int | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        fault = request.get(FAULT_KEY)
        state.requests.record(
            time=state.now(),
            method=request.method,
            path=request.path,
            api_key=request.headers.get("X-MBX-APIKEY"),
            status=None if fault == "drop_response" else status,
            code=request.get(ERROR_CODE_KEY),
            fault=fault,
        )


# ---------------------------------------------------------------------- general & market data


@routes.get("/api/v3/ping")
async def ping(request: web.Request) -> web.Response:
    return _json({})


@routes.get("/api/v3/time")
async def server_time(request: web.Request) -> web.Response:
    return _json({"serverTime": request.app[STATE].now()})


@routes.get("/api/v3/exchangeInfo")
async def exchange_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    wanted = params.symbol_list(await _public_params(request))
    exchange = state.exchange
    specs = [exchange.spec(s) for s in wanted] if wanted else exchange.symbols
    return _json(wire.exchange_info(specs, state.now()))


@routes.get("/api/v3/depth")
async def depth(request: web.Request) -> web.Response:
    state = request.app[STATE]
    p = await _public_params(request)
    symbol = params.symbol(p)
    limit = params.limit(p, default=100, maximum=5000)
    return _json(wire.depth(state.exchange, symbol, limit, state.exchange.sequence + 1))


def _per_symbol(
    render: Callable[..., dict[str, Any]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Ticker endpoints: one object for `symbol`, a list for `symbols` or for no filter."""

    async def endpoint(request: web.Request) -> web.Response:
        state = request.app[STATE]
        p = await _public_params(request)
        wanted = params.symbol_list(p)
        exchange = state.exchange
        if wanted is None:
            return _json([render(exchange, spec.symbol) for spec in exchange.symbols])
        for symbol in wanted:
            exchange.spec(symbol)
        if params.text(p, "symbol") is not None:
            return _json(render(exchange, wanted[0]))
        return _json([render(exchange, symbol) for symbol in wanted])

    return endpoint


routes.get("/api/v3/ticker/price")(_per_symbol(wire.price_ticker))
routes.get("/api/v3/ticker/bookTicker")(_per_symbol(wire.book_ticker))
routes.get("/api/v3/ticker/24hr")(_per_symbol(wire.ticker_24hr))


@routes.get("/api/v3/aggTrades")
async def agg_trades(request: web.Request) -> web.Response:
    state = request.app[STATE]
    p = await _public_params(request)
    trades = state.exchange.public_trades(
        params.symbol(p),
        from_id=params.integer(p, "fromId"),
        start_time=params.integer(p, "startTime"),
        end_time=params.integer(p, "endTime"),
        limit=params.limit(p, default=500, maximum=1000),
    )
    return _json([wire.agg_trade(t) for t in trades])


@routes.get("/api/v3/trades")
async def recent_trades(request: web.Request) -> web.Response:
    state = request.app[STATE]
    p = await _public_params(request)
    trades = state.exchange.public_trades(
        params.symbol(p), limit=params.limit(p, default=500, maximum=1000)
    )
    return _json([wire.public_trade(t) for t in trades])


@routes.get("/api/v3/historicalTrades")
async def historical_trades(request: web.Request) -> web.Response:
    state = request.app[STATE]
    p = await _public_params(request)
    trades = state.exchange.public_trades(
        params.symbol(p),
        from_id=params.integer(p, "fromId"),
        limit=params.limit(p, default=500, maximum=1000),
    )
    return _json([wire.public_trade(t) for t in trades])


@routes.get("/api/v3/klines")
async def klines(request: web.Request) -> web.Response:
    state = request.app[STATE]
    p = await _public_params(request)
    symbol = params.symbol(p)
    interval = params.text(p, "interval", required=True)
    assert interval is not None
    candles = state.exchange.candles(
        symbol,
        interval,
        start_time=params.integer(p, "startTime"),
        end_time=params.integer(p, "endTime"),
        limit=params.limit(p, default=500, maximum=1000),
    )
    return _json([wire.kline(c) for c in candles])


@routes.get("/sapi/v1/system/status")
async def system_status(request: web.Request) -> web.Response:
    return _json({"status": 0, "msg": "normal"})


# ---------------------------------------------------------------------- trading


@routes.post("/api/v3/order")
@signed
async def new_order(state: SimState, account: Account, p: params.Params) -> web.Response:
    request = params.new_order(p)
    resp_type = params.response_type(p, request.type)
    placement = state.exchange.place_order(account.api_key, request)
    return _json(wire.new_order_response(placement.order, placement.fills, resp_type))


@routes.post("/api/v3/order/test")
@signed
async def test_order(state: SimState, account: Account, p: params.Params) -> web.Response:
    state.exchange.check_order(params.new_order(p))
    return _json({})


@routes.get("/api/v3/order")
@signed
async def query_order(state: SimState, account: Account, p: params.Params) -> web.Response:
    order_id, client_id = _order_ids(p)
    order = state.exchange.get_order(account.api_key, params.symbol(p), order_id, client_id)
    if state.faults.hides(order.time, state.now()):
        raise errors.order_does_not_exist()
    return _json(wire.query_order(order))


@routes.delete("/api/v3/order")
@signed
async def cancel_order(state: SimState, account: Account, p: params.Params) -> web.Response:
    symbol = params.symbol(p)
    order_id, client_id = _order_ids(p)
    cancel_id = params.client_order_id(p, "newClientOrderId") or generate_client_order_id()
    order = state.exchange.cancel_order(
        account.api_key, symbol, order_id, client_id, cancel_client_order_id=cancel_id
    )
    return _json(wire.cancel_response(order, cancel_id, order.update_time))


@routes.get("/api/v3/openOrders")
@signed
async def open_orders(state: SimState, account: Account, p: params.Params) -> web.Response:
    orders = state.exchange.open_orders(account.api_key, params.text(p, "symbol"))
    return _json([wire.query_order(o) for o in _visible(state, orders)])


@routes.get("/api/v3/allOrders")
@signed
async def all_orders(state: SimState, account: Account, p: params.Params) -> web.Response:
    orders = state.exchange.all_orders(
        account.api_key,
        params.symbol(p),
        order_id=params.integer(p, "orderId"),
        start_time=params.integer(p, "startTime"),
        end_time=params.integer(p, "endTime"),
        limit=params.limit(p, default=500, maximum=1000),
    )
    return _json([wire.query_order(o) for o in _visible(state, orders)])


@routes.delete("/api/v3/openOrders")
@signed
async def cancel_open_orders(state: SimState, account: Account, p: params.Params) -> web.Response:
    orders = state.exchange.cancel_open_orders(account.api_key, params.symbol(p))
    return _json([wire.cancel_response(o, o.cancel_client_order_id, o.update_time) for o in orders])


@routes.post("/api/v3/order/cancelReplace")
@signed
async def cancel_replace(state: SimState, account: Account, p: params.Params) -> web.Response:
    mode = params.enum(
        p,
        "cancelReplaceMode",
        CancelReplaceMode,
        errors.illegal_characters("cancelReplaceMode", "^(STOP_ON_FAILURE|ALLOW_FAILURE)$"),
        required=True,
    )
    assert mode is not None
    request = params.new_order(p)
    resp_type = params.response_type(p, request.type)
    cancel_order_id = params.integer(p, "cancelOrderId")
    cancel_client_id = params.text(p, "cancelOrigClientOrderId")
    cancel_new_id = params.client_order_id(p, "cancelNewClientOrderId") or (
        generate_client_order_id()
    )
    result = state.exchange.cancel_replace(
        account.api_key,
        request,
        cancel_order_id=cancel_order_id,
        cancel_client_order_id=cancel_client_id,
        mode=mode,
        cancel_new_client_order_id=cancel_new_id,
    )
    cancel_part: dict[str, Any] | None = None
    if result.canceled is not None:
        cancel_part = wire.cancel_response(
            result.canceled, cancel_new_id, result.canceled.update_time
        )
    elif result.cancel_error is not None:
        cancel_part = result.cancel_error.body()
    new_part: dict[str, Any] | None = None
    if result.placement is not None:
        new_part = wire.new_order_response(
            result.placement.order, result.placement.fills, resp_type
        )
    elif result.new_order_error is not None:
        new_part = result.new_order_error.body()
    data = {
        "cancelResult": result.cancel_result,
        "newOrderResult": result.new_order_result,
        "cancelResponse": cancel_part,
        "newOrderResponse": new_part,
    }
    if result.cancel_result == "SUCCESS" and result.new_order_result == "SUCCESS":
        return _json(data)
    if result.cancel_result == "FAILURE" and result.new_order_result != "SUCCESS":
        raise errors.cancel_replace_failed(data)
    raise errors.cancel_replace_partially_failed(data)


@routes.get("/api/v3/myTrades")
@signed
async def my_trades(state: SimState, account: Account, p: params.Params) -> web.Response:
    trades = state.exchange.my_trades(
        account.api_key,
        params.symbol(p),
        order_id=params.integer(p, "orderId"),
        start_time=params.integer(p, "startTime"),
        end_time=params.integer(p, "endTime"),
        from_id=params.integer(p, "fromId"),
        limit=params.limit(p, default=500, maximum=1000),
    )
    orders = state.exchange.orders
    now = state.now()
    visible = [t for t in trades if not state.faults.hides(orders[t.order_id].time, now)]
    return _json([wire.my_trade(t) for t in visible])


@routes.get("/api/v3/account")
@signed
async def account_info(state: SimState, account: Account, p: params.Params) -> web.Response:
    body = wire.account_info(account, state.exchange.fee_rate, state.now())
    if params.text(p, "omitZeroBalances") == "true":
        body["balances"] = [
            b for b in body["balances"] if b["free"] != wire.fmt(0) or b["locked"] != wire.fmt(0)
        ]
    return _json(body)


@routes.get("/sapi/v1/asset/tradeFee")
@signed
async def trade_fee(state: SimState, account: Account, p: params.Params) -> web.Response:
    exchange = state.exchange
    symbol = params.text(p, "symbol")
    specs = [exchange.spec(symbol)] if symbol is not None else exchange.symbols
    return _json([wire.trade_fee(spec, exchange.fee_rate) for spec in specs])


def _visible(state: SimState, orders: list[Order]) -> list[Order]:
    # The visibility_lag_ms fault: lookups do not see orders created within the lag.
    now = state.now()
    return [o for o in orders if not state.faults.hides(o.time, now)]


def _order_ids(p: params.Params) -> tuple[int | None, str | None]:
    order_id = params.integer(p, "orderId")
    client_id = params.text(p, "origClientOrderId")
    if order_id is None and client_id is None:
        raise errors.either_id_mandatory()
    return order_id, client_id


async def unsupported(request: web.Request) -> web.Response:
    raise errors.unsupported_operation(f"exchange_kernel.sim: {request.method} {request.path}")
