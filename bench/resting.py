"""Resting bench: what N resting intents on one account cost once nothing is happening.

For N resting intents (10, 100, 1000 by default; 10000 with `--max 10000`) it measures, over a
window after all N rest and the system has settled:

- exchange requests per minute, from the paper exchange's own request counter
  (`GET /sim/v1/requests`: the source of truth, it counts what reached the exchange);
- workflow tasks per second, from the Temporal dev server's metrics endpoint (`--metrics-port`,
  `service_requests{operation="RespondWorkflowTaskCompleted"}`), cross-checked with the SDK's
  own count on the worker (`temporal_workflow_task_execution_latency` histogram);
- CPU (% of one core over the window) and RSS of the worker's process (each mode runs in a child
  process of its own, which also holds the submitting client: the lines under the table give
  its RSS before the first intent), and of the Temporal server. The paper exchange runs in a
  process of its own (`python -m exchange_kernel.sim`), as a real exchange is elsewhere: at
  10,000 open orders, serving them every round would otherwise take the worker's CPU.

"Settled": for the sync, it watches all N and has run two more rounds; for polling, the newest
intents' backoff has had time to climb to its ceiling, and the window is repeated (up to 4
times) while the request count is still falling (a busy worker fires backoff timers late).

Two modes, each on a fresh dev server (SQLite file in a temp dir, WAL pragmas, as the dev
launcher runs it): `sync`, the design (the account's `AccountSyncWorkflow` observes in bulk and
the resting intents do not poll), and `polling`, the previous design (no account sync: each
intent polls its own order with backoff, 1 s doubling to the production ceiling of 30 s).
Within a mode the intents accumulate: 10 are submitted and measured, then 90 more, and so on.

Several workers (`--workers 1,2`, sync mode): at each N the figures are taken with one worker,
then again with a second worker (its own `build_worker` and ccxt clients: what a second process
has) running beside it, side by side with the ratio to one worker. Each worker keeps the
snapshot of the open orders its last round saw; a round served by another worker is cold and
tells every partly filled intent again: `--partial` intents (10 by default) are partly filled
before the first N so that cold rounds show in both figures (requests and signals per minute).

    .venv/bin/python bench/resting.py [--max 10000] [--window 30] [--modes sync,polling]
        [--workers 1,2] [--partial 10] [--json]

It prints figures; it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import (
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import OrderIntent, OrderSpec, account_sync_id
from exchange_kernel.reconcile import POLL_CEILING, POLL_FIRST
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import ensure_account_syncs
from exchange_kernel.workflows.account_sync import AccountSyncStatus

QUEUE = "bench-resting"
ACCOUNT = "paper"
KEY_ENV = "EK_BENCH_PAPER_KEY"
SECRET_ENV = "EK_BENCH_PAPER_SECRET"
SYMBOL = "BTC/USDT"  # the sim starts it at 30000: buys at 1000.00 + i * 0.01 rest
SIM_SYMBOL = "BTCUSDT"
BASE_PRICE = Decimal("1000.00")
TICK = Decimal("0.01")
AMOUNT = "0.01"  # ~10 USDT a order: above the 5 USDT min notional; 10k of them ~105k USDT
# The partly filled intents: above every plain one, each filled by AMOUNT of PARTIAL_AMOUNT.
PARTIAL_BASE_PRICE = Decimal("2000")
PARTIAL_AMOUNT = "0.02"
CHUNK = 200  # submits in flight at once
SIZES = (10, 100, 1000, 10000)
SYNC_SETTLE_ROUNDS = 2  # sync rounds after the last watch before the window opens
POLL_SETTLE_MARGIN = 5.0  # seconds on top of the backoff's climb to its ceiling
MAX_POLL_WINDOWS = 4  # windows tried before a polling figure is taken as it is
# The dev server counts the call in both its frontend and its history service: one of them.
WFT_COMPLETED = {"operation": "RespondWorkflowTaskCompleted", "service_name": "frontend"}
MODES = ("sync", "polling")


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])


def rss_mb(pid: int | str = "self") -> float | None:
    """VmRSS of a process in MB, from /proc (psutil is not installed)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_sum(text: str, name: str | re.Pattern[str], **labels: str) -> float:
    """Sum of every sample of `name` (exact, or a compiled pattern) that has `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        sample, raw_labels, value = match.groups()
        named = name.fullmatch(sample) if isinstance(name, re.Pattern) else sample == name
        if named and labels.items() <= dict(_LABEL.findall(raw_labels or "")).items():
            total += float(value)
    return total


SDK_WFT = re.compile(r"temporal_workflow_task_execution_latency(_seconds)?_count")
SDK_CACHE_MISS = re.compile(r"temporal_sticky_cache_miss(_total)?")
SDK_WFT_FAILED = re.compile(r"temporal_workflow_task_execution_failed(_total)?")


@dataclass
class Snapshot:
    at: float
    requests: Counter[str]
    server_wft: float
    sdk_wft: float
    sdk_cache_miss: float
    sdk_wft_failed: float
    worker_cpu: float
    server_cpu: float


@dataclass
class Row:
    mode: str
    n: int
    resting: int
    submit_s: float
    rest_s: float
    settle_s: float
    window_s: float
    requests_per_min: float
    server_wft_per_s: float
    sdk_wft_per_s: float
    worker_cpu_pct: float
    server_cpu_pct: float
    load_1m: float
    worker_rss_mb: float | None
    server_rss_mb: float | None
    worker_rss_before_mb: float | None
    cache_misses: float
    wft_failures_so_far: float
    by_endpoint: dict[str, int]
    sync: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    ratio: float | None = None
    workers: int = 1
    signals_per_min: float | None = None  # the sync's signals to intents
    partial: int = 0  # of the resting intents, partly filled
    # Requests and signals per minute / the same N with one worker.
    vs_one_worker: tuple[float | None, float | None] | None = None


@dataclass
class Probe:
    """Reads the three counters: the sim's requests, the server's and the SDK's metrics."""

    session: aiohttp.ClientSession
    sim_url: str
    server_metrics: str
    sdk_metrics: str
    server_pid: int

    async def get(self, url: str) -> str:
        async with self.session.get(url) as response:
            response.raise_for_status()
            return await response.text()

    async def snapshot(self) -> Snapshot:
        requests = json.loads(await self.get(f"{self.sim_url}/sim/v1/requests?limit=0"))
        server = await self.get(self.server_metrics)
        sdk = await self.get(self.sdk_metrics)
        return Snapshot(
            at=time.perf_counter(),
            requests=Counter(requests["counts"]),
            server_wft=metric_sum(server, "service_requests", **WFT_COMPLETED),
            sdk_wft=metric_sum(sdk, SDK_WFT),
            sdk_cache_miss=metric_sum(sdk, SDK_CACHE_MISS),
            sdk_wft_failed=metric_sum(sdk, SDK_WFT_FAILED),
            worker_cpu=cpu_seconds(),
            server_cpu=cpu_seconds(self.server_pid),
        )


# --------------------------------------------------------------------------------------
# Setting up N resting intents
# --------------------------------------------------------------------------------------


def bench_runtime(metrics_port: int) -> Runtime:
    """The SDK's Prometheus endpoint (as the worker's `metrics_runtime` sets it up), with the
    core's warnings silenced: its retries of refused queries would flood the output (the bench
    counts those refusals itself, and workflow task failures are counted from the metrics)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR")),
            metrics=PrometheusConfig(
                bind_address=f"127.0.0.1:{metrics_port}",
                counters_total_suffix=True,
                durations_as_seconds=True,
            ),
        )
    )


def paper_accounts(base_url: str) -> dict[str, AccountConfig]:
    os.environ[KEY_ENV] = DEMO_API_KEY
    os.environ[SECRET_ENV] = DEMO_SECRET
    return {
        ACCOUNT: AccountConfig(
            name=ACCOUNT,
            exchange="binance",
            api_key_env=KEY_ENV,
            secret_env=SECRET_ENV,
            base_url=base_url,
        )
    }


def resting_intent(mode: str, i: int) -> OrderIntent:
    return OrderIntent(
        intent_id=f"rest-{mode}-{i:05d}",
        account=ACCOUNT,
        order=OrderSpec(symbol=SYMBOL, side="buy", amount=AMOUNT, price=str(BASE_PRICE + i * TICK)),
    )


async def submit(intents: IntentClient, intent: OrderIntent, refusals: Counter[str]) -> None:
    """`IntentClient.submit`, retried when the server refuses it for being busy.

    `submit` first reads the account's kill switch from its sync workflow. When that read was
    a workflow query, a query meeting the sync mid-task was buffered server-side and, the
    buffer full (one query by default), refused: RESOURCE_EXHAUSTED, "consistent query buffer
    is full". Such refusals are counted and printed: a finding, not something to hide.
    """
    for attempt in range(20):
        try:
            await intents.submit(intent)
            return
        except RPCError as exc:
            if "buffer is full" not in str(exc) and exc.status != RPCStatusCode.RESOURCE_EXHAUSTED:
                raise
            refusals[str(exc)[:60]] += 1
            await asyncio.sleep(0.05 * (attempt + 1))
    await intents.submit(intent)


async def submit_range(
    intents: IntentClient, mode: str, start: int, stop: int, refusals: Counter[str]
) -> None:
    for chunk in range(start, stop, CHUNK):
        batch = [resting_intent(mode, i) for i in range(chunk, min(chunk + CHUNK, stop))]
        await asyncio.gather(*(submit(intents, intent, refusals) for intent in batch))


async def open_count(probe: Probe) -> int:
    """The paper exchange's open orders on the symbol, by its operator API."""
    url = f"{probe.sim_url}/sim/v1/orders?symbol={SIM_SYMBOL}&status=NEW&count=1"
    return int(json.loads(await probe.get(url))["count"])


async def wait_open(probe: Probe, n: int, patience: float) -> int:
    """The number of open orders once it reaches `n`, or after `patience` seconds."""
    deadline = time.perf_counter() + patience
    while True:
        count = await open_count(probe)
        if count >= n or time.perf_counter() >= deadline:
            return count
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def paper_exchange(session: aiohttp.ClientSession) -> AsyncIterator[str]:
    """The paper exchange in a process of its own; its base URL."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange_kernel.sim", "--port", str(port)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    async with session.get(f"{url}/sim/v1/prices") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if process.returncode is not None:
                    raise RuntimeError(f"the paper exchange exited with {process.returncode}")
                await asyncio.sleep(0.2)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.shield(process.wait())


async def sync_status(client: Client) -> AccountSyncStatus:
    handle = client.get_workflow_handle(account_sync_id(ACCOUNT))
    return await handle.query("status", result_type=AccountSyncStatus)


def poll_settle_seconds() -> float:
    """How long a fresh intent's backoff takes to reach its ceiling (1+2+4+8 s by default)."""
    first: timedelta = POLL_FIRST
    ceiling: timedelta = POLL_CEILING
    total, poll = 0.0, first
    while poll < ceiling:
        total += poll.total_seconds()
        poll *= 2
    return total + POLL_SETTLE_MARGIN


async def settle_sync(client: Client, n: int, patience: float, notes: list[str]) -> None:
    """Until the sync watches all `n`, then a few more rounds (or `patience` seconds)."""
    deadline = time.perf_counter() + patience
    target: int | None = None
    while True:
        status = await sync_status(client)
        if target is None and status.watched >= n:
            target = status.round + SYNC_SETTLE_ROUNDS
        if target is not None and status.round >= target:
            return
        if time.perf_counter() >= deadline:
            if status.watched < n:
                notes.append(f"only {status.watched} of {n} intents watched by the sync")
            return
        await asyncio.sleep(0.5)


async def polling_window(
    mode: str, n: int, window: float, probe: Probe, notes: list[str]
) -> tuple[Snapshot, Snapshot]:
    """The measurement window; for polling, repeated while the intents are still climbing.

    A busy worker fires the backoff timers late, so the climb to the ceiling can outlast the
    fixed settle time; then the first window still sees the early, faster polls. A polling
    window counts once it sees at most ~one lookup per intent per ceiling, or no more than 10%
    fewer requests than the window before (the climb is over, whatever the worker manages),
    and after at most MAX_POLL_WINDOWS windows it counts anyway (and says so).
    """
    if mode == "polling":
        ceiling = POLL_CEILING.total_seconds()
        steady = n * window / ceiling
    previous: int | None = None
    for attempt in range(1, MAX_POLL_WINDOWS + 1):
        before = await probe.snapshot()
        await asyncio.sleep(window)
        after = await probe.snapshot()
        count = sum((after.requests - before.requests).values())
        if mode != "polling" or count <= 1.1 * steady:
            break
        if previous is not None and count >= 0.9 * previous:
            break
        if attempt == MAX_POLL_WINDOWS:
            notes.append(f"still not settled after {attempt} windows")
            break
        notes.append(f"window {attempt} not settled yet: {count} requests")
        previous = count
    return before, after


# --------------------------------------------------------------------------------------
# One mode
# --------------------------------------------------------------------------------------


async def partly_fill(intents: IntentClient, probe: Probe, count: int) -> None:
    """`count` resting intents, each partly filled: one at a time, each above the last (and
    above the plain ones), so that moving the price down to one crosses no other."""
    for i in range(count):
        price = PARTIAL_BASE_PRICE + i
        intent = OrderIntent(
            intent_id=f"rest-partial-{i:05d}",
            account=ACCOUNT,
            order=OrderSpec(symbol=SYMBOL, side="buy", amount=PARTIAL_AMOUNT, price=str(price)),
        )
        await intents.submit(intent)
        if await wait_open(probe, 1, patience=30) < 1:
            raise RuntimeError(f"{intent.intent_id} did not reach the exchange")
        for body in (
            {"symbol": SIM_SYMBOL, "price": str(price), "volume": AMOUNT},
            {"symbol": SIM_SYMBOL, "price": "30000"},
        ):
            async with probe.session.post(f"{probe.sim_url}/sim/v1/price", json=body) as response:
                response.raise_for_status()


async def run_mode(
    mode: str,
    sizes: list[int],
    window: float,
    in_memory: bool,
    console: Console,
    workers: int = 1,
    partial: int = 0,
) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ek-bench-resting-") as tmp:
        server_metrics_port, sdk_metrics_port = free_port(), free_port()
        server = DevServer(
            port=free_port(),
            headless=True,
            db_filename=None if in_memory else Path(tmp) / "temporal.sqlite",
            extra_args=["--metrics-port", str(server_metrics_port)],
        )
        async with server:
            assert server.process is not None
            server_pid = server.process.pid
            client = await server.connect(
                data_converter=pydantic_data_converter, runtime=bench_runtime(sdk_metrics_port)
            )
            async with aiohttp.ClientSession() as session, paper_exchange(session) as sim_url:
                probe = Probe(
                    session,
                    sim_url,
                    f"http://127.0.0.1:{server_metrics_port}/metrics",
                    f"http://127.0.0.1:{sdk_metrics_port}/metrics",
                    server_pid,
                )
                pool = ExchangePool(paper_accounts(sim_url))
                intents = IntentClient(client, QUEUE)
                try:
                    async with build_worker(client, pool, QUEUE):
                        if mode == "sync":
                            await ensure_account_syncs(client, [ACCOUNT], QUEUE)
                            await partly_fill(intents, probe, partial)
                        baseline = rss_mb()
                        console.print(
                            f"[dim]{mode}: dev server {server.target} "
                            f"({'in memory' if in_memory else 'SQLite file, WAL'}); "
                            f"RSS before any intent: worker {baseline or 0:.0f} MB, "
                            f"server {rss_mb(server_pid) or 0:.0f} MB[/dim]"
                        )
                        submitted = 0
                        for n in sizes:
                            row = await measure(mode, n, submitted, window, client, intents, probe)
                            row.server_rss_mb = rss_mb(server_pid)
                            row.worker_rss_before_mb = baseline
                            submitted = n
                            row.partial = partial if mode == "sync" else 0
                            rows.append(row)
                            console.print(
                                f"[dim]  {mode} N={n}: submitted in {row.submit_s:.1f}s, "
                                f"all resting after {row.rest_s:.1f}s, settled "
                                f"{row.settle_s:.1f}s, {row.requests_per_min:.0f} req/min, "
                                f"{row.server_wft_per_s:.2f} wft/s "
                                f"{'; '.join(row.notes)}[/dim]"
                            )
                            if mode != "sync" or workers < 2:
                                continue
                            # A second worker beside the first, with a Temporal client and
                            # ccxt clients of its own (as a second process has them; the SDK
                            # takes one worker per task queue per client).
                            second_pool = ExchangePool(paper_accounts(sim_url))
                            second = await server.connect(data_converter=pydantic_data_converter)
                            try:
                                async with build_worker(second, second_pool, QUEUE):
                                    two = await measure(mode, n, n, window, client, intents, probe)
                            finally:
                                await second_pool.close()
                            two.workers, two.partial = 2, row.partial
                            two.server_rss_mb = rss_mb(server_pid)
                            rows.append(two)
                            console.print(
                                f"[dim]  {mode} N={n}, 2 workers: "
                                f"{two.requests_per_min:.0f} req/min, "
                                f"{two.signals_per_min or 0:.0f} signals/min "
                                f"{'; '.join(two.notes)}[/dim]"
                            )
                finally:
                    await pool.close()
    return rows


async def measure(
    mode: str,
    n: int,
    already: int,
    window: float,
    client: Client,
    intents: IntentClient,
    probe: Probe,
) -> Row:
    notes: list[str] = []
    refusals: Counter[str] = Counter()
    t0 = time.perf_counter()
    await submit_range(intents, mode, already, n, refusals)
    if refusals:
        notes.append(f"submits refused and retried: {dict(refusals)}")
    submitted = time.perf_counter()
    # Generous: at ~20-50 placements/s, plus the polls of those already resting.
    resting = await wait_open(probe, n, patience=max(60.0, (n - already) * 0.3))
    rested = time.perf_counter()
    if resting < n:
        notes.append(f"only {resting} of {n} resting after {rested - t0:.0f}s")
    if mode == "sync":
        await settle_sync(client, n, patience=max(60.0, n * 0.05), notes=notes)
    else:
        # The newest intents' backoff climbs to the ceiling; older ones are there already.
        await asyncio.sleep(max(0.0, rested + poll_settle_seconds() - time.perf_counter()))
    settled = time.perf_counter()

    signals_before = (await sync_status(client)).signals_sent if mode == "sync" else None
    before, after = await polling_window(mode, n, window, probe, notes)
    elapsed = after.at - before.at
    requests = after.requests - before.requests
    sync = None
    signals_per_min = None
    if mode == "sync":
        status = await sync_status(client)
        assert signals_before is not None
        if status.signals_sent >= signals_before:
            signals_per_min = (status.signals_sent - signals_before) * 60 / elapsed
        else:
            notes.append("the sync continued as new in the window: no signal count")
        sync = {
            "watched": status.watched,
            "round": status.round,
            "signals_sent": status.signals_sent,
            "last_error": status.last_error,
        }
    return Row(
        mode=mode,
        n=n,
        resting=await open_count(probe),
        submit_s=submitted - t0,
        rest_s=rested - t0,
        settle_s=settled - rested,
        window_s=elapsed,
        requests_per_min=sum(requests.values()) * 60 / elapsed,
        server_wft_per_s=(after.server_wft - before.server_wft) / elapsed,
        sdk_wft_per_s=(after.sdk_wft - before.sdk_wft) / elapsed,
        worker_cpu_pct=100 * (after.worker_cpu - before.worker_cpu) / elapsed,
        server_cpu_pct=100 * (after.server_cpu - before.server_cpu) / elapsed,
        load_1m=load_average(),
        worker_rss_mb=rss_mb(),
        server_rss_mb=None,
        worker_rss_before_mb=None,
        cache_misses=after.sdk_cache_miss - before.sdk_cache_miss,
        wft_failures_so_far=after.sdk_wft_failed,
        by_endpoint=dict(requests.most_common()),
        sync=sync,
        notes=notes,
        signals_per_min=signals_per_min,
    )


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def add_ratios(rows: list[Row]) -> None:
    for mode in MODES:
        for workers in (1, 2):
            mine = [r for r in rows if r.mode == mode and r.workers == workers]
            if not mine:
                continue
            base = min(mine, key=lambda r: r.n).requests_per_min
            for row in mine:
                row.ratio = row.requests_per_min / base if base else None
    one = {(r.mode, r.n): r for r in rows if r.workers == 1}
    for row in rows:
        first = one.get((row.mode, row.n))
        if row.workers == 1 or first is None:
            continue
        requests = row.requests_per_min / first.requests_per_min if first.requests_per_min else None
        signals = None
        if row.signals_per_min is not None and first.signals_per_min is not None:
            if first.signals_per_min:
                signals = row.signals_per_min / first.signals_per_min
            elif not row.signals_per_min:
                signals = 1.0  # none with either
        row.vs_one_worker = (requests, signals)


def ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(rows: list[Row], window: float, in_memory: bool, console: Console) -> None:
    table = Table(
        title=f"resting intents on one account: {window:.0f}s window, {os.cpu_count()} CPUs, "
        f"dev server {'in memory' if in_memory else 'on a SQLite file'}"
    )
    for name in (
        "N",
        "mode",
        "workers",
        "requests/min at rest",
        "x vs smallest N",
        "signals/min",
        "requests, signals x vs 1 worker",
        "workflow tasks/s",
        "worker CPU %",
        "worker RSS MB",
        "server CPU %",
        "server RSS MB",
    ):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for row in sorted(rows, key=lambda r: (r.n, MODES.index(r.mode), r.workers)):
        table.add_row(
            str(row.n)
            + (f" + {row.partial} partly filled" if row.partial else "")
            + ("" if row.resting >= row.n else f" ({row.resting} resting)"),
            row.mode,
            str(row.workers),
            f"{row.requests_per_min:.1f}",
            ratio_text(row.ratio),
            "-" if row.signals_per_min is None else f"{row.signals_per_min:.1f}",
            "-"
            if row.vs_one_worker is None
            else f"{ratio_text(row.vs_one_worker[0])}, {ratio_text(row.vs_one_worker[1])}",
            f"{row.server_wft_per_s:.2f}",
            f"{row.worker_cpu_pct:.0f}",
            "-" if row.worker_rss_mb is None else f"{row.worker_rss_mb:.0f}",
            f"{row.server_cpu_pct:.0f}",
            "-" if row.server_rss_mb is None else f"{row.server_rss_mb:.0f}",
        )
    console.print(table)
    console.print(
        "[dim]workflow tasks/s: RespondWorkflowTaskCompleted calls counted by the dev server; "
        "CPU %: of one core, over the window (the worker's process also runs the submitting "
        "client; the paper exchange has a process of its own).[/dim]"
    )
    for row in rows:
        details = [
            f"requests in the window {row.by_endpoint}",
            f"workflow tasks/s by the SDK's count {row.sdk_wft_per_s:.2f}",
            f"load average (1 min) {row.load_1m:.1f}",
            f"took: submit {row.submit_s:.0f}s, all resting {row.rest_s:.0f}s, "
            f"settle {row.settle_s:.0f}s",
        ]
        if row.worker_rss_before_mb is not None:
            details.append(f"worker RSS before any intent {row.worker_rss_before_mb:.0f} MB")
        if row.cache_misses:
            details.append(f"sticky cache misses in the window {row.cache_misses:.0f}")
        if row.wft_failures_so_far:
            details.append(f"workflow task failures so far {row.wft_failures_so_far:.0f}")
        if row.sync:
            details.append(f"sync {row.sync}")
        details += [f"NOTE {note}" for note in row.notes]
        workers = f", {row.workers} workers" if row.workers > 1 else ""
        console.print(f"[dim]{row.mode} N={row.n}{workers}: {'; '.join(details)}[/dim]")
    busy = max((r.load_1m for r in rows), default=0.0)
    cpus = os.cpu_count() or 1
    if busy > 2 * cpus:  # the bench itself keeps about one core and a half busy
        console.print(
            f"[yellow]the machine was busy (load average up to {busy:.1f} on {cpus} CPUs): "
            "counts at rest hold, throughput-bound figures (polling at large N, time to "
            "rest) are lower than on an idle machine[/yellow]"
        )


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


async def run_child(mode: str, args: argparse.Namespace, out: Path) -> None:
    """One mode in its own process: its RSS is its own, not what an earlier mode left behind.

    Cancelled (SIGTERM or Ctrl-C here), it forwards SIGTERM and waits: the child then stops its
    worker and its dev server on the way out.
    """
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--out", str(out)]
    argv += ["--max", str(args.max), "--window", str(args.window)]
    argv += ["--workers", str(args.workers), "--partial", str(args.partial)]
    if args.sizes:
        argv += ["--sizes", args.sizes]
    if args.in_memory:
        argv.append("--in-memory")
    child = await asyncio.create_subprocess_exec(*argv)
    try:
        code = await child.wait()
    except BaseException:
        if child.returncode is None:
            child.terminate()
            await asyncio.shield(child.wait())
        raise
    if code != 0:
        raise RuntimeError(f"the {mode} run exited with code {code}")


async def run_all(modes: list[str], args: argparse.Namespace, console: Console) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ek-bench-resting-out-") as tmp:
        for mode in modes:
            t0 = time.perf_counter()
            out = Path(tmp) / f"{mode}.json"
            await run_child(mode, args, out)
            rows += [Row(**row) for row in json.loads(out.read_text())]
            console.print(f"[dim]{mode}: done in {time.perf_counter() - t0:.0f}s[/dim]")
    return rows


async def stoppable(work: Any) -> Any:
    """SIGTERM cancels the run, so the `async with` blocks stop the worker and the dev server
    (which runs in its own session and would otherwise outlive us)."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max", type=int, default=1000, help="largest N (10, 100, 1000, 10000 up to it)"
    )
    parser.add_argument("--window", type=float, default=30.0, help="measurement window, s")
    parser.add_argument("--modes", default=",".join(MODES), help="sync,polling or one of them")
    parser.add_argument(
        "--in-memory", action="store_true", help="dev server in memory instead of a SQLite file"
    )
    parser.add_argument("--sizes", help="the Ns instead of --max's, e.g. 200 or 10,200")
    parser.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=2,
        help="sync mode: also measure each N with a second worker (2) or not (1)",
    )
    parser.add_argument(
        "--partial", type=int, default=10, help="sync mode: partly filled intents besides N"
    )
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [n for n in SIZES if n <= args.max]
    if args.sizes:
        sizes = sorted({int(n) for n in args.sizes.split(",") if n.strip()})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not sizes or any(m not in MODES for m in modes) or args.window <= 0:
        parser.error(f"--max at least {SIZES[0]}, --modes from {MODES}, --window positive")
    console = Console(width=max(Console().width, 150))
    t0 = time.perf_counter()
    if args.child is not None:  # one mode, in this process; the parent renders
        try:
            rows = asyncio.run(
                stoppable(
                    run_mode(
                        args.child,
                        sizes,
                        args.window,
                        args.in_memory,
                        console,
                        workers=args.workers,
                        partial=args.partial,
                    )
                )
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            sys.exit(130)
        args.out.write_text(json.dumps([asdict(r) for r in rows]))
        return
    if "polling" in modes and args.window % (ceiling := POLL_CEILING.total_seconds()):
        console.print(
            f"[yellow]the window is not a multiple of the {ceiling:.0f}s poll ceiling: "
            "intents placed together poll together, so polling figures alias[/yellow]"
        )
    try:
        rows = asyncio.run(stoppable(run_all(modes, args, console)))
    except (asyncio.CancelledError, KeyboardInterrupt):
        console.print("[red]interrupted; servers and workers stopped[/red]")
        sys.exit(130)
    add_ratios(rows)
    render(rows, args.window, args.in_memory, console)
    if sys.flags.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
        console.print(
            "[yellow]note: PYTHONDONTWRITEBYTECODE is set: the workflow sandbox compiles "
            "workflow modules from source for every new (or evicted) workflow run, which slows "
            "submission and cache-missed tasks, not the figures at rest of cached workflows."
            "[/yellow]"
        )
    console.print(f"[dim]total {time.perf_counter() - t0:.0f}s[/dim]")
    if args.json:
        sys.stdout.write(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
