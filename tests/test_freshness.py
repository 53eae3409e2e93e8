"""A view of the exchange has an age: `stale` past the bound, never `in_sync` on an old look; and
a lower amount is judged on the order's final fills, never on a view the exchange overtook.
Real dev server, worker and paper exchange; the staleness bound is shortened for speed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from exchange_kernel.client import IntentClient, IntentRejected
from exchange_kernel.connection import sync_task_queue
from exchange_kernel.models import IntentState, IntentStatus, ReconciliationStatus, account_sync_id
from exchange_kernel.workflows import intent
from exchange_kernel.workflows.account_sync import AccountSyncStart, AccountSyncWorkflow
from tests.conftest import TASK_QUEUE, Paper, eventually
from tests.test_intents import new_intent, record_workflow_history, resting

LOOKUPS = ["GET /api/v3/order"]
SYNC_READS = ["GET /api/v3/openOrders", "GET /api/v3/myTrades"]


@pytest.fixture
def short_staleness(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup gives up after 2 s (an activity's timeout: no decision of a workflow depends on
    it, so patching it in the worker's process changes no history). The bounds that decisions
    depend on are inputs: the intents' `stale_after` (`SHORT`, polls at most every 1.5 s), the
    account sync's `stale_after` (`fresh_sync`); patched globals changed the decisions of every
    run of the session's worker, whose histories then did not replay."""
    monkeypatch.setattr(intent, "LOOKUP_BUDGET", timedelta(seconds=2))


SHORT = timedelta(seconds=3)  # the intents' stale bound here


async def fresh_sync(client: Client) -> None:
    """The "paper-fresh" account's sync, lapsing after 3 s, a round given up after 2 s."""
    await client.start_workflow(
        AccountSyncWorkflow.run,
        AccountSyncStart(
            account="paper-fresh",
            task_queue=TASK_QUEUE,
            stale_after=timedelta(seconds=3),
            round_budget=timedelta(seconds=2),
        ),
        id=account_sync_id("paper-fresh"),
        task_queue=sync_task_queue(TASK_QUEUE),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def reads(intents: IntentClient, intent_id: str, status: ReconciliationStatus) -> bool:
    """Both the query (through the client) and visibility (the search attribute) say it."""
    state = await intents.state(intent_id)
    if state.reconciliation_status is not status:
        return False
    listed = await intents.list(reconciliation=status, limit=200)
    return any(row.intent_id == intent_id for row in listed)


@pytest.mark.usefixtures("short_staleness")
async def test_a_polled_intent_reads_stale_while_its_looks_fail_then_in_sync_again(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    item = new_intent(price="28000", account="paper-replace")  # polled: no account sync
    item = item.model_copy(update={"stale_after": SHORT})
    await intents.submit(item)
    await intents.wait_for(item.intent_id, resting)
    await paper.faults(error_503=1.0, endpoints=LOOKUPS)
    try:
        await eventually(
            "stale", lambda: reads(intents, item.intent_id, ReconciliationStatus.STALE), 30
        )
    finally:
        await paper.faults()
    await eventually(
        "in sync", lambda: reads(intents, item.intent_id, ReconciliationStatus.IN_SYNC), 30
    )
    await intents.cancel(item.intent_id)
    assert (await intents.result(item.intent_id)).status is IntentStatus.CANCELED


@pytest.mark.usefixtures("short_staleness")
async def test_a_watched_intent_reads_stale_while_its_account_sync_fails_then_in_sync_again(
    intents: IntentClient, paper: Paper, temporal_client: Client
) -> None:
    await fresh_sync(temporal_client)
    await paper.move_price("BTC/USDT", "30000")
    item = new_intent(price="28000", account="paper-fresh")  # watched by its account sync
    await intents.submit(item)
    await intents.wait_for(item.intent_id, lambda s: resting(s) and s.watched)
    await paper.faults(error_503=1.0, endpoints=SYNC_READS)
    try:
        await eventually(
            "stale", lambda: reads(intents, item.intent_id, ReconciliationStatus.STALE), 40
        )
        state = await intents.state(item.intent_id)
        assert state.watch_lapsed_since is not None
    finally:
        await paper.faults()
    await eventually(
        "in sync", lambda: reads(intents, item.intent_id, ReconciliationStatus.IN_SYNC), 40
    )
    await intents.cancel(item.intent_id)
    assert (await intents.result(item.intent_id)).status is IntentStatus.CANCELED


async def clear_and_rest_a_sell(intents: IntentClient, paper: Paper, price: str) -> str:
    """A sell of 0.5 SOL resting at `price`, the only sell there: the market is first moved just
    below it with no volume limit, which fills every sell left below it by earlier tests."""
    below = str(Decimal(price) - Decimal("0.01"))
    await paper.move_price("SOL/USDT", "90")
    await paper.move_price("SOL/USDT", below)
    await paper.move_price("SOL/USDT", "90")
    item = new_intent(
        symbol="SOL/USDT", side="sell", amount="0.5", price=price, account="paper-replace"
    )
    await intents.submit(item)
    await intents.wait_for(item.intent_id, resting)
    return item.intent_id


async def test_a_reduction_below_what_the_exchange_filled_is_refused_on_the_final_fills(
    intents: IntentClient, paper: Paper
) -> None:
    """The exchange fills 0.3 of the order; before the intent has seen it (its looks are slow),
    the strategy lowers the amount to 0.2. The known view (nothing filled) would accept that and
    the intent would end filled above its amount; judged on the order's final fills (it is
    cancelled first) it is refused, and the intent keeps working at 0.5."""
    intent_id = await clear_and_rest_a_sell(intents, paper, "137.77")
    await paper.faults(latency_ms=[1500, 1500], endpoints=LOOKUPS)
    try:
        await paper.move_price("SOL/USDT", "137.77", volume="0.3")
        known = await intents.state(intent_id)
        with pytest.raises(IntentRejected, match=r"below the 0\.3"):
            await intents.modify(intent_id, amount="0.2")
    finally:
        await paper.faults()
    await paper.move_price("SOL/USDT", "120")
    state = await intents.wait_for(intent_id, resting_partially)
    assert state.desired.amount == Decimal("0.5") and state.filled == Decimal("0.3")
    assert state.recent_actions[-1].action != "modify"
    orders = await paper.orders_of(state.placements[0].client_order_id[:-1])
    assert sum(Decimal(o["filled"]) for o in orders) == Decimal("0.3")
    live = [o for o in orders if o["status"] in ("NEW", "PARTIALLY_FILLED")]
    assert [Decimal(o["amount"]) - Decimal(o["filled"]) for o in live] == [Decimal("0.2")]
    # Whether the reduction raced the fill or came after the intent had seen it, the known view
    # at the time said at most what the exchange did.
    assert known.filled <= Decimal("0.3")

    # A reduction above the final fills is accepted, answered once judged: 0.1 is placed again.
    brief = await intents.modify(intent_id, amount="0.4")
    assert brief.desired.amount == Decimal("0.4") and brief.filled == Decimal("0.3")
    await intents.wait_for(
        intent_id, lambda s: resting_partially(s) and s.placements[-1].amount == Decimal("0.1")
    )
    await intents.cancel(intent_id)
    final = await intents.result(intent_id)
    assert final.filled <= final.desired.amount
    await record_workflow_history(intents.temporal, f"intent-{intent_id}", "reduction_judged")


def resting_partially(state: IntentState) -> bool:
    return (
        state.status is IntentStatus.PARTIALLY_FILLED
        and state.reconciliation_status is ReconciliationStatus.IN_SYNC
    )


async def test_a_reduction_is_answered_after_the_cancel_and_the_signal_form_is_judged_alike(
    intents: IntentClient, paper: Paper
) -> None:
    """A lower amount sent as a signal (fire and forget) is judged the same way: refused when
    below the final fills (the recent actions say why), the intent working on at its amount."""
    intent_id = await clear_and_rest_a_sell(intents, paper, "137.79")
    await paper.faults(latency_ms=[1500, 1500], endpoints=LOOKUPS)
    try:
        await paper.move_price("SOL/USDT", "137.79", volume="0.3")
        await intents.signal_modify(intent_id, amount="0.1")
        await asyncio.sleep(0.5)
    finally:
        await paper.faults()
    await paper.move_price("SOL/USDT", "120")
    state = await intents.wait_for(
        intent_id, lambda s: resting_partially(s) and not s.pending_changes
    )
    assert state.desired.amount == Decimal("0.5")
    assert any(
        r.action == "modify rejected" and "below the 0.3" in r.reason for r in state.recent_actions
    ), state.recent_actions
    await intents.cancel(intent_id)
    await intents.result(intent_id)
