"""End to end: the real dev server, the real ccxt binance client, the paper exchange over HTTP."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.client import AlreadyExistsError, IntentClient, IntentRejected
from exchange_kernel.models import (
    ExternalCancelPolicy,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    client_order_id,
    intent_digest,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, binance_client
from exchange_kernel.worker import build_worker
from tests.conftest import TASK_QUEUE, Paper, eventually, paper_accounts

HISTORIES = Path(__file__).parent / "histories"
RECORD = os.environ.get("EK_RECORD_HISTORIES") == "1"


def new_intent(
    *,
    symbol: str = "BTC/USDT",
    side: str = "buy",
    amount: str = "0.01",
    price: str | None = "29000",
    account: str = "paper",
    **order: Any,
) -> OrderIntent:
    extra = {k: order.pop(k) for k in ("on_external_cancel",) if k in order}
    return OrderIntent(
        intent_id=f"t-{uuid.uuid4().hex[:10]}",
        account=account,
        order=OrderSpec(symbol=symbol, side=side, amount=amount, price=price, **order),
        **extra,
    )


def resting(state: IntentState) -> bool:
    return state.status is IntentStatus.OPEN and state.reconciliation_status.value == "in_sync"


async def exchange_orders(paper: Paper, intent: OrderIntent) -> list[dict[str, Any]]:
    return await paper.orders_of(f"ek-{intent_digest(intent.intent_id)}-")


def live(orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in orders if o["status"] in ("NEW", "PARTIALLY_FILLED")]


async def record_history(client: Client, intent: OrderIntent, name: str) -> None:
    """Keep the scenario's history for the replay test (`make histories` refreshes them)."""
    await record_workflow_history(client, intent.workflow_id, name)


async def record_workflow_history(
    client: Client, workflow_id: str, name: str, run_id: str | None = None
) -> None:
    """The same for any of the kernel's workflows (a group, an account sync), or one run."""
    if not RECORD:
        return
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    (HISTORIES / f"{name}.json").write_text(history.to_json())


async def test_limit_rests_then_fills(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent()
    await intents.submit(intent)
    state = await intents.wait_for(intent.intent_id, resting)
    assert state.placements[0].client_order_id == client_order_id(intent.intent_id, 0)
    assert len(live(await exchange_orders(paper, intent))) == 1

    await paper.move_price("BTC/USDT", "28990")
    await intents.resync(intent.intent_id)
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.FILLED
    assert final.filled == Decimal("0.01")
    assert final.average_price == Decimal("29000")
    assert sum(f.amount for f in final.fills) == Decimal("0.01")
    assert final.fees  # fees are reported per currency
    await record_history(intents.temporal, intent, "limit_rests_then_fills")


async def fetch_orders_done(temporal: Client, intent: OrderIntent) -> int:
    """How many `fetch_order` calls (looks at the exchange) of the intent have completed."""
    history = await temporal.get_workflow_handle(intent.workflow_id).fetch_history()
    scheduled = {
        e.event_id
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "fetch_order"
    }
    return sum(
        1
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
        and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    )


async def test_a_resync_during_a_look_is_acted_on_right_after_it(
    intents: IntentClient, paper: Paper
) -> None:
    """A resync is level-triggered: one that lands while the intent is already looking at the
    exchange gets its own look as soon as that one ends, with nothing else to wake the intent
    (it is watched by the account sync, so its wait has no timeout). Acted on only when a wait
    ended, it waited for the next wake-up, and the commands depended on how the core split a
    task into activations (docs/reliability.md, finding 2)."""
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="28000")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    before = await fetch_orders_done(intents.temporal, intent)
    await paper.faults(latency_ms=[2000, 2000], endpoints=["GET /api/v3/order"])
    try:
        await intents.resync(intent.intent_id)
        await asyncio.sleep(0.7)  # the first look is under way (2 s)
        await intents.resync(intent.intent_id)

        async def two_looks() -> bool:
            return await fetch_orders_done(intents.temporal, intent) >= before + 2

        await eventually("both looks", two_looks)
    finally:
        await paper.faults()
    await intents.cancel(intent.intent_id)
    await intents.result(intent.intent_id)
    await record_history(intents.temporal, intent, "resync_during_a_look")


async def test_partial_fills_then_modify_then_fill(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("ETH/USDT", "2000")
    intent = new_intent(symbol="ETH/USDT", amount="1", price="1990")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)

    await paper.move_price("ETH/USDT", "1990", volume="0.3")
    await intents.resync(intent.intent_id)
    partial = await intents.wait_for(intent.intent_id, lambda s: s.filled == Decimal("0.3"))
    assert partial.status is IntentStatus.PARTIALLY_FILLED

    with pytest.raises(IntentRejected, match=r"below the 0\.3 already filled"):
        await intents.modify(intent.intent_id, amount="0.2")

    await paper.move_price("ETH/USDT", "2000")
    changed = await intents.modify(intent.intent_id, price="1995", amount="0.8")
    assert changed.desired.amount == Decimal("0.8")
    state = await intents.wait_for(
        intent.intent_id, lambda s: resting_partial(s) and s.placements[-1].price == Decimal("1995")
    )
    # the replacement order carries what is left: 0.8 - 0.3
    assert state.placements[-1].order.amount == Decimal("0.5")

    await paper.move_price("ETH/USDT", "1994")
    await intents.resync(intent.intent_id)
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.FILLED
    assert final.filled == Decimal("0.8")
    assert len(final.placements) == 2
    orders = await exchange_orders(paper, intent)
    assert sum(Decimal(o["filled"]) for o in orders) == Decimal("0.8")
    await record_history(intents.temporal, intent, "partial_fills_modify_fill")


def resting_partial(state: IntentState) -> bool:
    return state.reconciliation_status.value == "in_sync" and state.status in (
        IntentStatus.OPEN,
        IntentStatus.PARTIALLY_FILLED,
    )


@pytest.mark.parametrize("account", ["paper", "paper-replace"])
async def test_modify_price_of_resting_order(
    intents: IntentClient, paper: Paper, account: str
) -> None:
    await paper.move_price("SOL/USDT", "100")
    intent = new_intent(symbol="SOL/USDT", amount="1", price="95", account=account)
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)

    await intents.modify(intent.intent_id, price="96")
    state = await intents.wait_for(
        intent.intent_id, lambda s: resting(s) and s.placements[-1].price == Decimal("96")
    )
    orders = await exchange_orders(paper, intent)
    assert len(orders) == 2
    assert len(live(orders)) == 1
    assert Decimal(live(orders)[0]["price"]) == Decimal("96")
    kinds = [a.action for a in state.recent_actions]
    assert ("amend" in kinds) == (account == "paper")
    await intents.cancel(intent.intent_id)
    await intents.result(intent.intent_id)
    name = "modify_native_amend" if account == "paper" else "modify_cancel_replace"
    await record_history(intents.temporal, intent, name)


async def test_cancel_resting_order(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="25000")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    await intents.cancel(intent.intent_id, "strategy changed its mind")
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.CANCELED
    assert final.outcome_reason == "strategy changed its mind"
    assert live(await exchange_orders(paper, intent)) == []
    with pytest.raises(IntentRejected, match="already canceled"):
        await intents.modify(intent.intent_id, price="25001")
    await record_history(intents.temporal, intent, "cancel_resting")


async def test_cancel_racing_a_fill_keeps_the_fill(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="29500")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    # The fill lands on the exchange before the kernel has seen it; the cancel meets a
    # filled order and the outcome is decided by observing it.
    await paper.move_price("BTC/USDT", "29400")
    await intents.signal_cancel(intent.intent_id, "too late")
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.FILLED
    assert final.filled == Decimal("0.01")


async def test_market_order_fills(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("SOL/USDT", "100")
    intent = new_intent(symbol="SOL/USDT", side="sell", amount="2", price=None, type="market")
    await intents.submit(intent)
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.FILLED
    assert final.filled == Decimal("2")
    assert final.average_price == Decimal("100")
    await record_history(intents.temporal, intent, "market_order")


async def test_insufficient_funds_is_rejected_with_the_reason(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(amount="50", price="29000")  # 1.45M USDT; the account holds 1M
    await intents.submit(intent)
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.REJECTED
    assert "InsufficientFunds" in (final.outcome_reason or "")
    assert await exchange_orders(paper, intent) == [] or all(
        o["status"] == "REJECTED" for o in await exchange_orders(paper, intent)
    )


async def test_rule_breaking_intent_is_rejected_naming_the_rule(
    intents: IntentClient, paper: Paper
) -> None:
    intent = new_intent(price="29000.001")
    await intents.submit(intent)
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.REJECTED
    assert "tick size" in (final.outcome_reason or "")
    assert await exchange_orders(paper, intent) == []


async def test_submit_is_idempotent_for_the_same_spec(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="20000")
    await intents.submit(intent)
    again = await intents.submit(intent)
    assert again.intent == intent
    other = intent.model_copy(update={"order": intent.order.model_copy(update={"price": 1})})
    with pytest.raises(AlreadyExistsError, match="another spec"):
        await intents.submit(other)
    await intents.cancel(intent.intent_id)
    await intents.result(intent.intent_id)
    assert len(await exchange_orders(paper, intent)) == 1


async def test_external_cancel_finishes_by_default_and_restores_on_request(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    someone_else = binance_client(paper.base_url, DEMO_API_KEY, DEMO_SECRET)
    finish = new_intent(price="21000")
    restore = new_intent(price="21000", on_external_cancel=ExternalCancelPolicy.RESTORE)
    for intent in (finish, restore):
        await intents.submit(intent)
        await intents.wait_for(intent.intent_id, resting)
        # Someone else on the same account cancels the order through the exchange's API.
        await someone_else.cancel_order(
            None, "BTC/USDT", {"clientOrderId": client_order_id(intent.intent_id, 0)}
        )
        await intents.resync(intent.intent_id)
    final = await intents.result(finish.intent_id)
    assert final.status is IntentStatus.CANCELED
    assert "outside exchange-kernel" in (final.outcome_reason or "")
    restored = await intents.wait_for(
        restore.intent_id, lambda s: resting(s) and len(s.placements) == 2
    )
    assert restored.placements[-1].client_order_id == client_order_id(restore.intent_id, 1)
    await intents.cancel(restore.intent_id)
    await someone_else.close()


async def test_dropped_placement_response_leaves_exactly_one_order(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    await paper.faults(drop_response=1.0, seed=7)
    intent = new_intent(price="22000")
    await intents.submit(intent)
    await asyncio.sleep(1.5)  # at least one attempt commits the order and loses the answer
    await paper.faults()
    state = await intents.wait_for(intent.intent_id, resting, within=timedelta(seconds=60))
    orders = await exchange_orders(paper, intent)
    assert len(orders) == 1, orders
    assert state.placements[-1].order.exchange_order_id == str(orders[0]["order_id"])
    await intents.cancel(intent.intent_id)


async def test_worker_restart_mid_intent_completes(
    temporal_client: Client, paper: Paper, worker: Any
) -> None:
    """A second worker process takes over an intent whose first worker died."""
    queue = f"{TASK_QUEUE}-restart"
    intents = IntentClient(temporal_client, queue)
    await paper.move_price("ETH/USDT", "2000")
    intent = new_intent(symbol="ETH/USDT", amount="0.5", price="1950")

    first_pool = ExchangePool(paper_accounts(paper.base_url))
    first = build_worker(temporal_client, first_pool, queue)
    task = asyncio.create_task(first.run())
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, resting)
    await first.shutdown()
    await task
    await first_pool.close()

    await paper.move_price("ETH/USDT", "1940")
    second_pool = ExchangePool(paper_accounts(paper.base_url))
    second = build_worker(temporal_client, second_pool, queue)
    async with second:
        await intents.resync(intent.intent_id)
        final = await asyncio.wait_for(intents.result(intent.intent_id), 60)
    await second_pool.close()
    assert final.status is IntentStatus.FILLED
    assert len(await exchange_orders(paper, intent)) == 1


async def test_pre_trade_limit_rejects_at_submission_and_at_modification(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    too_big = new_intent(amount="0.1", price="29000", account="paper-limited")  # 2900 USDT
    await intents.submit(too_big)
    final = await intents.result(too_big.intent_id)
    assert final.status is IntentStatus.REJECTED
    assert "max_notional_per_intent = 1000" in (final.outcome_reason or "")
    assert await exchange_orders(paper, too_big) == []

    small = new_intent(amount="0.01", price="29000", account="paper-limited")  # 290 USDT
    await intents.submit(small)
    await intents.wait_for(small.intent_id, resting)
    with pytest.raises(IntentRejected, match="max_notional_per_intent"):
        await intents.modify(small.intent_id, amount="0.05")
    await intents.cancel(small.intent_id)
    await intents.result(small.intent_id)
