"""The query guard (exchange_kernel/worker/query_guard.py) against the SDK defect it works around.

Real dev server, worker processes SIGKILLed as in the chaos runs. The scenario: the workflow's
worker dies with an activity scheduled; a query waits for a worker; the activity completes
(its workflow task waits on the dead worker's sticky queue); a fresh worker answers the query;
then a signal arrives; then that worker handles the workflow task. Without the guard the
history it writes does not replay (the defect, shown so that the day the SDK fixes it, the
guard's reason to exist is checked again); with the guard it replays.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError
from temporalio.worker import (
    Replayer,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInstance,
)

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.query_guard import QueryGuardRunner, _GuardedInstance
from tests.conftest import eventually
from tests.query_guard_probe import QueryGuardProbe, probe_step

ROOT = Path(__file__).resolve().parent.parent


class ProbeWorker:
    def __init__(self, target: str, task_queue: str, mode: str, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.query_guard_probe", target, task_queue, mode],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    @property
    def identity(self) -> str:
        return f"{self.process.pid}@{socket.gethostname()}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


async def polling(client: Client, task_queue: str, worker: ProbeWorker) -> bool:
    assert worker.process.poll() is None, worker.log.read_text(errors="replace")[-2000:]
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return worker.identity in {p.identity for p in response.pollers}


async def event_types(handle: WorkflowHandle) -> list[EventType.ValueType]:
    return [e.event_type for e in (await handle.fetch_history()).events]


async def cold_query_then_signal(client: Client, mode: str, logs: Path) -> WorkflowHistory | None:
    """The scenario once; None if the server gave up on the waiting query before the second
    worker answered it (a loaded machine starts that worker late)."""
    target = client.service_client.config.target_host
    task_queue = f"query-guard-{mode}-{uuid.uuid4().hex[:8]}"
    steps_queue = f"{task_queue}-steps"
    log = logs / f"{mode}.log"

    first = ProbeWorker(target, task_queue, mode, log)
    try:
        await eventually("first worker", lambda: polling(client, task_queue, first), 60)
        handle = await client.start_workflow(
            QueryGuardProbe.run,
            steps_queue,
            id=f"probe-{task_queue}",
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=5),
        )

        async def scheduled() -> bool:
            return EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED in await event_types(handle)

        await eventually("activity scheduled", scheduled, 60)
    finally:
        first.kill()

    # Issued while nothing is pending: dispatched as a legacy query, it waits for a worker.
    query = asyncio.create_task(handle.query(QueryGuardProbe.value_now))
    await asyncio.sleep(1.0)
    steps = Worker(client, task_queue=steps_queue, activities=[probe_step])
    async with steps:

        async def completed() -> bool:
            return EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED in await event_types(handle)

        await eventually("activity completed", completed, 60)
        second = ProbeWorker(target, task_queue, mode, log)
        try:
            try:
                async with asyncio.timeout(60):
                    assert await query == 0
            except RPCError:  # "context canceled": the server stopped waiting for a worker
                await handle.terminate("probe: query timed out")
                return None
            # The workflow task for the activity's result still waits on the dead worker's
            # sticky queue: the signal lands before it is handled.
            await handle.signal(QueryGuardProbe.set_value, 7)

            async def handled() -> bool:
                types = await event_types(handle)
                signalled = types.index(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
                return EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in types[signalled:]

            await eventually("workflow task after the signal", handled, 60)
        finally:
            second.kill()
    history = await handle.fetch_history()
    await handle.terminate("probe done")
    return history


async def replay_failure(history: WorkflowHistory) -> Exception | None:
    replayer = Replayer(workflows=[QueryGuardProbe])
    return (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


def signal_came_first(history: WorkflowHistory) -> bool:
    """The scenario's timing held: the signal landed after the activity's result and before a
    worker started the workflow task for that result (else there is nothing to show)."""
    types = [e.event_type for e in history.events]
    done = types.index(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    started = types.index(EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED, done)
    return EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in types[done:started]


async def scenario(client: Client, mode: str, logs: Path) -> WorkflowHistory:
    """The scenario until its timing held (a loaded machine can start a worker too late)."""
    for attempt in range(3):
        attempt_logs = logs / f"{mode}-{attempt}"
        attempt_logs.mkdir()
        history = await cold_query_then_signal(client, mode, attempt_logs)
        if history is not None and signal_came_first(history):
            return history
    raise AssertionError(f"{mode}: the scenario's timing did not hold in 3 attempts")


async def test_a_cold_legacy_query_then_a_signal(temporal_client: Client, tmp_path: Path) -> None:
    async with asyncio.timeout(600):  # a hang fails the test instead of the suite
        bare, guarded = await asyncio.gather(
            scenario(temporal_client, "bare", tmp_path),
            scenario(temporal_client, "guarded", tmp_path),
        )

    failure = await replay_failure(bare)
    assert failure is not None and "Nondeterminism" in str(failure), (
        "without the guard the history replayed: has the SDK fixed the defect? If so, "
        "exchange_kernel/worker/query_guard.py may go (docs/reliability.md, finding 2)"
    )
    assert "evicting" not in "".join(p.read_text() for p in tmp_path.glob("bare-*/bare.log"))

    assert await replay_failure(guarded) is None
    last = max(tmp_path.glob("guarded-*/guarded.log"))
    log = last.read_text()
    assert log.count("evicting run") == 1, log[-3000:]


async def test_the_kernel_worker_guards_every_worker_that_runs_workflows(
    temporal_client: Client,
) -> None:
    pool = ExchangePool({})
    kernel = build_worker(temporal_client, pool, "query-guard-wiring")
    try:
        runners = {
            id(worker): worker.config()["workflow_runner"]
            for worker in kernel.workers
            if worker.config().get("workflows")
        }
        assert len(runners) == 2  # main and syncs
        # A guard of its own for each: it evicts from its worker's cache.
        assert len({id(r) for r in runners.values()}) == 2
        assert all(isinstance(r, QueryGuardRunner) and r.bound for r in runners.values())
    finally:
        await pool.close()


class _Inner(WorkflowInstance):
    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        return WorkflowActivationCompletion(run_id=act.run_id)

    def get_serialization_context(self, command_info: Any) -> Any:
        return None

    def get_external_store_context(self, command_info: Any) -> Any:
        return None

    def get_info(self) -> Any:
        return None


def activation(history_length: int, *, replaying: bool, query: str | None = None) -> Any:
    act = WorkflowActivation(run_id="run", history_length=history_length, is_replaying=replaying)
    if query is None:
        act.jobs.add().signal_workflow.signal_name = "resync"
    else:
        act.jobs.add().query_workflow.query_id = query
    return act


def guarded_run(evicted: list[str]) -> WorkflowInstance:
    """One cached run behind the guard, its evictions recorded instead of sent to a core."""
    guard = QueryGuardRunner(UnsandboxedWorkflowRunner())
    guard._evict = evicted.append  # what bind() sets: the request to the core
    return _GuardedInstance(_Inner(), guard)


def test_only_a_run_the_query_task_loaded_and_advanced_is_evicted() -> None:
    # The defect's signature: replay, a live activation, the legacy query, one task.
    evicted: list[str] = []
    run = guarded_run(evicted)
    for act in (
        activation(3, replaying=True),
        activation(9, replaying=False),
        activation(9, replaying=True, query="legacy_query"),
        activation(9, replaying=True, query="legacy_query"),
    ):
        run.activate(act)
    assert evicted == ["run"]  # once

    # Loaded by the query with nothing new: replay only, the cache stays.
    evicted.clear()
    run = guarded_run(evicted)
    run.activate(activation(9, replaying=True))
    run.activate(activation(9, replaying=True, query="legacy_query"))
    assert evicted == []

    # Past the task that loaded it (a later task came): the cache stays, no cold start.
    run = guarded_run(evicted)
    for act in (
        activation(9, replaying=False),
        activation(13, replaying=False),
        activation(13, replaying=True, query="legacy_query"),
    ):
        run.activate(act)
    assert evicted == []

    # A query attached to a workflow task is not a legacy query.
    run = guarded_run(evicted)
    run.activate(activation(9, replaying=False))
    run.activate(activation(9, replaying=False, query="q-1"))
    assert evicted == []
