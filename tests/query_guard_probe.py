"""A worker process for tests/test_query_guard.py: the smallest workflow that shows the SDK defect
worker/query_guard.py guards against, run with or without the guard.

`python -m tests.query_guard_probe TARGET TASK_QUEUE {guarded,bare}`

The workflow has the intent workflow's shape: a loop that publishes its value in the memo when it
changed, runs an activity, and waits for a signal before the next one. Its commands depend on
whether an activity's result and a signal arrive in one activation or in two, which is what the
defect changes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from exchange_kernel.worker.query_guard import QueryGuardRunner


@activity.defn
async def probe_step(value: int) -> int:
    return value


@workflow.defn(name="QueryGuardProbe", sandboxed=False)
class QueryGuardProbe:
    def __init__(self) -> None:
        self.value = 0
        self.published: int | None = None
        self.steps = 1
        self.dirty = False

    @workflow.signal
    def set_value(self, value: int) -> None:
        self.value = value
        self.dirty = True

    @workflow.query
    def value_now(self) -> int:
        return self.value

    @workflow.run
    async def run(self, activity_queue: str) -> None:
        while True:
            self.dirty = False
            if self.published != self.value:
                workflow.upsert_memo({"value": self.value})
                self.published = self.value
            if self.steps:
                self.steps -= 1
                await workflow.execute_activity(
                    probe_step,
                    self.value,
                    task_queue=activity_queue,
                    start_to_close_timeout=timedelta(seconds=30),
                )
                continue
            await workflow.wait_condition(lambda: self.dirty)
            self.steps = 1


async def main(target: str, task_queue: str, mode: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stdout)
    client = await Client.connect(target)
    runner = UnsandboxedWorkflowRunner()
    guard = QueryGuardRunner(runner) if mode == "guarded" else None
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[QueryGuardProbe],
        workflow_runner=runner,
        unsandboxed_workflow_runner=guard or runner,
    )
    if guard is not None:
        guard.bind(worker)
    print("probe worker polling", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
