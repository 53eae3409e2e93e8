"""Orphans and drift: orders no running intent owns are found, adopted or cancelled."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from exchange_kernel import client as client_module
from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentStatus, client_order_id
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, binance_client
from tests.conftest import Paper
from tests.test_intents import new_intent, resting


@pytest.fixture(autouse=True)
def _no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The grace period hides orders younger than 10 s (visibility lag); tests are faster.
    monkeypatch.setattr(client_module, "ORPHAN_GRACE", client_module.timedelta(0))


async def test_orphans_are_found_adopted_and_cancelled(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    by_hand = binance_client(paper.base_url, DEMO_API_KEY, DEMO_SECRET)
    try:
        manual = await by_hand.create_order(
            "BTC/USDT", "limit", "buy", "0.01", "20000", {"clientOrderId": "by-hand-1"}
        )
        assert manual["clientOrderId"] == "by-hand-1"
        # A crashed predecessor: its workflow is gone (terminated), its order is not.
        lost = new_intent(price="20500")
        await intents.submit(lost)
        await intents.wait_for(lost.intent_id, resting)
        await intents.temporal.get_workflow_handle(lost.workflow_id).terminate("crash")
        # A healthy intent is not an orphan.
        healthy = new_intent(price="20600")
        await intents.submit(healthy)
        await intents.wait_for(healthy.intent_id, resting)
        await asyncio.sleep(1.5)  # let visibility catch up with the search attributes

        found = {o.order.client_order_id: o for o in await intents.orphans("paper")}
        assert found["by-hand-1"].kind == "manual"
        lost_id = client_order_id(lost.intent_id, 0)
        assert found[lost_id].kind == "kernel"
        assert found[lost_id].intent_id == lost.intent_id
        assert client_order_id(healthy.intent_id, 0) not in found

        adopted = await intents.adopt(found[lost_id].order, "paper", f"{lost.intent_id}-adopted")
        assert adopted.placements[0].client_order_id == lost_id
        state = await intents.wait_for(adopted.intent.intent_id, resting)
        assert state.filled == 0
        moved = await intents.modify(adopted.intent.intent_id, price="20400")
        assert moved.desired.price == Decimal("20400")
        await intents.wait_for(
            adopted.intent.intent_id,
            lambda s: resting(s) and s.placements[-1].price == Decimal("20400"),
        )

        cancelled = await intents.cancel_orphan("paper", "BTC/USDT", "by-hand-1")
        assert cancelled is not None and cancelled.status.value == "canceled"
        await asyncio.sleep(1.5)
        left = {o.order.client_order_id for o in await intents.orphans("paper")}
        assert "by-hand-1" not in left and lost_id not in left

        for intent_id in (adopted.intent.intent_id, healthy.intent_id):
            await intents.cancel(intent_id)
            final = await intents.result(intent_id)
            assert final.status is IntentStatus.CANCELED
    finally:
        await by_hand.close()
