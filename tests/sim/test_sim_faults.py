"""Injected faults, the request log and reset, as a client and a checker see them."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import SimServer
from exchange_kernel.sim.admin_client import AdminClient, SimAdminError
from exchange_kernel.sim.faults import FaultConfig, FaultInjector

BTC = "BTC/USDT"


async def test_injected_429_is_rate_limit_and_reaches_no_engine(
    client: ccxt_async.binance, admin: AdminClient, sim: SimServer
) -> None:
    await admin.set_faults(rate_limit_429=1.0, retry_after=7)
    with pytest.raises(ccxt_async.DDoSProtection, match="429"):
        await client.create_order(BTC, "market", "buy", 0.01)
    assert await admin.orders() == []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.base_url}/api/v3/time") as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "7"
            assert (await response.json())["code"] == -1003
    log = await admin.requests()
    assert log["recent"][-1]["fault"] == "rate_limit_429"
    assert log["recent"][-1]["status"] == 429


@pytest.mark.parametrize("fault", ["error_500", "error_503"])
async def test_injected_5xx_is_exchange_not_available(
    client: ccxt_async.binance, admin: AdminClient, fault: str
) -> None:
    await admin.set_faults(**{fault: 1.0})
    with pytest.raises(ccxt_async.ExchangeNotAvailable):
        await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_async.ExchangeNotAvailable):
        await client.fetch_ticker(BTC)
    assert await admin.orders() == []
    assert (await admin.requests())["recent"][-1]["fault"] == fault


async def test_dropped_response_is_a_network_error_while_the_order_exists(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(drop_response=1.0)
    # Reads are never dropped: only order mutations are.
    await client.fetch_balance()
    # aiohttp's ServerDisconnectedError, which ccxt turns into ExchangeNotAvailable.
    with pytest.raises(ccxt_async.ExchangeNotAvailable):
        await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "lost-1"})
    [order] = await admin.orders()
    assert (order["client_order_id"], order["status"]) == ("lost-1", "NEW")
    log = await admin.requests()
    assert log["recent"][-1] == log["recent"][-1] | {
        "method": "POST",
        "path": "/api/v3/order",
        "status": None,
        "fault": "drop_response",
    }
    # The client can recover the truth by its own id.
    found = await client.fetch_order(None, BTC, {"clientOrderId": "lost-1"})
    assert found["status"] == "open"
    await admin.set_faults()
    assert (await client.fetch_order(found["id"], BTC))["status"] == "open"


async def test_dropped_cancel_is_retried_by_aiohttp_and_reports_order_not_found(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await admin.set_faults(drop_response=1.0)
    # aiohttp resends idempotent methods (DELETE) once when the connection drops; the resend
    # finds the order already canceled. Same against the real exchange: after a cancel,
    # OrderNotFound means "maybe it was us" - confirm with fetch_order.
    with pytest.raises(ccxt_async.OrderNotFound, match="-2011"):
        await client.cancel_order(order["id"], BTC)
    first, retry = (await admin.requests())["recent"][-2:]
    assert (first["method"], first["status"], first["fault"]) == ("DELETE", None, "drop_response")
    assert (retry["method"], retry["status"], retry["code"]) == ("DELETE", 400, -2011)
    assert (await client.fetch_order(order["id"], BTC))["status"] == "canceled"


async def test_rejections_are_not_dropped(client: ccxt_async.binance, admin: AdminClient) -> None:
    await admin.set_faults(drop_response=1.0)
    with pytest.raises(ccxt_async.InsufficientFunds):
        await client.create_order(BTC, "limit", "sell", 200, 31000)
    assert (await admin.faults())["injected"] == {}


async def test_latency(client: ccxt_async.binance, admin: AdminClient) -> None:
    await admin.set_faults(latency_ms=[120, 120])
    started = time.monotonic()
    await client.fetch_time()
    assert time.monotonic() - started >= 0.11


async def test_endpoint_filter_and_fault_budget(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_faults(error_503=1.0, endpoints=["POST /api/v3/order"], max_faults=1)
    await client.fetch_balance()  # not a targeted endpoint
    with pytest.raises(ccxt_async.ExchangeNotAvailable):
        await client.create_order(BTC, "market", "buy", 0.01)
    order = await client.create_order(BTC, "market", "buy", 0.01)  # budget spent: goes through
    assert order["status"] == "closed"
    assert (await admin.faults())["injected"] == {"error_503": 1}


async def test_faults_for_some_keys_leave_other_clients_alone(
    client: ccxt_async.binance, admin: AdminClient, sim: SimServer, make_client: Any
) -> None:
    sim.exchange.add_account("other-key", "other-secret")
    other = make_client("other-key", "other-secret")
    await admin.set_faults(error_503=1.0, api_keys=["other-key"])
    await client.fetch_balance()  # not a listed key
    with pytest.raises(ccxt_async.ExchangeNotAvailable):
        await other.fetch_balance()
    assert (await admin.faults())["injected"] == {"error_503": 1}


async def test_faults_leave_the_admin_api_alone(admin: AdminClient) -> None:
    await admin.set_faults(error_500=1.0, rate_limit_429=1.0)
    assert (await admin.faults())["error_500"] == 1.0
    await admin.price("BTCUSDT", "30100")


async def test_admin_rejects_bad_fault_settings(admin: AdminClient) -> None:
    with pytest.raises(SimAdminError, match="400"):
        await admin.set_faults(error_500=1.5)
    with pytest.raises(SimAdminError, match="400"):
        await admin.set_faults(no_such_fault=0.5)


def test_seeded_faults_are_reproducible() -> None:
    def pattern(seed: int) -> list[bool]:
        injector = FaultInjector()
        injector.configure(FaultConfig(error_500=0.5, seed=seed))
        return [injector._roll("error_500", 0.5) for _ in range(64)]

    assert pattern(7) == pattern(7)
    assert pattern(7) != pattern(8)
    assert 10 < sum(pattern(7)) < 54


async def test_request_log_counts_and_prefixes(
    client: ccxt_async.binance, admin: AdminClient, make_client: object
) -> None:
    await client.fetch_balance()
    await client.fetch_balance()
    with pytest.raises(ccxt_async.OrderNotFound):
        await client.fetch_order("1", BTC)
    log = await admin.requests()
    assert log["counts"] == {
        "GET /api/v3/exchangeInfo": 1,
        "GET /api/v3/account": 2,
        "GET /api/v3/order": 1,
    }
    assert log["total"] == 4
    last = log["recent"][-1]
    assert last["api_key"] == "paper-de"  # a prefix only
    assert (last["status"], last["code"], last["fault"]) == (400, -2013, None)
    assert [r["seq"] for r in log["recent"]] == [1, 2, 3, 4]


async def test_reset_restores_the_starting_state(
    client: ccxt_async.binance, admin: AdminClient, sim: SimServer
) -> None:
    await client.create_order(BTC, "market", "buy", 1)
    resting = await client.create_order(BTC, "limit", "buy", 1, 29000)
    await admin.price("BTCUSDT", "31000")
    await admin.set_faults(latency_ms=[1, 2])
    await admin.reset()
    assert await admin.orders() == [] and await admin.trades() == []
    assert (await admin.requests())["total"] == 0
    assert (await admin.faults())["latency_ms"] == [0, 0]
    assert sim.exchange.last_price("BTCUSDT") == Decimal(30000)
    balance = await client.fetch_balance()
    assert balance["BTC"]["total"] == 100 and balance["USDT"]["used"] == 0
    # Ids are never reused across resets, so a stale id cannot alias a new order.
    fresh = await client.create_order(BTC, "limit", "buy", 1, 29000)
    assert int(fresh["id"]) > int(resting["id"])
