"""A long-lived intent continues as new when Temporal suggests it, carrying its state."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import sync_task_queue
from exchange_kernel.devserver import start_local_environment
from exchange_kernel.models import IntentStatus, account_sync_id, client_order_id
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import WORKFLOW_RUNNER, ensure_account_syncs
from exchange_kernel.workflows.account_sync import (
    AccountSyncStart,
    AccountSyncStatus,
    AccountSyncWorkflow,
)
from tests.conftest import Paper, paper_accounts
from tests.test_intents import new_intent, record_workflow_history, resting

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


async def test_a_sync_on_the_kernels_queue_moves_to_its_own_when_it_continues_as_new(
    short_history_env: WorkflowEnvironment, paper: Paper
) -> None:
    """A sync started before the syncs had a queue of their own (on the kernel's queue, no
    `task_queue` in its input) keeps its accounts' activity queues, and its continue-as-new
    moves it to `sync_task_queue`, where the worker's sync worker carries on its rounds."""
    client = short_history_env.client
    pool = ExchangePool(paper_accounts(paper.base_url))
    intents = IntentClient(client, QUEUE)
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="28000")
    try:
        async with build_worker(client, pool, QUEUE):
            handle = await client.start_workflow(
                AccountSyncWorkflow.run,
                AccountSyncStart(account="paper", interval=timedelta(milliseconds=200)),
                id=account_sync_id("paper"),
                task_queue=QUEUE,
            )
            first_run = handle.result_run_id
            await intents.submit(intent)
            await intents.wait_for(intent.intent_id, resting)
            # A round is ~10 events: moved within seconds.
            await eventually(lambda: moved_from(handle, first_run), within=60)
            description = await handle.describe()
            assert description.task_queue == sync_task_queue(QUEUE)
            moved = client.get_workflow_handle(account_sync_id("paper"))
            status = await moved.query("status", result_type=AccountSyncStatus)
            assert status.watched >= 1
            # Its rounds run on: its activities go to the account's queue.
            await eventually(lambda: sync_round_reached(moved, status.round + 2), within=30)
            await paper.move_price("BTC/USDT", "27990")  # filled: the moved sync tells it
            final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
            assert final.status is IntentStatus.FILLED
            await record_workflow_history(
                client, account_sync_id("paper"), "account_sync_continued_as_new", first_run
            )
            await moved.terminate("test done")
    finally:
        await pool.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.2)


async def moved_from(handle: WorkflowHandle[Any, Any], run_id: str | None) -> bool:
    return (await handle.describe()).run_id != run_id


async def sync_round_reached(handle: WorkflowHandle[Any, Any], round: int) -> bool:
    return (await handle.query("status", result_type=AccountSyncStatus)).round >= round


BOUND = 100


async def test_the_sync_continues_as_new_past_its_bound(
    temporal_client: Client,
) -> None:
    """The sync continues as new once its history passes `MAX_HISTORY_EVENTS`, well before
    Temporal suggests it, and the run replays. Each `sync_now` signal to an idle sync (nothing
    watched) adds an event or a few to its history."""
    queue = f"sync-bound-{uuid.uuid4().hex[:8]}"
    start = AccountSyncStart(account="bound", interval=timedelta(hours=1), max_history_events=BOUND)
    replayer = Replayer(
        workflows=[AccountSyncWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=[AccountSyncWorkflow],
        workflow_runner=WORKFLOW_RUNNER,
    ):
        new = await temporal_client.start_workflow(
            AccountSyncWorkflow.run, start, id=f"{queue}-new", task_queue=queue
        )
        await grow_history(new, BOUND, until_moved=True)
        first = temporal_client.get_workflow_handle(new.id, run_id=new.result_run_id)
        first_history = await first.fetch_history()
        await new.terminate("test done")
    events = list(first_history.events)
    assert events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert BOUND <= len(events) < 2 * BOUND, len(events)  # Temporal suggests it in thousands
    await replayer.replay_workflow(first_history)


async def grow_history(
    handle: WorkflowHandle[Any, Any], length: int, until_moved: bool = False
) -> None:
    """Signal `sync_now` until the run's history has `length` events (or it moved on)."""
    async with asyncio.timeout(60):
        while True:
            if until_moved and await moved_from(handle, handle.result_run_id):
                return
            history = await handle.fetch_history()
            if not until_moved and len(history.events) >= length:
                return
            await asyncio.gather(*(handle.signal("sync_now") for _ in range(10)))


# --- every decision input survives a continue-as-new -------------------------------------------
# Past 60 events the server suggests continuing as new, and the intent does so at its next
# quiet moment: these intents continue as new at nearly every wait.


async def activity_inputs(client: Client, workflow_id: str, activity: str) -> list[dict[str, Any]]:
    """The inputs of `activity` over every run of the workflow, oldest first."""
    inputs: list[dict[str, Any]] = []
    runs = [r async for r in client.list_workflows(f'WorkflowId="{workflow_id}"')]
    for run in sorted(runs, key=lambda r: r.start_time):
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        for event in history.events:
            if not event.HasField("activity_task_scheduled_event_attributes"):
                continue
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name == activity:
                inputs.append(json.loads(attributes.input.payloads[0].data))
    return inputs


async def looks_completed(client: Client, workflow_id: str) -> int:
    """Completed `fetch_order` activities over every run of the workflow."""
    done = 0
    runs = [r async for r in client.list_workflows(f'WorkflowId="{workflow_id}"')]
    for run in runs:
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        looks = {
            e.event_id
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
            and e.activity_task_scheduled_event_attributes.activity_type.name == "fetch_order"
        }
        done += sum(
            1
            for e in history.events
            if e.HasField("activity_task_completed_event_attributes")
            and e.activity_task_completed_event_attributes.scheduled_event_id in looks
        )
    return done


async def runs_of(client: Client, workflow_id: str) -> int:
    return len([r async for r in client.list_workflows(f'WorkflowId="{workflow_id}"')])


async def grow_intent_history(intents: IntentClient, intent_id: str, runs: int) -> None:
    """Resync (a look each: a few events) until the intent has continued as new `runs` times."""
    client = intents.temporal
    async with asyncio.timeout(60):
        while await runs_of(client, f"intent-{intent_id}") <= runs:
            await intents.resync(intent_id)
            await asyncio.sleep(0.05)
    await intents.wait_for(intent_id, resting)


async def grow_run_to_the_brink(intents: IntentClient, intent_id: str) -> None:
    """Resync until the current run waits with 50-59 events: the server suggests continuing
    as new from 60, so the next look (about ten events) takes it past the suggestion."""
    handle = intents.temporal.get_workflow_handle(f"intent-{intent_id}")
    async with asyncio.timeout(60):
        while True:
            events = list((await handle.fetch_history()).events)
            quiet = events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            if quiet and 50 <= len(events) < 60:
                return
            if quiet:
                await intents.resync(intent_id)
            await asyncio.sleep(0.2)


async def test_a_resync_pending_when_the_intent_continues_as_new_is_still_acted_on(
    short_history_env: WorkflowEnvironment, paper: Paper
) -> None:
    """A resync that lands while the intent looks at the exchange is acted on after the look,
    even when the intent continues as new right then (the look takes its run past the
    server's suggestion). Watched by the account sync, the intent
    waits with no timeout: a resync held outside the state carried over was lost, and the
    second look never came."""
    client = short_history_env.client
    pool = ExchangePool(paper_accounts(paper.base_url))
    intents = IntentClient(client, QUEUE)
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="28000")
    try:
        async with build_worker(client, pool, QUEUE):
            await ensure_account_syncs(client, ["paper"], QUEUE)
            await intents.submit(intent)
            await intents.wait_for(intent.intent_id, resting)
            await grow_run_to_the_brink(intents, intent.intent_id)
            before = await looks_completed(client, intent.workflow_id)
            await paper.faults(latency_ms=[1500, 1500], endpoints=["GET /api/v3/order"])
            try:
                await intents.resync(intent.intent_id)
                await asyncio.sleep(0.5)  # the first look is under way (1.5 s)
                await intents.resync(intent.intent_id)

                async def both_looks() -> bool:
                    return await looks_completed(client, intent.workflow_id) >= before + 2

                await eventually(both_looks, within=30)
            finally:
                await paper.faults()
            await intents.cancel(intent.intent_id)
            await intents.result(intent.intent_id)
            await client.get_workflow_handle(account_sync_id("paper")).terminate("test done")
    finally:
        await pool.close()


async def test_a_repaired_intent_that_continues_as_new_still_looks_before_placing(
    short_history_env: WorkflowEnvironment, paper: Paper
) -> None:
    """After `exchange-kernel repair`, every placement looks its client order id up before
    creating (an order of the discarded history may exist under it). That holds in the runs
    after a continue-as-new too: a flag kept outside the state was lost there."""
    client = short_history_env.client
    pool = ExchangePool(paper_accounts(paper.base_url))
    intents = IntentClient(client, QUEUE)
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="28000", account="paper-replace")
    try:
        async with build_worker(client, pool, QUEUE):
            await intents.submit(intent)
            await intents.wait_for(intent.intent_id, resting)
            await client.get_workflow_handle(intent.workflow_id).signal("repaired", "test")
            await grow_intent_history(intents, intent.intent_id, runs=1)
            await intents.modify(intent.intent_id, price="28100")  # cancel, then place again
            await intents.wait_for(
                intent.intent_id,
                lambda s: resting(s) and s.placements[-1].price == Decimal("28100"),
            )
            placed = await activity_inputs(client, intent.workflow_id, "place_order")
            assert [p["may_exist"] for p in placed] == [False, True], placed
            await intents.cancel(intent.intent_id)
            await intents.result(intent.intent_id)
    finally:
        await pool.close()
