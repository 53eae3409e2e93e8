"""The real ccxt.pro binance client on the sim's user-data stream: orders placed over REST with
the normal client arrive through `watch_orders`, `watch_my_trades` and `watch_balance`."""

from __future__ import annotations

from typing import Any

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro
import pytest

from exchange_kernel.sim import DEMO_API_KEY, SimServer
from exchange_kernel.sim.admin_client import AdminClient
from tests.sim.user_stream.stream_helpers import cached_order, subscribe, until

BTC = "BTC/USDT"


def _trades_of(pro: ccxt_pro.binance, order_id: str, count: int) -> list[dict[str, Any]] | None:
    trades = [t for t in pro.myTrades or [] if t["order"] == order_id]
    return trades if len(trades) >= count else None


def _balance(pro: ccxt_pro.binance, asset: str, free: float) -> dict[str, Any] | None:
    balance = pro.balance.get("spot") or {}
    entry = balance.get(asset)
    if entry and entry.get("free") == pytest.approx(free):
        return entry
    return None


def test_the_pro_client_points_every_url_at_the_sim(sim: SimServer, pro: ccxt_pro.binance) -> None:
    host = sim.base_url.removeprefix("http://")

    def urls(section: Any) -> list[str]:
        if isinstance(section, dict):
            return [u for value in section.values() for u in urls(value)]
        return [section] if isinstance(section, str) else []

    every = [u for group in ("api", "test", "demo") for u in urls(pro.urls.get(group))]
    assert every and all(u.split("://", 1)[1].startswith(host + "/") for u in every)
    assert pro.urls["api"]["ws"]["ws-api"]["spot"] == f"ws://{host}/ws-api/v3"


async def test_watch_orders_sees_an_order_placed_over_rest(
    pro: ccxt_pro.binance, client: ccxt_async.binance
) -> None:
    await subscribe(pro)
    placed = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "w-1"})
    order = await until(pro.watch_orders, lambda: cached_order(pro, placed["id"]))
    assert order["status"] == "open"
    assert order["clientOrderId"] == "w-1"
    assert (order["symbol"], order["type"], order["side"]) == (BTC, "limit", "buy")
    assert (order["price"], order["amount"], order["filled"]) == (29000, 0.01, 0)
    assert order["timestamp"] == placed["timestamp"]


async def test_watch_orders_follows_partial_then_full_fills(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    placed = await client.create_order(BTC, "limit", "sell", 0.01, 31000)
    await admin.price("BTCUSDT", "31000", volume="0.004")
    partial = await until(
        pro.watch_orders, lambda: cached_order(pro, placed["id"], filled=pytest.approx(0.004))
    )
    assert partial["status"] == "open"
    await admin.price("BTCUSDT", "31500")
    done = await until(pro.watch_orders, lambda: cached_order(pro, placed["id"], status="closed"))
    assert done["filled"] == pytest.approx(0.01)
    assert done["cost"] == pytest.approx(310)
    assert done["average"] == pytest.approx(31000)
    assert (await client.fetch_order(placed["id"], BTC))["status"] == "closed"


async def test_watch_orders_sees_a_cancel_under_the_orders_own_client_id(
    pro: ccxt_pro.binance, client: ccxt_async.binance
) -> None:
    await subscribe(pro)
    placed = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "c-1"})
    await client.cancel_order(placed["id"], BTC)
    order = await until(
        pro.watch_orders, lambda: cached_order(pro, placed["id"], status="canceled")
    )
    assert order["clientOrderId"] == "c-1"


async def test_watch_orders_sees_an_expired_market_remainder(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    await admin.price("BTCUSDT", "30000", taker_liquidity="0.004")
    placed = await client.create_order(BTC, "market", "buy", 0.01)
    order = await until(pro.watch_orders, lambda: cached_order(pro, placed["id"], status="expired"))
    assert order["filled"] == pytest.approx(0.004)


async def test_watch_orders_sees_a_refused_replacement_as_rejected(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    placed = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await admin.set_balances(DEMO_API_KEY, {"USDT": "0"})
    with pytest.raises(ccxt_async.BadResponse):
        await client.edit_order(placed["id"], BTC, "limit", "buy", 1, 29000, {"clientOrderId": "r"})

    def rejected() -> dict[str, Any] | None:
        return next((o for o in pro.orders or [] if o["clientOrderId"] == "r"), None)

    order = await until(pro.watch_orders, rejected)
    assert order["status"] == "rejected"


async def test_watch_my_trades_reports_each_fill(
    pro: ccxt_pro.binance, client: ccxt_async.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    placed = await client.create_order(BTC, "limit", "sell", 0.01, 31000)
    await admin.price("BTCUSDT", "31000", volume="0.004")
    await admin.price("BTCUSDT", "31500")
    first, second = await until(pro.watch_my_trades, lambda: _trades_of(pro, placed["id"], 2))
    rest = await client.fetch_my_trades(BTC)
    assert [first["id"], second["id"]] == [t["id"] for t in rest]
    assert (first["amount"], second["amount"]) == (pytest.approx(0.004), pytest.approx(0.006))
    assert (first["price"], first["side"], first["takerOrMaker"]) == (31000, "sell", "maker")
    assert first["cost"] == pytest.approx(124)
    assert first["fee"] == {"cost": pytest.approx(0.124), "currency": "USDT"}
    assert first["symbol"] == BTC


async def test_watch_balance_follows_an_order_and_its_fill(
    pro: ccxt_pro.binance, client: ccxt_async.binance
) -> None:
    await subscribe(pro)
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    usdt = await until(pro.watch_balance, lambda: _balance(pro, "USDT", 999_710))
    assert (usdt["used"], usdt["total"]) == (pytest.approx(290), pytest.approx(1_000_000))
    await client.create_order(BTC, "market", "buy", 0.01)
    btc = await until(pro.watch_balance, lambda: _balance(pro, "BTC", 100.00999))
    assert btc["used"] == 0
    fetched = await client.fetch_balance()
    assert pro.balance["spot"]["USDT"]["free"] == pytest.approx(fetched["USDT"]["free"])


async def test_watch_balance_sees_an_operator_balance_change(
    pro: ccxt_pro.binance, admin: AdminClient
) -> None:
    await subscribe(pro)
    await admin.set_balances(DEMO_API_KEY, {"ETH": "1.5"})
    eth = await until(pro.watch_balance, lambda: _balance(pro, "ETH", 1.5))
    assert eth["total"] == pytest.approx(1.5)


async def test_a_wrong_secret_fails_the_subscription_with_authentication_error(
    make_pro: Any,
) -> None:
    pro = make_pro(DEMO_API_KEY, "not-the-secret")
    await pro.load_markets()
    # ccxt 4.5 rejects the subscription with AuthenticationError and then trips over its own
    # cleanup (KeyError 'spot', the subscription already removed): the cause is what matters.
    with pytest.raises((ccxt_pro.AuthenticationError, KeyError)) as caught:
        await pro.watch_orders()
    error: BaseException | None = caught.value
    while error is not None and not isinstance(error, ccxt_pro.AuthenticationError):
        error = error.__context__
    assert error is not None and "-1022" in str(error)
