"""A round that must tell every watched intent (a worker restarted: no snapshot to diff against)
sends its signals in batches, one workflow task each: Temporal refuses a task that leaves more
than 2,000 signals in flight, and an account can watch more intents than that.

The real AccountSyncWorkflow on the dev server, in the worker's sandbox; the exchange's answer is
scripted and the intents are stand-ins that record what they are told (as in
tests/test_client_ids_sync.py). The batch is made small so that a few dozen intents show it."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from datetime import timedelta

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from exchange_kernel.connection import account_task_queue
from exchange_kernel.models import SyncRequest, SyncResult, account_sync_id, workflow_id_for
from exchange_kernel.worker.run import WORKFLOW_RUNNER
from exchange_kernel.workflows.account_sync import AccountSyncStart, AccountSyncWorkflow
from tests.test_client_ids_sync import StandInIntent

INTENTS = 25
BATCH = 10


@activity.defn(name="sync_account")
async def restarted_exchange_view(request: SyncRequest) -> SyncResult:
    """What the activity reports after a worker restart: no snapshot, and no open order."""
    return SyncResult(open_client_order_ids=())


async def test_a_round_telling_every_intent_signals_in_batches(
    temporal_client: Client,
) -> None:
    run = uuid.uuid4().hex[:8]
    queue, account = f"sync-fanout-{run}", f"fanout-{run}"
    intent_ids = [f"fanout-{run}-{n}" for n in range(INTENTS)]
    workflows = Worker(
        temporal_client,
        task_queue=queue,
        workflows=[AccountSyncWorkflow, StandInIntent],
        workflow_runner=WORKFLOW_RUNNER,
    )
    exchange = Worker(
        temporal_client,
        task_queue=account_task_queue(queue, account),
        activities=[restarted_exchange_view],
    )
    async with workflows, exchange:
        for intent_id in intent_ids:
            await temporal_client.start_workflow(
                StandInIntent.run, id=workflow_id_for(intent_id), task_queue=queue
            )
        sync = await temporal_client.start_workflow(
            AccountSyncWorkflow.run,
            AccountSyncStart(
                account=account,
                interval=timedelta(hours=1),
                watched=dict.fromkeys(intent_ids, "BTC/USDT"),
                signal_batch=BATCH,
            ),
            id=account_sync_id(account),
            task_queue=queue,
        )
        try:

            async def told(intent_id: str) -> list[str]:
                handle = temporal_client.get_workflow_handle(workflow_id_for(intent_id))
                return await handle.query(StandInIntent.signals)

            async with asyncio.timeout(60):
                for _ in itertools.count():
                    if all([await told(i) for i in intent_ids]):
                        break
                    await asyncio.sleep(0.2)

            history = await sync.fetch_history()
            per_task = Counter(
                e.signal_external_workflow_execution_initiated_event_attributes.workflow_task_completed_event_id
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
            )
            assert sum(per_task.values()) >= INTENTS
            assert max(per_task.values()) <= BATCH, per_task
            assert len(per_task) >= INTENTS // BATCH + 1
        finally:
            await sync.terminate()
            for intent_id in intent_ids:
                await temporal_client.get_workflow_handle(workflow_id_for(intent_id)).terminate()
