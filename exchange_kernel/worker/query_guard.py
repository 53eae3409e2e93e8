"""A guard against a defect of the Temporal SDK's core (temporalio 1.35): a stale cache after a
legacy query answered by a worker that had to replay the run first.

A query that waits for a worker (none is polling, or the workflow's sticky worker died) is
dispatched as a "legacy query" task carrying the run's whole history as it is *when a worker
picks it up*. If new events arrived meanwhile (an activity's result, and the workflow task it
scheduled), the core replays the history and then hands the workflow those new events in a
non-replaying activation before answering the query. The workflow acts on them (the commands
stay pending in the core), and the run stays cached in that state. The real workflow task for
those events comes later and may carry more events (a signal sent after the query): the worker
completes it with the commands it computed from the first events alone, while every replay
delivers all of them in one activation and computes others. The history is then
nondeterministic: the next worker to replay it fails with `[TMPRL1100] Nondeterminism error`,
and the intent is stuck until `exchange-kernel repair` (docs/reliability.md, finding 2).

The guard wraps the workflow runner and watches each cached run's activations: when a legacy
query reaches a run that handled non-replaying activations right after it was loaded into the
cache, before any later workflow task, the run is evicted once the query is answered. Its next
workflow task replays the history from the start, as any replay will. A query on a run that
only replayed (nothing new was pending), or on a run past the task that loaded it, keeps the
cache. Evictions are counted (`exchange_kernel_query_guard_evictions_total`) and logged at INFO.
tests/test_query_guard.py reproduces the defect without the guard and checks the guard against it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.runtime import Runtime
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner

from exchange_kernel.worker.metrics import EVICTIONS

log = logging.getLogger("exchange_kernel.worker")

# The id the core gives a query that came as a task of its own (not attached to a workflow task).
LEGACY_QUERY_ID = "legacy_query"


def is_legacy_query(activation: WorkflowActivation) -> bool:
    jobs = activation.jobs
    return bool(jobs) and all(
        job.HasField("query_workflow") and job.query_workflow.query_id == LEGACY_QUERY_ID
        for job in jobs
    )


class QueryGuardRunner(WorkflowRunner):
    """Wraps a workflow runner; `bind()` it to the worker whose cache it evicts from."""

    def __init__(self, inner: WorkflowRunner) -> None:
        self.inner = inner
        self._evict: Callable[[str], None] | None = None

    def bind(self, worker: Worker) -> None:
        """Evict from `worker`'s cache. Call it from the event loop the worker runs on."""
        # No public API evicts a run: this is the core's eviction request, through the SDK's
        # bridge worker (tests/test_query_guard.py fails if it stops working).
        bridge = worker._bridge_worker
        loop = asyncio.get_running_loop()
        runtime = worker.client.service_client.config.runtime or Runtime.default()
        counter = runtime.metric_meter.create_counter(
            EVICTIONS.instrument, EVICTIONS.help
        ).with_additional_attributes({"task_queue": worker.task_queue})

        def request(run_id: str) -> None:
            bridge.request_workflow_eviction(run_id)
            counter.add(1)

        def evict(run_id: str) -> None:
            # Activations run in the SDK's thread pool: request it from the loop.
            loop.call_soon_threadsafe(request, run_id)

        self._evict = evict

    @property
    def bound(self) -> bool:
        return self._evict is not None

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _GuardedInstance(self.inner.create_instance(det), self)

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        self.inner.set_worker_level_failure_exception_types(types)

    def evict_after_query(self, run_id: str) -> None:
        if self._evict is None:
            raise RuntimeError("QueryGuardRunner used before bind(worker)")
        log.info("evicting run %s after a legacy query on a run that advanced", run_id)
        self._evict(run_id)


class _GuardedInstance(WorkflowInstance):
    """One cached run (a new instance each time the run is loaded into the cache)."""

    def __init__(self, inner: WorkflowInstance, guard: QueryGuardRunner) -> None:
        self.inner = inner
        self.guard = guard
        # History length of the first non-replaying activation: the task that loaded the run.
        self.loaded_at: int | None = None
        self.settled = False  # a later task came: the run is past the task that loaded it
        self.evicting = False

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        if is_legacy_query(act):
            # Only a run loaded by this very query task can hold events no task has completed
            # (the defect). A settled run stays cached: evicting it would make its next task a
            # cold start, and an update handled on a cold start meets another core defect
            # (temporalio/sdk-python#1591; docs/reliability.md, finding 2).
            if self.loaded_at is not None and not self.settled and not self.evicting:
                self.evicting = True
                self.guard.evict_after_query(act.run_id)
        elif not act.is_replaying:
            if self.loaded_at is None:
                self.loaded_at = act.history_length
            elif act.history_length > self.loaded_at:
                self.settled = True
        return self.inner.activate(act)

    def get_serialization_context(self, command_info: Any) -> Any:
        return self.inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self.inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()
