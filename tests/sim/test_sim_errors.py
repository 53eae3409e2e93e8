"""Binance error answers from the sim become the same ccxt exceptions as against api.binance.com."""

from __future__ import annotations

from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from exchange_kernel.sim.admin_client import AdminClient

BTC = "BTC/USDT"


async def _raw_order(client: ccxt_async.binance, **params: str) -> Any:
    """POST /api/v3/order through ccxt's implicit API, bypassing its client-side rounding."""
    request = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
    return await client.privatePostOrder({**request, **params})


async def test_insufficient_funds(client: ccxt_async.binance, admin: AdminClient) -> None:
    with pytest.raises(ccxt_async.InsufficientFunds):
        await client.create_order(BTC, "limit", "buy", 100, 29000)  # 2.9M USDT > 1M
    with pytest.raises(ccxt_async.InsufficientFunds):
        await client.create_order(BTC, "market", "sell", 101)
    # Locked funds are not spendable twice.
    await client.create_order(BTC, "limit", "sell", 60, 31000)
    with pytest.raises(ccxt_async.InsufficientFunds):
        await client.create_order(BTC, "limit", "sell", 60, 31000)
    assert len(await admin.orders()) == 1


async def test_unknown_order(client: ccxt_async.binance) -> None:
    with pytest.raises(ccxt_async.OrderNotFound, match="-2013"):
        await client.fetch_order("987654", BTC)
    with pytest.raises(ccxt_async.OrderNotFound, match="-2013"):
        await client.fetch_order(None, BTC, {"clientOrderId": "never-sent"})
    with pytest.raises(ccxt_async.OrderNotFound, match="-2011"):
        await client.cancel_order("987654", BTC)
    with pytest.raises(ccxt_async.OrderNotFound, match="-2011"):
        await client.cancel_order(None, BTC, {"clientOrderId": "never-sent"})


async def test_cancel_of_finished_orders_is_unknown_order(client: ccxt_async.binance) -> None:
    filled = await client.create_order(BTC, "market", "buy", 0.01)
    with pytest.raises(ccxt_async.OrderNotFound, match="Unknown order sent"):
        await client.cancel_order(filled["id"], BTC)
    resting = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await client.cancel_order(resting["id"], BTC)
    with pytest.raises(ccxt_async.OrderNotFound, match="Unknown order sent"):
        await client.cancel_order(resting["id"], BTC)


async def test_order_on_another_symbol_is_not_found(client: ccxt_async.binance) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_async.OrderNotFound):
        await client.fetch_order(order["id"], "ETH/USDT")


async def test_lot_size_failures_are_invalid_order(client: ccxt_async.binance) -> None:
    with pytest.raises(ccxt_async.InvalidOrder, match="LOT_SIZE"):
        await client.create_order(BTC, "limit", "buy", 9001, 1)  # above maxQty
    with pytest.raises(ccxt_async.InvalidOrder, match="LOT_SIZE"):
        await _raw_order(client, quantity="0.000015", price="29000")  # off the step
    with pytest.raises(ccxt_async.InvalidOrder, match="MARKET_LOT_SIZE"):
        await client.create_order(BTC, "market", "buy", 121)


async def test_price_filter_failures_are_invalid_order(client: ccxt_async.binance) -> None:
    with pytest.raises(ccxt_async.InvalidOrder, match="PRICE_FILTER"):
        await client.create_order(BTC, "limit", "sell", 0.01, 2_000_000)  # above maxPrice
    with pytest.raises(ccxt_async.InvalidOrder, match="PRICE_FILTER"):
        await _raw_order(client, quantity="0.01", price="29000.001")  # off the tick


async def test_notional_failure_is_what_ccxt_maps_minus_1013_to(
    client: ccxt_async.binance,
) -> None:
    # ccxt special-cases LOT_SIZE and PRICE_FILTER bodies; NOTIONAL falls through to the code
    # table, where -1013 is BadRequest (not InvalidOrder) - same as against the real exchange.
    with pytest.raises(ccxt_async.BadRequest, match="Filter failure: NOTIONAL") as raised:
        await client.create_order(BTC, "limit", "buy", 0.0001, 29000)
    assert not isinstance(raised.value, ccxt_async.InvalidOrder)
    with pytest.raises(ccxt_async.BadRequest, match="NOTIONAL"):
        await client.create_order(BTC, "market", "buy", 0.0001)


async def test_unknown_symbol(client: ccxt_async.binance, admin: AdminClient) -> None:
    with pytest.raises(ccxt_async.BadSymbol):
        await client.fetch_ticker("DOGE/USDT")  # refused by ccxt itself: not in the markets
    assert "GET /api/v3/ticker/24hr" not in (await admin.requests())["counts"]
    with pytest.raises(ccxt_async.BadSymbol, match="-1121"):
        await client.publicGetTicker24hr({"symbol": "DOGEUSDT"})
    with pytest.raises(ccxt_async.BadSymbol, match="Invalid symbol"):
        await _raw_order(client, symbol="DOGEUSDT", quantity="1", price="1")


async def test_malformed_parameters_are_bad_request(client: ccxt_async.binance) -> None:
    with pytest.raises(ccxt_async.BadRequest, match="-1100"):
        await _raw_order(client, quantity="1e-3", price="29000")
    with pytest.raises(ccxt_async.BadRequest, match="-1102"):
        await _raw_order(client, price="29000")
    with pytest.raises(ccxt_async.BadRequest, match="-1116"):
        await _raw_order(client, type="ICEBERG", quantity="0.01", price="29000")
    with pytest.raises(ccxt_async.BadRequest, match="-1100"):
        await _raw_order(client, quantity="0.01", price="29000", newClientOrderId="has space")


async def test_wrong_secret_is_authentication_error(make_client: Any) -> None:
    client = make_client(DEMO_API_KEY, "not-the-secret")
    await client.load_markets()
    with pytest.raises(ccxt_async.AuthenticationError, match="-1022"):
        await client.fetch_balance()


async def test_unknown_api_key_is_authentication_error(make_client: Any) -> None:
    client = make_client("nobody", DEMO_SECRET)
    await client.load_markets()
    with pytest.raises(ccxt_async.AuthenticationError, match="-2015"):
        await client.create_order(BTC, "market", "buy", 0.01)


async def test_minus_2015_after_a_successful_call_is_ddos_protection_in_ccxt(
    client: ccxt_async.binance,
) -> None:
    # ccxt reads -2015 on a client that already authenticated as a temporary ban.
    await client.fetch_balance()
    client.apiKey = "nobody"
    with pytest.raises(ccxt_async.DDoSProtection, match="-2015"):
        await client.fetch_balance()


async def test_stale_or_future_timestamp_is_invalid_nonce(client: ccxt_async.binance) -> None:
    client.options["timeDifference"] = 60_000  # our clock 60 s behind: outside recvWindow
    with pytest.raises(ccxt_async.InvalidNonce, match="-1021"):
        await client.fetch_balance()
    client.options["timeDifference"] = -2_000  # 2 s ahead of the server: also refused
    with pytest.raises(ccxt_async.InvalidNonce, match="ahead of the server"):
        await client.fetch_balance()
    client.options["timeDifference"] = 9_000  # inside ccxt's default 10 s recvWindow
    await client.fetch_balance()
    with pytest.raises(ccxt_async.InvalidNonce):
        await client.fetch_balance({"recvWindow": 5000})


async def test_recv_window_above_binance_max(client: ccxt_async.binance) -> None:
    with pytest.raises(ccxt_async.BadRequest, match="-1131"):
        await client.fetch_balance({"recvWindow": 70_000})


async def test_duplicate_client_order_id_only_while_open(client: ccxt_async.binance) -> None:
    first = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "dup"})
    with pytest.raises(ccxt_async.InvalidOrder, match="Duplicate order sent"):
        await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "dup"})
    await client.cancel_order(first["id"], BTC)
    again = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "dup"})
    # Lookup by client id finds the newest order carrying it.
    found = await client.fetch_order(None, BTC, {"clientOrderId": "dup"})
    assert found["id"] == again["id"] != first["id"]


async def test_edit_of_unknown_order_uses_binance_spot_error_table(
    client: ccxt_async.binance, sim: SimServer
) -> None:
    # -2022 is only in exceptions['spot']; ccxt would apply it for api.binance.com URLs only.
    assert (
        client.get_exceptions_by_url(f"{sim.base_url}/api/v3/order", "exact")
        is (client.exceptions["spot"]["exact"])
    )
    with pytest.raises(ccxt_async.BadResponse, match="-2022"):
        await client.edit_order("424242", BTC, "limit", "buy", 0.01, 29000)


async def test_edit_whose_new_order_fails_leaves_the_old_one_canceled(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_async.BadResponse, match="-2021") as raised:
        # Binance cancels first, then finds the replacement unaffordable.
        await client.edit_order(order["id"], BTC, "limit", "buy", 50, 29000)
    assert "insufficient balance" in str(raised.value)
    assert (await client.fetch_order(order["id"], BTC))["status"] == "canceled"
    assert await client.fetch_open_orders(BTC) == []
    assert len(await admin.orders()) == 1


async def test_edit_with_invalid_replacement_keeps_the_old_order(
    client: ccxt_async.binance,
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    with pytest.raises(ccxt_async.BadRequest, match="NOTIONAL"):
        await client.edit_order(order["id"], BTC, "limit", "buy", 0.0001, 29000)
    assert (await client.fetch_order(order["id"], BTC))["status"] == "open"


async def test_limit_maker_that_would_take(client: ccxt_async.binance) -> None:
    with pytest.raises(ccxt_async.OrderImmediatelyFillable, match="immediately match and take"):
        await client.create_order(BTC, "LIMIT_MAKER", "sell", 0.01, 29000)


async def test_unimplemented_endpoint_is_a_non_retryable_bad_request(
    client: ccxt_async.binance,
) -> None:
    with pytest.raises(ccxt_async.BadRequest, match="-1020") as raised:
        await client.sapiGetCapitalConfigGetall()
    assert not isinstance(raised.value, ccxt_async.NetworkError)
