"""The user-data stream of the sim's WebSocket API: ccxt.pro clients on it, and a raw socket.

`pro` is the real `ccxt.pro.binance` with only its URLs pointed at the sim
(`binance_pro_client`); `raw_stream` subscribes a plain aiohttp WebSocket, for checking the
wire itself (helpers in `stream_helpers`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import ccxt.pro as ccxt_pro
import pytest

from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, SimServer, binance_pro_client
from tests.sim.user_stream.stream_helpers import subscribe_raw, ws_url


@pytest.fixture
async def make_pro(sim: SimServer) -> AsyncIterator[Callable[..., ccxt_pro.binance]]:
    clients: list[ccxt_pro.binance] = []

    def make(
        api_key: str = DEMO_API_KEY, secret: str = DEMO_SECRET, **config: Any
    ) -> ccxt_pro.binance:
        config.setdefault("timeout_on_exit", 0)
        client = binance_pro_client(sim.base_url, api_key, secret, **config)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def pro(make_pro: Callable[..., ccxt_pro.binance]) -> ccxt_pro.binance:
    client = make_pro()
    await client.load_markets()
    return client


@pytest.fixture
async def raw_stream(sim: SimServer) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A plain WebSocket subscribed to the demo account's user-data stream."""
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(sim)) as ws:
        answer = await subscribe_raw(ws)
        assert answer["status"] == 200, answer
        yield ws


@pytest.fixture
async def ws_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
