"""Bounded state: one intent modified N times by cancel-replace, partly filled along the way, then
filled. Prints the state's payload size, the longest run's history, and the kernel's filled,
average price and fees next to the paper exchange's own ledger.

    .venv/bin/python bench/bounded_state.py [--modifications 10000] [--fill-every 1001] [--json]

Targets (DESIGN.md): the state stays under 64 KB and every run's history under 2,000 events,
with filled amount, average price and fees exact. It prints whether each is met; it never
asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import (
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    intent_digest,
    workflow_id_for,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
from exchange_kernel.sim.engine import Exchange
from exchange_kernel.worker import build_worker

QUEUE = "bench-bounded"
KEY_ENV = "EK_BENCH_PAPER_KEY"
SECRET_ENV = "EK_BENCH_PAPER_SECRET"
SYMBOL = "BTC/USDT"
START_PRICE = "30000"
PRICES = ("20000", "20001")  # the modifications alternate between them: a buy far below
AMOUNT = "1"
FILL = Decimal("0.01")  # each partial fill along the way
TARGET_STATE_BYTES = 64 * 1024
TARGET_RUN_EVENTS = 2000


@dataclass
class Placements:
    """The intent's orders as the in-process paper exchange accepts them (exact, no polling)."""

    exchange: Exchange
    prefix: str
    count: int = 0
    _waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        original = self.exchange.place_order

        def place_order(api_key: str, request: Any) -> Any:
            placement = original(api_key, request)
            if placement.order.client_order_id.startswith(self.prefix):
                self.count += 1
                for target, waiter in list(self._waiters):
                    if self.count >= target and not waiter.done():
                        waiter.set_result(None)
            return placement

        self.exchange.place_order = place_order  # type: ignore[method-assign]

    async def reach(self, target: int) -> None:
        if self.count >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        try:
            async with asyncio.timeout(60):
                await waiter
        finally:
            self._waiters.remove((target, waiter))


def ledger(exchange: Exchange, prefix: str) -> dict[str, Any]:
    """The exchange's own account of the intent's orders: filled, cost, fees, average."""
    trades = [t for t in exchange.trades if t.client_order_id.startswith(prefix)]
    filled = sum((t.qty for t in trades), Decimal(0))
    cost = sum((t.quote_qty for t in trades), Decimal(0))
    fees: dict[str, Decimal] = {}
    for trade in trades:
        fees[trade.commission_asset] = fees.get(trade.commission_asset, Decimal(0)) + (
            trade.commission
        )
    orders = [o for o in exchange.orders.values() if o.client_order_id.startswith(prefix)]
    return {
        "orders": len(orders),
        "trades": len(trades),
        "filled": filled,
        "average_price": cost / filled if filled else None,
        "fees": {k: v for k, v in fees.items() if v},
    }


async def run_lengths(client: Client, workflow_id: str) -> list[int]:
    lengths = []
    async for run in client.list_workflows(f'WorkflowId="{workflow_id}"'):
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        lengths.append(len(history.events))
    return lengths


def state_bytes(state: IntentState) -> int:
    return len(state.model_dump_json().encode())


async def bench(
    client: Client, intents: IntentClient, exchange: Exchange, n: int, fill_every: int, console
) -> dict[str, Any]:
    intent = OrderIntent(
        intent_id=f"bounded-{uuid.uuid4().hex[:10]}",
        account="paper",
        order=OrderSpec(symbol=SYMBOL, side="buy", amount=AMOUNT, price=PRICES[0]),
    )
    prefix = f"ek-{intent_digest(intent.intent_id)}-"
    placements = Placements(exchange, prefix)
    await intents.submit(intent)
    await placements.reach(1)
    largest, t0 = 0, time.perf_counter()
    for i in range(1, n + 1):
        price = PRICES[i % 2]
        await intents.modify(intent.intent_id, price=price)
        await placements.reach(i + 1)  # its replacement is on the exchange
        if i % fill_every == 0:
            exchange.set_price(SYMBOL.replace("/", ""), Decimal(price), FILL)
            exchange.set_price(SYMBOL.replace("/", ""), Decimal(START_PRICE))
            state = await intents.state(intent.intent_id)
            largest = max(largest, state_bytes(state))
            rate = i / (time.perf_counter() - t0)
            console.print(
                f"[dim]{i} modifications ({rate:.0f}/s), state {state_bytes(state)} bytes, "
                f"filled {state.filled}[/dim]"
            )
    modify_s = time.perf_counter() - t0
    # Fill the rest: the last order crosses in full.
    exchange.set_price(SYMBOL.replace("/", ""), Decimal("19000"))
    final = await asyncio.wait_for(intents.result(intent.intent_id), 120)
    largest = max(largest, state_bytes(final))
    truth = ledger(exchange, prefix)
    lengths = await run_lengths(client, workflow_id_for(intent.intent_id))
    exact = (
        final.filled == truth["filled"]
        and final.average_price == truth["average_price"]
        and final.fees == truth["fees"]
    )
    return {
        "modifications": n,
        "modifications_per_s": round(n / modify_s, 1),
        "status": final.status.value,
        "exchange_orders": truth["orders"],
        "exchange_trades": truth["trades"],
        "placements_kept": len(final.placements),
        "placements_compacted": final.settled.placements,
        "state_bytes_max": largest,
        "state_bytes_final": state_bytes(final),
        "runs": len(lengths),
        "run_events_max": max(lengths),
        "kernel": {
            "filled": str(final.filled),
            "average_price": str(final.average_price),
            "fees": {k: str(v) for k, v in final.fees.items()},
        },
        "exchange": {
            "filled": str(truth["filled"]),
            "average_price": str(truth["average_price"]),
            "fees": {k: str(v) for k, v in truth["fees"].items()},
        },
        "exact": exact,
        "filled": final.status is IntentStatus.FILLED,
    }


async def run(n: int, fill_every: int, console: Console) -> dict[str, Any]:
    os.environ[KEY_ENV] = DEMO_API_KEY
    os.environ[SECRET_ENV] = DEMO_SECRET
    with tempfile.TemporaryDirectory(prefix="ek-bench-") as tmp:
        server = DevServer(
            port=free_port(), headless=True, db_filename=Path(tmp) / "temporal.sqlite"
        )
        async with server, running_sim(port=0) as sim:
            client = await server.connect(data_converter=pydantic_data_converter)
            account = AccountConfig(
                name="paper",
                exchange="binance",
                api_key_env=KEY_ENV,
                secret_env=SECRET_ENV,
                base_url=sim.base_url,
                # cancel, confirm, place: the path whose every modification is a new order
                options={"has": {"editOrder": False}},
                # The paper exchange takes far more than a real account's budget: measured
                # here is the kernel's state, not the rate limit.
                max_requests_per_second=1000,
            )
            sim.exchange.set_price(SYMBOL.replace("/", ""), Decimal(START_PRICE))
            pool = ExchangePool({"paper": account})
            try:
                async with build_worker(client, pool, QUEUE):
                    intents = IntentClient(client, QUEUE)
                    return await bench(client, intents, sim.exchange, n, fill_every, console)
            finally:
                await pool.close()


def render(results: dict[str, Any], console: Console) -> None:
    table = Table(title=f"bounded state: {results['modifications']} cancel-replace modifications")
    table.add_column("figure")
    table.add_column("value")
    table.add_column("target")
    rows = [
        (
            "exchange orders / trades",
            f"{results['exchange_orders']} / {results['exchange_trades']}",
        ),
        (
            "placements kept / compacted",
            f"{results['placements_kept']} / {results['placements_compacted']}",
        ),
        ("modifications per second", str(results["modifications_per_s"])),
        (
            "state payload, largest",
            f"{results['state_bytes_max']} bytes",
            f"< {TARGET_STATE_BYTES} ({met(results['state_bytes_max'] < TARGET_STATE_BYTES)})",
        ),
        (
            "runs; longest run's history",
            f"{results['runs']}; {results['run_events_max']} events",
            f"< {TARGET_RUN_EVENTS} ({met(results['run_events_max'] < TARGET_RUN_EVENTS)})",
        ),
        (
            "filled (kernel / exchange)",
            f"{results['kernel']['filled']} / {results['exchange']['filled']}",
        ),
        (
            "average price (kernel / exchange)",
            f"{results['kernel']['average_price']} / {results['exchange']['average_price']}",
        ),
        (
            "fees (kernel / exchange)",
            f"{results['kernel']['fees']} / {results['exchange']['fees']}",
        ),
        ("exact", str(results["exact"]), f"True ({met(results['exact'])})"),
        ("outcome", results["status"]),
    ]
    for row in rows:
        table.add_row(*row, *([""] * (3 - len(row))))
    console.print(table)


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modifications", type=int, default=10_000)
    # Odd: the partial fills land on both prices, so the average price is not trivially one.
    parser.add_argument("--fill-every", type=int, default=1001, help="a partial fill every N")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if args.modifications < 1 or args.fill_every < 1:
        parser.error("--modifications and --fill-every must be at least 1")
    console = Console(width=None if sys.stdout.isatty() else 120)
    t0 = time.perf_counter()
    results = asyncio.run(run(args.modifications, args.fill_every, console))
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    render(results, console)
    console.print(f"[dim]total {results['wall_s']}s[/dim]")
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
