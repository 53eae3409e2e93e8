"""Brackets on an account that holds only what it trades (`paper-real`, with no ETH of its own):
the take-profit rests on the exchange, the stop-loss is held by its workflow, both sized to what
the entry brought in (its fills less the fee paid in ETH), and the position is sold once, by
whichever exit fires."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from exchange_kernel.client import IntentClient, IntentNotFound
from exchange_kernel.models import (
    GroupKind,
    GroupState,
    IntentGroup,
    IntentState,
    IntentStatus,
    OrderSpec,
    group_workflow_id,
    intent_digest,
)
from tests.conftest import REAL_BALANCES, REAL_KEY, Paper, dec, eventually
from tests.test_intents import record_workflow_history, resting

ETH = "ETH/USDT"
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")


@pytest.fixture
async def no_eth(paper: Paper) -> AsyncIterator[None]:
    """`paper-real` holds no ETH and just enough USDT for the entry: every ETH an exit sells
    comes from the entry, and an exit locking more than it brought in is refused."""
    await paper.move_price(ETH, "2000")
    await paper.admin(
        "POST", "balances", {"account": REAL_KEY, "balances": {"ETH": "0", "USDT": "1990"}}
    )
    yield
    restore = {asset: str(REAL_BALANCES[asset]) for asset in ("ETH", "USDT")}
    await paper.admin("POST", "balances", {"account": REAL_KEY, "balances": restore})


def bracket(market_stop: bool = False) -> IntentGroup:
    """Buy 1 ETH at 1990 on paper-real; take profit at 2100, stop at 1900 (limit 1895)."""
    return IntentGroup(
        group_id=f"br-{uuid.uuid4().hex[:8]}",
        account="paper-real",
        kind=GroupKind.BRACKET,
        entry=OrderSpec(symbol=ETH, side="buy", amount="1", price="1990"),
        take_profit=Decimal("2100"),
        stop_loss=Decimal("1900"),
        stop_loss_limit=None if market_stop else Decimal("1895"),
        stop_loss_market=market_stop,
    )


async def ledger(paper: Paper, intent_id: str) -> list[dict[str, Any]]:
    """The paper exchange's orders of one intent."""
    data = await paper.admin("GET", f"orders?account={REAL_KEY}&symbol=ETHUSDT")
    prefix = f"ek-{intent_digest(intent_id)}-"
    return [o for o in data["orders"] if o["client_order_id"].startswith(prefix)]


async def received(paper: Paper, intent_id: str) -> Decimal:
    """What the entry's trades brought into the account: bought less the fee paid in ETH."""
    data = await paper.admin("GET", f"trades?account={REAL_KEY}&symbol=ETHUSDT")
    prefix = f"ek-{intent_digest(intent_id)}-"
    trades = [t for t in data["trades"] if t["client_order_id"].startswith(prefix)]
    fees = sum((dec(t["fee"]) for t in trades if t["fee_asset"] == "ETH"), Decimal(0))
    return sum((dec(t["qty"]) for t in trades), Decimal(0)) - fees


async def eth_held(paper: Paper) -> Decimal:
    data = await paper.admin("GET", "balances")
    eth = data["accounts"][REAL_KEY]["ETH"]
    return dec(eth["free"]) + dec(eth["locked"])


async def both_protect(intents: IntentClient, paper: Paper, group: IntentGroup, amount: Decimal):
    """The take-profit rests on the exchange for `amount`, and the stop-loss is held (nothing
    on the exchange) for the same amount."""
    take_profit, stop_loss = group.leg_id("take_profit"), group.leg_id("stop_loss")

    async def check() -> bool:
        try:
            tp, sl = await intents.state(take_profit), await intents.state(stop_loss)
        except IntentNotFound:  # not started yet
            return False
        on_book = [o for o in await ledger(paper, take_profit) if o["status"] in OPEN_STATUSES]
        return (
            resting(tp)
            and tp.desired.amount == amount
            and [dec(o["amount"]) for o in on_book] == [amount]
            and sl.stop_held
            and sl.desired.amount == amount
            and not await ledger(paper, stop_loss)
        )

    await eventually(f"take-profit resting and stop-loss held for {amount}", check)


async def entry_filled(intents: IntentClient, group: IntentGroup, amount: str) -> IntentState:
    return await intents.wait_for(group.leg_id("entry"), lambda s: s.filled == Decimal(amount))


def refusals(state: IntentState) -> list[str]:
    """Everything the intent recorded about an exchange's refusal."""
    texts = [a.reason for a in state.recent_actions]
    texts += [r.reason for r in state.refusals]
    texts += [state.outcome_reason or "", state.last_error or ""]
    return [t for t in texts if "insufficient" in t.lower()]


async def protect_partial_fills(
    intents: IntentClient, paper: Paper, group: IntentGroup, parts: tuple[str, ...]
) -> Decimal:
    """Submit the bracket, fill its entry in `parts` (price at the entry, volume capped), and
    check after each part that both exits protect exactly what the account received."""
    entry = group.leg_id("entry")
    await intents.submit_group(group)
    await intents.wait_for(entry, resting)
    total = Decimal(0)
    for part in parts:
        total += Decimal(part)
        await paper.move_price(ETH, "1990", volume=part)
        await entry_filled(intents, group, str(total))
        amount = await received(paper, entry)
        assert amount == total * Decimal("0.999")  # the paper exchange's 0.1% fee, in ETH
        await both_protect(intents, paper, group, amount)
        assert await eth_held(paper) == amount  # locked by the take-profit alone
    return amount


async def test_stop_loss_sells_the_received_position_once(
    intents: IntentClient, paper: Paper, no_eth: None
) -> None:
    group = bracket()
    entry, tp_id, sl_id = (group.leg_id(leg) for leg in ("entry", "take_profit", "stop_loss"))
    position = await protect_partial_fills(intents, paper, group, ("0.4", "0.3"))

    # Through the stop, without filling the entry's rest: the held stop-loss triggers, the
    # group cancels the take-profit and the entry, then releases the stop-loss.
    await paper.move_price(ETH, "1898", volume="0")  # above the stop's limit: it sells at once
    sl = await asyncio.wait_for(intents.result(sl_id), 60)
    assert sl.status is IntentStatus.FILLED and sl.filled == position
    final: GroupState = await asyncio.wait_for(intents.group_result(group.group_id), 30)

    tp = await intents.state(tp_id)
    assert tp.status is IntentStatus.CANCELED and tp.filled == 0
    entry_state = await intents.state(entry)
    assert entry_state.status is IntentStatus.CANCELED and entry_state.filled == Decimal("0.7")
    sells = [o for o in await ledger(paper, sl_id) if o["side"] == "SELL"]
    assert [(o["status"], dec(o["filled"])) for o in sells] == [("FILLED", position)]
    assert all(
        o["status"] == "CANCELED" and dec(o["filled"]) == 0 for o in await ledger(paper, tp_id)
    )
    assert await eth_held(paper) == 0  # the position sold once, nothing more
    for intent_id in (entry, tp_id, sl_id):
        assert refusals(await intents.state(intent_id)) == []
    assert final.started == (entry, tp_id, sl_id)
    assert final.released == (sl_id,)
    assert final.overfill == {}
    await record_workflow_history(
        intents.temporal, group_workflow_id(group.group_id), "group_bracket_held_stop"
    )


async def test_take_profit_sells_the_received_position_once(
    intents: IntentClient, paper: Paper, no_eth: None
) -> None:
    group = bracket(market_stop=True)
    entry, tp_id, sl_id = (group.leg_id(leg) for leg in ("entry", "take_profit", "stop_loss"))
    position = await protect_partial_fills(intents, paper, group, ("0.4",))

    await paper.move_price(ETH, "2100")
    tp = await asyncio.wait_for(intents.result(tp_id), 30)
    assert tp.status is IntentStatus.FILLED and tp.filled == position
    sl = await asyncio.wait_for(intents.result(sl_id), 30)
    assert sl.status is IntentStatus.CANCELED and sl.filled == 0
    assert await ledger(paper, sl_id) == []  # the held stop-loss never reached the exchange
    assert await eth_held(paper) == 0

    await intents.cancel_group(group.group_id, "done")
    final = await asyncio.wait_for(intents.group_result(group.group_id), 30)
    assert (await intents.state(entry)).status is IntentStatus.CANCELED
    for intent_id in (entry, tp_id, sl_id):
        assert refusals(await intents.state(intent_id)) == []
    assert final.started == (entry, tp_id, sl_id)
    assert final.released == ()
    assert final.overfill == {}
