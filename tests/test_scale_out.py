"""Scale-out: two worker processes on one task queue share the intents; one is SIGKILLed midway
and the other carries every intent on, the killed one's included. And the account's rate limit
is Temporal's, per account task queue: a second worker does not add to the exchange's load."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from exchange_kernel.accounts import REQUESTS_PER_ACTIVITY
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import account_task_queue, connect
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import (
    IntentStatus,
    OrderIntent,
    OrderSpec,
    account_sync_id,
    intent_digest,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
from exchange_kernel.worker.run import WORKFLOWS
from tests.conftest import Paper
from tests.test_intents import resting

TASK_QUEUE = "ek-scale-out"
INTENTS = 20


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def identity(self) -> str:
        # temporalio's default worker identity.
        return f"{self.process.pid}@{socket.gethostname()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_worker(accounts: Path, address: str, log: Path) -> WorkerProcess:
    env = {**os.environ, "EK_SCALE_KEY": DEMO_API_KEY, "EK_SCALE_SECRET": DEMO_SECRET}
    argv = [
        sys.executable,
        *("-m", "exchange_kernel.cli", "worker"),
        *("--accounts", str(accounts), "--task-queue", TASK_QUEUE, "--address", address),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return WorkerProcess(process, log)


async def activity_pollers(client: Client, task_queue: str = TASK_QUEUE) -> set[str]:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return {poller.identity for poller in response.pollers}


async def wait_polling(client: Client, workers: list[WorkerProcess], task_queue: str) -> None:
    identities = {w.identity for w in workers}
    async with asyncio.timeout(90):
        while not identities <= await activity_pollers(client, task_queue):
            for w in workers:
                assert w.process.poll() is None, f"worker exited:\n{w.tail()}"
            await asyncio.sleep(0.25)


def stop_workers(workers: list[WorkerProcess]) -> None:
    for w in workers:
        if w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
            try:
                w.process.wait(30)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()


async def activity_identities(client: Client, intent: OrderIntent) -> set[str]:
    """Who ran the intent's activities: the identity on its ActivityTaskStarted events."""
    history = await client.get_workflow_handle(intent.workflow_id).fetch_history()
    return {
        event.activity_task_started_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }


def new_intent(price: str) -> OrderIntent:
    return OrderIntent(
        intent_id=f"scale-{uuid.uuid4().hex[:10]}",
        account="paper",
        order=OrderSpec(symbol="BTC/USDT", side="buy", amount="0.01", price=price),
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[DevServer, Paper, Path]]:
    """A dev server, the paper exchange (in this process) and an accounts file for it."""
    async with (
        DevServer(port=free_port(), headless=True) as server,
        running_sim(port=0) as sim,
        aiohttp.ClientSession() as session,
    ):
        accounts = tmp_path / "accounts.toml"
        accounts.write_text(
            '[accounts.paper]\nexchange = "binance"\napi_key_env = "EK_SCALE_KEY"\n'
            f'secret_env = "EK_SCALE_SECRET"\nbase_url = "{sim.base_url}"\n'
        )
        yield server, Paper(base_url=sim.base_url, session=session, server=sim), accounts


async def test_two_workers_share_the_work_and_survive_one_being_killed(
    cluster: tuple[DevServer, Paper, Path], tmp_path: Path
) -> None:
    server, paper, accounts = cluster
    client = await connect(server.target)
    intents = IntentClient(client, TASK_QUEUE)
    await paper.move_price("BTC/USDT", "30000")

    workers = [start_worker(accounts, server.target, tmp_path / f"worker-{n}.log") for n in (1, 2)]
    try:
        identities = {w.identity for w in workers}
        await wait_polling(client, workers, account_task_queue(TASK_QUEUE, "paper"))

        # First half while both run. Prices 29000 .. 29019: all below the market, resting.
        batch = [new_intent(str(29000 + i)) for i in range(INTENTS)]
        first, second = batch[: INTENTS // 2], batch[INTENTS // 2 :]
        await asyncio.gather(*(intents.submit(i) for i in first))
        for intent in first:
            await intents.wait_for(intent.intent_id, resting, within=timedelta(seconds=60))
        ran_first = set().union(*[await activity_identities(client, i) for i in first])
        assert identities <= ran_first, f"not both workers ran activities: {ran_first}"

        # Kill one mid-way (no clean shutdown), and keep submitting.
        victim, survivor = workers
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)
        await asyncio.gather(*(intents.submit(i) for i in second))
        for intent in batch:
            try:
                await intents.wait_for(intent.intent_id, resting, within=timedelta(seconds=120))
            except TimeoutError:
                state = await intents.state(intent.intent_id)
                raise AssertionError(
                    f"{intent.intent_id} not resting: {state.report()}\n{survivor.tail()}"
                ) from None

        # Everything still converges: fill them all, the killed worker's intents included.
        await paper.move_price("BTC/USDT", "28000")
        finals = await asyncio.wait_for(
            asyncio.gather(*(intents.result(i.intent_id) for i in batch)), 180
        )
        assert [f.status for f in finals] == [IntentStatus.FILLED] * INTENTS
        for intent in batch:  # exactly one exchange order per intent: nothing placed twice
            mine = await paper.orders_of(f"ek-{intent_digest(intent.intent_id)}-")
            assert len(mine) == 1, (intent.intent_id, mine)
        after_kill = set().union(*[await activity_identities(client, i) for i in second])
        assert victim.identity not in after_kill
        assert survivor.identity in after_kill
        assert survivor.process.poll() is None, survivor.tail()
    finally:
        stop_workers(workers)


# --- the account's rate limit holds across workers -------------------------------------------

# The account's request budget (accounts file): 4 requests/s = 2 activities/s on its task queue.
REQUEST_BUDGET = 4
ACTIVITY_LIMIT = REQUEST_BUDGET / REQUESTS_PER_ACTIVITY
BURST = 16  # placements per phase, submitted at once
# Temporal's limiter lets a burst through first (a token per task queue partition, 4 by
# default): the rates are measured from the fifth placement on.
SKIP = 4
ORDER = "/api/v3/order"


async def account_activity_starts(
    client: Client, workflow_ids: list[str], queue: str
) -> list[float]:
    """When the workflows' activities on the account's task queue started (epoch seconds): what
    Temporal's per-queue limit meters."""
    starts = []
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        on_queue = {
            event.event_id
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.task_queue.name == queue
        }
        starts += [
            event.event_time.ToDatetime().timestamp()
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
            and event.activity_task_started_event_attributes.scheduled_event_id in on_queue
        ]
    return starts


@dataclass
class Burst:
    placements: float  # per second, from the placement after the burst allowance to the last
    requests: float  # exchange requests per second in that span
    activities: float  # activities per second started on the account's queue in that span
    ran: set[str]  # who ran the intents' activities
    batch: list[OrderIntent]

    def __str__(self) -> str:
        return (
            f"{self.activities:.2f} activities/s, {self.placements:.2f} placements/s, "
            f"{self.requests:.2f} requests/s"
        )


async def placement_burst(
    intents: IntentClient, paper: Paper, client: Client, base_price: int, queue: str
) -> Burst:
    """Submit BURST resting intents at once and measure the rates after the burst allowance."""
    batch = [new_intent(str(base_price + i)) for i in range(BURST)]
    seen = (await paper.admin("GET", "requests?limit=0"))["total"]
    await asyncio.gather(*(intents.submit(i) for i in batch))
    for intent in batch:
        await intents.wait_for(intent.intent_id, resting, within=timedelta(seconds=120))
    recent = [r for r in (await paper.admin("GET", "requests"))["recent"] if r["seq"] > seen]
    placed = sorted(r["time"] for r in recent if r["method"] == "POST" and r["path"] == ORDER)
    assert len(placed) == BURST, placed
    start, end = placed[SKIP], placed[-1]
    span = (end - start) / 1000
    # Every request of the account's activities: placements and sync rounds (market rules come
    # from the workers' caches; a new worker's one exchangeInfo is not an account activity's).
    requests = [r for r in recent if start <= r["time"] <= end and "exchangeInfo" not in r["path"]]
    # The account's activities: the intents' placements and the account sync's rounds (each
    # new intent asks it to watch, which starts a round).
    workflow_ids = [i.workflow_id for i in batch] + [account_sync_id("paper")]
    started = await account_activity_starts(client, workflow_ids, queue)
    activities = [t for t in started if start / 1000 <= t <= end / 1000]
    ran = set().union(*[await activity_identities(client, i) for i in batch])
    return Burst(
        placements=(BURST - 1 - SKIP) / span,
        requests=len(requests) / span,
        activities=len(activities) / span,
        ran=ran,
        batch=batch,
    )


async def test_the_account_rate_limit_holds_across_workers(
    cluster: tuple[DevServer, Paper, Path], tmp_path: Path
) -> None:
    """A second worker serving the account does not add to its exchange load: Temporal hands
    out the account task queue's activities at the account's limit, whoever polls it."""
    server, paper, _ = cluster
    accounts = tmp_path / "limited.toml"
    accounts.write_text(
        '[accounts.paper]\nexchange = "binance"\napi_key_env = "EK_SCALE_KEY"\n'
        f'secret_env = "EK_SCALE_SECRET"\nbase_url = "{paper.base_url}"\n'
        f"max_requests_per_second = {REQUEST_BUDGET}\n"
    )
    client = await connect(server.target)
    intents = IntentClient(client, TASK_QUEUE)
    queue = account_task_queue(TASK_QUEUE, "paper")
    await paper.move_price("BTC/USDT", "30000")

    workers = [start_worker(accounts, server.target, tmp_path / "worker-1.log")]
    try:
        await wait_polling(client, workers, queue)
        assert f"{queue}, at most {ACTIVITY_LIMIT:g} activities/s" in workers[0].tail()
        one = await placement_burst(intents, paper, client, 28000, queue)

        workers.append(start_worker(accounts, server.target, tmp_path / "worker-2.log"))
        await wait_polling(client, workers, queue)
        two = await placement_burst(intents, paper, client, 27000, queue)
        history = await client.get_workflow_handle(one.batch[0].workflow_id).fetch_history()
    finally:
        stop_workers(workers)

    # Where the intent's activities went: market rules a local activity on the worker that ran
    # the workflow task (ccxt's cache: a marker, no activity events; the regular activity on the
    # workflow's queue only if that took over 2 s), the exchange calls on the account's queue;
    # and the new commands replay.
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert "core_local_activity" in markers, markers
    scheduled = [
        (
            event.activity_task_scheduled_event_attributes.activity_type.name,
            event.activity_task_scheduled_event_attributes.task_queue.name,
        )
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert ("place_order", queue) in scheduled, scheduled
    assert all(
        task_queue == (TASK_QUEUE if name == "load_market" else queue)
        for name, task_queue in scheduled
    ), scheduled
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)

    figures = f"limit {ACTIVITY_LIMIT:g} activities/s; one worker: {one}; two workers: {two}"
    print(figures)
    assert one.ran == {workers[0].identity}, figures
    assert two.ran == {w.identity for w in workers}, figures  # both served the account
    # Upper bounds, with room for the limiter's granularity: a busy machine can only make the
    # rates lower. Without the limit the whole burst is placed within a second or so (tens of
    # activities per second); with a limit per worker instead of per queue, two workers would
    # start twice the limit. Placements and sync rounds share the budget, so neither alone is
    # at the limit; the activities are.
    for burst in (one, two):
        assert burst.activities <= 1.25 * ACTIVITY_LIMIT, figures
        assert burst.placements <= 1.25 * ACTIVITY_LIMIT, figures
        assert burst.requests <= 1.25 * REQUEST_BUDGET, figures
