"""Scale-out: two worker processes on one task queue share the intents; one is SIGKILLed midway
and the other carries every intent on, the killed one's included."""

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

from exchange_kernel.client import IntentClient
from exchange_kernel.connection import connect
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import IntentStatus, OrderIntent, OrderSpec, intent_digest
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
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


async def activity_pollers(client: Client) -> set[str]:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=TASK_QUEUE),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return {poller.identity for poller in response.pollers}


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
        async with asyncio.timeout(90):
            while not identities <= await activity_pollers(client):
                for w in workers:
                    assert w.process.poll() is None, f"worker exited:\n{w.tail()}"
                await asyncio.sleep(0.25)

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
        for w in workers:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
                try:
                    w.process.wait(30)
                except subprocess.TimeoutExpired:
                    w.process.kill()
                    w.process.wait()
