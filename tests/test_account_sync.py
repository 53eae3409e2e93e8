"""Account-level batched observation: resting intents stop polling; the sync tells exactly the
intents whose orders changed."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from temporalio.client import Client

from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentStatus, account_sync_id
from exchange_kernel.workflows.account_sync import AccountSyncStatus
from tests.conftest import Paper
from tests.test_intents import new_intent, resting

RESTING = 120


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
    await asyncio.sleep(5)
    after = await request_counts(paper)
    lookups = after.get("GET /api/v3/order", 0) - before.get("GET /api/v3/order", 0)
    bulk = after.get("GET /api/v3/openOrders", 0) - before.get("GET /api/v3/openOrders", 0)
    assert lookups == 0
    assert 1 <= bulk <= 10  # about one per round per watched symbol, not one per intent

    # Move the price through the three highest bids: exactly those three are told.
    sent_before = (await sync_status(temporal_client)).signals_sent
    await paper.move_price("SOL/USDT", "91.70")
    top = batch[-3:]
    for intent in top:
        final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
        assert final.status is IntentStatus.FILLED
        assert final.filled == Decimal("1")
        assert len(final.fills) >= 1
    sent = (await sync_status(temporal_client)).signals_sent - sent_before
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
