"""Batched observation stays O(1) with several workers: an account's sync rounds run on the
worker process whose snapshot the previous round left (worker affinity), so a second worker
adds no exchange requests and no signals at rest; and when that worker dies, the rounds move
to another with one cold round.

A cold round (one that cannot diff against the previous round's open orders) tells every partly
filled intent again, with a trade lookup each: the resting set here has partly filled intents
so that cold rounds show in both figures."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from exchange_kernel.client import IntentClient
from exchange_kernel.connection import account_task_queue, connect, sync_task_queue
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import IntentStatus, OrderIntent, account_sync_id
from exchange_kernel.sim import running_sim
from exchange_kernel.workflows.account_sync import AccountSyncStart, AccountSyncStatus
from tests.conftest import Paper, eventually
from tests.test_intents import resting_partial
from tests.test_scale_out import (
    TASK_QUEUE,
    WorkerProcess,
    new_intent,
    start_worker,
    stop_workers,
    wait_polling,
)

RESTING = 200
PARTIAL = 6  # of them partly filled: what a cold round tells again
INTERVAL = timedelta(seconds=1)
WINDOW_ROUNDS = 10
SETTLE_ROUNDS = 2


@dataclass
class Figures:
    rounds: int
    requests: int  # exchange requests, as the paper exchange counted them
    signals: int  # signals the sync sent to intents
    seconds: float  # context only: the figures compared are per round

    @property
    def requests_per_round(self) -> float:
        return self.requests / self.rounds

    @property
    def signals_per_round(self) -> float:
        return self.signals / self.rounds

    def __str__(self) -> str:
        minutes = self.seconds / 60
        return (
            f"{self.rounds} rounds: {self.requests_per_round:.2f} requests/round "
            f"({self.requests / minutes:.0f}/min), {self.signals_per_round:.2f} signals/round "
            f"({self.signals / minutes:.0f}/min)"
        )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[DevServer, Paper, Path]]:
    """A dev server, the paper exchange and an accounts file whose budget is not what limits
    placing the resting set."""
    async with (
        DevServer(port=free_port(), headless=True) as server,
        running_sim(port=0) as sim,
        aiohttp.ClientSession() as session,
    ):
        accounts = tmp_path / "accounts.toml"
        accounts.write_text(
            '[accounts.paper]\nexchange = "binance"\napi_key_env = "EK_SCALE_KEY"\n'
            f'secret_env = "EK_SCALE_SECRET"\nbase_url = "{sim.base_url}"\n'
            "max_requests_per_second = 400\n"
        )
        yield server, Paper(base_url=sim.base_url, session=session, server=sim), accounts


async def start_sync(client: Client) -> None:
    """The account's sync, with 1 s rounds (the workers' own start then finds it running)."""
    await client.start_workflow(
        "AccountSync",
        # REST rounds at that interval whether or not the user-data stream is up (they are
        # what this module measures)
        AccountSyncStart(
            account="paper", task_queue=TASK_QUEUE, interval=INTERVAL, backstop_interval=INTERVAL
        ),
        id=account_sync_id("paper"),
        task_queue=sync_task_queue(TASK_QUEUE),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )


async def sync_status(client: Client) -> AccountSyncStatus:
    """The sync's status; asked again when the query could not be answered in time (right
    after a kill, its run may wait on the dead worker's queue until the server gives up)."""
    handle = client.get_workflow_handle(account_sync_id("paper"))
    for attempt in range(3):
        try:
            return await handle.query(
                "status", result_type=AccountSyncStatus, rpc_timeout=timedelta(seconds=20)
            )
        except RPCError:
            if attempt == 2:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


async def requests_total(paper: Paper) -> int:
    return int((await paper.admin("GET", "requests?limit=0"))["total"])


async def wait_rounds(client: Client, rounds: int, within: float = 60) -> AccountSyncStatus:
    first = await sync_status(client)
    async with asyncio.timeout(within):
        while True:
            status = await sync_status(client)
            if status.round >= first.round + rounds:
                return status
            await asyncio.sleep(0.2)


async def round_completed(client: Client) -> AccountSyncStatus:
    """The sync's status just after its next round completed (the next round starts an
    interval later): counters read now hold whole rounds."""
    first = await sync_status(client)
    async with asyncio.timeout(60):
        while True:
            status = await sync_status(client)
            if status.last_round_at != first.last_round_at:
                return status
            await asyncio.sleep(0.05)


async def window(client: Client, paper: Paper, rounds: int = WINDOW_ROUNDS) -> Figures:
    """What the sync costs over `rounds` rounds at rest, from a round's end to a round's end."""
    for _ in range(3):
        before = await round_completed(client)
        requests = await requests_total(paper)
        t0 = asyncio.get_running_loop().time()
        after = before
        while after.round < before.round + rounds:
            after = await round_completed(client)
        requests = await requests_total(paper) - requests
        seconds = asyncio.get_running_loop().time() - t0
        if after.signals_sent >= before.signals_sent:  # else: continued as new meanwhile
            return Figures(
                rounds=after.round - before.round,
                requests=requests,
                signals=after.signals_sent - before.signals_sent,
                seconds=seconds,
            )
    raise AssertionError("the sync kept continuing as new")


async def round_servers(client: Client) -> list[str]:
    """Who served the sync's rounds, in order (the current run's history)."""
    history = await client.get_workflow_handle(account_sync_id("paper")).fetch_history()
    rounds = {
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "sync_account"
    }
    return [
        event.activity_task_started_event_attributes.identity
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and event.activity_task_started_event_attributes.scheduled_event_id in rounds
    ]


async def open_orders(paper: Paper) -> int:
    data = await paper.admin("GET", "orders?symbol=BTCUSDT&status=NEW&count=1")
    return int(data["count"])


async def rest(
    intents: IntentClient, paper: Paper, client: Client, resting: int, partial: int
) -> list[OrderIntent]:
    """`resting` intents at rest, `partial` of them partly filled, all watched by the sync."""
    plain = [new_intent(f"{28000 + i / 100:.2f}") for i in range(resting - partial)]
    await asyncio.gather(*(intents.submit(i) for i in plain))

    async def all_open() -> bool:
        return await open_orders(paper) >= len(plain)

    async def one_more_open() -> bool:
        return await open_orders(paper) > len(plain)

    await eventually("all resting", all_open, within=60)
    # One at a time, each above the last: a move down to it crosses no other partly filled bid.
    partly: list[OrderIntent] = []
    for i in range(partial):
        intent = new_intent(f"{29900 + i}")
        intent = intent.model_copy(
            update={"order": intent.order.model_copy(update={"amount": Decimal("0.02")})}
        )
        await intents.submit(intent)
        # On the exchange (open orders not filled at all: the partly filled ones don't count).
        await eventually("placed", one_more_open, within=30)
        await paper.move_price("BTC/USDT", f"{29900 + i}", volume="0.01")
        await paper.move_price("BTC/USDT", "30000")
        partly.append(intent)
    for intent in partly:
        try:
            state = await intents.wait_for(
                intent.intent_id,
                lambda s: s.status is IntentStatus.PARTIALLY_FILLED and resting_partial(s),
                # Generous: a loaded CI machine runs the worker processes slowly.
                within=timedelta(seconds=90),
            )
        except TimeoutError:
            # Say where it stopped (a timeout alone said nothing in two CI runs).
            state = await intents.state(intent.intent_id)
            raise AssertionError(
                f"{intent.intent_id} not resting partly filled: {state.model_dump_json()}"
            ) from None
        assert state.filled == Decimal("0.01")

    async def all_watched() -> bool:
        return (await sync_status(client)).watched >= resting

    await eventually("all watched", all_watched, within=60)
    await wait_rounds(client, SETTLE_ROUNDS)
    return plain + partly


async def test_a_second_worker_adds_no_requests_and_no_signals_at_rest(
    cluster: tuple[DevServer, Paper, Path], tmp_path: Path
) -> None:
    server, paper, accounts = cluster
    client = await connect(server.target)
    intents = IntentClient(client, TASK_QUEUE)
    await paper.move_price("BTC/USDT", "30000")
    await start_sync(client)
    queue = account_task_queue(TASK_QUEUE, "paper")
    workers: list[WorkerProcess] = []
    try:
        workers.append(start_worker(accounts, server.target, tmp_path / "worker-1.log"))
        await wait_polling(client, workers, queue)
        await rest(intents, paper, client, RESTING, PARTIAL)
        one = await window(client, paper)
        streams = await sync_status(client)

        workers.append(start_worker(accounts, server.target, tmp_path / "worker-2.log"))
        await wait_polling(client, workers, queue)
        await wait_rounds(client, SETTLE_ROUNDS)
        two = await window(client, paper)
        served = await round_servers(client)
        after = await sync_status(client)
    finally:
        stop_workers(workers)
    # Still one user-data stream for the account: the second worker started none.
    assert streams.stream == after.stream == "up", (streams, after)
    assert after.stream_connects == streams.stream_connects, (streams, after)

    figures = f"one worker: {one}; two workers: {two}; last rounds served by {served[-10:]}"
    print(figures)
    assert one.rounds >= WINDOW_ROUNDS and two.rounds >= WINDOW_ROUNDS, figures
    assert one.requests_per_round > 0, figures  # the window did see the rounds' requests
    assert two.requests_per_round <= 1.2 * one.requests_per_round, figures
    assert two.signals_per_round <= 1.2 * one.signals_per_round, figures


async def test_rounds_move_to_another_worker_when_theirs_dies(
    cluster: tuple[DevServer, Paper, Path], tmp_path: Path
) -> None:
    """Killed, the worker that held the snapshot no longer takes the rounds sent to it: after a
    few seconds the round goes to the account's queue, cold on the survivor (each partly filled
    intent told once), and the rounds after it are warm there again."""
    server, paper, accounts = cluster
    client = await connect(server.target)
    intents = IntentClient(client, TASK_QUEUE)
    await paper.move_price("BTC/USDT", "30000")
    await start_sync(client)
    queue = account_task_queue(TASK_QUEUE, "paper")
    partial = 3
    workers = [start_worker(accounts, server.target, tmp_path / f"worker-{n}.log") for n in (1, 2)]
    try:
        await wait_polling(client, workers, queue)
        await rest(intents, paper, client, 20, partial)
        home = (await round_servers(client))[-1]
        victim = next(w for w in workers if w.identity == home)
        survivor = next(w for w in workers if w is not victim)
        before = await sync_status(client)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)

        after_kill = await wait_rounds(client, 2)
        warm = await window(client, paper, rounds=4)
        served = await round_servers(client)
    finally:
        stop_workers(workers)

    report = f"served {served[-8:]}, warm: {warm}, survivor log:\n{survivor.tail()}"
    assert served[-1] == survivor.identity, report
    assert after_kill.last_error is None, report
    # The cold round told each partly filled intent once (nothing else changed).
    assert after_kill.signals_sent - before.signals_sent <= partial, report
    assert warm.signals == 0, report
