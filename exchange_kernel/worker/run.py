"""Wiring of the worker: workflows, activities bound to the account pool, task queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from exchange_kernel.accounts import AccountConfig, ExchangePool, ensure_capabilities
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.connection import TASK_QUEUE
from exchange_kernel.models import account_sync_id
from exchange_kernel.worker.metrics import IntentGauges
from exchange_kernel.workflows.account_sync import AccountSyncStart, AccountSyncWorkflow
from exchange_kernel.workflows.group import IntentGroupWorkflow
from exchange_kernel.workflows.intent import OrderIntentWorkflow

log = logging.getLogger("exchange_kernel.worker")

WORKFLOWS = [OrderIntentWorkflow, AccountSyncWorkflow, IntentGroupWorkflow]
# Our own modules are deterministic (models, the pure reconciler): passing them through the
# sandbox keeps it from re-importing them (and rebuilding every pydantic model) for each
# workflow run, which is most of a new intent's first workflow task.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("exchange_kernel")
)


def build_worker(
    client: Client,
    pool: ExchangePool,
    task_queue: str = TASK_QUEUE,
    *,
    max_concurrent_activities: int = 200,
) -> Worker:
    activities = ExchangeActivities(pool)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=activities.all(),
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=WORKFLOW_RUNNER,
    )


async def ensure_account_syncs(
    client: Client, accounts: Iterable[str], task_queue: str = TASK_QUEUE
) -> None:
    """Start each account's AccountSyncWorkflow unless it is already running."""
    for account in accounts:
        await client.start_workflow(
            AccountSyncWorkflow.run,
            AccountSyncStart(account=account),
            id=account_sync_id(account),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"bulk observation of account {account}",
        )


async def run_worker(
    client: Client,
    accounts: dict[str, AccountConfig],
    task_queue: str = TASK_QUEUE,
    stop: asyncio.Event | None = None,
    *,
    metrics: bool = False,
) -> None:
    """Run until `stop` is set (or forever); close the exchange clients on the way out.

    `metrics`: also publish the intent gauges counted in visibility (connect the client with
    `worker.metrics.metrics_runtime(port)`, whose endpoint serves them)."""
    ensure_capabilities(accounts)  # refuses accounts the kernel cannot trade, before polling
    pool = ExchangePool(accounts)
    worker = build_worker(client, pool, task_queue)
    log.info("worker on task queue %s, accounts: %s", task_queue, ", ".join(sorted(accounts)))
    try:
        gauges = IntentGauges(client, task_queue, sorted(accounts)) if metrics else None
        async with worker, gauges or contextlib.nullcontext():
            await ensure_account_syncs(client, accounts, task_queue)
            await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        await pool.close()
