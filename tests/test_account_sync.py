"""Account-level batched observation: resting intents stop polling; the sync tells exactly the
intents whose orders changed."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiohttp
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentStatus, SyncRequest, account_sync_id
from exchange_kernel.sim import running_sim
from exchange_kernel.workflows.account_sync import AccountSyncStatus
from tests.conftest import Paper, paper_accounts
from tests.test_intents import new_intent, resting

RESTING = 120
RESTING_SMALL = 30


async def sync_status(client: Client, account: str = "paper") -> AccountSyncStatus:
    handle = client.get_workflow_handle(account_sync_id(account))
    return await handle.query("status", result_type=AccountSyncStatus)


async def request_counts(paper: Paper) -> dict[str, int]:
    data: dict[str, Any] = await paper.admin("GET", "requests")
    return data["counts"]


async def test_sync_signals_only_the_intents_whose_orders_changed(
    intents: IntentClient, paper: Paper, temporal_client: Client
) -> None:
    await paper.move_price("SOL/USDT", "100")
    # Prices 80.00 .. 91.90: far below the market, resting.
    batch = [
        new_intent(symbol="SOL/USDT", amount="1", price=f"{80 + i / 10:.2f}")
        for i in range(RESTING)
    ]
    await asyncio.gather(*(intents.submit(i) for i in batch))
    for intent in batch:
        await intents.wait_for(intent.intent_id, resting)
    status = await sync_status(temporal_client)
    assert status.watched >= RESTING

    # At rest: no per-intent lookups at all, only the sync's bulk calls.
    before = await request_counts(paper)
    await asyncio.sleep(6)  # longer than the REST backstop's interval (5 s, stream up)
    after = await request_counts(paper)
    lookups = after.get("GET /api/v3/order", 0) - before.get("GET /api/v3/order", 0)
    bulk = after.get("GET /api/v3/openOrders", 0) - before.get("GET /api/v3/openOrders", 0)
    assert lookups == 0
    assert 1 <= bulk <= 12  # about one per round per watched symbol, not one per intent

    # Move the price through the three highest bids: exactly those three are told. (By the
    # REST rounds: the user-data stream's events are dropped, it would tell them first.)
    sent_before = (await sync_status(temporal_client)).signals_sent
    await paper.faults(stream_drop_event=1.0)
    await paper.move_price("SOL/USDT", "91.70")
    top = batch[-3:]
    for intent in top:
        final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
        assert final.status is IntentStatus.FILLED
        assert final.filled == Decimal("1")
        assert len(final.fills) >= 1
    sent = (await sync_status(temporal_client)).signals_sent - sent_before
    await paper.faults()
    assert sent == 3
    for intent in batch[:-3]:
        state = await intents.state(intent.intent_id)
        assert state.status is IntentStatus.OPEN
    await asyncio.gather(*(intents.signal_cancel(i.intent_id) for i in batch[:-3]))
    for intent in batch[:-3]:
        await intents.result(intent.intent_id)
    await paper.move_price("SOL/USDT", "100")


async def test_fill_between_rounds_of_a_never_seen_order_is_reported(
    intents: IntentClient, paper: Paper
) -> None:
    """An order placed and filled between two rounds never appears open: the trade cursor
    still finds it (no resync, no polling)."""
    await paper.move_price("ETH/USDT", "2000")
    intent = new_intent(symbol="ETH/USDT", amount="0.5", price="1900")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    await paper.move_price("ETH/USDT", "1899")
    final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
    assert final.status is IntentStatus.FILLED


async def test_a_round_converts_only_the_orders_that_changed() -> None:
    """At thousands of resting orders, converting every listed order each round costs the
    worker a core: a round that follows on from the last one parses only what changed."""
    async with running_sim(port=0) as sim, aiohttp.ClientSession() as session:
        paper = Paper(base_url=sim.base_url, session=session, server=sim)
        pool = ExchangePool(
            {"iso": paper_accounts(sim.base_url)["paper"].model_copy(update={"name": "iso"})}
        )
        try:
            exchange = pool.client("iso")
            await exchange.load_markets()
            # As on Binance itself, where a spot symbol that allows margin trading says so:
            # the account still trades spot, and the raw listing still applies.
            exchange.markets["BTC/USDT"]["margin"] = True
            ids = [f"ek-{i:016x}-1" for i in range(RESTING_SMALL)]
            for i, client_order_id in enumerate(ids):  # 29000 .. 29029: below 30000, resting
                await exchange.create_order(
                    "BTC/USDT",
                    "limit",
                    "buy",
                    0.01,
                    29000 + i,
                    {"newClientOrderId": client_order_id},
                )
            parsed: list[str] = []
            parse_order = exchange.parse_order

            def counting_parse(order: dict[str, Any], market: Any = None) -> dict[str, Any]:
                parsed.append(str(order.get("clientOrderId")))
                return parse_order(order, market)

            exchange.parse_order = counting_parse
            activities = ExchangeActivities(pool)
            env = ActivityEnvironment()
            first = await env.run(
                activities.sync_account,
                SyncRequest(account="iso", symbols=("BTC/USDT",), round=1),
            )
            assert sorted(first.open_client_order_ids or ()) == ids  # cold: every open id
            assert first.changed == ()

            parsed.clear()
            await paper.move_price("BTC/USDT", "29029", volume="0.004")  # the top bid, partly
            second = await env.run(
                activities.sync_account,
                SyncRequest(
                    account="iso",
                    symbols=("BTC/USDT",),
                    round=2,
                    trade_cursor=first.trade_cursor,
                ),
            )
            assert [o.client_order_id for o in second.changed] == [ids[-1]]
            (changed,) = second.changed
            assert changed.filled == Decimal("0.004")
            assert sum(f.amount for f in changed.fills) == Decimal("0.004")
            assert second.open_client_order_ids is None  # followed on: a diff
            assert parsed == [ids[-1]]  # one order converted, not all of them
        finally:
            await pool.close()
