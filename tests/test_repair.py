"""Repairing an intent stuck on a nondeterminism error: reset to before the diverging task."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Worker
from typer.testing import CliRunner, Result

from exchange_kernel import client_ids
from exchange_kernel.accounts import ExchangePool
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import account_task_queue
from exchange_kernel.models import (
    ExchangeOrder,
    IntentStart,
    IntentStatus,
    OrderRequest,
    intent_digest,
)
from exchange_kernel.repair import (
    NothingToRepair,
    find_reset_point,
    last_task_failure,
    reset,
    stuck_run,
)
from exchange_kernel.worker import build_worker
from tests.conftest import Paper, paper_accounts
from tests.test_intents import new_intent, resting

HERE = Path(__file__).parent
FINDING = HERE / "chaos" / "findings" / "nondeterminism-chaos-1-0256.json"
TASK_TIMED_OUT = EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT
TASK_SCHEDULED = EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
TASK_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED


def test_reset_point_is_the_task_that_issued_the_diverging_event() -> None:
    history = WorkflowHistory.from_json("intent-chaos-1-0256", FINDING.read_text())
    point = find_reset_point(history, "run")
    # The replay fails on event 72, an upsert written by the task completed at event 70.
    assert (point.diverged_at, point.workflow_task_completed_id) == (72, 70)
    assert "Nondeterminism" in point.error


def test_reset_point_of_the_later_finding_redoes_its_placement_with_a_lookup() -> None:
    """Finding 2 again (2026-11-30): the replay issues a memo upsert the original task did not,
    before the placement it scheduled (event 35). The reset redoes that task, whose placement
    the discarded history already sent: `repair` names it, and the repaired run looks it up."""
    text = (HERE / "chaos" / "findings" / "nondeterminism-chaos-1-0214.json").read_text()
    point = find_reset_point(WorkflowHistory.from_json("intent-chaos-1-0214", text), "run")
    assert (point.diverged_at, point.workflow_task_completed_id) == (35, 33)
    assert point.workflow_type == "OrderIntent"
    assert point.discarded_orders == (client_ids.id_for("chaos-1-0214", 1),)


def test_a_stuck_run_whose_retry_timed_out_is_still_stuck() -> None:
    """A worker killed while it retried the failing task adds a timeout after the failure: the
    run is as stuck as before, and repair finds the same point."""
    history = WorkflowHistory.from_json("intent-chaos-1-0256", FINDING.read_text())
    events = list(history.events)
    last = events[-1].event_id
    events.append(HistoryEvent(event_id=last + 1, event_type=TASK_TIMED_OUT))
    events.append(HistoryEvent(event_id=last + 2, event_type=TASK_SCHEDULED))
    failure = last_task_failure(events)
    assert failure is not None and "Nondeterminism" in str(failure)
    timed_out = WorkflowHistory(history.workflow_id, events)
    point = find_reset_point(timed_out, "run")
    assert (point.diverged_at, point.workflow_task_completed_id) == (72, 70)
    # A task completed after the failure: the run recovered, nothing failed since.
    events.append(HistoryEvent(event_id=last + 3, event_type=TASK_COMPLETED))
    assert last_task_failure(events) is None


@pytest.mark.parametrize("path", sorted((HERE / "histories").glob("*.json"))[:2])
def test_a_healthy_history_has_nothing_to_repair(path: Path) -> None:
    history = WorkflowHistory.from_json(f"intent-{path.stem}", path.read_text())
    with pytest.raises(NothingToRepair):
        find_reset_point(history, "run")


@workflow.defn(name="OrderIntent", sandboxed=False)
class Impostor:
    """Older code under the intent's name: its first task issues a command the real workflow
    does not, so the real workflow cannot replay the run."""

    @workflow.run
    async def run(self, start: IntentStart) -> None:
        workflow.upsert_memo({"summary": "impostor"})
        await workflow.wait_condition(lambda: False)


async def test_repair_unsticks_an_intent_and_places_once(
    temporal_client: Client, paper: Paper
) -> None:
    queue = f"repair-{uuid.uuid4().hex[:8]}"
    intents = IntentClient(temporal_client, queue)
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="29000")
    async with Worker(temporal_client, task_queue=queue, workflows=[Impostor]):
        await intents.submit(intent)
        await _wait_for_event(temporal_client, intent.workflow_id, _COMPLETED)

    pool = ExchangePool(paper_accounts(paper.base_url))
    try:
        async with build_worker(temporal_client, pool, queue):
            await intents.resync(intent.intent_id)  # a workflow task: the replay fails
            await _wait_for_event(temporal_client, intent.workflow_id, _FAILED)
            point = await stuck_run(temporal_client, intent.workflow_id)
            assert point.workflow_task_completed_id == 4  # the impostor's one task
            address = temporal_client.service_client.config.target_host
            shown = await asyncio.to_thread(cli, "repair", intent.intent_id, "--address", address)
            assert shown.exit_code == 0, shown.output
            assert "event 4" in shown.output and "pass --yes" in shown.output
            assert (await stuck_run(temporal_client, intent.workflow_id)) == point  # untouched
            await reset(temporal_client, point, "test: impostor code ran the first task")
            state = await intents.wait_for(intent.intent_id, resting, within=timedelta(seconds=60))
            assert state.status is IntentStatus.OPEN
            mine = await paper.orders_of(f"ek-{intent_digest(intent.intent_id)}-")
            assert len(mine) == 1, mine
            with pytest.raises(NothingToRepair):
                await stuck_run(temporal_client, intent.workflow_id)
            again = await asyncio.to_thread(cli, "repair", intent.intent_id, "--address", address)
            assert again.exit_code == 2 and "is not stuck" in again.output
            await intents.cancel(intent.intent_id)
    finally:
        await pool.close()


@workflow.defn(name="OrderIntent", sandboxed=False)
class PlacingImpostor:
    """Older code under the intent's name that places the intent's first order itself, under
    the client order id the real workflow gives its first placement (number 0), and then
    diverges: the order is the discarded history's, and it may have ended by the repair."""

    @workflow.run
    async def run(self, start: IntentStart) -> None:
        intent = start.intent
        await workflow.execute_activity(
            "place_order",
            OrderRequest(
                account=intent.account,
                symbol=intent.order.symbol,
                side=intent.order.side,
                type=intent.order.type,
                client_order_id=client_ids.id_for(intent.intent_id, 0),
                amount=intent.order.amount,
                price=intent.order.price,
            ),
            task_queue=account_task_queue(workflow.info().task_queue, intent.account),
            result_type=ExchangeOrder,
            start_to_close_timeout=timedelta(seconds=15),
        )
        workflow.upsert_memo({"summary": "impostor"})
        await workflow.wait_condition(lambda: False)


async def test_a_repaired_intent_finds_the_ended_order_of_the_discarded_history(
    temporal_client: Client, paper: Paper
) -> None:
    """The discarded history placed the order, and it filled before the repair: the redone
    placement (same client order id, which the exchange accepts again once the first order
    has ended) must look first and find it, not place a second order."""
    queue = f"repair-{uuid.uuid4().hex[:8]}"
    intents = IntentClient(temporal_client, queue)
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="29000")
    prefix = f"ek-{intent_digest(intent.intent_id)}-"
    pool = ExchangePool(paper_accounts(paper.base_url))
    try:
        activities = ExchangeActivities(pool)
        async with (
            Worker(temporal_client, task_queue=queue, workflows=[PlacingImpostor]),
            Worker(
                temporal_client,
                task_queue=account_task_queue(queue, intent.account),
                activities=[activities.place_order],
            ),
        ):
            await intents.submit(intent)
            await _wait_for_event(
                temporal_client, intent.workflow_id, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            )
        await paper.move_price("BTC/USDT", "28900")  # fills it: the order has ended
        (placed,) = await paper.orders_of(prefix)
        assert placed["status"] == "FILLED", placed

        async with build_worker(temporal_client, pool, queue):
            await intents.resync(intent.intent_id)  # a workflow task: the replay fails
            await _wait_for_event(temporal_client, intent.workflow_id, _FAILED)
            point = await stuck_run(temporal_client, intent.workflow_id)
            assert point.discarded_orders == (client_ids.id_for(intent.intent_id, 0),)
            await reset(temporal_client, point, "test: the impostor placed and diverged")
            final = await asyncio.wait_for(intents.result(intent.intent_id), 60)
        assert final.status is IntentStatus.FILLED, final.report()
        assert final.filled == intent.order.amount
        assert [a.action for a in final.recent_actions if a.action == "repaired"] == ["repaired"]
        mine = await paper.orders_of(prefix)
        assert len(mine) == 1, mine  # found, not placed again
    finally:
        await pool.close()


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
_FAILED = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED


async def _wait_for_event(client: Client, workflow_id: str, event_type: int) -> None:
    async with asyncio.timeout(60):
        while True:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
            if any(e.event_type == event_type for e in history.events):
                return
            await asyncio.sleep(0.2)
