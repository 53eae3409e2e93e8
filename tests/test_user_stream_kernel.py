"""The kernel follows each account's user-data stream: fills reach the intents as they happen,
with the REST account sync as the backstop (longer interval; at once after every reconnect).

Real dev server, worker, paper exchange and ccxt.pro client; the stream faults of the paper
exchange drop, cut and terminate it."""

from __future__ import annotations

from decimal import Decimal

import pytest
from temporalio.client import Client

from exchange_kernel.accounts import AccountConfig, user_stream_off
from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentState, IntentStatus, account_sync_id
from exchange_kernel.worker.run import ensure_account_syncs
from exchange_kernel.workflows.account_sync import AccountSyncStatus
from tests.conftest import TASK_QUEUE, Paper, eventually
from tests.test_account_sync import sync_status
from tests.test_intents import new_intent, resting

# Every REST read of orders and trades: with these failing, only the stream can tell.
REST_READS = ["GET /api/v3/openOrders", "GET /api/v3/myTrades", "GET /api/v3/order"]


async def stream_up(client: Client, account: str = "paper") -> AccountSyncStatus:
    status: AccountSyncStatus | None = None

    async def up() -> bool:
        nonlocal status
        status = await sync_status(client, account)
        return status.stream == "up"

    await eventually(f"{account}'s stream up", up, 30)
    assert status is not None
    return status


async def sync_run(client: Client, account: str = "paper") -> str:
    return (await client.get_workflow_handle(account_sync_id(account)).describe()).run_id


async def connects_since(client: Client, before: AccountSyncStatus, run: str) -> int | None:
    """The stream's connects since `before` was read in run `run` of the sync; None when the
    sync continued as new meanwhile (every 2,000 events: the new run follows the stream anew
    and counts from nothing, so nothing exact can be said)."""
    after = await stream_up(client)
    if await sync_run(client) != run:
        return None
    return after.stream_connects - before.stream_connects


async def watched_bid(intents: IntentClient, paper: Paper, price: str) -> IntentState:
    await paper.move_price("ETH/USDT", "2000")
    item = new_intent(symbol="ETH/USDT", amount="0.1", price=price)
    await intents.submit(item)
    return await intents.wait_for(item.intent_id, lambda s: resting(s) and s.watched)


async def filled(intents: IntentClient, intent_id: str) -> bool:
    return (await intents.state(intent_id)).filled == Decimal("0.1")


async def test_a_fill_reaches_its_intent_through_the_stream_while_rest_reads_fail(
    intents: IntentClient, paper: Paper, temporal_client: Client
) -> None:
    await stream_up(temporal_client)
    state = await watched_bid(intents, paper, "1851.5")
    await paper.faults(error_503=1.0, endpoints=REST_READS)
    try:
        await paper.move_price("ETH/USDT", "1851.5")
        await eventually("the fill", lambda: filled(intents, state.intent.intent_id), 20)
    finally:
        await paper.faults()
    final = await intents.result(state.intent.intent_id)
    assert final.status is IntentStatus.FILLED
    # Checked against the paper exchange's ledger, not the kernel's word.
    (order,) = await paper.orders_of(final.placements[-1].client_order_id)
    assert Decimal(order["filled"]) == final.filled == Decimal("0.1")
    assert final.average_price == Decimal("1851.5")
    assert len(final.fills) == 1 and final.fills[0].amount == Decimal("0.1")
    assert sum(final.fees.values()) > 0


@pytest.mark.parametrize("fault", ["stream_disconnect", "stream_terminate"])
async def test_a_lost_stream_reconnects_and_a_rest_round_fills_the_gap(
    intents: IntentClient, paper: Paper, temporal_client: Client, fault: str
) -> None:
    """The fill's event is lost with the connection (a disconnect, or Binance's
    eventStreamTerminated): the consumer reconnects, and the REST round that follows every
    reconnect tells the intent."""
    run = await sync_run(temporal_client)
    before = await stream_up(temporal_client)
    state = await watched_bid(intents, paper, "1852.5")
    await paper.faults(**{fault: 1.0, "max_faults": 1})
    await paper.move_price("ETH/USDT", "1852.5")
    await eventually("the fill", lambda: filled(intents, state.intent.intent_id), 30)
    assert await connects_since(temporal_client, before, run) in (1, None)
    faults = await paper.admin("GET", "faults")
    assert faults["injected"].get(fault) == 1


async def test_a_dropped_event_is_found_by_the_backstop(
    intents: IntentClient, paper: Paper, temporal_client: Client
) -> None:
    run = await sync_run(temporal_client)
    before = await stream_up(temporal_client)
    state = await watched_bid(intents, paper, "1853.5")
    await paper.faults(stream_drop_event=1.0)
    try:
        await paper.move_price("ETH/USDT", "1853.5")
        await eventually("the fill", lambda: filled(intents, state.intent.intent_id), 30)
    finally:
        await paper.faults()
    # Not reconnected: a dropped event is not a lost connection.
    assert await connects_since(temporal_client, before, run) in (0, None)


def test_the_stream_is_off_where_the_account_says_or_ccxt_pro_has_none() -> None:
    paper = AccountConfig(name="p", api_key_env="K", secret_env="S", base_url="http://x")
    assert user_stream_off(paper) is None
    off = paper.model_copy(update={"user_stream": False})
    assert user_stream_off(off) == "user_stream = false in the accounts file"
    # Exchanges that ccxt.pro does not stream, or has no watchOrders for, sync by REST alone.
    unstreamed = AccountConfig(name="r", exchange="bitbank", api_key_env="K", secret_env="S")
    assert user_stream_off(unstreamed) == "ccxt.pro has no bitbank"
    no_orders = AccountConfig(name="n", exchange="coincheck", api_key_env="K", secret_env="S")
    assert user_stream_off(no_orders) == "ccxt.pro's coincheck has no watchOrders"


async def test_an_account_without_a_stream_syncs_by_rest_alone(
    intents: IntentClient, paper: Paper, temporal_client: Client
) -> None:
    await ensure_account_syncs(temporal_client, ["paper-limited"], TASK_QUEUE)
    handle = temporal_client.get_workflow_handle(account_sync_id("paper-limited"))
    try:
        await eventually(
            "the stream found off",
            lambda: _stream_is(temporal_client, "paper-limited", "off: user_stream = false"),
        )
        await paper.move_price("ETH/USDT", "2000")
        item = new_intent(symbol="ETH/USDT", amount="0.1", price="1854.5", account="paper-limited")
        await intents.submit(item)
        await intents.wait_for(item.intent_id, lambda s: resting(s) and s.watched)
        await paper.move_price("ETH/USDT", "1854.5")
        await eventually("the fill", lambda: filled(intents, item.intent_id), 30)
    finally:
        # Other modules' intents on this account poll for themselves (no sync).
        await handle.terminate("test done")


async def _stream_is(client: Client, account: str, prefix: str) -> bool:
    return (await sync_status(client, account)).stream.startswith(prefix)


async def test_an_intent_never_ends_without_a_trade_the_stream_lost(
    intents: IntentClient, paper: Paper, temporal_client: Client
) -> None:
    """The event of the first trade is lost; the second one says the order filled whole, with
    only its own trade in the stream. The intent gets every trade (read over REST), not a fill
    amount its trades do not add up to (an independent chaos run found intents ending so)."""
    await stream_up(temporal_client)
    state = await watched_bid(intents, paper, "1855.5")
    await paper.faults(stream_drop_event=1.0, max_faults=1)
    await paper.move_price("ETH/USDT", "1855.5", volume="0.04")
    await paper.move_price("ETH/USDT", "1855.5")
    final = await intents.result(state.intent.intent_id)
    assert final.status is IntentStatus.FILLED
    (order,) = await paper.orders_of(final.placements[-1].client_order_id)
    ledger = [t for t in (await paper.admin("GET", "trades"))["trades"]]
    mine = sorted(
        str(t["trade_id"]) for t in ledger if str(t["order_id"]) == str(order["order_id"])
    )
    assert len(mine) == 2
    assert sorted(f.trade_id for f in final.fills) == mine
    assert sum(f.amount for f in final.fills) == Decimal("0.1")
