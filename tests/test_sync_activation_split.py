"""What a sync round signals depends only on the state the round started from, not on how a
workflow task's events are split into activations.

A replay hands the workflow every event of a task in one activation, signals first; a live
worker may have handled the round's result before a signal of the same task (a defect of the
SDK's core met in CI: an `unwatch` that came with a round's result, handled live after it and
on replay before it, made the replay skip the `observed` signal the live run had sent, and the
account's sync was stuck: "Timer machine does not handle this event:
SignalExternalWorkflowExecutionInitiated"). Here the task is made to hold the round's result
and the unwatch together: no workflow worker runs while both arrive, so the next one handles
them in one activation, as every replay does. The round's `observed` must be sent all the same.

The sync's activities are stand-ins registered under the real names (the round's result is
what the test needs it to be); Temporal and the workflow are real.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from exchange_kernel.connection import account_task_queue
from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    Side,
    StreamRequest,
    SyncRequest,
    SyncResult,
    WatchRequest,
    client_order_id,
    workflow_id_for,
)
from exchange_kernel.worker.run import WORKFLOW_RUNNER
from exchange_kernel.workflows.account_sync import AccountSyncStart, AccountSyncWorkflow
from tests.conftest import eventually
from tests.test_intents import record_workflow_history


class StandIns:
    """`sync_account` reports the watched intent's order as changed, once released."""

    def __init__(self, intent_id: str) -> None:
        self.intent_id = intent_id
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    @activity.defn(name="sync_account")
    async def sync_account(self, request: SyncRequest) -> SyncResult:
        self.started.set()
        await self.release.wait()
        order = ExchangeOrder(
            exchange_order_id="1",
            client_order_id=client_order_id(self.intent_id, 0),
            symbol="BTC/USDT",
            side=Side.BUY,
            type="limit",
            status=ExchangeOrderStatus.OPEN,
            price=Decimal("29000"),
            amount=Decimal("0.01"),
            filled=Decimal("0.004"),
        )
        return SyncResult(changed=(order,), trade_cursor=request.trade_cursor)

    @activity.defn(name="follow_user_stream")
    async def follow_user_stream(self, request: StreamRequest) -> str:
        return "off: no stream in this test"


def signals_sent(events: list, name: str) -> list[str]:
    return [
        e.signal_external_workflow_execution_initiated_event_attributes.workflow_execution.workflow_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
        and e.signal_external_workflow_execution_initiated_event_attributes.signal_name == name
    ]


async def test_an_unwatch_that_comes_with_a_rounds_result_does_not_change_what_it_signals(
    temporal_client: Client,
) -> None:
    queue = f"sync-split-{uuid.uuid4().hex[:8]}"
    account = "split"
    intent_id = f"t-split-{uuid.uuid4().hex[:8]}"
    stand_ins = StandIns(intent_id)
    workflows = {"workflows": [AccountSyncWorkflow], "workflow_runner": WORKFLOW_RUNNER}
    async with Worker(
        temporal_client,
        task_queue=account_task_queue(queue, account),
        activities=[stand_ins.sync_account, stand_ins.follow_user_stream],
    ):
        async with Worker(temporal_client, task_queue=queue, **workflows):
            handle = await temporal_client.start_workflow(
                AccountSyncWorkflow.run,
                AccountSyncStart(account=account, interval=timedelta(hours=1)),
                id=f"{queue}-sync",
                task_queue=queue,
            )
            await handle.signal("watch", WatchRequest(intent_id=intent_id, symbol="BTC/USDT"))
            await handle.signal("sync_now")
            await asyncio.wait_for(stand_ins.started.wait(), 30)
        # No workflow worker now: the round's result and the unwatch wait in one task.
        stand_ins.release.set()

        async def completed() -> bool:
            events = list((await handle.fetch_history()).events)
            return any(e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED for e in events)

        async def observed() -> bool:
            return bool(signals_sent(list((await handle.fetch_history()).events), "observed"))

        await eventually("the round's result recorded", completed)
        await handle.signal("unwatch", intent_id)
        async with Worker(temporal_client, task_queue=queue, **workflows):
            await eventually("the round's observed signal", observed)
            assert await handle.query("watched") == {}
            history = await handle.fetch_history()
            await record_workflow_history(
                temporal_client, handle.id, "sync_unwatch_with_a_rounds_result"
            )
        await handle.terminate("test done")
    assert signals_sent(list(history.events), "observed") == [workflow_id_for(intent_id)]
    replayer = Replayer(
        workflows=[AccountSyncWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=WORKFLOW_RUNNER,
    )
    await replayer.replay_workflow(history)
