"""Benchmarks (see bench/README.md). The Temporal floor that bench/placement.py measures lives here.

It is in this small module rather than in placement.py because the workflow sandbox re-executes
a workflow's module for every workflow run: the floor must cost what a trivial workflow costs,
not what compiling the whole benchmark script costs.
"""

from __future__ import annotations

import time
from datetime import timedelta

from temporalio import activity, workflow

# workflow id -> time.perf_counter() / time.time() when its no-op activity ran. Activities run
# outside the sandbox, in the benchmark's process, so the client side reads these directly.
ACTIVITY_RAN: dict[str, float] = {}
ACTIVITY_RAN_WALL: dict[str, float] = {}


@activity.defn(name="bench_noop")
async def bench_noop() -> None:
    key = activity.info().workflow_id
    ACTIVITY_RAN[key] = time.perf_counter()
    ACTIVITY_RAN_WALL[key] = time.time()


@workflow.defn(name="BenchFloor")
class FloorWorkflow:
    """Start -> one no-op activity -> done."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("bench_noop", start_to_close_timeout=timedelta(seconds=30))


@workflow.defn(name="BenchLifecycle")
class LifecycleWorkflow:
    """Start -> one no-op activity -> wait for a signal -> done."""

    def __init__(self) -> None:
        self.finished = False

    @workflow.signal
    def finish(self) -> None:
        self.finished = True

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("bench_noop", start_to_close_timeout=timedelta(seconds=30))
        await workflow.wait_condition(lambda: self.finished)
