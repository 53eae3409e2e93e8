"""The `exchange-kernel` command: run the kernel, and submit, change and inspect intents."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from temporalio.service import RPCError

from exchange_kernel.accounts import AccountConfigError, load_accounts
from exchange_kernel.client import (
    AlreadyExistsError,
    IntentClient,
    IntentListing,
    IntentNotFound,
    IntentRejected,
    IntentUnavailable,
    StaleIntent,
)
from exchange_kernel.connection import MAX_CACHED_WORKFLOWS, TASK_QUEUE, TemporalUnreachable
from exchange_kernel.group_plan import member_ids
from exchange_kernel.models import (
    ID_RE,
    TERMINAL_STATUSES,
    ExternalCancelPolicy,
    GroupKind,
    IntentChange,
    IntentEvent,
    IntentEventKind,
    IntentGroup,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    OrderType,
    ReconciliationStatus,
    Side,
    TimeInForce,
    group_workflow_id,
    workflow_id_for,
)
from exchange_kernel.reconcile import trigger_condition
from exchange_kernel.repair import NothingToRepair, ResetPoint, reset, stuck_run
from exchange_kernel.watch import WatchCursor
from exchange_kernel.worker.metrics import (
    DEFAULT_METRICS_URL,
    Row,
    Telemetry,
    label_columns,
    read,
)

app = typer.Typer(
    help="exchange-kernel: durable order intents on Temporal and ccxt.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one error, one line: scripts grep it
T = TypeVar("T")

AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address", help="Temporal frontend host:port (default: envconfig, else localhost:7233)"
    ),
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", help="Temporal namespace (default: envconfig)")
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="profile of temporal.toml (envconfig; file from TEMPORAL_CONFIG_FILE; "
        "default: TEMPORAL_PROFILE, else 'default')",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON output")]
MetricsPortOption = Annotated[
    str | None,
    typer.Option(
        "--metrics-port",
        help="serve Prometheus metrics on PORT (loopback) or HOST:PORT, e.g. 9464 or 0.0.0.0:9464",
    ),
]


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


OtelOption = Annotated[
    bool,
    typer.Option(
        "--otel",
        envvar="EXCHANGE_KERNEL_OTEL",
        help="OpenTelemetry tracing (needs the otel extra; exporter from OTEL_* variables)",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def run(coroutine: Awaitable[T]) -> T:
    """Run `coroutine`, turning the errors a person can act on into one clear line."""
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except TemporalUnreachable as exc:
        raise fail(str(exc)) from None
    except ValidationError as exc:
        raise fail(validation_message(exc), 2) from None
    except (IntentRejected, AlreadyExistsError, IntentNotFound, AccountConfigError) as exc:
        raise fail(str(exc), 2) from None
    except IntentUnavailable as exc:  # nothing was sent: worth trying again
        raise fail(str(exc)) from None


def with_client(
    address: str | None,
    namespace: str | None,
    profile: str | None,
    action: Callable[[IntentClient], Awaitable[T]],
) -> T:
    """Connect an IntentClient, run one call, turn the usual failures into clear errors."""

    async def main() -> T:
        client = await IntentClient.connect(address, namespace, profile=profile)
        return await action(client)

    return run(main())


def validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "intent"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def money(value: str | None, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise fail(f"{name}: {value!r} is not a number", 2) from None
    return number


# --- running the kernel ------------------------------------------------------------------------


FeedOption = Annotated[
    str | None,
    typer.Option(
        "--feed",
        metavar="random-walk|FILE.csv",
        help="move the markets: a random walk of every symbol, or OHLCV candles replayed from "
        "a CSV file (timestamp,open,high,low,close[,volume]; examples/feeds/btcusdt-1m.csv); "
        "the price moves fill crossing orders like POST /sim/v1/price",
    ),
]
SeedOption = Annotated[
    int | None, typer.Option(help="random walk seed: the same seed walks the same path")
]
VolatilityOption = Annotated[
    str, typer.Option(help="random walk: relative standard deviation of one step")
]
IntervalOption = Annotated[
    float, typer.Option(min=0.001, help="seconds per random-walk step, or per replayed candle")
]
FeedSymbolOption = Annotated[str, typer.Option(help="the symbol a CSV feed moves")]
LoopOption = Annotated[bool, typer.Option("--loop", help="replay the CSV file again at its end")]


def _feed(
    feed: str | None, seed: int | None, volatility: str, interval: float, symbol: str, loop: bool
) -> Any:
    """The market feed of `sim` and `dev`, refused before anything starts if unusable."""
    from exchange_kernel.sim import Exchange
    from exchange_kernel.sim.feed import feed_from_options

    rate = money(volatility, "volatility")
    assert rate is not None
    try:
        market_feed = feed_from_options(
            feed, seed=seed, volatility=rate, interval=interval, symbol=symbol, loop=loop
        )
        if market_feed is not None:
            market_feed.check(Exchange())  # the paper exchange's markets
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    return market_feed


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8900,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="extra account KEY:SECRET (repeatable)"),
    ] = None,
    fee: Annotated[str, typer.Option(help="fee rate charged on every fill")] = "0.001",
    balance: Annotated[
        list[str] | None,
        typer.Option(
            "--balance",
            metavar="KEY:ASSET=AMOUNT",
            help="an account's free balance of an asset at start (repeatable); "
            "POST /sim/v1/balances changes them later",
        ),
    ] = None,
    feed: FeedOption = None,
    seed: SeedOption = None,
    volatility: VolatilityOption = "0.001",
    interval: IntervalOption = 1.0,
    feed_symbol: FeedSymbolOption = "BTCUSDT",
    loop: LoopOption = False,
) -> None:
    """Run the paper exchange (Binance spot REST API on HTTP) until Ctrl-C."""
    from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
    from exchange_kernel.sim import run as run_sim
    from exchange_kernel.sim.server import parse_balances

    fee_rate = money(fee, "fee")
    assert fee_rate is not None
    for item in account or []:
        if ":" not in item:
            raise fail(f"--account {item!r}: expected KEY:SECRET", 2)
    market_feed = _feed(feed, seed, volatility, interval, feed_symbol, loop)
    try:
        balances = parse_balances(balance)
        # Unknown accounts or assets are refused here, not after the banner.
        SimServer(accounts=account, balances=balances)  # a probe, never started
    except ValueError as exc:
        raise fail(f"--balance: {exc}", 2) from None
    console.print(
        f"paper exchange on http://{host}:{port}  (demo account key {DEMO_API_KEY}, "
        f"secret {DEMO_SECRET}; admin API under /sim/v1/)"
    )
    run_sim(host, port, list(account or []), fee_rate, feed=market_feed, balances=balances)


@app.command()
def worker(
    accounts: Annotated[
        Path, typer.Option("--accounts", help="accounts TOML file (\\[accounts.NAME] tables)")
    ],
    task_queue: Annotated[str, typer.Option(help="Temporal task queue")] = TASK_QUEUE,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
    metrics_port: MetricsPortOption = None,
    otel: OtelOption = False,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            "--log-level",
            help="log level of the worker's log (stderr); info adds e.g. the query guard's "
            "evictions (docs/operations.md)",
        ),
    ] = LogLevel.warning,
    max_cached_workflows: Annotated[
        int,
        typer.Option(
            min=1,
            help="workflow runs kept in memory per workflow worker; a run that is not must "
            "replay its history at its next workflow task (less memory, more CPU). Keep it "
            "above the number of intents busy at once (docs/operations.md, memory)",
        ),
    ] = MAX_CACHED_WORKFLOWS,
) -> None:
    """Run a worker: the intent workflows and the exchange activities for the given accounts.

    Each account's exchange activities run on the task queue TASK_QUEUE-account-NAME, which
    Temporal rate-limits across every worker serving the account: max_requests_per_second of
    the accounts file, else ccxt's rateLimit, divided by 2 requests per activity."""
    from exchange_kernel.accounts import activities_per_second
    from exchange_kernel.connection import account_task_queue, connect
    from exchange_kernel.worker import run_worker

    try:
        configured = load_accounts(accounts)
    except AccountConfigError as exc:
        raise fail(str(exc), 2) from None
    for config in configured.values():
        try:
            config.credentials()
        except AccountConfigError as exc:
            raise fail(str(exc), 2) from None
    telemetry = _telemetry(metrics_port, otel)
    logging.basicConfig(
        level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        if telemetry.runtime is None:
            client = (await IntentClient.connect(address, namespace, profile=profile)).temporal
        else:  # the metrics endpoint serves the runtime that the client connects with
            client = await connect(address, namespace, profile=profile, runtime=telemetry.runtime)
        client = telemetry.traced(client)
        stop = _stop_on_signals()
        console.print(
            f"worker on {task_queue}, accounts: {', '.join(sorted(configured))} (Ctrl-C stops)"
        )
        for name, config in sorted(configured.items()):
            rate = activities_per_second(config)
            limit = "no rate limit" if rate is None else f"at most {rate:g} activities/s"
            console.print(
                f"  account {name}: task queue {account_task_queue(task_queue, name)}, {limit}",
                highlight=False,
                soft_wrap=True,
            )
        if telemetry.url:
            console.print(f"metrics on {telemetry.url}")
        await run_worker(
            client,
            configured,
            task_queue,
            stop,
            metrics=telemetry.metrics,
            max_cached_workflows=max_cached_workflows,
        )

    run(main())


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Temporal frontend port")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port")] = 8233,
    sim_port: Annotated[int, typer.Option(help="paper exchange port")] = 8900,
    data_dir: Annotated[
        Path, typer.Option(help="where the Temporal SQLite file and logs live")
    ] = Path(".exchange-kernel"),
    task_queue: Annotated[str, typer.Option(help="Temporal task queue")] = TASK_QUEUE,
    ready_file: Annotated[
        Path | None, typer.Option(help="write the addresses here once everything is up")
    ] = None,
    metrics_port: MetricsPortOption = None,
    otel: OtelOption = False,
    feed: FeedOption = None,
    seed: SeedOption = None,
    volatility: VolatilityOption = "0.001",
    interval: IntervalOption = 1.0,
    feed_symbol: FeedSymbolOption = "BTCUSDT",
    loop: LoopOption = False,
) -> None:
    """Run everything locally: Temporal dev server + UI, the paper exchange, and a worker
    with an account named `paper` on it. Ctrl-C stops all three. With --feed the paper
    exchange's markets move by themselves (as with `exchange-kernel sim --feed`)."""
    from exchange_kernel.dev import run_dev

    telemetry = _telemetry(metrics_port, otel)
    market_feed = _feed(feed, seed, volatility, interval, feed_symbol, loop)
    run(
        run_dev(
            port,
            ui_port,
            sim_port,
            data_dir,
            task_queue,
            console,
            ready_file,
            telemetry,
            feed=market_feed,
        )
    )


def _telemetry(metrics_port: str | None, otel: bool) -> Telemetry:
    """The worker's metrics endpoint and tracing, refused before anything starts if unusable."""
    try:
        return Telemetry.configure(metrics_port, otel)
    except (ValueError, OSError, ImportError) as exc:
        raise fail(escape(str(exc)), 2) from None


# --- intents -----------------------------------------------------------------------------------


WaitTimeoutOption = Annotated[
    float,
    typer.Option(
        "--wait-timeout",
        min=0.1,
        help="with --wait: seconds to wait before giving up (the intent keeps running)",
    ),
]


@app.command()
def submit(
    symbol: Annotated[str, typer.Option(help="market in ccxt form, e.g. BTC/USDT")],
    side: Annotated[Side, typer.Option(help="buy or sell")],
    amount: Annotated[str, typer.Option(help="amount in the base asset")],
    price: Annotated[str | None, typer.Option(help="limit price (not for market)")] = None,
    order_type: Annotated[OrderType, typer.Option("--type", help="order type")] = OrderType.LIMIT,
    stop_price: Annotated[
        str | None, typer.Option(help="trigger price (stop_limit, stop_market)")
    ] = None,
    tif: Annotated[TimeInForce, typer.Option(help="time in force")] = TimeInForce.GTC,
    post_only: Annotated[bool, typer.Option(help="reject if it would take")] = False,
    reduce_only: Annotated[
        bool,
        typer.Option(
            "--reduce-only",
            help="only reduce a position, never open or increase one (exchanges with "
            "positions: derivatives, margin)",
        ),
    ] = False,
    expires_at: Annotated[
        str | None,
        typer.Option(
            "--expires-at",
            metavar="ISO-8601",
            help="good till this time, with its time zone (e.g. 2026-01-01T12:00:00Z): then "
            "the intent cancels its order and ends expired, keeping its fills",
        ),
    ] = None,
    account: Annotated[str, typer.Option(help="account name from the accounts file")] = "paper",
    intent_id: Annotated[
        str | None, typer.Option("--id", help="intent id (default: a new random one)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="group id")] = None,
    strategy: Annotated[str | None, typer.Option(help="strategy id")] = None,
    on_external_cancel: Annotated[
        ExternalCancelPolicy, typer.Option(help="if cancelled outside the kernel: finish|restore")
    ] = ExternalCancelPolicy.FINISH,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="then wait until the intent rests on the exchange (or, a held stop, in the "
            "workflow), fills or ends, and show which; exit code 2 if it ends rejected, 1 if "
            "it ends failed or --wait-timeout passes first",
        ),
    ] = False,
    wait_timeout: WaitTimeoutOption = 30.0,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Submit an order intent. Validated here (--expires-at included), before anything is
    started. With --wait, follow it until it rests, fills or ends."""
    expiry = _expiry(expires_at)
    try:
        intent = OrderIntent(
            intent_id=intent_id or f"cli-{uuid.uuid4().hex[:12]}",
            account=account,
            group_id=group,
            strategy_id=strategy,
            on_external_cancel=on_external_cancel,
            expires_at=expiry,
            order=OrderSpec(
                symbol=symbol,
                side=side,
                type=order_type,
                amount=amount,
                price=price,
                stop_price=stop_price,
                time_in_force=tif,
                post_only=post_only,
                reduce_only=reduce_only,
            ),
        )
    except ValidationError as exc:
        raise fail(validation_message(exc), 2) from None

    async def main() -> tuple[IntentState, str | None]:
        client = await IntentClient.connect(address, namespace, profile=profile)
        state = await client.submit(intent)
        if not as_json:
            console.print(
                f"submitted [bold]{intent.intent_id}[/]: {intent.summary()} ({state.status.value})"
            )
        if not wait:
            return state, None
        within = timedelta(seconds=wait_timeout)
        try:
            if as_json:
                state = await client.wait_for(intent.intent_id, _settled, within)
            else:
                with console.status(f"waiting for {intent.intent_id} to rest, fill or end"):
                    state = await client.wait_for(intent.intent_id, _settled, within)
        except TimeoutError:
            return await client.state(intent.intent_id), None
        return state, outcome(state)

    state, ended_as = run(main())
    unsuccessful = ended_as in (IntentStatus.REJECTED, IntentStatus.FAILED)
    if as_json:
        shown: dict[str, Any] = {"intent_id": intent.intent_id, "workflow_id": intent.workflow_id}
        if wait:
            shown |= {"outcome": ended_as or "timeout", "state": state.report()}
        print(json.dumps(shown))
    elif ended_as is not None and not unsuccessful:  # those are the error line below
        console.print(outcome_line(state, ended_as), highlight=False, soft_wrap=True)
    if not wait:
        return
    if ended_as is None:
        raise fail(
            f"intent {intent.intent_id} did not rest, fill or end within {wait_timeout:g} s "
            f"(it is {state.status.value}, {state.reconciliation_status.value}); it keeps "
            f"running: exchange-kernel status {intent.intent_id}"
        )
    if unsuccessful:  # rejected: a refusal, trying again changes nothing (exit code 2)
        reason = escape(state.outcome_reason or "no reason given")
        raise fail(
            f"intent {intent.intent_id} {ended_as}: {reason}",
            2 if ended_as == IntentStatus.REJECTED else 1,
        )


def _expiry(expires_at: str | None) -> datetime | None:
    """--expires-at as a time zone aware time in the future (a past one would expire the intent
    at once: most likely a mistaken date or zone)."""
    if expires_at is None:
        return None
    try:
        at = datetime.fromisoformat(expires_at)
    except ValueError:
        raise fail(
            f"--expires-at: {expires_at!r} is not an ISO-8601 time (e.g. 2026-01-01T12:00:00Z)",
            2,
        ) from None
    if at.utcoffset() is None:
        raise fail(f"--expires-at: {expires_at!r} needs a time zone (e.g. 2026-01-01T12:00:00Z)", 2)
    if at <= datetime.now(UTC):
        raise fail(f"--expires-at: {expires_at} has already passed", 2)
    return at


def outcome(state: IntentState) -> str | None:
    """Where a submitted intent has got to: `resting` on the exchange, `held` (a stop the
    workflow holds: nothing on the exchange until it triggers), or its final status; None while
    it is still on its way (placing, or an outcome unknown)."""
    if state.status.is_terminal:
        return state.status.value
    if state.reconciliation_status is not ReconciliationStatus.IN_SYNC:
        return None
    if state.stop_held:
        return "held"
    if state.status in (IntentStatus.OPEN, IntentStatus.PARTIALLY_FILLED):
        return "resting"
    return None


def _settled(state: IntentState) -> bool:
    return outcome(state) is not None


def outcome_line(state: IntentState, ended_as: str) -> str:
    """The outcome of `submit --wait` for people."""
    filled = f"{state.filled} of {state.desired.amount} filled"
    match ended_as:
        case "resting":
            live = state.live_placement
            order = f"order {live.client_order_id}" if live is not None else "its order"
            detail = f"{order} on the exchange, {filled}"
        case "held":
            assert state.desired.stop_price is not None
            condition = trigger_condition(state.desired.side, state.desired.stop_price)
            detail = f"the workflow holds the stop (nothing on the exchange) until {condition}"
        case IntentStatus.FILLED:
            detail = f"{state.filled} @ {_price(state.average_price)}"
        case _:
            detail = f"{filled}; {state.outcome_reason or 'no reason given'}"
    return escape(f"{state.intent.intent_id} {ended_as}: {detail}")


def _price(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.8f}".rstrip("0").rstrip(".")


@app.command()
def modify(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    price: Annotated[str | None, typer.Option(help="new limit price")] = None,
    amount: Annotated[str | None, typer.Option(help="new total amount (≥ filled)")] = None,
    stop_price: Annotated[str | None, typer.Option(help="new trigger price (stops)")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Change an intent's price, amount and/or stop price (validated by the intent;
    rejections say why)."""
    if price is None and amount is None and stop_price is None:
        raise fail("give --price, --amount and/or --stop-price", 2)
    try:
        # Validated here, before connecting: a bad value never reaches Temporal.
        change = IntentChange(price=price, amount=amount, stop_price=stop_price)
    except ValidationError as exc:
        raise fail(validation_message(exc), 2) from None
    if not ID_RE.fullmatch(intent_id):
        raise fail(f"{intent_id!r} is not a valid intent id", 2)

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace, profile=profile)
        await client.modify(
            intent_id, price=change.price, amount=change.amount, stop_price=change.stop_price
        )
        return await client.state(intent_id)

    show_state(run(main()), as_json)


@app.command()
def cancel(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    reason: Annotated[str, typer.Option(help="recorded in the intent's history")] = "cancelled "
    "from the command line",
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Cancel an intent (its exchange order is cancelled; fills are kept)."""

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace, profile=profile)
        await client.cancel(intent_id, reason)
        return await client.state(intent_id)

    show_state(run(main()), as_json)


@app.command()
def status(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Show one intent: desired, exchange orders, fills, status, recent actions."""

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace, profile=profile)
        return await client.state(intent_id)

    show_state(run(main()), as_json)


@app.command()
def repair(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    yes: Annotated[
        bool, typer.Option("--yes", help="reset it; without this flag only show the reset point")
    ] = False,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Unstick an intent whose workflow task fails on a nondeterminism error: reset it to before
    the task that diverged (docs/operations.md). Signals and updates after that point are
    applied again. The intent is told first, so every placement of the new run looks its client
    order id up before creating it: an order the discarded history placed is found, not placed
    again. Shown: the client order ids the discarded history sent; one the new run never
    reaches (its path differs) is not looked at, so check those on the exchange."""

    async def main() -> tuple[ResetPoint, str | None]:
        client = await IntentClient.connect(address, namespace, profile=profile)
        try:
            point = await stuck_run(client.temporal, workflow_id_for(intent_id))
        except NothingToRepair as exc:
            raise fail(f"intent {intent_id!r} is not stuck: {exc}", 2) from None
        except RPCError as exc:
            raise fail(f"intent {intent_id!r}: {exc.message}", 2) from None
        if not yes:
            return point, None
        return point, await reset(client.temporal, point, f"exchange-kernel repair {intent_id}")

    point, new_run = run(main())
    if as_json:
        report = {
            "intent_id": intent_id,
            "reset_point": dataclasses.asdict(point),
            "reset": new_run is not None,
            "new_run_id": new_run,
        }
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"repair of intent {intent_id}", show_header=False)
    table.add_row("stuck on", escape(point.error))
    table.add_row("first diverging event", str(point.diverged_at or "not named"))
    table.add_row(
        "redo from", f"the workflow task completed at event {point.workflow_task_completed_id}"
    )
    table.add_row(
        "orders the reset discards",
        ", ".join(point.discarded_orders) or "none",
    )
    table.add_row(
        "run",
        f"{point.run_id} -> {new_run}" if new_run else f"{point.run_id} (unchanged: pass --yes)",
    )
    console.print(table)


@app.command(name="list")
def list_intents(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    symbol: Annotated[str | None, typer.Option(help="only this market, e.g. BTC/USDT")] = None,
    group: Annotated[str | None, typer.Option(help="only this group")] = None,
    strategy: Annotated[str | None, typer.Option(help="only this strategy id")] = None,
    intent_status: Annotated[
        str | None, typer.Option("--status", help="only this status (open, filled, ...)")
    ] = None,
    reconciliation: Annotated[
        str | None,
        typer.Option(help="only this reconciliation status (in_sync, reconciling, unknown, stale)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 100,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """List intents from Temporal's visibility (search attributes), newest first. An intent
    reads `stale` when its view of the exchange is older than 30 s (docs/concepts.md); a
    finished one reads `ended` in the table (--json: the reconciliation status it ended with).
    Ids are shown whole, whatever the terminal's width."""
    if reconciliation is not None and reconciliation not in set(ReconciliationStatus):
        choices = ", ".join(ReconciliationStatus)
        raise fail(f"--reconciliation must be one of {choices}, got {reconciliation!r}", 2)

    async def main() -> list[IntentListing]:
        client = await IntentClient.connect(address, namespace, profile=profile)
        return await client.list(
            account=account,
            symbol=symbol,
            group=group,
            status=intent_status,
            strategy=strategy,
            reconciliation=reconciliation,
            limit=limit,
        )

    rows = run(main())
    if as_json:
        print(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    console.print(listing(rows, console.width), crop=False)  # ids longer than a line: whole


def listing(rows: list[IntentListing], width: int) -> Table | Group:
    """The intents for people (the summary names the symbol)."""
    cells = [
        (
            row.account or "",
            row.status or "",
            reconciliation_cell(row.status, row.reconciliation_status),
            row.summary or row.symbol or "",
        )
        for row in rows
    ]
    columns = ("account", "status", "reconciliation", "summary")
    ids = [row.intent_id for row in rows]
    return id_table(f"{len(rows)} intent(s)", columns, ids, cells, width)


def id_table(
    title: str,
    columns: tuple[str, ...],
    ids: list[str],
    cells: list[tuple[str, ...]],
    width: int,
) -> Table | Group:
    """Intents, an id and `columns` each. Ids are copied from here, so they are never wrapped or
    cut: the other columns wrap around them, and ids too long to leave them room get a line
    each, with the rest indented below."""
    longest = max(map(len, ids), default=0)
    # Each column takes a border and a space either side; the others get 6 characters at least.
    if longest + 3 * (len(columns) + 1) + 1 + 6 * len(columns) > width:
        lines: list[Text] = [Text(title, style="italic")]
        for intent_id, values in zip(ids, cells, strict=True):
            # Not folded: the terminal wraps it, and copies it as the one line it is.
            lines += [
                Text(intent_id, style="bold", no_wrap=True, overflow="ignore"),
                Text("  " + "  ".join(values)),
            ]
        return Group(*lines)
    table = Table(title=title)
    table.add_column("intent", no_wrap=True, min_width=longest)
    for column in columns:
        table.add_column(column, overflow="fold")
    for intent_id, values in zip(ids, cells, strict=True):
        table.add_row(intent_id, *values)
    return table


@app.command()
def owner(
    exchange_order_id: Annotated[str, typer.Argument(help="the exchange's order id")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Show the intent that owns an exchange order id (a running intent before a finished
    one), found through visibility: an order seen a second ago may not be found yet."""

    state = with_client(
        address,
        namespace,
        profile,
        lambda client: client.intent_by_exchange_order_id(exchange_order_id),
    )
    show_state(state, as_json)


@app.command()
def stale(
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age", min=0, help="seconds: list intents not observed for longer than this"
        ),
    ] = 60.0,
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """List running intents whose last observation of the exchange is older than --max-age,
    oldest first: their own last look at their orders, or, for an intent its account sync
    watches, the sync's last completed round. One that never saw the exchange counts from
    its start."""

    rows = with_client(
        address,
        namespace,
        profile,
        lambda client: client.stale_intents(timedelta(seconds=max_age), account=account),
    )
    now = datetime.now(UTC)
    if as_json:
        print(json.dumps([_stale_json(row, now) for row in rows], indent=2))
        return
    cells = [
        (
            row.account or "",
            row.symbol or "",
            row.status or "",
            _age(row.observed_at, now),
            "account sync" if row.watched else "its own looks",
            row.summary or "",
        )
        for row in rows
    ]
    title = f"{len(rows)} intent(s) not observed for more than {max_age:g} s"
    columns = ("account", "symbol", "status", "last observed", "by", "summary")
    ids = [row.intent_id for row in rows]
    console.print(id_table(title, columns, ids, cells, console.width), crop=False)


def _stale_json(row: StaleIntent, now: datetime) -> dict[str, Any]:
    data = row.model_dump(mode="json")
    seen = row.observed_at
    data["age_seconds"] = None if seen is None else round((now - seen).total_seconds(), 3)
    return data


def _age(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    return f"{at:%H:%M:%S} ({(now - at).total_seconds():.0f} s ago)"


@app.command()
def resync(
    intent_id: Annotated[
        str | None, typer.Argument(help="the intent to resync (or --account for all of one)")
    ] = None,
    account: Annotated[
        str | None, typer.Option(help="resync every running intent of this account")
    ] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Have an intent, or every running intent of an account, look at the exchange now
    (fire and forget: each looks up its live order at its next step). The intents of an
    account are found through visibility, so one submitted a second ago may be left out."""
    if (intent_id is None) == (account is None):
        raise fail("give an intent id or --account (one of them)", 2)
    if intent_id is not None and not ID_RE.fullmatch(intent_id):
        raise fail(f"{intent_id!r} is not a valid intent id", 2)

    async def main() -> list[str]:
        client = await IntentClient.connect(address, namespace, profile=profile)
        if account is not None:
            return await client.resync_account(account)
        assert intent_id is not None
        state = await client.state(intent_id)  # a clear error for an unknown intent
        if state.status.is_terminal:
            raise IntentRejected(
                f"intent {intent_id} is already {state.status.value}: nothing to look at"
            )
        await client.resync(intent_id)
        return [intent_id]

    told = run(main())
    if as_json:
        print(json.dumps({"account": account, "resynced": told}, indent=2))
    elif account is not None:
        console.print(f"resync sent to {len(told)} running intent(s) of {account}")
    else:
        console.print(f"resync sent to {intent_id}")


@app.command()
def watch(
    account: Annotated[str | None, typer.Option(help="every intent of this account")] = None,
    intent_id: Annotated[
        str | None,
        typer.Option("--intent", help="one intent: the command ends after its last event"),
    ] = None,
    group: Annotated[str | None, typer.Option(help="every intent of this group")] = None,
    strategy: Annotated[str | None, typer.Option(help="every intent of this strategy id")] = None,
    cursor: Annotated[
        str | None,
        typer.Option(
            help="resume after the events a cursor had seen (the cursor of a --json line)"
        ),
    ] = None,
    include_finished: Annotated[
        bool,
        typer.Option(
            "--include-finished",
            help="with --account, --group or --strategy: also intents that had already ended",
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="one JSON object per line, each with the cursor after it"),
    ] = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Follow intents' events as they happen (fills, status changes, modifications accepted or
    refused, cancel requests): one intent, or every intent of an account, group or strategy,
    including those submitted later. Each intent's kept events first (its most recent ones),
    then live. One line per event; with --intent the command ends after the intent's last
    event, otherwise Ctrl-C stops it. At least once: each event has its intent id and seq."""
    chosen = [v for v in (account, intent_id, group, strategy) if v is not None]
    if len(chosen) != 1:
        raise fail("give exactly one of --account, --intent, --group, --strategy", 2)
    if intent_id is not None and not ID_RE.fullmatch(intent_id):
        raise fail(f"{intent_id!r} is not a valid intent id", 2)
    if cursor is not None:
        try:
            WatchCursor.decode(cursor)
        except ValueError as exc:
            raise fail(f"--cursor: {exc}", 2) from None

    async def main() -> None:
        client = await IntentClient.connect(address, namespace, profile=profile)
        events = client.watch(
            intent_id=intent_id,
            group_id=group,
            account=account,
            strategy_id=strategy,
            cursor=cursor,
            include_finished=include_finished,
        )
        async with events:
            async for event in events:
                if as_json:
                    line = {**event.model_dump(mode="json"), "gap": events.gap}
                    print(json.dumps({**line, "cursor": events.cursor}), flush=True)
                else:
                    console.print(event_line(event, events.gap), highlight=False, soft_wrap=True)

    try:
        run(main())
    except KeyboardInterrupt:
        # Long polls are still in flight: the Temporal client's core threads may answer them
        # while the interpreter shuts down, which aborts it (temporalio/sdk-python#300).
        sys.stdout.flush()
        os._exit(130)


def event_line(event: IntentEvent, gap: bool = False) -> str:
    """One event for people: time, intent, seq, kind, what it says."""
    match event.kind:
        case IntentEventKind.FILL:
            assert event.fill is not None
            fill = event.fill
            fee = f", fee {fill.fee} {fill.fee_currency}" if fill.fee_currency else ""
            detail = f"{fill.amount} @ {fill.price}{fee} (trade {fill.trade_id})"
        case IntentEventKind.STATUS:
            previous = event.previous_status.value if event.previous_status else "-"
            detail = f"{previous} -> {event.status.value}"
            if event.reason:
                detail = f"{detail}: {event.reason}"
        case IntentEventKind.MODIFICATION_ACCEPTED:
            summary = event.desired.summary() if event.desired else ""
            detail = f"revision {event.revision}: {summary}"
        case IntentEventKind.MODIFICATION_REFUSED:
            detail = event.reason or "refused"
            if event.revision is not None:
                detail = f"revision {event.revision}: {detail}"
            if event.reverted_to is not None:
                detail = f"{detail}; back to revision {event.reverted_to}"
        case _:
            detail = event.reason or ""
    line = (
        f"{event.at:%H:%M:%S.%f}"[:-3]
        + f"  {event.intent_id} #{event.seq}  {event.kind.value}  {detail}"
        + f"  [filled {event.filled}, {event.status.value}]"
    )
    if gap:
        line = f"(earlier events of {event.intent_id} were dropped unread)\n{line}"
    return escape(line)


# --- deployment: setup, accounts check -------------------------------------------------------


@app.command(name="setup")
def setup_command(
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
    wait: Annotated[
        float,
        typer.Option(help="seconds to keep retrying while the server or namespace is not up yet"),
    ] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Prepare a Temporal namespace: check it exists, register the search attributes.

    Idempotent: a second run reports every attribute as already present.

    Exit code 1 on a type conflict or a missing namespace (the message says what to do).
    """
    from exchange_kernel.setup import Outcome, SetupError, run_setup

    try:
        report = run(run_setup(address, namespace, profile, wait=wait))
    except SetupError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        table = Table(title=f"search attributes of namespace {report.namespace} at {report.target}")
        for column in ("attribute", "type", "result"):
            table.add_column(column)
        styles = {Outcome.REGISTERED: "green", Outcome.PRESENT: "dim", Outcome.CONFLICT: "red"}
        for item in report.attributes:
            result = item.outcome.value
            if item.outcome is Outcome.CONFLICT:
                result += f" (exists as {item.found})"
            table.add_row(item.name, item.wanted, f"[{styles[item.outcome]}]{result}[/]")
        console.print(table)
    if not report.ok:
        conflicts = ", ".join(report.of(Outcome.CONFLICT))
        raise fail(
            f"search attribute type conflict: {conflicts}. Setup changes no existing attribute; "
            "use another namespace, or remove/rename the attribute on the server."
        )


accounts_app = typer.Typer(
    help="Exchange accounts of an accounts file: check them before running a worker.",
    no_args_is_help=True,
)
app.add_typer(accounts_app, name="accounts")


_CAPABILITY_LABELS = {
    "createOrder": "create",
    "cancelOrder": "cancel",
    "fetchOrder": "fetch",
    "clientOrderIdLookup": "by-client-id",
}


def _capabilities_cell(found: dict[str, bool]) -> str:
    parts = [
        label if found[name] else f"[red]no {label}[/]"
        for name, label in _CAPABILITY_LABELS.items()
    ]
    parts.append("edit" if found["editOrder"] else "[yellow]cancel-replace[/]")
    return " ".join(parts)


def _yes_no(value: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]?[/]"}[value]


@accounts_app.command("check")
def accounts_check(
    accounts: Annotated[
        Path, typer.Option("--accounts", help="accounts TOML file (\\[accounts.NAME] tables)")
    ] = Path("accounts.toml"),
    as_json: JsonOption = False,
) -> None:
    """Load markets and balance of every account: reachable, authenticated, capabilities,
    rate limit.

    Exit code 1 if any account cannot be traded."""
    from exchange_kernel.accounts import check_accounts

    try:
        configured = load_accounts(accounts)
    except AccountConfigError as exc:
        raise fail(str(exc), 2) from None
    checks = run(check_accounts(configured))
    if as_json:
        print(json.dumps([check.model_dump(mode="json") for check in checks], indent=2))
    else:
        table = Table(title=f"accounts of {accounts}")
        table.add_column("account", overflow="fold")
        table.add_column("exchange", overflow="fold")
        table.add_column("reachable")
        table.add_column("authenticated", no_wrap=True)
        table.add_column("capabilities")
        table.add_column("rate limit", justify="right")
        for check in checks:
            table.add_row(
                check.name,
                check.exchange,
                _yes_no(check.reachable),
                "[red]not authenticated[/]"
                if check.authenticated is False
                else _yes_no(check.authenticated),
                _capabilities_cell(check.capabilities),
                "-" if check.rate_limit_ms is None else f"{check.rate_limit_ms:g} ms",
            )
        console.print(table)
        for check in checks:
            for line in [*check.problems, *([check.detail] if check.detail else [])]:
                console.print(f"[bold]{check.name}[/]: {line}", highlight=False)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@app.command()
def metrics(
    url: Annotated[str, typer.Option(help="the worker's metrics endpoint")] = DEFAULT_METRICS_URL,
    everything: Annotated[
        bool, typer.Option("--all", help="also the SDK's own temporal_* series")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Summarize a worker's metrics (a worker started with --metrics-port): exchange requests,
    errors and retries, reconciliation lag, intents by status."""
    import aiohttp

    try:
        rows = asyncio.run(read(url, everything=everything))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise fail(
            escape(f"cannot read metrics at {url} ({exc or type(exc).__name__}). ")
            + "Start the worker with --metrics-port 9464, or point --url at its endpoint."
        ) from None
    if as_json:
        print(json.dumps({"url": url, "series": [row.as_json() for row in rows]}, indent=2))
        return
    if not rows:
        console.print(f"no exchange_kernel_* series at {url} yet: no intent has run there")
        return
    console.print(f"metrics at {url}")
    for table in metric_tables(rows):
        console.print(table)


def metric_tables(rows: list[Row]) -> list[Table]:
    """One table per metric, a column per label; histograms as count, mean and quantiles."""
    tables = []
    for metric, series in itertools.groupby(rows, key=lambda row: row.metric):
        group = list(series)
        labels = label_columns(metric, group)
        table = Table(
            title=metric,
            title_justify="left",
            caption=group[0].help or None,
            caption_justify="left",
            min_width=len(metric),
        )
        for label in labels:
            table.add_column(label, overflow="fold")
        histogram = group[0].kind == "histogram"
        for column in ("count", "mean", "p50", "p95") if histogram else ("value",):
            table.add_column(column, justify="right")
        for row in group:
            cells = [row.labels.get(label, "") for label in labels]
            if histogram:
                cells += [_number(v) for v in (row.count, row.mean, row.p50, row.p95)]
            else:
                cells.append(_number(row.value))
            table.add_row(*cells)
        tables.append(table)
    return tables


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"


def show_state(state: IntentState, as_json: bool) -> None:
    if as_json:
        print(json.dumps(state.report(), indent=2))
        return
    console.print(state_table(state))


def reconciliation_cell(status: str | None, reconciliation: str | None) -> str:
    """A finished intent has nothing left to reconcile: people read `ended`, not the `in_sync`
    it keeps (--json keeps the field as it is)."""
    if status in TERMINAL_STATUSES:
        return "ended"
    return reconciliation or ""


def state_table(state: IntentState) -> Table:
    """The human view of one intent."""
    table = Table(title=f"intent {state.intent.intent_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    fees = ", ".join(f"{v} {k}" for k, v in state.fees.items()) or "-"
    rows: list[tuple[str, Any]] = [
        ("account", state.intent.account),
        ("desired", f"{state.desired.summary()} (revision {state.revision})"),
        ("status", state.status.value),
        ("reconciliation", reconciliation_cell(state.status, state.reconciliation_status)),
        ("filled", f"{state.filled} of {state.desired.amount}"),
        ("remaining", str(state.remaining)),
        ("average price", _price(state.average_price)),
        ("fees", fees),
        ("outcome", state.outcome_reason or "-"),
    ]
    if state.stop_held:
        assert state.desired.stop_price is not None
        condition = trigger_condition(state.desired.side, state.desired.stop_price)
        rows.append(("stop", f"held by the workflow (nothing on the exchange): {condition}"))
    for field, value in rows:
        table.add_row(field, str(value))
    if state.settled.placements:
        settled = state.settled
        table.add_row(
            "earlier orders", f"{settled.placements} ended, {settled.filled} filled (compacted)"
        )
    for placement in state.placements:
        order = placement.order
        seen = f"{placement.phase.value}"
        if order is not None:
            seen = f"{seen}: {order.filled}/{order.amount} @ {order.price}"
        if placement.observed_at is not None:
            seen = f"{seen} (seen {placement.observed_at:%H:%M:%S})"
        table.add_row(f"order {placement.client_order_id}", seen)
    for record in state.recent_actions[-5:]:
        table.add_row(f"{record.at:%H:%M:%S} {record.action}", record.reason)
    return table


@app.command()
def halt(
    account: Annotated[str, typer.Option(help="account name")],
    symbol: Annotated[str | None, typer.Option(help="only this market (default: all)")] = None,
    cancel_all: Annotated[
        bool, typer.Option("--cancel-all", help="also cancel every live intent in scope")
    ] = False,
    reason: Annotated[str, typer.Option(help="recorded with the halt")] = "halted from the "
    "command line",
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Kill switch: refuse new intents and risk-increasing changes (cancels still work).
    Durable until `resume`."""

    halts = with_client(
        address,
        namespace,
        profile,
        lambda client: client.halt(account, symbol, cancel_all=cancel_all, reason=reason),
    )
    if as_json:
        report = {
            "account": account,
            "symbol": symbol,
            "cancel_all": cancel_all,
            "reason": reason,
            "halts": halts,
        }
        print(json.dumps(report, indent=2))
        return
    scope = symbol or "all symbols"
    console.print(f"[bold red]halted[/] {account} ({scope}); now halted: {halts}")
    if cancel_all:
        console.print("cancelling every live intent in scope")


@app.command()
def resume(
    account: Annotated[str, typer.Option(help="account name")],
    symbol: Annotated[str | None, typer.Option(help="the market halted on its own")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Lift a halt set with `halt` (for the account, or for one symbol)."""

    halts = with_client(address, namespace, profile, lambda client: client.resume(account, symbol))
    if as_json:
        print(json.dumps({"account": account, "symbol": symbol, "halts": halts}, indent=2))
        return
    console.print(f"resumed {account} ({symbol or 'all symbols'}); still halted: {halts or '-'}")


orphans_app = typer.Typer(
    help="Exchange orders no running intent owns: list, adopt, cancel.", no_args_is_help=True
)
app.add_typer(orphans_app, name="orphans")


@orphans_app.command("list")
def orphans_list(
    account: Annotated[str, typer.Option(help="account name")],
    symbol: Annotated[
        list[str] | None, typer.Option("--symbol", help="also scan this market (repeatable)")
    ] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Open orders without a running intent: ours left behind ("kernel") or placed by hand
    ("manual"). Scans the symbols the account's intents use, plus --symbol."""

    found = with_client(
        address, namespace, profile, lambda client: client.orphans(account, tuple(symbol or ()))
    )
    if as_json:
        print(json.dumps([o.model_dump(mode="json") for o in found], indent=2))
        return
    table = Table(title=f"{len(found)} orphan order(s) on {account}")
    for column in ("client order id", "kind", "symbol", "order", "filled", "former intent"):
        table.add_column(column)
    for orphan in found:
        order = orphan.order
        table.add_row(
            order.client_order_id,
            orphan.kind,
            order.symbol,
            f"{order.side.value} {order.amount} @ {order.price}",
            str(order.filled),
            orphan.intent_id or "-",
        )
    console.print(table)


@orphans_app.command("adopt")
def orphans_adopt(
    client_order_id: Annotated[str, typer.Argument(help="the orphan's client order id")],
    account: Annotated[str, typer.Option(help="account name")],
    intent_id: Annotated[str | None, typer.Option("--id", help="the new intent's id")] = None,
    symbol: Annotated[
        list[str] | None, typer.Option("--symbol", help="scan this market too (repeatable)")
    ] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Make an orphan order an intent that manages it from now on."""

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace, profile=profile)
        for orphan in await client.orphans(account, tuple(symbol or ())):
            if orphan.order.client_order_id == client_order_id:
                new_id = intent_id or f"adopted-{uuid.uuid4().hex[:10]}"
                return await client.adopt(orphan.order, account, new_id)
        raise IntentNotFound(f"no orphan order {client_order_id!r} on {account}")

    state = run(main())
    if as_json:
        print(json.dumps(state.report(), indent=2))
        return
    console.print(f"adopted {client_order_id} as intent [bold]{state.intent.intent_id}[/]")


@orphans_app.command("cancel")
def orphans_cancel(
    client_order_id: Annotated[str, typer.Argument(help="the orphan's client order id")],
    account: Annotated[str, typer.Option(help="account name")],
    symbol: Annotated[str, typer.Option(help="its market, e.g. BTC/USDT")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Cancel an order that no intent owns."""

    order = with_client(
        address,
        namespace,
        profile,
        lambda client: client.cancel_orphan(account, symbol, client_order_id),
    )
    if as_json:
        report = {
            "account": account,
            "symbol": symbol,
            "client_order_id": client_order_id,
            "order": None if order is None else order.model_dump(mode="json"),
        }
        print(json.dumps(report, indent=2))
        return
    console.print(f"{client_order_id}: {getattr(order, 'status', 'not found')}")


group_app = typer.Typer(help="Contingent orders: OCO and bracket groups.", no_args_is_help=True)
app.add_typer(group_app, name="group")


@group_app.command("bracket")
def group_bracket(
    symbol: Annotated[str, typer.Option(help="market, e.g. BTC/USDT")],
    side: Annotated[Side, typer.Option(help="entry side")],
    amount: Annotated[str, typer.Option(help="entry amount")],
    take_profit: Annotated[str, typer.Option(help="take-profit limit price")],
    stop_loss: Annotated[str, typer.Option(help="stop-loss trigger price")],
    price: Annotated[str | None, typer.Option(help="entry limit price (omit: market)")] = None,
    stop_loss_limit: Annotated[
        str | None, typer.Option(help="stop-loss limit price (default: the trigger)")
    ] = None,
    stop_loss_market: Annotated[
        bool,
        typer.Option(help="the stop-loss as a stop-market order (a market order once crossed)"),
    ] = False,
    account: Annotated[str, typer.Option(help="account name")] = "paper",
    group_id: Annotated[str | None, typer.Option("--id", help="group id")] = None,
    strategy: Annotated[str | None, typer.Option(help="strategy id")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """An entry whose fills are protected by a take-profit / stop-loss pair sized to them."""
    try:
        group = IntentGroup(
            group_id=group_id or f"bracket-{uuid.uuid4().hex[:10]}",
            account=account,
            kind=GroupKind.BRACKET,
            strategy_id=strategy,
            entry=OrderSpec(
                symbol=symbol,
                side=side,
                type=OrderType.LIMIT if price is not None else OrderType.MARKET,
                amount=amount,
                price=price,
            ),
            take_profit=take_profit,
            stop_loss=stop_loss,
            stop_loss_limit=stop_loss_limit,
            stop_loss_market=stop_loss_market,
        )
    except ValidationError as exc:
        raise fail(validation_message(exc), 2) from None

    with_client(address, namespace, profile, lambda client: client.submit_group(group))
    if as_json:
        print(json.dumps(group_submitted(group)))
        return
    console.print(
        f"bracket [bold]{group.group_id}[/]: entry {group.leg_id('entry')}, "
        f"take profit @ {take_profit}, stop loss @ {stop_loss}"
    )


@group_app.command("oco")
def group_oco(
    file: Annotated[
        Path, typer.Argument(help="JSON: {group_id, account, members: [OrderIntent, ...]}")
    ],
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Submit an OCO group from a JSON file: when one member fills, the others are cancelled."""
    try:
        data = json.loads(file.read_text())
        group = IntentGroup.model_validate({"kind": "oco", **data})
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(f"{file}: {exc}", 2) from None
    except ValidationError as exc:
        raise fail(validation_message(exc), 2) from None

    with_client(address, namespace, profile, lambda client: client.submit_group(group))
    if as_json:
        print(json.dumps(group_submitted(group)))
        return
    members = ", ".join(m.intent_id for m in group.members)
    console.print(f"OCO [bold]{group.group_id}[/]: {members}")


def group_submitted(group: IntentGroup) -> dict[str, Any]:
    """What `group bracket|oco --json` prints: the ids to follow the group and its members by."""
    return {
        "group_id": group.group_id,
        "workflow_id": group_workflow_id(group.group_id),
        "kind": group.kind.value,
        "members": list(member_ids(group)),
    }


@group_app.command("status")
def group_status(
    group_id: Annotated[str, typer.Argument(help="group id")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """A group's members, what triggered it, and any overfill."""

    state = with_client(address, namespace, profile, lambda client: client.group_state(group_id))
    if as_json:
        print(state.model_dump_json(indent=2))
        return
    table = Table(title=f"{state.group.kind.value} group {group_id}")
    for column in ("member", "status", "filled"):
        table.add_column(column)
    for member in state.members.values():
        table.add_row(member.intent_id, member.status.value, str(member.filled))
    console.print(table)
    console.print(f"triggered by: {state.triggered_by or '-'}   finished: {state.finished}")
    if state.overfill:
        console.print(f"[bold red]overfill[/]: {state.overfill}")


@group_app.command("cancel")
def group_cancel(
    group_id: Annotated[str, typer.Argument(help="group id")],
    reason: Annotated[str, typer.Option(help="recorded in the history")] = "cancelled from "
    "the command line",
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
    profile: ProfileOption = None,
) -> None:
    """Cancel every live member of a group (fills are kept)."""

    with_client(address, namespace, profile, lambda client: client.cancel_group(group_id, reason))
    if as_json:
        print(json.dumps({"group_id": group_id, "cancel_sent": True, "reason": reason}))
        return
    console.print(f"cancelling group {group_id}")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def main() -> None:
    app()


if __name__ == "__main__":
    main()
