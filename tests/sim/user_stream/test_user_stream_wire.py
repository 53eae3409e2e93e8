"""The user-data stream on the wire: Binance's WebSocket API requests, answers and events, field
for field, read with a plain WebSocket (no ccxt in between)."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import DEMO_API_KEY, SimServer, running_sim
from exchange_kernel.sim.admin_client import AdminClient
from tests.sim.user_stream.stream_helpers import (
    next_event,
    request,
    sign_ws,
    subscribe_raw,
    ws_url,
)

BTC = "BTC/USDT"

EXECUTION_REPORT_KEYS = set("eEscSofqpPFgCxXrilzLnNTtIwmMOZYQWV")
DECIMAL_KEYS = ("q", "p", "P", "F", "l", "z", "L", "Z", "Y", "Q")
MS_KEYS = ("E", "T", "O", "W")


async def _events(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    return [await next_event(ws) for _ in range(count)]


def _is_binance_decimal(value: Any) -> bool:
    return isinstance(value, str) and Decimal(value) == Decimal(value).quantize(Decimal("1e-8"))


async def test_subscribe_signature_answers_a_subscription_id(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(sim)) as ws:
        answer = await subscribe_raw(ws)
        assert answer["status"] == 200
        assert answer["result"] == {"subscriptionId": 0}
        assert answer["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
        listed = await request(ws, "session.subscriptions")
        assert listed["result"] == [{"subscriptionId": 0}]


async def test_a_wrong_signature_is_refused_with_binance_error(
    sim: SimServer, ws_session: aiohttp.ClientSession
) -> None:
    async with ws_session.ws_connect(ws_url(sim)) as ws:
        answer = await subscribe_raw(ws, DEMO_API_KEY, "not-the-secret")
        assert answer["status"] == 400
        assert answer["error"] == {"code": -1022, "msg": "Signature for this request is not valid."}
        stale = sign_ws({"apiKey": DEMO_API_KEY, "timestamp": 1}, "paper-demo-secret")
        answer = await request(ws, "userDataStream.subscribe.signature", stale)
        assert answer["error"]["code"] == -1021
        assert (await request(ws, "session.subscriptions"))["result"] == []


async def test_a_second_subscription_of_one_account_on_one_connection_is_refused(
    raw_stream: aiohttp.ClientWebSocketResponse,
) -> None:
    answer = await subscribe_raw(raw_stream)
    assert answer["status"] == 400 and answer["error"]["code"] == -2035


async def test_unknown_methods_are_not_supported(
    raw_stream: aiohttp.ClientWebSocketResponse,
) -> None:
    answer = await request(raw_stream, "order.place", {"symbol": "BTCUSDT"})
    assert answer["status"] == 400 and answer["error"]["code"] == -1020
    assert (await request(raw_stream, "ping"))["result"] == {}
    server_time = (await request(raw_stream, "time"))["result"]["serverTime"]
    assert abs(server_time - time.time() * 1000) < 5000


async def test_new_order_is_an_execution_report_field_for_field(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "n-1"})
    report, position = await _events(raw_stream, 2)
    assert set(report) == EXECUTION_REPORT_KEYS
    assert report | {"E": 0, "T": 0, "O": 0, "W": 0, "I": 0} == {
        "e": "executionReport",
        "E": 0,
        "s": "BTCUSDT",
        "c": "n-1",
        "S": "BUY",
        "o": "LIMIT",
        "f": "GTC",
        "q": "0.01000000",
        "p": "29000.00000000",
        "P": "0.00000000",
        "F": "0.00000000",
        "g": -1,
        "C": "",
        "x": "NEW",
        "X": "NEW",
        "r": "NONE",
        "i": int(order["id"]),
        "l": "0.00000000",
        "z": "0.00000000",
        "L": "0.00000000",
        "n": "0",
        "N": None,
        "T": 0,
        "t": -1,
        "I": 0,
        "w": True,
        "m": False,
        "M": False,
        "O": 0,
        "Z": "0.00000000",
        "Y": "0.00000000",
        "Q": "0.00000000",
        "W": 0,
        "V": "NONE",
    }
    assert all(isinstance(report[k], int) and report[k] > 1_600_000_000_000 for k in MS_KEYS)
    assert report["O"] == order["timestamp"]
    assert position["e"] == "outboundAccountPosition"
    assert position["B"] == [{"a": "USDT", "f": "999710.00000000", "l": "290.00000000"}]


async def test_a_fill_is_a_trade_report_then_the_balances_it_left(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance
) -> None:
    order = await client.create_order(BTC, "market", "buy", 0.01)
    new, trade, position = await _events(raw_stream, 3)
    assert (new["x"], new["X"], new["w"]) == ("NEW", "NEW", False)
    assert trade["x"] == "TRADE" and trade["X"] == "FILLED"
    assert trade["i"] == int(order["id"]) and isinstance(trade["t"], int) and trade["t"] > 0
    assert (trade["l"], trade["L"], trade["z"]) == ("0.01000000", "30000.00000000", "0.01000000")
    assert (trade["Y"], trade["Z"]) == ("300.00000000", "300.00000000")
    assert (trade["n"], trade["N"], trade["m"], trade["M"]) == ("0.00001000", "BTC", False, True)
    assert all(_is_binance_decimal(trade[k]) for k in DECIMAL_KEYS)
    assert trade["I"] > new["I"]
    assert position["e"] == "outboundAccountPosition"
    assert {b["a"]: (b["f"], b["l"]) for b in position["B"]} == {
        "USDT": ("999700.00000000", "0.00000000"),
        "BTC": ("100.00999000", "0.00000000"),
    }


async def test_a_resting_order_fills_partly_then_fully_as_maker(
    raw_stream: aiohttp.ClientWebSocketResponse,
    client: ccxt_async.binance,
    admin: AdminClient,
) -> None:
    await client.create_order(BTC, "limit", "sell", 0.01, 31000)
    await _events(raw_stream, 2)
    await admin.price("BTCUSDT", "31000", volume="0.004")
    partial, _ = await _events(raw_stream, 2)
    assert (partial["x"], partial["X"], partial["l"], partial["z"], partial["m"]) == (
        "TRADE",
        "PARTIALLY_FILLED",
        "0.00400000",
        "0.00400000",
        True,
    )
    assert partial["w"] is True
    await admin.price("BTCUSDT", "31001")
    full, position = await _events(raw_stream, 2)
    assert (full["X"], full["l"], full["z"], full["w"]) == (
        "FILLED",
        "0.00600000",
        "0.01000000",
        False,
    )
    assert full["Z"] == "310.00000000" and full["N"] == "USDT"
    assert {b["a"] for b in position["B"]} == {"BTC", "USDT"}


async def test_a_cancel_carries_the_cancel_id_and_the_orders_own_id(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000, {"clientOrderId": "mine"})
    await _events(raw_stream, 2)
    answer = await client.cancel_order(order["id"], BTC, {"newClientOrderId": "cancel-1"})
    report, position = await _events(raw_stream, 2)
    assert (report["x"], report["X"], report["c"], report["C"]) == (
        "CANCELED",
        "CANCELED",
        "cancel-1",
        "mine",
    )
    assert answer["info"]["clientOrderId"] == "cancel-1"
    assert position["B"] == [{"a": "USDT", "f": "1000000.00000000", "l": "0.00000000"}]


async def test_cancel_all_reports_each_cancel_with_the_id_the_answer_gave(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance
) -> None:
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await client.create_order(BTC, "limit", "buy", 0.01, 28000)
    await _events(raw_stream, 4)
    answer = await client.cancel_all_orders(BTC)
    first, second, _ = await _events(raw_stream, 3)
    assert [first["c"], second["c"]] == [o["info"]["clientOrderId"] for o in answer]


async def test_an_unfilled_market_remainder_expires(
    raw_stream: aiohttp.ClientWebSocketResponse,
    client: ccxt_async.binance,
    admin: AdminClient,
) -> None:
    await admin.price("BTCUSDT", "30000", taker_liquidity="0.004")
    await client.create_order(BTC, "market", "buy", 0.01)
    new, trade, expired, _ = await _events(raw_stream, 4)
    assert [e["x"] for e in (new, trade, expired)] == ["NEW", "TRADE", "EXPIRED"]
    assert (trade["X"], expired["X"], expired["z"]) == ("PARTIALLY_FILLED", "EXPIRED", "0.00400000")


async def test_a_refused_replacement_after_a_cancel_is_rejected(
    raw_stream: aiohttp.ClientWebSocketResponse,
    client: ccxt_async.binance,
    admin: AdminClient,
) -> None:
    order = await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await _events(raw_stream, 2)
    await admin.set_balances(DEMO_API_KEY, {"USDT": "0"})
    await _events(raw_stream, 2)
    # -2021, which ccxt maps to BadResponse: the cancel went through, the new order did not.
    with pytest.raises(ccxt_async.BadResponse, match="-2021"):
        await client.edit_order(
            order["id"], BTC, "limit", "buy", 1, 29000, {"clientOrderId": "big"}
        )
    canceled, rejected, _ = await _events(raw_stream, 3)
    assert canceled["x"] == "CANCELED"
    assert (rejected["x"], rejected["X"], rejected["r"], rejected["c"]) == (
        "REJECTED",
        "REJECTED",
        "INSUFFICIENT_BALANCES",
        "big",
    )
    assert rejected["i"] > int(order["id"]) and rejected["q"] == "1.00000000"
    assert (await admin.orders(status="REJECTED")) == []


async def test_a_triggered_stop_is_reported_new_again_and_working(
    raw_stream: aiohttp.ClientWebSocketResponse,
    client: ccxt_async.binance,
    admin: AdminClient,
) -> None:
    await client.create_order(
        BTC, "STOP_LOSS_LIMIT", "sell", 0.01, 28000, {"stopPrice": 29000, "timeInForce": "GTC"}
    )
    placed, _ = await _events(raw_stream, 2)
    assert (placed["x"], placed["w"], "W" in placed) == ("NEW", False, False)
    await admin.price("BTCUSDT", "29500")
    await admin.price("BTCUSDT", "29000")
    triggered = await next_event(raw_stream)
    assert (triggered["x"], triggered["X"], triggered["w"]) == ("NEW", "NEW", True)
    assert triggered["W"] >= placed["O"] and triggered["P"] == "29000.00000000"


async def test_an_operator_balance_change_is_a_balance_update_then_the_position(
    raw_stream: aiohttp.ClientWebSocketResponse, admin: AdminClient
) -> None:
    await admin.set_balances(DEMO_API_KEY, {"ETH": "1.5", "USDT": "1000000"})
    update, position = await _events(raw_stream, 2)
    assert update | {"E": 0, "T": 0} == {
        "e": "balanceUpdate",
        "E": 0,
        "a": "ETH",
        "d": "-998.50000000",
        "T": 0,
    }
    assert position["B"] == [{"a": "ETH", "f": "1.50000000", "l": "0.00000000"}]
    assert position["u"] == update["T"]


async def test_events_reach_only_their_accounts_subscribers(
    sim: SimServer,
    ws_session: aiohttp.ClientSession,
    make_client: Any,
    second_account: tuple[str, str],
) -> None:
    async with ws_session.ws_connect(ws_url(sim)) as ws:
        assert (await subscribe_raw(ws, *second_account))["status"] == 200
        demo = make_client()
        await demo.create_order(BTC, "limit", "buy", 0.01, 29000)
        theirs = make_client(*second_account)
        order = await theirs.create_order(BTC, "limit", "buy", 0.01, 29000)
        report = await next_event(ws)
        assert report["i"] == int(order["id"])


async def test_one_connection_streams_several_accounts_by_subscription_id(
    sim: SimServer,
    ws_session: aiohttp.ClientSession,
    make_client: Any,
    second_account: tuple[str, str],
) -> None:
    async with ws_session.ws_connect(ws_url(sim)) as ws:
        assert (await subscribe_raw(ws))["result"] == {"subscriptionId": 0}
        assert (await subscribe_raw(ws, *second_account))["result"] == {"subscriptionId": 1}
        await make_client(*second_account).create_order(BTC, "limit", "buy", 0.01, 29000)
        message = await ws.receive_json(timeout=5)
        assert message["subscriptionId"] == 1 and message["event"]["e"] == "executionReport"


async def test_unsubscribe_ends_the_stream_with_event_stream_terminated(
    raw_stream: aiohttp.ClientWebSocketResponse, client: ccxt_async.binance
) -> None:
    await raw_stream.send_json({"id": "u", "method": "userDataStream.unsubscribe", "params": {}})
    terminated = await next_event(raw_stream)
    assert set(terminated) == {"e", "E"} and terminated["e"] == "eventStreamTerminated"
    assert (await raw_stream.receive_json(timeout=5))["result"] == {}
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    assert (await request(raw_stream, "session.subscriptions"))["result"] == []
    unknown = await request(raw_stream, "userDataStream.unsubscribe", {"subscriptionId": 7})
    assert unknown["error"]["code"] == -2036


async def test_reset_terminates_every_stream(
    raw_stream: aiohttp.ClientWebSocketResponse, admin: AdminClient
) -> None:
    await admin.reset()
    assert (await next_event(raw_stream))["e"] == "eventStreamTerminated"
    closing = await raw_stream.receive(timeout=5)
    assert closing.type is aiohttp.WSMsgType.CLOSE


async def test_stopping_the_sim_closes_its_streams_at_once(
    ws_session: aiohttp.ClientSession,
) -> None:
    async with running_sim() as sim, ws_session.ws_connect(ws_url(sim)) as ws:
        assert (await subscribe_raw(ws))["status"] == 200
        started = time.monotonic()
        await sim.stop()
        closing = await ws.receive(timeout=5)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert time.monotonic() - started < 2
