"""Helpers for the user-data stream tests: waiting on ccxt.pro watches, a raw WebSocket API
client (Binance's signature written out independently of the sim's)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import ccxt.pro as ccxt_pro

from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, SimServer

T = TypeVar("T")

WS_API_PATH = "/ws-api/v3"


async def subscribe(pro: ccxt_pro.binance) -> None:
    """Subscribe the client's user-data stream now, the way a consumer does: a watch_orders call
    (which also readies ccxt's balance cache: an account event that reaches ccxt.pro's binance
    before any watch_* call raises KeyError inside ccxt and stops its reading), then the
    subscription it sent, confirmed."""
    pending = asyncio.ensure_future(pro.watch_orders())
    # Left pending: close() rejects it; retrieve that so asyncio does not warn.
    pending.add_done_callback(lambda f: f.cancelled() or f.exception())
    await pro.authenticate({"type": "spot"})


async def until(
    watch: Callable[[], Awaitable[Any]], check: Callable[[], T | None], within: float = 5.0
) -> T:
    """Keep a ccxt.pro `watch` pending until `check()` (which reads ccxt's caches) answers.

    Polls as well as waiting, so an update that lands between two watch calls is not missed;
    an error of the watch (a lost connection, a terminated stream) is raised.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    task: asyncio.Future[Any] | None = None
    try:
        while (found := check()) is None:
            if task is None or task.done():
                if task is not None:
                    task.result()
                task = asyncio.ensure_future(watch())
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError("the stream did not show it in time")
            await asyncio.wait({task}, timeout=min(0.05, remaining))
        return found
    finally:
        if task is not None and not task.done():
            task.cancel()


def cached_order(pro: ccxt_pro.binance, order_id: str, **expected: Any) -> dict[str, Any] | None:
    """The order as ccxt's watch_orders cache has it, once its fields are `expected`."""
    for order in pro.orders or []:
        if order["id"] == order_id and all(order[k] == v for k, v in expected.items()):
            return order
    return None


def sign_ws(params: dict[str, Any], secret: str) -> dict[str, Any]:
    """Binance's WebSocket API signature: params sorted by name, `name=value` joined by `&`."""
    payload = "&".join(f"{name}={params[name]}" for name in sorted(params))
    signature = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return {**params, "signature": signature}


def ws_url(sim: SimServer) -> str:
    return sim.base_url.replace("http://", "ws://") + WS_API_PATH


async def request(
    ws: aiohttp.ClientWebSocketResponse, method: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Send one WebSocket API request and return its answer (events before it are skipped)."""
    request_id = f"req-{time.monotonic_ns()}"
    message: dict[str, Any] = {"id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    await ws.send_json(message)
    while True:
        answer = await ws.receive_json(timeout=5)
        if answer.get("id") == request_id:
            return answer


async def subscribe_raw(
    ws: aiohttp.ClientWebSocketResponse, api_key: str = DEMO_API_KEY, secret: str = DEMO_SECRET
) -> dict[str, Any]:
    params = sign_ws({"apiKey": api_key, "timestamp": int(time.time() * 1000)}, secret)
    return await request(ws, "userDataStream.subscribe.signature", params)


async def next_event(ws: aiohttp.ClientWebSocketResponse, within: float = 5.0) -> dict[str, Any]:
    """The next pushed event, unwrapped from `{"subscriptionId", "event"}`."""
    message = await ws.receive_json(timeout=within)
    assert set(message) == {"subscriptionId", "event"}, message
    return message["event"]
