"""An update handled on a cold start (temporalio/sdk-python#1591; docs/reliability.md, finding 2).

A worker that loads a run to handle an update (a cold start: the run was not in its cache)
computes the update's commands as if the update had come in one activation with the events of
the workflow tasks before it that completed without commands, while a replay of the history
hands the update over in an activation of its own. Workflow code whose commands depend on that
split writes a history that no replay matches.

First the defect, on a probe workflow whose loop acts on a pending flag only when a wait ends
(edge-triggered): it fails replay after a cold start (this test fails the day the SDK no longer
shows the defect, see CONTRIBUTING.md, "Upgrading temporalio"), not after a warm one, and the
same loop made level-triggered replays either way. Then the intent workflow in the scenario of
chaos-7-0022: a resync that lands during a look at the exchange, the run evicted, an update.
Last, the worker's cache size (`worker --max-cached-workflows`) reaching both workflow workers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import (
    Replayer,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInstance,
    WorkflowInstanceDetails,
    WorkflowRunner,
)

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentBrief, IntentChange, workflow_id_for
from exchange_kernel.worker.run import WORKFLOWS, build_worker
from tests.conftest import Paper, eventually
from tests.test_intents import new_intent, record_history, resting

TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
TASK_SCHEDULED = EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
UPDATE_ACCEPTED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
ACTIVITY_COMPLETED = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
ACTIVITY_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED


@activity.defn
async def probe_look(value: int) -> int:
    await asyncio.sleep(1.5)
    return value


@activity.defn
async def probe_act(value: int) -> int:
    return value


@workflow.defn(name="ColdUpdateProbe", sandboxed=False)
class ColdUpdateProbe:
    """The intent loop's shape: look at something, act on a changed value, else wait; a `poke`
    asks for another look. `level`: a pending poke is acted on whenever the loop is about to
    wait (as the intent loop does now), not only when a wait ends."""

    def __init__(self) -> None:
        self.dirty = False
        self.poked = False
        self.look = True
        self.value = 0
        self.applied = 0

    @workflow.signal
    def poke(self) -> None:
        self.poked = True
        self.dirty = True

    @workflow.update
    def set_value(self, value: int) -> int:
        self.value = value
        self.dirty = True
        return value

    @workflow.run
    async def run(self, level: bool) -> int:
        timeout = timedelta(seconds=30)
        while True:
            self.dirty = False
            if self.look:
                self.look = False
                await workflow.execute_activity(
                    probe_look, self.value, start_to_close_timeout=timeout
                )
                continue
            if self.value != self.applied:
                self.applied = self.value
                await workflow.execute_activity(
                    probe_act, self.value, start_to_close_timeout=timeout
                )
                if self.value < 0:
                    return self.applied
                continue
            if level and self.poked:
                self.poked, self.look = False, True
                continue
            await workflow.wait_condition(lambda: self.dirty)
            if self.poked:
                self.poked, self.look = False, True


class CountingRunner(WorkflowRunner):
    """The unsandboxed runner, counting the instances made per run: a run loaded again after an
    eviction (a cold start) gets a new one."""

    def __init__(self, inner: WorkflowRunner) -> None:
        self.inner = inner
        self.loads: Counter[str] = Counter()

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        self.loads[det.info.run_id] += 1
        return self.inner.create_instance(det)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        self.inner.set_worker_level_failure_exception_types(types)


def is_idle(history: WorkflowHistory) -> bool:
    """The last workflow task completed without commands, and nothing came since."""
    events = list(history.events)
    return bool(events) and events[-1].event_type == TASK_COMPLETED


def handled_a_result(events: Sequence[HistoryEvent]) -> bool:
    """The last workflow task completed in `events` had an activity's result to handle."""
    completed = [i for i, e in enumerate(events) if e.event_type == TASK_COMPLETED]
    if not completed:
        return False
    start = completed[-2] + 1 if len(completed) > 1 else 0
    return any(e.event_type == ACTIVITY_COMPLETED for e in events[start : completed[-1]])


def signaled_during(history: WorkflowHistory, signal: str, activity_type: str) -> bool:
    """`signal` came while an `activity_type` activity ran (between its scheduling and result)."""
    running: set[int] = set()
    for event in history.events:
        if event.event_type == ACTIVITY_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name == activity_type:
                running.add(event.event_id)
        elif event.event_type == ACTIVITY_COMPLETED:
            running.discard(event.activity_task_completed_event_attributes.scheduled_event_id)
        elif event.workflow_execution_signaled_event_attributes.signal_name == signal and running:
            return True
    return False


def update_after_commandless_result(history: WorkflowHistory) -> bool:
    """The first update's workflow task came right after one that completed without commands
    and had an activity's result to handle: what the core folds into the update's activation
    on a cold start."""
    events: list[HistoryEvent] = list(history.events)
    accepted = next(i for i, e in enumerate(events) if e.event_type == UPDATE_ACCEPTED)
    # ... TaskCompleted(previous) TaskScheduled TaskStarted TaskCompleted(update's) Accepted
    update_task_scheduled = accepted - 3
    previous_completed = update_task_scheduled - 1
    if not (
        events[update_task_scheduled].event_type == TASK_SCHEDULED
        and events[previous_completed].event_type == TASK_COMPLETED
    ):
        return False
    return handled_a_result(events[: previous_completed + 1])


async def replay_failure(history: WorkflowHistory, workflows: Sequence[type]) -> str | None:
    replayer = Replayer(workflows=list(workflows), data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return None if result.replay_failure is None else str(result.replay_failure)


async def probe_run(client: Client, *, level: bool, cold: bool) -> tuple[WorkflowHistory, int]:
    """One run of the probe: a poke during its first look, the run evicted (cold) or not once
    it waits, then an update. Returns the run's history and how many times the worker loaded
    the run."""
    task_queue = f"cold-update-{uuid.uuid4().hex[:8]}"
    runner = CountingRunner(UnsandboxedWorkflowRunner())
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[ColdUpdateProbe],
        activities=[probe_look, probe_act],
        workflow_runner=runner,
        unsandboxed_workflow_runner=runner,
    ) as worker:
        handle = await client.start_workflow(
            ColdUpdateProbe.run,
            level,
            id=f"cold-update-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )

        async def scheduled(activity_type: str) -> bool:
            return activity_type in scheduled_activities(await handle.fetch_history())

        async def waiting_after_a_result() -> bool:
            history = await handle.fetch_history()
            return is_idle(history) and handled_a_result(list(history.events))

        await eventually("a look", lambda: scheduled("probe_look"))
        await asyncio.sleep(0.3)
        await handle.signal(ColdUpdateProbe.poke)  # lands during the look (1.5 s)
        await eventually("the probe waiting after a look", waiting_after_a_result)
        if cold:
            # No public API evicts a run: the core's eviction request, as the query guard's.
            worker._bridge_worker.request_workflow_eviction(handle.result_run_id or "")
            await asyncio.sleep(0.5)
        await handle.execute_update(ColdUpdateProbe.set_value, 7)
        await eventually("the probe acting", lambda: scheduled("probe_act"))
        await handle.execute_update(ColdUpdateProbe.set_value, -1)
        await asyncio.wait_for(handle.result(), 30)
        return await handle.fetch_history(), runner.loads[handle.result_run_id or ""]


def scheduled_activities(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == ACTIVITY_SCHEDULED
    ]


@pytest.mark.parametrize(
    ("level", "cold", "replays"),
    [(False, True, False), (False, False, True), (True, True, True)],
    ids=["edge-triggered, cold start: the defect", "edge-triggered, warm", "level-triggered, cold"],
)
async def test_an_update_on_a_cold_start_after_tasks_without_commands(
    temporal_client: Client, level: bool, cold: bool, replays: bool
) -> None:
    for _ in range(3):  # a loaded machine may deliver the poke after the look: try again
        history, loads = await probe_run(temporal_client, level=level, cold=cold)
        if signaled_during(history, "poke", "probe_look"):
            break
    else:
        pytest.fail("the poke never landed during the look, in 3 tries")
    # The scenario held: the update came right after a task without commands that handled an
    # activity's result, on a run loaded once more after the eviction (or not: warm).
    assert update_after_commandless_result(history)
    assert loads == (2 if cold else 1)
    failure = await replay_failure(history, [ColdUpdateProbe])
    if replays:
        assert failure is None, failure
    else:
        assert failure is not None and "Nondeterminism" in failure, failure


async def test_an_intent_updated_on_a_cold_start_after_a_resync_during_a_look_replays(
    intents: IntentClient, paper: Paper, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chaos-7-0022's scenario: a resync lands while the intent looks at the exchange, the run
    is evicted once it waits, and a modification comes as an update. The intent's loop is
    level-triggered, so the history the cold start writes replays (with the resync acted on
    only when a wait ends, it fails as chaos-7-0022 did: "Activity machine does not handle this
    event: ... UpsertWorkflowSearchAttributes")."""
    runner = worker.main.config()["workflow_runner"]
    loads: Counter[str] = Counter()
    create_instance = runner.create_instance

    def counting(det: WorkflowInstanceDetails) -> WorkflowInstance:
        loads[det.info.run_id] += 1
        return create_instance(det)

    monkeypatch.setattr(runner, "create_instance", counting)
    await paper.move_price("BTC/USDT", "30000")
    for _ in range(3):  # a loaded machine may deliver the resync after the look: try again
        intent = new_intent(price="28000")
        await intents.submit(intent)
        await intents.wait_for(intent.intent_id, resting)
        if await resync_during_a_look(intents, paper, intent.intent_id):
            break
        await intents.cancel(intent.intent_id)
    else:
        pytest.fail("the second resync never landed during a look, in 3 tries")
    handle = intents.temporal.get_workflow_handle(intent.workflow_id)
    run_id = (await handle.describe()).run_id
    loaded = loads[run_id]
    worker.main._bridge_worker.request_workflow_eviction(run_id)
    await asyncio.sleep(0.5)
    # Straight to the update: `IntentClient.modify` reads the state first, and that query
    # would load the run before the update's task comes.
    changed = await handle.execute_update(
        "modify", IntentChange(price=Decimal("28100")), result_type=IntentBrief
    )
    assert loads[run_id] == loaded + 1  # the update's task was a cold start
    history = await handle.fetch_history()
    assert update_after_commandless_result(history)
    # What the cold start wrote replays (the loop made edge-triggered again fails here).
    failure = await replay_failure(history, WORKFLOWS)
    assert failure is None, failure
    await intents.wait_for(
        intent.intent_id, lambda s: resting(s) and s.placements[-1].price == changed.desired.price
    )
    await intents.cancel(intent.intent_id)
    await intents.result(intent.intent_id)
    failure = await replay_failure(await handle.fetch_history(), WORKFLOWS)
    assert failure is None, failure
    await record_history(intents.temporal, intent, "update_on_a_cold_start")


async def resync_during_a_look(intents: IntentClient, paper: Paper, intent_id: str) -> bool:
    """Two resyncs, the second while the first one's look at the exchange is under way (the
    exchange answers in 1.5 s); True once the intent waits again after a look, False if the
    second resync came too late."""
    handle = intents.temporal.get_workflow_handle(workflow_id_for(intent_id))

    async def waiting_after_a_look() -> bool:
        history = await handle.fetch_history()
        return (
            signaled_during(history, "resync", "fetch_order")
            and is_idle(history)
            and handled_a_result(list(history.events))
        )

    await paper.faults(latency_ms=[1500, 1500], endpoints=["GET /api/v3/order"])
    try:
        await intents.resync(intent_id)
        await asyncio.sleep(0.5)
        await intents.resync(intent_id)
        await eventually("the intent waiting after its looks", waiting_after_a_look, 40)
    except AssertionError:
        return False
    finally:
        await paper.faults()
    return True


async def test_the_cache_size_reaches_both_workers_that_run_workflows(
    temporal_client: Client,
) -> None:
    pool = ExchangePool({})
    try:
        kernel = build_worker(temporal_client, pool, "cache-wiring", max_cached_workflows=7)
        sizes = [
            worker.config()["max_cached_workflows"]
            for worker in kernel.workers
            if worker.config().get("workflows")
        ]
        assert sizes == [7, 7]  # main and syncs
        with pytest.raises(ValueError, match="at least 1"):
            build_worker(temporal_client, pool, "cache-wiring", max_cached_workflows=0)
    finally:
        await pool.close()
