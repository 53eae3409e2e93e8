"""The `exchange-kernel` command: run the kernel, and submit, change and inspect intents."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from exchange_kernel.accounts import AccountConfigError, load_accounts
from exchange_kernel.client import (
    AlreadyExistsError,
    IntentClient,
    IntentListing,
    IntentNotFound,
    IntentRejected,
)
from exchange_kernel.connection import TASK_QUEUE, TemporalUnreachable, connect
from exchange_kernel.models import (
    ExternalCancelPolicy,
    IntentState,
    OrderIntent,
    OrderSpec,
    OrderType,
    Side,
    TimeInForce,
)

app = typer.Typer(
    help="exchange-kernel: durable order intents on Temporal and ccxt.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)
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
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON output")]


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


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8900,
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="extra account KEY:SECRET (repeatable)"),
    ] = None,
    fee: Annotated[str, typer.Option(help="fee rate charged on every fill")] = "0.001",
) -> None:
    """Run the paper exchange (Binance spot REST API on HTTP) until Ctrl-C."""
    from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET
    from exchange_kernel.sim import run as run_sim

    fee_rate = money(fee, "fee")
    assert fee_rate is not None
    for item in account or []:
        if ":" not in item:
            raise fail(f"--account {item!r}: expected KEY:SECRET", 2)
    console.print(
        f"paper exchange on http://{host}:{port}  (demo account key {DEMO_API_KEY}, "
        f"secret {DEMO_SECRET}; admin API under /sim/v1/)"
    )
    run_sim(host, port, list(account or []), fee_rate)


@app.command()
def worker(
    accounts: Annotated[
        Path, typer.Option("--accounts", help="accounts TOML file ([accounts.NAME] tables)")
    ],
    task_queue: Annotated[str, typer.Option(help="Temporal task queue")] = TASK_QUEUE,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Run a worker: the intent workflows and the exchange activities for the given accounts."""
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

    async def main() -> None:
        client = await connect(address, namespace)
        stop = _stop_on_signals()
        console.print(
            f"worker on {task_queue}, accounts: {', '.join(sorted(configured))} (Ctrl-C stops)"
        )
        await run_worker(client, configured, task_queue, stop)

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
) -> None:
    """Run everything locally: Temporal dev server + UI, the paper exchange, and a worker
    with an account named `paper` on it. Ctrl-C stops all three."""
    from exchange_kernel.dev import run_dev

    run(run_dev(port, ui_port, sim_port, data_dir, task_queue, console, ready_file))


# --- intents -----------------------------------------------------------------------------------


@app.command()
def submit(
    symbol: Annotated[str, typer.Option(help="market in ccxt form, e.g. BTC/USDT")],
    side: Annotated[Side, typer.Option(help="buy or sell")],
    amount: Annotated[str, typer.Option(help="amount in the base asset")],
    price: Annotated[str | None, typer.Option(help="limit price (not for market)")] = None,
    order_type: Annotated[OrderType, typer.Option("--type", help="order type")] = OrderType.LIMIT,
    stop_price: Annotated[str | None, typer.Option(help="trigger price (stop_limit)")] = None,
    tif: Annotated[TimeInForce, typer.Option(help="time in force")] = TimeInForce.GTC,
    post_only: Annotated[bool, typer.Option(help="reject if it would take")] = False,
    account: Annotated[str, typer.Option(help="account name from the accounts file")] = "paper",
    intent_id: Annotated[
        str | None, typer.Option("--id", help="intent id (default: a new random one)")
    ] = None,
    group: Annotated[str | None, typer.Option(help="group id")] = None,
    strategy: Annotated[str | None, typer.Option(help="strategy id")] = None,
    on_external_cancel: Annotated[
        ExternalCancelPolicy, typer.Option(help="if cancelled outside the kernel: finish|restore")
    ] = ExternalCancelPolicy.FINISH,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Submit an order intent. Validated here, before anything is started."""
    try:
        intent = OrderIntent(
            intent_id=intent_id or f"cli-{uuid.uuid4().hex[:12]}",
            account=account,
            group_id=group,
            strategy_id=strategy,
            on_external_cancel=on_external_cancel,
            order=OrderSpec(
                symbol=symbol,
                side=side,
                type=order_type,
                amount=amount,
                price=price,
                stop_price=stop_price,
                time_in_force=tif,
                post_only=post_only,
            ),
        )
    except ValidationError as exc:
        raise fail(validation_message(exc), 2) from None

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace)
        return await client.submit(intent)

    state = run(main())
    if as_json:
        print(json.dumps({"intent_id": intent.intent_id, "workflow_id": intent.workflow_id}))
    else:
        console.print(
            f"submitted [bold]{intent.intent_id}[/]: {intent.summary()} ({state.status.value})"
        )


@app.command()
def modify(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    price: Annotated[str | None, typer.Option(help="new limit price")] = None,
    amount: Annotated[str | None, typer.Option(help="new total amount (≥ filled)")] = None,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Change an intent's price and/or amount (validated by the intent; rejections say why)."""
    if price is None and amount is None:
        raise fail("give --price and/or --amount", 2)

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace)
        return await client.modify(intent_id, price=price, amount=amount)

    show_state(run(main()), as_json)


@app.command()
def cancel(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    reason: Annotated[str, typer.Option(help="recorded in the intent's history")] = "cancelled "
    "from the command line",
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Cancel an intent (its exchange order is cancelled; fills are kept)."""

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace)
        return await client.cancel(intent_id, reason)

    show_state(run(main()), as_json)


@app.command()
def status(
    intent_id: Annotated[str, typer.Argument(help="intent id")],
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Show one intent: desired, exchange orders, fills, status, recent actions."""

    async def main() -> IntentState:
        client = await IntentClient.connect(address, namespace)
        return await client.state(intent_id)

    show_state(run(main()), as_json)


@app.command(name="list")
def list_intents(
    account: Annotated[str | None, typer.Option(help="only this account")] = None,
    symbol: Annotated[str | None, typer.Option(help="only this market, e.g. BTC/USDT")] = None,
    group: Annotated[str | None, typer.Option(help="only this group")] = None,
    intent_status: Annotated[
        str | None, typer.Option("--status", help="only this status (open, filled, ...)")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 100,
    as_json: JsonOption = False,
    address: AddressOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """List intents from Temporal's visibility (search attributes), newest first."""

    async def main() -> list[IntentListing]:
        client = await IntentClient.connect(address, namespace)
        return await client.list(
            account=account, symbol=symbol, group=group, status=intent_status, limit=limit
        )

    rows = run(main())
    if as_json:
        print(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return
    table = Table(title=f"{len(rows)} intent(s)")
    for column in ("intent", "account", "symbol", "status", "reconciliation", "summary"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.intent_id,
            row.account or "",
            row.symbol or "",
            row.status or "",
            row.reconciliation_status or "",
            row.summary or "",
        )
    console.print(table)


def show_state(state: IntentState, as_json: bool) -> None:
    if as_json:
        print(json.dumps(state.report(), indent=2))
        return
    console.print(state_table(state))


def state_table(state: IntentState) -> Table:
    """The human view of one intent."""
    table = Table(title=f"intent {state.intent.intent_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    average = state.average_price
    fees = ", ".join(f"{v} {k}" for k, v in state.fees.items()) or "-"
    rows: list[tuple[str, Any]] = [
        ("account", state.intent.account),
        ("desired", f"{state.desired.summary()} (revision {state.revision})"),
        ("status", state.status.value),
        ("reconciliation", state.reconciliation_status.value),
        ("filled", f"{state.filled} of {state.desired.amount}"),
        ("remaining", str(state.remaining)),
        ("average price", "-" if average is None else f"{average:.8f}".rstrip("0").rstrip(".")),
        ("fees", fees),
        ("outcome", state.outcome_reason or "-"),
    ]
    for field, value in rows:
        table.add_row(field, str(value))
    for placement in state.placements:
        order = placement.order
        seen = (
            f"{order.status.value} {order.filled}/{order.amount} @ {order.price}"
            if order
            else "unknown"
        )
        table.add_row(f"order {placement.client_order_id}", seen)
    for record in state.recent_actions[-5:]:
        table.add_row(f"{record.at:%H:%M:%S} {record.action}", record.reason)
    return table


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
