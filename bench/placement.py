"""Placement benchmark: the kernel against a bare Temporal floor and direct ccxt, in one run.

Everything runs on the same servers, so the ratios are meaningful: a Temporal dev server on a
fresh SQLite file (headless, WAL), the paper exchange in-process, and two workers in-process
(the kernel's `build_worker` plus the account sync `run_worker` starts, and a bare one for the
floor workflows of bench/__init__.py). See bench/README.md for what each figure is.

    .venv/bin/python bench/placement.py [--n 50] [--concurrent 200] [--json] [--no-account-sync]

It prints figures and whether each target is met; it never asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from exchange_kernel.accounts import AccountConfig, ExchangePool, activities_per_second
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import (
    IntentStatus,
    OrderIntent,
    OrderSpec,
    client_order_id,
    workflow_id_for,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, binance_client, running_sim
from exchange_kernel.sim.engine import Exchange
from exchange_kernel.worker import build_worker

try:  # what `run_worker` starts next to the worker: one account sync per account
    from exchange_kernel.worker.run import ensure_account_syncs
except ImportError:  # a kernel without account syncs: intents poll their own orders
    ensure_account_syncs = None

# `python bench/placement.py` puts bench/ on sys.path, not the repository: the floor workflows
# are imported as the `bench` package (see bench/__init__.py for why they live there).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench import (  # noqa: E402
    ACTIVITY_RAN,
    ACTIVITY_RAN_WALL,
    FloorWorkflow,
    LifecycleWorkflow,
    bench_noop,
)

KERNEL_QUEUE = "bench-kernel"
FLOOR_QUEUE = "bench-floor"
KEY_ENV = "EK_BENCH_PAPER_KEY"
SECRET_ENV = "EK_BENCH_PAPER_SECRET"
SYMBOL = "BTC/USDT"
START_PRICE = "30000"
REST_PRICE = "20000"  # far below the last price: a buy here rests
FILL_PRICE = "29000"  # the submit -> fill intent's limit
THROUGH_PRICE = "28990"  # where the price moves to fill it
AMOUNT = "0.001"
WARMUP = 3
STALL_S = 1.5  # cleanup: how long without any intent finishing before looking for stuck ones
CLEANUP_TIMEOUT_S = 120.0
SUBMIT_ATTEMPTS = 50
ARRIVAL_TIMEOUT = 120.0  # seconds the sustained batch may take to rest before it is cut short

TARGET_LATENCY_RATIO = 1.3  # kernel submit->resting p50 / floor start->activity p50, at most
TARGET_P99_RATIO = 1.5  # the same at p99, at most
# The rate-limited account's request budget (a modest real account's): its sustained figure is
# the account's limit, shown beside the kernel's own (measured on "paper", whose budget is the
# paper exchange client's, far above what the bench reaches).
LIMITED_REQUESTS_PER_S = 20.0
TARGET_RATE_RATIO = 0.7  # kernel sustained rate / bare lifecycle rate, at least
TARGET_EVENTS = 40  # history events of one submit -> fill, at most

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def percentile(values: list[float], pct: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "min_ms": round(min(ms), 2),
        "max_ms": round(max(ms), 2),
    }


def paper_accounts(base_url: str) -> dict[str, AccountConfig]:
    os.environ[KEY_ENV] = DEMO_API_KEY
    os.environ[SECRET_ENV] = DEMO_SECRET
    return {
        "paper": AccountConfig(
            name="paper",
            exchange="binance",
            api_key_env=KEY_ENV,
            secret_env=SECRET_ENV,
            base_url=base_url,
        ),
        "paper-limited": AccountConfig(
            name="paper-limited",
            exchange="binance",
            api_key_env=KEY_ENV,
            secret_env=SECRET_ENV,
            base_url=base_url,
            max_requests_per_second=LIMITED_REQUESTS_PER_S,
        ),
    }


def new_intent(price: str = REST_PRICE, account: str = "paper") -> OrderIntent:
    return OrderIntent(
        intent_id=f"bench-{uuid.uuid4().hex[:12]}",
        account=account,
        order=OrderSpec(symbol=SYMBOL, side="buy", amount=AMOUNT, price=price),
    )


class PlacementClock:
    """When the in-process paper exchange accepted each order, by client order id.

    Wraps the bench's own `Exchange` instance's `place_order` (every new order of the REST
    API goes through it), so the moment is exact instead of polled.
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.at: dict[str, float] = {}
        self.at_wall: dict[str, float] = {}
        self.orders: dict[str, Any] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        original = exchange.place_order

        def place_order(api_key: str, request: Any) -> Any:
            placement = original(api_key, request)
            now, wall = time.perf_counter(), time.time()
            cid = placement.order.client_order_id
            self.at[cid] = now
            self.at_wall[cid] = wall
            self.orders[cid] = placement.order
            waiter = self._waiters.pop(cid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)
            return placement

        exchange.place_order = place_order  # type: ignore[method-assign]

    def expect(self, cid: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if cid in self.at:
            future.set_result(self.at[cid])
        else:
            self._waiters[cid] = future
        return future

    def is_resting(self, cid: str) -> bool:
        order = self.orders.get(cid)
        return order is not None and order.is_open


@dataclass
class Paper:
    base_url: str
    session: aiohttp.ClientSession

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/sim/v1/{path}"
        async with self.session.request(method, url, json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def move_price(self, price: str) -> None:
        await self.admin("POST", "price", {"symbol": SYMBOL.replace("/", ""), "price": price})

    async def request_counts(self) -> tuple[int, Counter[str]]:
        data = await self.admin("GET", "requests?limit=0")
        return data["total"], Counter(data["counts"])


def event_name(event_type: int) -> str:
    return EventType.Name(event_type).removeprefix("EVENT_TYPE_")


def breakdown(history: WorkflowHistory, submitted: float, arrived: float) -> dict[str, float]:
    """Where the time from start to the first useful activity went, from history event times.

    Each stage is the time since the previous milestone. `submitted` is the client's wall clock
    just before the start call, `arrived` the wall clock when the no-op activity ran or the
    exchange had the order (the server runs on the same machine, so the clocks agree).
    """
    stages: dict[str, float] = {}
    cursor = submitted
    scheduled: dict[int, str] = {}
    tasks = 0
    for event in history.events:
        at = event.event_time.ToNanoseconds() / 1e9
        # Later events can precede in history an activity's started event (written with its
        # completion), so skip rather than stop.
        if at > arrived:
            continue
        name = event_name(event.event_type)
        if name == "WORKFLOW_EXECUTION_STARTED":
            label = "-> workflow started (client side of submit/start)"
        elif name == "WORKFLOW_TASK_STARTED":
            tasks += 1
            label = f"-> workflow task {tasks} picked up by the worker"
        elif name == "WORKFLOW_TASK_COMPLETED":
            label = f"-> workflow task {tasks} completed (worker ran the workflow code)"
        elif name == "ACTIVITY_TASK_SCHEDULED":
            attributes = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attributes.activity_type.name
            continue
        elif name == "ACTIVITY_TASK_STARTED":
            sched = event.activity_task_started_event_attributes.scheduled_event_id
            label = f"-> {scheduled.get(sched, '?')} started"
        elif name == "ACTIVITY_TASK_COMPLETED":
            sched = event.activity_task_completed_event_attributes.scheduled_event_id
            label = f"-> {scheduled.get(sched, '?')} completed"
        else:
            continue
        stages[label] = at - cursor
        cursor = at
    stages["-> activity body ran / order on exchange"] = arrived - cursor
    return stages


def median_stages(all_stages: list[dict[str, float]]) -> dict[str, float]:
    # The fullest sample gives the order; a stage missing from a sample is left out of its median.
    keys = list(max(all_stages, key=len))
    for stages in all_stages:
        keys.extend(k for k in stages if k not in keys)
    out = {}
    for key in keys:
        values = [s[key] for s in all_stages if key in s]
        out[key] = round(statistics.median(values) * 1000, 2)
    return out


# --------------------------------------------------------------------------------------
# The benches
# --------------------------------------------------------------------------------------


async def bench_ccxt(base_url: str, n: int) -> list[float]:
    client = binance_client(base_url, DEMO_API_KEY, DEMO_SECRET)
    try:
        await client.load_markets()
        latencies = []
        for i in range(WARMUP + n):
            cid = f"bench-ccxt-{uuid.uuid4().hex[:12]}"
            t0 = time.perf_counter()
            await client.create_order(
                SYMBOL, "limit", "buy", AMOUNT, REST_PRICE, {"clientOrderId": cid}
            )
            if i >= WARMUP:
                latencies.append(time.perf_counter() - t0)
        # Leave the book to the kernel (and its account sync) as it found it.
        await client.cancel_all_orders(SYMBOL)
        return latencies
    finally:
        await client.close()


async def submit(intents: IntentClient, intent: OrderIntent, refusals: Counter[str]) -> bool:
    """`IntentClient.submit`, retried while the server refuses it for lack of resources.

    (`submit` asks the account sync for halts with a query first; the server buffers few
    queries per workflow and refuses the rest with RESOURCE_EXHAUSTED.) Each refusal is
    counted in `refusals`; False if the intent could not be submitted at all.
    """
    for attempt in range(1, SUBMIT_ATTEMPTS + 1):
        try:
            await intents.submit(intent)
            return True
        except RPCError as exc:
            if exc.status is not RPCStatusCode.RESOURCE_EXHAUSTED:
                raise
            refusals[exc.message.split(",")[0]] += 1
            await asyncio.sleep(min(0.05 * attempt, 0.5))
    return False


async def floor_sample(client: Client) -> tuple[float, float, dict[str, float]]:
    """One floor workflow: (start -> activity running, start -> result, stages)."""
    wid = f"bench-floor-{uuid.uuid4().hex[:12]}"
    wall0 = time.time()
    t0 = time.perf_counter()
    handle = await client.start_workflow(FloorWorkflow.run, id=wid, task_queue=FLOOR_QUEUE)
    await handle.result()
    t1 = time.perf_counter()
    history = await handle.fetch_history()
    stages = breakdown(history, wall0, ACTIVITY_RAN_WALL[wid])
    return ACTIVITY_RAN[wid] - t0, t1 - t0, stages


async def finish_intents(intents: IntentClient, ids: list[str]) -> int:
    """Cancel resting intents and wait until their workflows are done (not timed).

    An intent that, after its cancel was accepted, sits idle (running, no workflow task and no
    activity pending, history not growing) over two looks STALL_S apart will never finish on
    its own: it is counted as stuck and woken with a resync signal. The count is printed; it is
    not expected to be anything but zero.
    """
    await asyncio.gather(*(intents.cancel(i, "bench cleanup") for i in ids))
    pending = {asyncio.ensure_future(intents.result(i)): i for i in ids}
    idle_since: dict[str, int] = {}  # intent id -> history length when first seen idle
    stuck: set[str] = set()
    async with asyncio.timeout(CLEANUP_TIMEOUT_S):
        while pending:
            done, _ = await asyncio.wait(pending, timeout=STALL_S)
            for future in done:
                future.result()
                del pending[future]
            if done:
                idle_since.clear()
                continue
            for intent_id in [i for i in pending.values() if i not in stuck]:
                length = await idle_history_length(intents, intent_id)
                if length is None:
                    idle_since.pop(intent_id, None)
                elif idle_since.get(intent_id) == length:
                    stuck.add(intent_id)
                    await intents.resync(intent_id)
                else:
                    idle_since[intent_id] = length
    return len(stuck)


async def idle_history_length(intents: IntentClient, intent_id: str) -> int | None:
    """The history length of a running workflow with nothing pending; None if it is busy."""
    description = await intents.temporal.get_workflow_handle(workflow_id_for(intent_id)).describe()
    raw = description.raw_description
    if description.status is not WorkflowExecutionStatus.RUNNING:
        return None
    if raw.pending_activities or raw.HasField("pending_workflow_task"):
        return None
    return raw.workflow_execution_info.history_length


async def kernel_sample(
    intents: IntentClient, clock: PlacementClock, refusals: Counter[str]
) -> tuple[float, dict[str, float], int]:
    """One intent: (submit -> resting on the exchange, stages, stuck after cancel)."""
    intent = new_intent()
    cid = client_order_id(intent.intent_id, 0)
    arrived = clock.expect(cid)
    wall0 = time.time()
    t0 = time.perf_counter()
    if not await submit(intents, intent, refusals):
        raise RuntimeError(f"the server kept refusing intent {intent.intent_id}: {refusals}")
    t1 = await asyncio.wait_for(arrived, ARRIVAL_TIMEOUT)
    if not clock.is_resting(cid):
        raise RuntimeError(f"{cid} reached the paper exchange but is not resting")
    stuck = await finish_intents(intents, [intent.intent_id])
    history = await intents.temporal.get_workflow_handle(intent.workflow_id).fetch_history()
    return t1 - t0, breakdown(history, wall0, clock.at_wall[cid]), stuck


async def bench_sequential(
    client: Client, intents: IntentClient, clock: PlacementClock, n: int
) -> dict[str, Any]:
    """Floor and kernel samples alternate, so both see the same machine (load changes)."""
    to_activity, to_result, floor_stages = [], [], []
    latencies, kernel_stages, stuck = [], [], 0
    refusals: Counter[str] = Counter()
    for i in range(WARMUP + n):
        floor = await floor_sample(client)
        kernel = await kernel_sample(intents, clock, refusals)
        stuck += kernel[2]
        if i < WARMUP:
            continue
        to_activity.append(floor[0])
        to_result.append(floor[1])
        floor_stages.append(floor[2])
        latencies.append(kernel[0])
        kernel_stages.append(kernel[1])
    return {
        "to_activity": to_activity,
        "to_result": to_result,
        "floor_stages": median_stages(floor_stages),
        "latencies": latencies,
        "kernel_stages": median_stages(kernel_stages),
        "stuck_after_cancel": stuck,
        "submit_refusals": dict(refusals),
    }


async def bench_kernel_rate(
    intents: IntentClient, clock: PlacementClock, paper: Paper, m: int, account: str = "paper"
) -> dict[str, Any]:
    batch = [new_intent(account=account) for _ in range(m)]
    arrivals = [clock.expect(client_order_id(i.intent_id, 0)) for i in batch]
    refusals: Counter[str] = Counter()
    _, before = await paper.request_counts()
    t0 = time.perf_counter()
    accepted = await asyncio.gather(*(submit(intents, i, refusals) for i in batch))
    submitted = time.perf_counter()
    for ok, future in zip(accepted, arrivals, strict=True):
        if not ok:
            future.cancel()
    waiting = [f for f in arrivals if not f.cancelled()]
    done, pending = await asyncio.wait(waiting, timeout=ARRIVAL_TIMEOUT) if waiting else ((), ())
    for future in pending:
        future.cancel()
    times = [f.result() for f in done]
    elapsed = (max(times) if times else time.perf_counter()) - t0
    # What the exchange saw while the batch was being placed: with per-intent polling, the
    # resting intents' own lookups compete with the placements still queued.
    _, after = await paper.request_counts()
    live = [i.intent_id for i, ok in zip(batch, accepted, strict=True) if ok]
    stuck = await finish_intents(intents, live)
    latencies = [t - t0 for t in times] or [float("nan")]
    return {
        "resting": len(times),
        "never_submitted": accepted.count(False),
        "not_resting_after_timeout": len(pending),
        "submit_refusals": dict(refusals),
        "elapsed_s": round(elapsed, 3),
        "per_s": round(len(times) / elapsed, 1),
        "submits_done_s": round(submitted - t0, 3),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "exchange_requests_meanwhile": dict(after - before),
        "stuck_after_cancel": stuck,
    }


async def bench_lifecycle_rate(client: Client, m: int) -> dict[str, float]:
    async def one() -> None:
        wid = f"bench-life-{uuid.uuid4().hex[:12]}"
        handle = await client.start_workflow(LifecycleWorkflow.run, id=wid, task_queue=FLOOR_QUEUE)
        await handle.signal(LifecycleWorkflow.finish)
        await handle.result()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(m)))
    elapsed = time.perf_counter() - t0
    return {"elapsed_s": round(elapsed, 3), "per_s": round(m / elapsed, 1)}


async def bench_fill_history(intents: IntentClient, paper: Paper) -> dict[str, Any]:
    await paper.move_price(START_PRICE)
    intent = new_intent(FILL_PRICE)
    total0, counts0 = await paper.request_counts()
    t0 = time.perf_counter()
    if not await submit(intents, intent, Counter()):
        raise RuntimeError(f"the server kept refusing intent {intent.intent_id}")
    await intents.wait_for(
        intent.intent_id,
        lambda s: s.status is IntentStatus.OPEN,
        interval=timedelta(milliseconds=10),
    )
    await paper.move_price(THROUGH_PRICE)
    await intents.resync(intent.intent_id)
    final = await intents.result(intent.intent_id)
    window = time.perf_counter() - t0
    total1, counts1 = await paper.request_counts()
    history = await intents.temporal.get_workflow_handle(intent.workflow_id).fetch_history()
    await paper.move_price(START_PRICE)
    kinds = Counter(event_name(e.event_type) for e in history.events)
    activities = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    return {
        "status": final.status.value,
        "events": len(history.events),
        "event_types": dict(kinds.most_common()),
        "activities": activities,
        # Everything the exchange served in the window, account-sync rounds included.
        "exchange_requests": total1 - total0,
        "exchange_request_counts": dict(counts1 - counts0),
        "window_s": round(window, 3),
    }


# --------------------------------------------------------------------------------------
# Running it all
# --------------------------------------------------------------------------------------


def partition_config(partitions: int | None) -> dict[str, int]:
    """Dynamic config giving every task queue this many read and write partitions."""
    if partitions is None:
        return {}
    return {
        "matching.numTaskqueueReadPartitions": partitions,
        "matching.numTaskqueueWritePartitions": partitions,
    }


async def timed(console: Console, label: str, work: Callable[[], Awaitable[Any]]) -> Any:
    console.print(f"[dim]… {label}[/dim]")
    t0 = time.perf_counter()
    result = await work()
    console.print(f"[dim]  done in {time.perf_counter() - t0:.1f}s[/dim]")
    return result


async def run(
    n: int, m: int, account_sync: bool, console: Console, partitions: int | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ek-bench-") as tmp:
        server = DevServer(
            port=free_port(),
            headless=True,
            db_filename=Path(tmp) / "temporal.sqlite",
            dynamic_config=partition_config(partitions),
        )
        t_start = time.perf_counter()
        async with server:
            console.print(
                f"[dim]dev server {server.target} on {server.db_filename} "
                f"ready in {time.perf_counter() - t_start:.1f}s[/dim]"
            )
            client = await server.connect(data_converter=pydantic_data_converter)
            async with (
                running_sim(port=0) as sim,
                aiohttp.ClientSession() as session,
            ):
                paper = Paper(sim.base_url, session)
                await paper.move_price(START_PRICE)
                clock = PlacementClock(sim.exchange)
                pool = ExchangePool(paper_accounts(sim.base_url))
                kernel_worker = build_worker(client, pool, KERNEL_QUEUE)
                floor_worker = Worker(
                    client,
                    task_queue=FLOOR_QUEUE,
                    workflows=[FloorWorkflow, LifecycleWorkflow],
                    activities=[bench_noop],
                    max_concurrent_activities=200,
                )
                intents = IntentClient(client, KERNEL_QUEUE)
                try:
                    async with kernel_worker, floor_worker:
                        sync = account_sync and ensure_account_syncs is not None
                        if sync:
                            await ensure_account_syncs(client, ["paper"], KERNEL_QUEUE)
                        results = await run_benches(n, m, console, client, intents, clock, paper)
                        results["account_sync"] = sync
                        results["partitions"] = partitions
                        return results
                finally:
                    await pool.close()


async def run_benches(
    n: int,
    m: int,
    console: Console,
    client: Client,
    intents: IntentClient,
    clock: PlacementClock,
    paper: Paper,
) -> dict[str, Any]:
    base_url = paper.base_url
    ccxt = await timed(
        console, f"(a) direct ccxt: {n} create_order", lambda: bench_ccxt(base_url, n)
    )
    sequential = await timed(
        console,
        f"(b) bare Temporal floor and (c) kernel: {n} sequential each, interleaved",
        lambda: bench_sequential(client, intents, clock, n),
    )
    fill = await timed(
        console, "history of one submit -> fill", lambda: bench_fill_history(intents, paper)
    )
    kernel_rate = await timed(
        console,
        f"sustained: {m} concurrent kernel intents",
        lambda: bench_kernel_rate(intents, clock, paper, m),
    )
    life_rate = await timed(
        console,
        f"sustained: {m} concurrent bare lifecycles",
        lambda: bench_lifecycle_rate(client, m),
    )
    limited_rate = await timed(
        console,
        f"sustained: {m} concurrent kernel intents on a {LIMITED_REQUESTS_PER_S:g} requests/s "
        "account",
        lambda: bench_kernel_rate(intents, clock, paper, m, account="paper-limited"),
    )
    accounts = paper_accounts(paper.base_url)

    kernel_p50 = percentile(sequential["latencies"], 50)
    floor_p50 = percentile(sequential["to_activity"], 50)
    latency_ratio = kernel_p50 / floor_p50
    p99_ratio = percentile(sequential["latencies"], 99) / percentile(sequential["to_activity"], 99)
    rate_ratio = kernel_rate["per_s"] / life_rate["per_s"]
    return {
        "n": n,
        "concurrent": m,
        "cpus": os.cpu_count(),
        # Without .pyc files the workflow sandbox compiles each workflow's module from source
        # for every workflow run: that inflates both the floor and the kernel.
        "python_dont_write_bytecode": sys.dont_write_bytecode,
        "ccxt_create_order": summary_ms(ccxt),
        "floor_start_to_activity": summary_ms(sequential["to_activity"]),
        "floor_start_to_result": summary_ms(sequential["to_result"]),
        "floor_stages_median_ms": sequential["floor_stages"],
        "kernel_submit_to_resting": summary_ms(sequential["latencies"]),
        "kernel_stages_median_ms": sequential["kernel_stages"],
        "kernel_stuck_after_cancel": sequential["stuck_after_cancel"],
        "kernel_submit_refusals": sequential["submit_refusals"],
        "kernel_sustained": kernel_rate,
        "bare_lifecycle_sustained": life_rate,
        # The budgets the account task queues are limited to (activities/s): "paper"'s is
        # the paper client's own rate limit, so the sustained figure above is the kernel's.
        "account_activities_per_s": {
            name: activities_per_second(config) for name, config in accounts.items()
        },
        "kernel_sustained_rate_limited": limited_rate,
        "submit_to_fill": fill,
        "ratios": {
            "latency": {
                "value": round(latency_ratio, 2),
                "target": f"<= {TARGET_LATENCY_RATIO}",
                "met": latency_ratio <= TARGET_LATENCY_RATIO,
            },
            "latency_p99": {
                "value": round(p99_ratio, 2),
                "target": f"<= {TARGET_P99_RATIO}",
                "met": p99_ratio <= TARGET_P99_RATIO,
            },
            "rate": {
                "value": round(rate_ratio, 2),
                "target": f">= {TARGET_RATE_RATIO}",
                "met": rate_ratio >= TARGET_RATE_RATIO,
            },
            "history_events": {
                "value": fill["events"],
                "target": f"<= {TARGET_EVENTS}",
                "met": fill["events"] <= TARGET_EVENTS,
            },
        },
    }


def met(flag: bool) -> str:
    return "[green]met[/green]" if flag else "[red]NOT met[/red]"


def render(results: dict[str, Any], console: Console) -> None:
    def lat(figures: dict[str, float]) -> str:
        return f"p50 {figures['p50_ms']:.2f} ms / p99 {figures['p99_ms']:.2f} ms"

    ratios = results["ratios"]
    fill = results["submit_to_fill"]
    table = Table(
        title=f"exchange-kernel placement bench (n={results['n']}, "
        f"concurrent={results['concurrent']}, {results['cpus']} CPUs, "
        f"account sync {'on' if results['account_sync'] else 'off'}, "
        f"task queue partitions {results.get('partitions') or 'server default'})"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    table.add_column("")
    table.add_row("(a) direct ccxt create_order", lat(results["ccxt_create_order"]), "context", "")
    table.add_row(
        "(b) floor start -> activity running", lat(results["floor_start_to_activity"]), "", ""
    )
    table.add_row("(b) floor start -> result", lat(results["floor_start_to_result"]), "", "")
    table.add_row("(c) kernel submit -> resting", lat(results["kernel_submit_to_resting"]), "", "")
    table.add_row(
        "kernel p50 / floor start->activity p50",
        f"{ratios['latency']['value']:.2f}x",
        f"{ratios['latency']['target']}x",
        met(ratios["latency"]["met"]),
    )
    table.add_row(
        "kernel p99 / floor start->activity p99",
        f"{ratios['latency_p99']['value']:.2f}x",
        f"{ratios['latency_p99']['target']}x",
        met(ratios["latency_p99"]["met"]),
    )
    budgets = results["account_activities_per_s"]
    table.add_row(
        f"kernel sustained ({results['concurrent']} at once)",
        f"{results['kernel_sustained']['per_s']:.1f} resting/s",
        f"budget {budgets['paper']:g} activities/s",
        "",
    )
    table.add_row(
        f"bare lifecycle sustained ({results['concurrent']} at once)",
        f"{results['bare_lifecycle_sustained']['per_s']:.1f} done/s",
        "",
        "",
    )
    table.add_row(
        "kernel rate / bare lifecycle rate",
        f"{ratios['rate']['value']:.2f}x",
        f"{ratios['rate']['target']}x",
        met(ratios["rate"]["met"]),
    )
    table.add_row(
        f"the account's limit ({LIMITED_REQUESTS_PER_S:g} requests/s)",
        f"{results['kernel_sustained_rate_limited']['per_s']:.1f} resting/s",
        f"budget {budgets['paper-limited']:g} activities/s",
        "context",
    )
    table.add_row(
        "history events, submit -> fill",
        str(fill["events"]),
        ratios["history_events"]["target"],
        met(ratios["history_events"]["met"]),
    )
    table.add_row(
        "exchange requests, submit -> fill",
        f"{fill['exchange_requests']} in {fill['window_s']:.2f} s",
        "incl. account sync",
        "",
    )
    sustained = results["kernel_sustained"]
    refused = sum(results["kernel_submit_refusals"].values())
    refused += sum(sustained["submit_refusals"].values())
    table.add_row(
        "submits the server refused (retried)",
        f"{refused} ({sustained['never_submitted']} never accepted)",
        "0",
        met(refused == 0),
    )
    stuck = results["kernel_stuck_after_cancel"] + sustained["stuck_after_cancel"]
    table.add_row(
        "intents a cancel left running (cleanup)",
        str(stuck),
        "0",
        met(stuck == 0),
    )
    console.print(table)

    stages = Table(title="median stage durations (ms, from history event times)")
    stages.add_column("stage")
    stages.add_column("ms", justify="right")
    for label, key in (("floor", "floor_stages_median_ms"), ("kernel", "kernel_stages_median_ms")):
        for stage, ms in results[key].items():
            stages.add_row(f"{label}: {stage}", f"{ms:.2f}")
    console.print(stages)
    console.print(
        f"submit -> fill ({fill['status']}): activities {', '.join(fill['activities'])}; "
        f"events {fill['event_types']}; exchange requests {fill['exchange_request_counts']}"
    )
    console.print(
        f"kernel sustained: {results['kernel_sustained']}; "
        f"bare lifecycle: {results['bare_lifecycle_sustained']}"
    )
    if results["python_dont_write_bytecode"]:
        console.print(
            "[yellow]note: PYTHONDONTWRITEBYTECODE is set; the workflow sandbox then compiles "
            "workflow modules from source on every workflow run (both floor and kernel pay it)."
            "[/yellow]"
        )


async def stoppable(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run `work`; SIGTERM cancels it, so the `async with` blocks stop every server cleanly
    (the dev server runs in its own session and would otherwise outlive us)."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="sequential samples per latency bench")
    parser.add_argument(
        "--concurrent", type=int, default=200, help="intents/workflows started at once"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="task queue partitions on the dev server (default: the server's own, 4)",
    )
    parser.add_argument(
        "--no-account-sync",
        action="store_true",
        help="do not start the account sync that run_worker starts (intents then poll)",
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.concurrent < 1:
        parser.error("--n and --concurrent must be at least 1")
    # Piped output (make bench | tee) would otherwise be cut to 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 120)
    t0 = time.perf_counter()
    try:
        results = asyncio.run(
            stoppable(
                run(args.n, args.concurrent, not args.no_account_sync, console, args.partitions)
            )
        )
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("[red]interrupted; servers and workers stopped[/red]")
        sys.exit(130)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    render(results, console)
    console.print(f"[dim]total {results['wall_s']}s[/dim]")
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
