"""Stream faults (POST /sim/v1/faults `stream_*`) as the ccxt.pro client and the wire see them."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest

from exchange_kernel.sim import SimServer
from exchange_kernel.sim.admin_client import AdminClient, SimAdminError
from tests.sim.user_stream.stream_helpers import cached_order, next_event, subscribe, until

BTC = "BTC/USDT"


async def test_a_disconnect_loses_the_event_and_ccxt_subscribes_again(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient, sim: SimServer
) -> None:
    await subscribe(pro)
    watch = asyncio.ensure_future(pro.watch_orders())
    await admin.set_faults(stream_disconnect=1.0, max_faults=1)
    lost = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_pro.NetworkError):
        await asyncio.wait_for(watch, 5)
    assert (await admin.faults())["injected"] == {"stream_disconnect": 1}

    # The next watch connects and subscribes again; later events arrive, the lost one never.
    # Nobody is subscribed between the drop and the next watch: this NEW goes nowhere either.
    later = await client.create_order(BTC, "limit", "buy", 0.01, 28000)
    await subscribe(pro)
    await client.cancel_order(later["id"], BTC)
    order = await until(pro.watch_orders, lambda: cached_order(pro, later["id"]))
    assert order["status"] == "canceled"
    assert cached_order(pro, lost["id"]) is None
    assert len(sim.state.streams.connections) == 1


async def test_a_disconnect_drops_the_connection_without_a_close_frame(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(stream_disconnect=1.0)
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    message = await raw_stream.receive(timeout=5)
    assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_a_dropped_event_is_missing_and_the_stream_goes_on(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    await admin.set_faults(stream_drop_event=1.0, max_faults=1)
    dropped = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    kept = await client.create_order(BTC, "limit", "buy", 0.01, 28000)
    assert await until(pro.watch_orders, lambda: cached_order(pro, kept["id"]))
    # Only the first order's NEW was dropped: its balance update still came.
    assert cached_order(pro, dropped["id"]) is None
    assert (await admin.faults())["injected"] == {"stream_drop_event": 1}
    await client.cancel_order(dropped["id"], BTC)
    assert await until(
        pro.watch_orders, lambda: cached_order(pro, dropped["id"], status="canceled")
    )


async def test_delayed_events_arrive_late_and_in_order(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(stream_delay_ms=[0, 300], seed=7)
    started = time.monotonic()
    ids = [
        int((await client.create_order(BTC, "limit", "buy", 0.01, 29000 - i))["id"])
        for i in range(3)
    ]
    events = [await next_event(raw_stream) for _ in range(6)]
    reports = [e["i"] for e in events if e["e"] == "executionReport"]
    assert reports == ids
    await admin.set_faults(stream_delay_ms=[400, 400])
    sent = time.monotonic()
    await client.create_order(BTC, "limit", "buy", 0.01, 27000)
    await next_event(raw_stream)
    assert time.monotonic() - sent >= 0.35
    assert sent - started < 5


async def test_terminate_sends_event_stream_terminated_then_closes(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(stream_terminate=1.0)
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    terminated = await next_event(raw_stream)
    assert set(terminated) == {"e", "E"} and terminated["e"] == "eventStreamTerminated"
    closing = await raw_stream.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert (await admin.faults())["injected"] == {"stream_terminate": 1}


async def test_after_a_terminated_stream_ccxt_subscribes_again(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    watch = asyncio.ensure_future(pro.watch_orders())
    await admin.set_faults(stream_terminate=1.0, max_faults=1)
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_pro.NetworkError):
        await asyncio.wait_for(watch, 5)
    await subscribe(pro)
    placed = await client.create_order(BTC, "limit", "buy", 0.01, 28000)
    assert await until(pro.watch_orders, lambda: cached_order(pro, placed["id"]))


@pytest.mark.parametrize(
    "settings",
    [
        {"stream_drop_event": 1.5},
        {"stream_disconnect": -0.1},
        {"stream_delay_ms": [300, 100]},
        {"stream_delay_ms": [-1, 10]},
    ],
)
async def test_bad_stream_fault_settings_are_refused(
    admin: AdminClient, settings: dict[str, object]
) -> None:
    with pytest.raises(SimAdminError) as refused:
        await admin.set_faults(**settings)
    assert refused.value.status == 400


async def test_stream_fault_settings_are_reported_back(admin: AdminClient) -> None:
    profile = await admin.set_faults(stream_drop_event=0.5, stream_delay_ms=[10, 20])
    assert profile["stream_drop_event"] == 0.5
    assert profile["stream_delay_ms"] == [10, 20]
    assert (profile["stream_disconnect"], profile["stream_terminate"]) == (0.0, 0.0)
    assert (await admin.set_faults())["stream_delay_ms"] == [0, 0]
