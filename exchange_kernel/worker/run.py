"""Wiring of the worker: workflows, activities bound to the account pool, task queue."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.worker import Worker

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.connection import TASK_QUEUE
from exchange_kernel.workflows.intent import OrderIntentWorkflow

log = logging.getLogger("exchange_kernel.worker")

WORKFLOWS = [OrderIntentWorkflow]


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
    )


async def run_worker(
    client: Client,
    accounts: dict[str, AccountConfig],
    task_queue: str = TASK_QUEUE,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (or forever); close the exchange clients on the way out."""
    pool = ExchangePool(accounts)
    worker = build_worker(client, pool, task_queue)
    log.info("worker on task queue %s, accounts: %s", task_queue, ", ".join(sorted(accounts)))
    try:
        async with worker:
            await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        await pool.close()
