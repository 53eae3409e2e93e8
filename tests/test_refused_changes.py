"""A modification whose order the exchange refuses leaves the intent working at its last accepted
revision, on an account that holds just what it trades (the `paper-real` account: 2,000 USDT).
Checked against the paper exchange's ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange_kernel.client import IntentClient, IntentRejected
from exchange_kernel.models import IntentStatus, intent_digest
from tests.conftest import Paper
from tests.test_intents import new_intent, resting

LIVE = ("NEW", "PARTIALLY_FILLED")


async def ledger(paper: Paper, intent_id: str) -> list[dict[str, object]]:
    return await paper.orders_of(f"ek-{intent_digest(intent_id)}-")


async def test_a_modification_refused_for_funds_leaves_the_intent_working_at_its_last_revision(
    intents: IntentClient, paper: Paper
) -> None:
    """Cancel-replace cancels the resting buy, then the exchange refuses the bigger one
    (InsufficientFunds): the refusal is the update's answer, and the last accepted revision is
    placed again; the intent never ends rejected for it."""
    await paper.move_price("BTC/USDT", "30000")
    item = new_intent(price="28000", amount="0.01", account="paper-real")
    await intents.submit(item)
    await intents.wait_for(item.intent_id, resting)
    with pytest.raises(IntentRejected, match="refused by the exchange"):
        await intents.modify(item.intent_id, amount="0.1")  # 2,800 USDT: more than it holds
    state = await intents.wait_for(item.intent_id, resting)
    assert state.desired.amount == Decimal("0.01") and state.desired.price == Decimal("28000")
    assert any(r.action == "modify refused" for r in state.recent_actions)
    orders = await ledger(paper, item.intent_id)
    live = [o for o in orders if o["status"] in LIVE]
    assert [(Decimal(str(o["amount"])), Decimal(str(o["price"]))) for o in live] == [
        (Decimal("0.01"), Decimal("28000"))
    ]
    # It still takes changes the exchange can honour.
    brief = await intents.modify(item.intent_id, price="28100")
    assert brief.desired.price == Decimal("28100")
    await intents.cancel(item.intent_id)
    assert (await intents.result(item.intent_id)).status is IntentStatus.CANCELED


async def test_a_refused_modification_sent_as_a_signal_is_recorded_and_the_intent_works_on(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    item = new_intent(price="27000", amount="0.01", account="paper-real")
    await intents.submit(item)
    await intents.wait_for(item.intent_id, resting)
    await intents.signal_modify(item.intent_id, amount="0.2")
    state = await intents.wait_for(
        item.intent_id,
        lambda s: resting(s) and any(r.action == "modify refused" for r in s.recent_actions),
    )
    assert state.desired.amount == Decimal("0.01")
    assert state.refusals and state.refusals[-1].reverted_to is not None
    live = [o for o in await ledger(paper, item.intent_id) if o["status"] in LIVE]
    assert len(live) == 1 and Decimal(str(live[0]["amount"])) == Decimal("0.01")
    await intents.cancel(item.intent_id)
    await intents.result(item.intent_id)


async def test_a_new_intent_the_account_cannot_pay_for_ends_rejected_with_the_reason(
    intents: IntentClient, paper: Paper
) -> None:
    """Its first order refused, an intent has no accepted revision to go back to."""
    await paper.move_price("BTC/USDT", "30000")
    item = new_intent(price="28000", amount="1", account="paper-real")  # 28,000 USDT
    await intents.submit(item)
    final = await intents.result(item.intent_id)
    assert final.status is IntentStatus.REJECTED
    assert "insufficient" in (final.outcome_reason or "").lower()
    assert await ledger(paper, item.intent_id) == []
