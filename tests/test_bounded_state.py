"""An intent replaced hundreds of times keeps a bounded state, bounded search attributes and
short run histories, with exact fills (bench/bounded_state.py runs the same for 10,000)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from bench.bounded_state import Placements, ledger, run_lengths, state_bytes
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import EXCHANGE_ORDER_IDS
from exchange_kernel.events import KEEP_EVENTS
from exchange_kernel.models import IntentState, IntentStatus, intent_digest
from exchange_kernel.reconcile import KEEP_ENDED
from tests.conftest import Paper
from tests.test_intents import new_intent, resting

# Temporal refuses a keyword list search attribute past 2,048 bytes: with every exchange order
# id in it, an intent got stuck at about 360 replacements.
MODIFICATIONS = 400


async def test_an_intent_replaced_past_the_search_attribute_limit_stays_bounded_and_exact(
    intents: IntentClient, paper: Paper
) -> None:
    symbol = "BTC/USDT"
    await paper.move_price(symbol, "30000")
    intent = new_intent(price="20000", amount="0.5")  # native edit: one call a modification
    exchange = paper.server.exchange
    prefix = f"ek-{intent_digest(intent.intent_id)}-"
    placements = Placements(exchange, prefix)
    await intents.submit(intent)
    await placements.reach(1)
    for i in range(1, MODIFICATIONS + 1):
        price = "20000" if i % 2 == 0 else "20001"
        await intents.modify(intent.intent_id, price=price)
        await placements.reach(i + 1)
        if i % 99 == 0:  # partial fills at both prices, across compacted placements
            await paper.move_price(symbol, price, volume="0.01")
            await paper.move_price(symbol, "30000")
    state = await intents.wait_for(
        intent.intent_id, lambda s: resting_or_partial(s) and s.revision == MODIFICATIONS
    )
    # A partial fill between plan and edit costs a placement number (the edit is not sent).
    assert state.next_placement >= MODIFICATIONS + 1
    assert len(state.placements) <= KEEP_ENDED + 1
    # The kept events (at most KEEP_EVENTS, a few hundred bytes each) come on top.
    assert state_bytes(state) < 16 * 1024 + KEEP_EVENTS * 512
    assert len(state.events) == KEEP_EVENTS
    description = await intents.temporal.get_workflow_handle(intent.workflow_id).describe()
    order_ids = description.typed_search_attributes.get(EXCHANGE_ORDER_IDS) or []
    assert 0 < len(order_ids) <= 2 * KEEP_ENDED + 1
    assert len(",".join(order_ids).encode()) < 2048

    await paper.move_price(symbol, "19000")
    final = await asyncio.wait_for(intents.result(intent.intent_id), 60)
    assert final.status is IntentStatus.FILLED
    truth = ledger(exchange, prefix)
    assert final.filled == truth["filled"] == Decimal("0.5")
    assert final.average_price == truth["average_price"]
    assert final.fees == truth["fees"]
    assert max(await run_lengths(intents.temporal, intent.workflow_id)) < 2000


def resting_or_partial(state: IntentState) -> bool:
    return resting(state) or (
        state.status is IntentStatus.PARTIALLY_FILLED
        and state.reconciliation_status.value == "in_sync"
    )
