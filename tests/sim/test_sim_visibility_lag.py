"""Read-after-write lag as a fault: lookups do not see an order for `visibility_lag_ms`.

Real exchanges answer a lookup right after a create from a replica that may not have the order
yet; Binance then says -2013 "Order does not exist." The kernel must still place exactly once.
"""

from __future__ import annotations

import asyncio

import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import SimServer
from exchange_kernel.sim.admin_client import AdminClient, SimAdminError

BTC = "BTC/USDT"
LAG_MS = 400


async def _past_the_lag() -> None:
    await asyncio.sleep(LAG_MS / 1000 + 0.1)


async def test_a_new_order_is_not_found_until_the_lag_has_passed(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(visibility_lag_ms=LAG_MS)
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    assert order["status"] == "open"  # the create itself answers as usual
    with pytest.raises(ccxt_async.OrderNotFound, match="-2013"):
        await client.fetch_order(order["id"], BTC)
    with pytest.raises(ccxt_async.OrderNotFound):
        await client.fetch_order(None, BTC, {"origClientOrderId": order["clientOrderId"]})
    assert await client.fetch_open_orders(BTC) == []
    assert await client.fetch_orders(BTC) == []
    await _past_the_lag()
    assert (await client.fetch_order(order["id"], BTC))["status"] == "open"
    assert [o["id"] for o in await client.fetch_open_orders(BTC)] == [order["id"]]
    assert [o["id"] for o in await client.fetch_orders(BTC)] == [order["id"]]
    lookups = [r for r in (await admin.requests())["recent"] if r["path"] == "/api/v3/order"]
    assert [r["code"] for r in lookups] == [None, -2013, -2013, None]  # create, 2 hidden, found
    assert (await admin.faults())["injected"]["visibility_lag"] >= 4


async def test_a_new_orders_fills_are_not_in_my_trades_until_the_lag_has_passed(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    older = await client.create_order(BTC, "market", "buy", 0.01)
    await _past_the_lag()
    await admin.set_faults(visibility_lag_ms=LAG_MS)
    newer = await client.create_order(BTC, "market", "buy", 0.02)
    assert newer["status"] == "closed" and newer["filled"] == pytest.approx(0.02)
    assert [t["order"] for t in await client.fetch_my_trades(BTC)] == [older["id"]]
    await _past_the_lag()
    assert [t["order"] for t in await client.fetch_my_trades(BTC)] == [older["id"], newer["id"]]


async def test_the_matching_engine_sees_an_order_the_lookups_do_not(
    client: ccxt_async.binance, admin: AdminClient, sim: SimServer
) -> None:
    await admin.set_faults(visibility_lag_ms=LAG_MS)
    resting = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    trades = await admin.price("BTCUSDT", "28900")
    assert [t["order_id"] for t in trades] == [int(resting["id"])]
    canceled_early = await client.create_order(BTC, "limit", "buy", 0.01, 28000)
    await client.cancel_order(canceled_early["id"], BTC)
    assert str(sim.exchange.orders[int(canceled_early["id"])].status) == "CANCELED"


async def test_orders_older_than_the_lag_stay_visible(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await _past_the_lag()
    await admin.set_faults(visibility_lag_ms=LAG_MS)
    assert (await client.fetch_order(order["id"], BTC))["id"] == order["id"]


async def test_the_lag_is_off_by_default_and_after_a_new_profile(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    assert (await admin.faults())["visibility_lag_ms"] == 0
    await admin.set_faults(visibility_lag_ms=LAG_MS)
    await admin.set_faults()
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    assert (await client.fetch_order(order["id"], BTC))["id"] == order["id"]


async def test_a_negative_lag_is_refused(admin: AdminClient) -> None:
    with pytest.raises(SimAdminError, match="visibility_lag_ms must not be negative"):
        await admin.set_faults(visibility_lag_ms=-1)


async def test_the_lag_does_not_use_up_max_faults(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(
        visibility_lag_ms=LAG_MS,
        error_503=1.0,
        max_faults=1,
        endpoints=["GET /api/v3/openOrders"],
    )
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_async.OrderNotFound):
        await client.fetch_order(order["id"], BTC)
    # The one fault allowed is still there for the 503, then the lag alone hides the order.
    with pytest.raises(ccxt_async.ExchangeNotAvailable):
        await client.fetch_open_orders(BTC)
    assert await client.fetch_open_orders(BTC) == []
    assert (await admin.faults())["injected"] == {"visibility_lag": 2, "error_503": 1}
