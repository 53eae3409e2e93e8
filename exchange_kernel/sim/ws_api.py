"""Binance's spot WebSocket API (`/ws-api/v3`), the part that carries the user-data stream.

Requests are JSON `{"id", "method", "params"}`; every answer carries the request's `id`, a
`status` (200, or the HTTP status Binance gives the error), `result` or `error`, and
`rateLimits`. Methods served:

    userDataStream.subscribe.signature  {apiKey, timestamp, signature, recvWindow?}
                                        -> {"subscriptionId": n}; the account's events follow
    userDataStream.unsubscribe          {subscriptionId?} -> {}; eventStreamTerminated for each
                                        subscription ended (all of them without an id)
    session.subscriptions               -> [{"subscriptionId": n}, ...]
    ping                                -> {}
    time                                -> {"serverTime": ms}

The signature is Binance's WebSocket API HMAC-SHA256 (`exchange_kernel.sim.auth.authenticate_ws`)
with the account's REST key and secret: what ccxt.pro's binance sends from `watch_orders`,
`watch_my_trades` and `watch_balance`. Anything else answers -1020 (not supported). Events are
pushed by `exchange_kernel.sim.user_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from exchange_kernel.sim import errors
from exchange_kernel.sim.auth import authenticate_ws
from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.state import STATE, SimState
from exchange_kernel.sim.user_stream import StreamConnection

PATH = "/ws-api/v3"

routes = web.RouteTableDef()

Method = Callable[[SimState, StreamConnection, dict[str, Any]], Any]

# Binance's request weights of the methods served (userDataStream.subscribe.signature: 2).
_WEIGHTS = {"userDataStream.subscribe.signature": 2, "userDataStream.unsubscribe": 2}


@routes.get(PATH)
async def websocket_api(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse()
    if not ws.can_prepare(request).ok:
        raise errors.unsupported_operation(f"{PATH} is a WebSocket endpoint")
    await ws.prepare(request)
    connection = StreamConnection(ws, request.transport)
    state.streams.connections.add(connection)
    writer = asyncio.create_task(connection.write())
    try:
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                connection.send(answer(state, connection, message.data))
            elif message.type is WSMsgType.BINARY:
                error = errors.malformed_request("binary frames are not supported")
                connection.send(_error(None, error))
    finally:
        state.streams.connections.discard(connection)
        connection.closing = True
        # Let a pending close finish its handshake; anything else has lost its reader.
        if not writer.done():
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return ws


def answer(state: SimState, connection: StreamConnection, text: str) -> dict[str, Any]:
    """The answer to one request frame."""
    try:
        request = json.loads(text)
    except ValueError:
        return _error(None, errors.malformed_request("not JSON"))
    if not isinstance(request, dict):
        return _error(None, errors.malformed_request("not a JSON object"))
    request_id = request.get("id")
    method_name = request.get("method")
    params = request.get("params", {})
    if not isinstance(params, dict):
        return _error(request_id, errors.malformed_request("params must be an object"))
    method = _METHODS.get(method_name) if isinstance(method_name, str) else None
    if method is None:
        error = errors.unsupported_operation(f"exchange_kernel.sim: ws-api {method_name!r}")
        return _error(request_id, error)
    try:
        result = method(state, connection, params)
    except BinanceError as exc:
        return _error(request_id, exc)
    return {
        "id": request_id,
        "status": 200,
        "result": result,
        "rateLimits": _rate_limits(_WEIGHTS.get(method_name, 1)),
    }


def _error(request_id: Any, error: BinanceError) -> dict[str, Any]:
    return {
        "id": request_id,
        "status": error.http_status,
        "error": error.body(),
        "rateLimits": _rate_limits(1),
    }


def _rate_limits(count: int) -> list[dict[str, Any]]:
    return [
        {
            "rateLimitType": "REQUEST_WEIGHT",
            "interval": "MINUTE",
            "intervalNum": 1,
            "limit": 6000,
            "count": count,
        }
    ]


def _subscribe_signature(
    state: SimState, connection: StreamConnection, params: dict[str, Any]
) -> dict[str, Any]:
    account = authenticate_ws(state.exchange, params, state.now())
    return {"subscriptionId": connection.subscribe(account.api_key)}


def _unsubscribe(
    state: SimState, connection: StreamConnection, params: dict[str, Any]
) -> dict[str, Any]:
    wanted = params.get("subscriptionId")
    if wanted is None:
        ids = list(connection.subscriptions)
    elif isinstance(wanted, int) and wanted in connection.subscriptions:
        ids = [wanted]
    else:
        raise errors.subscription_not_active()
    for subscription_id in ids:
        state.streams.end(connection, subscription_id)
    return {}


def _subscriptions(
    state: SimState, connection: StreamConnection, params: dict[str, Any]
) -> list[dict[str, int]]:
    return [{"subscriptionId": n} for n in connection.subscriptions]


def _ping(state: SimState, connection: StreamConnection, params: dict[str, Any]) -> dict[str, Any]:
    return {}


def _time(state: SimState, connection: StreamConnection, params: dict[str, Any]) -> dict[str, Any]:
    return {"serverTime": state.now()}


_METHODS: dict[str, Method] = {
    "userDataStream.subscribe.signature": _subscribe_signature,
    "userDataStream.unsubscribe": _unsubscribe,
    "session.subscriptions": _subscriptions,
    "ping": _ping,
    "time": _time,
}
