"""Wiring of the worker: workflows, activities bound to the account pool, task queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from exchange_kernel.accounts import (
    AccountConfig,
    ExchangePool,
    activities_per_second,
    ensure_capabilities,
)
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.activities.kernel import KernelActivities
from exchange_kernel.activities.stream import StreamActivities
from exchange_kernel.connection import (
    MAX_CACHED_WORKFLOWS,
    TASK_QUEUE,
    account_task_queue,
    sync_task_queue,
    worker_sync_queue,
)
from exchange_kernel.models import account_sync_id
from exchange_kernel.worker.metrics import IntentGauges
from exchange_kernel.worker.query_guard import QueryGuardRunner
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


class KernelWorker:
    """The kernel's Temporal workers in one process, run, entered and shut down together.

    `main` polls the task queue: the workflows, market rules (`load_market`: a local activity
    first, the regular one on this queue as its fallback), held stops' price polls, and
    exchange activities scheduled here before account task queues existed. `accounts` has one
    activity-only worker per account, polling `account_task_queue(task_queue, account)` with
    the account's rate limit: Temporal dispatches at most that many of the account's activities
    per second, however many workers poll the queue (docs/operations.md, scale-out). `syncs`
    runs the account syncs on `sync_task_queue(task_queue)`, with workflow task slots of their
    own (`main` still runs syncs started on the kernel's queue, until they continue as new).
    `rounds` has one more activity-only worker per account, polling the queue of this process
    alone (`worker_sync_queue`): the account's sync sends its next round to the process that
    served the last one, whose snapshot it diffs against (`AccountSyncWorkflow._observe`).
    """

    def __init__(
        self,
        main: Worker,
        accounts: dict[str, Worker],
        syncs: Worker,
        rounds: dict[str, Worker] | None = None,
    ) -> None:
        self.main = main
        self.accounts = accounts
        self.syncs = syncs
        self.rounds = rounds or {}
        self.workers = [main, *accounts.values(), syncs, *self.rounds.values()]

    @property
    def task_queue(self) -> str:
        return self.main.task_queue

    @property
    def is_running(self) -> bool:
        return self.main.is_running

    async def run(self) -> None:
        """Run every worker until `shutdown()`; a fatal error in one shuts the others down."""
        tasks = [asyncio.create_task(w.run()) for w in self.workers]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            await asyncio.gather(*(w.shutdown() for w in self.workers), return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.shutdown() for w in self.workers))

    async def __aenter__(self) -> KernelWorker:
        entered: list[Worker] = []
        try:
            for worker in self.workers:
                await worker.__aenter__()
                entered.append(worker)
        except BaseException:
            await asyncio.gather(
                *(w.__aexit__(None, None, None) for w in entered), return_exceptions=True
            )
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        results = await asyncio.gather(
            *(w.__aexit__(*exc_info) for w in self.workers), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


def build_worker(
    client: Client,
    pool: ExchangePool,
    task_queue: str = TASK_QUEUE,
    *,
    max_concurrent_activities: int = 200,
    max_cached_workflows: int = MAX_CACHED_WORKFLOWS,
    worker_id: str | None = None,
) -> KernelWorker:
    """The workflows on `task_queue`, and each account's exchange activities on its own queue
    with its rate limit (`accounts.activities_per_second`). Call it on the event loop that will
    run the workers (their query guards request evictions there).

    `worker_id`: names this worker's own sync-round queues (`worker_sync_queue`); unique per
    worker (default: a new random one), so a restarted process never inherits rounds meant
    for the snapshot its predecessor held.

    `max_cached_workflows`: runs each workflow worker keeps in memory; a run that is not
    replays its history from the start at its next workflow task. At least 1: with none, the
    SDK drops a market-rules local activity still running when its task ends (the run then
    times out, task after task)."""
    if max_cached_workflows < 1:
        raise ValueError("max_cached_workflows must be at least 1")
    worker_id = worker_id or uuid.uuid4().hex[:12]
    sync_queues = {name: worker_sync_queue(task_queue, name, worker_id) for name in pool.accounts}
    exchange_activities = ExchangeActivities(pool, sync_queues)
    activities = exchange_activities.all()
    kernel_activities = KernelActivities(client).all()
    stream_activities = StreamActivities(pool, client).all()
    # Each worker running workflows evicts a run after a legacy query that loaded it advanced
    # (worker/query_guard.py: an SDK defect that otherwise writes nondeterministic histories).
    main_guard, syncs_guard = QueryGuardRunner(WORKFLOW_RUNNER), QueryGuardRunner(WORKFLOW_RUNNER)
    main = Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[*activities, *kernel_activities],
        max_concurrent_activities=max_concurrent_activities,
        workflow_runner=main_guard,
        max_cached_workflows=max_cached_workflows,
    )
    main_guard.bind(main)
    accounts = {
        name: Worker(
            client,
            task_queue=account_task_queue(task_queue, name),
            activities=[*activities, *stream_activities],
            max_concurrent_activities=max_concurrent_activities,
            max_task_queue_activities_per_second=activities_per_second(config),
        )
        for name, config in sorted(pool.accounts.items())
    }
    syncs = Worker(
        client,
        task_queue=sync_task_queue(task_queue),
        workflows=[AccountSyncWorkflow],
        activities=kernel_activities,
        workflow_runner=syncs_guard,
        max_cached_workflows=max_cached_workflows,
    )
    syncs_guard.bind(syncs)
    # The sync's rounds that follow on from this process's last one. With the account's rate
    # limit too, though Temporal meters it per queue: a sync runs one round at a time, one per
    # interval (docs/operations.md, scale-out: what this does to the account's budget).
    rounds = {
        name: Worker(
            client,
            task_queue=sync_queues[name],
            activities=[exchange_activities.sync_account],
            max_task_queue_activities_per_second=activities_per_second(config),
        )
        for name, config in sorted(pool.accounts.items())
    }
    return KernelWorker(main, accounts, syncs, rounds)


async def ensure_account_syncs(
    client: Client, accounts: Iterable[str], task_queue: str = TASK_QUEUE
) -> None:
    """Start each account's AccountSyncWorkflow (on the syncs' queue) unless it is already
    running."""
    for account in accounts:
        await client.start_workflow(
            AccountSyncWorkflow.run,
            AccountSyncStart(account=account, task_queue=task_queue),
            id=account_sync_id(account),
            task_queue=sync_task_queue(task_queue),
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
    max_cached_workflows: int = MAX_CACHED_WORKFLOWS,
) -> None:
    """Run until `stop` is set (or forever); close the exchange clients on the way out.

    `metrics`: also publish the intent gauges counted in visibility (connect the client with
    `worker.metrics.metrics_runtime(port)`, whose endpoint serves them).
    `max_cached_workflows`: see `build_worker`."""
    ensure_capabilities(accounts)  # refuses accounts the kernel cannot trade, before polling
    pool = ExchangePool(accounts)
    worker = build_worker(client, pool, task_queue, max_cached_workflows=max_cached_workflows)
    log.info("worker on task queue %s, accounts: %s", task_queue, ", ".join(sorted(accounts)))
    for name, account_worker in worker.accounts.items():
        rate = account_worker.config().get("max_task_queue_activities_per_second")
        limit = "no rate limit" if rate is None else f"at most {rate:g} activities/s"
        log.info("account %s: task queue %s, %s", name, account_worker.task_queue, limit)
    for name, rounds_worker in worker.rounds.items():
        log.info("account %s: this worker's sync rounds on %s", name, rounds_worker.task_queue)
    try:
        gauges = IntentGauges(client, task_queue, sorted(accounts)) if metrics else None
        async with worker, gauges or contextlib.nullcontext():
            await ensure_account_syncs(client, accounts, task_queue)
            await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        await pool.close()
