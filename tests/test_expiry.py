"""Good-till-time: an intent is cancelled at its deadline, ends `expired`, keeps its fills.

Runs on the time-skipping test server, so an hour passes in seconds. A quiet stand-in for the
account sync accepts the intent's `watch` registration, so while resting the intent's only
timer is its deadline (with per-intent polling, every poll would run an activity and the hour
would take minutes of real time)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from temporalio import workflow
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.activities.kernel import KernelActivities
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import account_task_queue
from exchange_kernel.devserver import start_time_skipping_environment
from exchange_kernel.models import IntentStatus, WatchRequest, account_sync_id
from exchange_kernel.reconcile import POLL_CEILING
from exchange_kernel.workflows.intent import OrderIntentWorkflow
from tests.conftest import Paper, paper_accounts
from tests.test_intents import new_intent

QUEUE = "exchange-kernel-expiry"


@workflow.defn(name="AccountSync", sandboxed=False)
class QuietAccountSync:
    """Takes registrations and never observes: fills are pushed by `resync` in the test."""

    def __init__(self) -> None:
        self.watched: set[str] = set()

    @workflow.signal
    def watch(self, request: WatchRequest) -> None:
        self.watched.add(request.intent_id)

    @workflow.signal
    def unwatch(self, intent_id: str) -> None:
        self.watched.discard(intent_id)

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


@pytest.fixture(scope="module")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_time_skipping_environment(data_converter=pydantic_data_converter)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def expiry_worker(
    skipping_env: WorkflowEnvironment, paper: Paper
) -> AsyncIterator[IntentClient]:
    accounts = paper_accounts(paper.base_url)
    pool = ExchangePool(accounts)
    activities = ExchangeActivities(pool).all()
    main = Worker(
        skipping_env.client,
        task_queue=QUEUE,
        workflows=[OrderIntentWorkflow, QuietAccountSync],
        activities=[*activities, *KernelActivities(skipping_env.client).all()],
    )
    # Exchange calls go to each account's own task queue (docs/operations.md, scale-out).
    account_workers = [
        Worker(
            skipping_env.client, task_queue=account_task_queue(QUEUE, name), activities=activities
        )
        for name in accounts
    ]
    async with contextlib.AsyncExitStack() as running:
        for worker in (main, *account_workers):
            await running.enter_async_context(worker)
        await skipping_env.client.start_workflow(
            QuietAccountSync.run,
            id=account_sync_id("paper"),
            task_queue=QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        yield IntentClient(skipping_env.client, QUEUE)
    await pool.close()


async def test_intent_expires_at_its_deadline_and_keeps_its_fills(
    skipping_env: WorkflowEnvironment, expiry_worker: IntentClient, paper: Paper
) -> None:
    intents = expiry_worker
    await paper.move_price("ETH/USDT", "2000")
    now = await skipping_env.get_current_time()
    intent = new_intent(symbol="ETH/USDT", amount="1", price="1980").model_copy(
        update={"expires_at": now + timedelta(hours=1)}
    )
    with skipping_env.auto_time_skipping_disabled():
        await intents.submit(intent)
        await intents.wait_for(intent.intent_id, lambda s: s.status is IntentStatus.OPEN)
        await paper.move_price("ETH/USDT", "1980", volume="0.25")
        await intents.resync(intent.intent_id)
        await intents.wait_for(intent.intent_id, lambda s: s.filled == Decimal("0.25"))
    # Handles from get_workflow_handle do not unlock time skipping; skip the hour explicitly.
    await skipping_env.sleep(timedelta(hours=1, seconds=1))
    final = await intents.wait_for(intent.intent_id, lambda s: s.status.is_terminal)
    assert final.status is IntentStatus.EXPIRED
    assert final.filled == Decimal("0.25")
    assert "expired at" in (final.outcome_reason or "")
    assert final.recent_actions[-1].at >= intent.expires_at
    orders = await paper.orders_of(final.placements[0].client_order_id)
    assert orders[0]["status"] == "CANCELED"


async def test_intent_submitted_after_its_deadline_expires_without_an_order(
    skipping_env: WorkflowEnvironment, expiry_worker: IntentClient
) -> None:
    now = await skipping_env.get_current_time()
    intent = new_intent(price="20000").model_copy(update={"expires_at": now - timedelta(minutes=1)})
    await expiry_worker.submit(intent)
    final = await expiry_worker.wait_for(intent.intent_id, lambda s: s.status.is_terminal)
    assert final.status is IntentStatus.EXPIRED
    assert final.placements == ()


async def test_polling_backs_off_to_its_ceiling(
    skipping_env: WorkflowEnvironment, expiry_worker: IntentClient, paper: Paper
) -> None:
    """Without an account sync, a resting intent looks at its order after 1 s, then doubling,
    never less often than every POLL_CEILING (the timers in its history say so)."""
    intents = expiry_worker
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="21000", account="paper-replace")  # no sync for this account
    with skipping_env.auto_time_skipping_disabled():
        await intents.submit(intent)
        await intents.wait_for(intent.intent_id, lambda s: s.status is IntentStatus.OPEN)
    await skipping_env.sleep(timedelta(minutes=4))
    history = await skipping_env.client.get_workflow_handle(intent.workflow_id).fetch_history()
    timers = [
        event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for event in history.events
        if event.HasField("timer_started_event_attributes")
    ]
    # Each wait is the interval since the last look was asked for, less the look's own time.
    seconds = [round(t.total_seconds()) for t in timers]
    ceiling = round(POLL_CEILING.total_seconds())
    assert seconds[:5] == [1, 2, 4, 8, ceiling], seconds
    assert all(s == ceiling for s in seconds[5:]), seconds
    assert len(seconds) >= 8
    await intents.signal_cancel(intent.intent_id)
