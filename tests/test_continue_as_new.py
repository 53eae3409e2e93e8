"""A long-lived intent continues as new when Temporal suggests it, carrying its state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import start_local_environment
from exchange_kernel.models import IntentStatus, client_order_id
from exchange_kernel.worker import build_worker
from tests.conftest import Paper, paper_accounts
from tests.test_intents import new_intent, resting

QUEUE = "exchange-kernel-can"


@pytest.fixture(scope="module")
async def short_history_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_local_environment(
        data_converter=pydantic_data_converter,
        dynamic_config={"limit.historyCount.suggestContinueAsNew": 60},
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def test_intent_continues_as_new_and_keeps_its_state(
    short_history_env: WorkflowEnvironment, paper: Paper
) -> None:
    client = short_history_env.client
    pool = ExchangePool(paper_accounts(paper.base_url))
    intents = IntentClient(client, QUEUE)
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="28000")
    async with build_worker(client, pool, QUEUE):
        await intents.submit(intent)
        await intents.wait_for(intent.intent_id, resting)
        handle = client.get_workflow_handle(intent.workflow_id)
        first_run = (await handle.describe()).run_id
        # Every resync is a lookup on the exchange: a few events each, until Temporal suggests
        # continuing as new.
        for _ in range(30):
            await intents.resync(intent.intent_id)
            await asyncio.sleep(0.05)
        state = await intents.wait_for(intent.intent_id, resting)
        description = await client.get_workflow_handle(intent.workflow_id).describe()
        assert description.run_id != first_run
        assert len(state.placements) == 1
        assert state.placements[0].client_order_id == client_order_id(intent.intent_id, 0)

        await paper.move_price("BTC/USDT", "27990")
        await intents.resync(intent.intent_id)
        final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
    await pool.close()
    assert final.status is IntentStatus.FILLED
    assert final.filled == Decimal("0.01")
    orders: list[dict[str, Any]] = await paper.orders()
    assert (
        sum(
            1
            for o in orders
            if o["client_order_id"].startswith(client_order_id(intent.intent_id, 0)[:-1])
        )
        == 1
    )
