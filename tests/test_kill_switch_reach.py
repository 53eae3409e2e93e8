"""The kill switch holds in the workflow, not only in the client: a halt reaches every intent of
the account, and one that lands between the client's check and the workflow's start still
holds. Each scenario goes around `IntentClient` (a raw Temporal start) to open the race."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from temporalio.client import Client

from exchange_kernel import reconcile
from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.client import IntentClient, IntentRejected
from exchange_kernel.devserver import intent_search_attributes
from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    GroupKind,
    IntentChange,
    IntentGroup,
    IntentStart,
    IntentState,
    IntentStatus,
    MarketRules,
    OrderIntent,
    OrderSpec,
    group_workflow_id,
    intent_digest,
)
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import ensure_account_syncs
from exchange_kernel.workflows.group import IntentGroupWorkflow
from exchange_kernel.workflows.intent import OrderIntentWorkflow
from tests.conftest import TEST_KEY_ENV, TEST_SECRET_ENV, Paper, eventually, paper_accounts
from tests.test_intents import new_intent, resting

QUEUE = "exchange-kernel-halt-reach"
ACCOUNT = "paper-halt-reach"


@pytest.fixture
async def halting(temporal_client: Client, paper: Paper) -> AsyncIterator[IntentClient]:
    """A worker for the account; its sync runs, nothing halted at the start."""
    paper_accounts(paper.base_url)  # the paper keys in the environment
    config = AccountConfig(
        name=ACCOUNT, api_key_env=TEST_KEY_ENV, secret_env=TEST_SECRET_ENV, base_url=paper.base_url
    )
    pool = ExchangePool({ACCOUNT: config})
    intents = IntentClient(temporal_client, QUEUE)
    try:
        async with build_worker(temporal_client, pool, QUEUE):
            await ensure_account_syncs(temporal_client, [ACCOUNT], QUEUE)
            await resume_all(intents, ACCOUNT)
            yield intents
            await resume_all(intents, ACCOUNT)
    finally:
        await pool.close()


async def resume_all(intents: IntentClient, account: str) -> None:
    for scope in await intents.halts(account):
        await intents.resume(account, None if scope == "*" else scope)


async def final_state(intents: IntentClient, intent_id: str) -> IntentState:
    """The intent's result, once its workflow exists (a group starts its members itself)."""

    async def started() -> bool:
        try:
            await intents.state(intent_id)
        except Exception:
            return False
        return True

    await eventually(f"{intent_id} started", started, 30)
    return await asyncio.wait_for(intents.result(intent_id), 30)


async def start_raw(client: Client, intent: OrderIntent, state: IntentState | None = None) -> None:
    """Start the intent's workflow as any Temporal client would: no halt check before it."""
    await client.start_workflow(
        OrderIntentWorkflow.run,
        IntentStart(intent=intent, state=state),
        id=intent.workflow_id,
        task_queue=QUEUE,
        search_attributes=intent_search_attributes(intent),
    )


async def on_the_exchange(paper: Paper, intent_id: str) -> list[dict[str, object]]:
    return await paper.orders_of(f"ek-{intent_digest(intent_id)}-")


async def test_a_halt_set_after_the_clients_check_still_stops_a_new_intent(
    halting: IntentClient, paper: Paper
) -> None:
    await paper.move_price("SOL/USDT", "100")
    await halting.halt(ACCOUNT, reason="risk check")
    intent = new_intent(symbol="SOL/USDT", amount="1", price="90", account=ACCOUNT)
    await start_raw(halting.temporal, intent)
    final = await asyncio.wait_for(halting.result(intent.intent_id), 30)
    assert final.status is IntentStatus.REJECTED
    assert "halted" in (final.outcome_reason or "")
    assert await on_the_exchange(paper, intent.intent_id) == []


async def test_a_group_started_while_halted_places_no_member(
    halting: IntentClient, paper: Paper
) -> None:
    await paper.move_price("SOL/USDT", "100")
    await halting.halt(ACCOUNT, "SOL/USDT", reason="risk check")
    group_id = f"g-{uuid.uuid4().hex[:8]}"
    members = tuple(
        OrderIntent(
            intent_id=f"{group_id}.{n}",
            account=ACCOUNT,
            order=OrderSpec(symbol="SOL/USDT", side="buy", amount="1", price=price),
        )
        for n, price in (("a", "80"), ("b", "81"))
    )
    group = IntentGroup(group_id=group_id, account=ACCOUNT, kind=GroupKind.OCO, members=members)
    await halting.temporal.start_workflow(
        IntentGroupWorkflow.run, group, id=group_workflow_id(group_id), task_queue=QUEUE
    )
    for member in members:
        final = await final_state(halting, member.intent_id)
        assert final.status is IntentStatus.REJECTED, final.outcome_reason
        assert await on_the_exchange(paper, member.intent_id) == []


async def test_an_adopted_order_under_a_halt_takes_no_risk_increasing_change(
    halting: IntentClient, paper: Paper
) -> None:
    """Started around the client's check while halted: it keeps the order it adopted (that is
    no new risk), and refuses a change adding risk; a reduction goes through."""
    await paper.move_price("SOL/USDT", "100")
    placed = new_intent(symbol="SOL/USDT", amount="1", price="70", account=ACCOUNT)
    await halting.submit(placed)
    state = await halting.wait_for(placed.intent_id, resting)
    order = state.placements[0].order
    assert order is not None
    await halting.temporal.get_workflow_handle(placed.workflow_id).terminate("orphaned")
    await halting.halt(ACCOUNT, reason="risk check")
    adopted_id = f"{placed.intent_id}-adopted"
    spec = OrderSpec(symbol="SOL/USDT", side="buy", amount=order.amount, price=order.price)
    intent = OrderIntent(intent_id=adopted_id, account=ACCOUNT, order=spec)
    await start_raw(halting.temporal, intent, reconcile.adopted(intent, order))
    await halting.wait_for(adopted_id, lambda s: resting(s) and s.halted is not None)
    with pytest.raises(IntentRejected, match="halted"):
        await halting.modify(adopted_id, amount="2")
    await halting.modify(adopted_id, price="69")  # a buy, lower: less risk
    await halting.cancel(adopted_id)
    final = await asyncio.wait_for(halting.result(adopted_id), 30)
    assert final.status is IntentStatus.CANCELED


async def test_a_halt_reaches_an_intent_its_sync_does_not_watch(
    temporal_client: Client, paper: Paper
) -> None:
    """Submitted while no sync ran (its watch refused, it polls), then the sync starts and the
    account is halted: the halt still reaches it (through visibility), and it refuses risk."""
    config = AccountConfig(
        name=f"{ACCOUNT}-late",
        api_key_env=TEST_KEY_ENV,
        secret_env=TEST_SECRET_ENV,
        base_url=paper.base_url,
    )
    paper_accounts(paper.base_url)  # the paper keys in the environment
    pool = ExchangePool({config.name: config})
    intents = IntentClient(temporal_client, QUEUE)
    await paper.move_price("SOL/USDT", "100")
    intent = new_intent(symbol="SOL/USDT", amount="1", price="75", account=config.name)
    try:
        async with build_worker(temporal_client, pool, QUEUE):
            await intents.submit(intent)
            state = await intents.wait_for(intent.intent_id, resting)
            assert state.watch_refused and not state.watched
            await ensure_account_syncs(temporal_client, [config.name], QUEUE)
            await asyncio.sleep(1.5)  # visibility has the intent's search attributes

            async def halted() -> bool:
                return (await intents.state(intent.intent_id)).halted is not None

            await intents.halt(config.name, reason="risk check")
            await eventually("the halt reaching the intent", halted, 30)
            with pytest.raises(IntentRejected, match="halted"):
                await intents.modify(intent.intent_id, amount="3")
            await intents.resume(config.name)
            await intents.cancel(intent.intent_id)
            await asyncio.wait_for(intents.result(intent.intent_id), 30)
    finally:
        await pool.close()


def test_a_change_accepted_before_the_halt_is_not_placed_after_it() -> None:
    """A larger amount accepted just before the halt, not yet on the exchange: the plan goes
    back to the last accepted revision instead of placing it (pure: the reconciler alone)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    spec = OrderSpec(symbol="SOL/USDT", side="buy", amount="1", price="90")
    intent = OrderIntent(intent_id="halt-race", account=ACCOUNT, order=spec)
    state = IntentState(
        intent=intent, desired=spec, rules=MarketRules(symbol="SOL/USDT", exchange="binance")
    )
    place = reconcile.plan(state, now)
    assert isinstance(place, reconcile.Place)
    state = reconcile.begin(state, place, now)
    seen = ExchangeOrder(
        exchange_order_id="1",
        client_order_id=place.placement.client_order_id,
        symbol="SOL/USDT",
        side="buy",
        type="limit",
        status=ExchangeOrderStatus.OPEN,
        price=Decimal("90"),
        amount=Decimal("1"),
    )
    state = reconcile.record(state, place, reconcile.Observed(order=seen), now)
    state = reconcile.apply_change(state, IntentChange(amount=Decimal("3")), now)
    state = reconcile.set_halted(state, "risk check", now)
    action = reconcile.plan(state, now)
    assert isinstance(action, reconcile.Revert), action
    state = reconcile.record(state, action, None, now)
    assert state.desired == spec
    refusal = reconcile.refusal_of(state, state.revision)
    assert refusal is not None and "halted" in refusal.reason
    assert not isinstance(reconcile.plan(state, now), reconcile.Place | reconcile.Amend)
