"""An example strategy: a few intents, a modification, a cancellation, fills, followed through
the kernel's events (`IntentClient.watch`) instead of polling.

Run it against `exchange-kernel dev` (or via `make demo`, which starts everything first).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import Callable
from decimal import Decimal

from exchange_kernel.client import IntentClient
from exchange_kernel.models import (
    IntentEvent,
    IntentEventKind,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
)


def move_price(paper_url: str, symbol: str, price: str, volume: str | None = None) -> None:
    """The paper exchange's admin API: set the last price; crossing orders fill."""
    body = {"symbol": symbol, "price": price, **({"volume": volume} if volume else {})}
    request = urllib.request.Request(
        f"{paper_url}/sim/v1/price",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5).close()


async def cancel_previous_runs(intents: IntentClient) -> None:
    """A fresh start: cancel what earlier runs of this strategy left resting."""
    for status in (IntentStatus.OPEN, IntentStatus.PARTIALLY_FILLED, IntentStatus.PENDING):
        for row in await intents.list(strategy="demo", status=status):
            await intents.signal_cancel(row.intent_id, "new demo run")
            await intents.result(row.intent_id)
            print(f"cancelled {row.intent_id} from an earlier run")


async def run_strategy(intents: IntentClient, paper_url: str, run_id: str) -> list[IntentState]:
    await cancel_previous_runs(intents)
    move_price(paper_url, "BTCUSDT", "30000")
    move_price(paper_url, "ETHUSDT", "2000")
    # The strategy's intents' events from now on (fills, status, modifications), intents
    # submitted after this line included: no polling of their states.
    events = aiter(intents.watch(strategy_id="demo"))
    wanted = {
        "btc-bid": OrderSpec(symbol="BTC/USDT", side="buy", amount="0.05", price="29900"),
        "btc-ask": OrderSpec(symbol="BTC/USDT", side="sell", amount="0.05", price="30500"),
        "eth-bid": OrderSpec(symbol="ETH/USDT", side="buy", amount="1", price="1980"),
        "eth-deep": OrderSpec(symbol="ETH/USDT", side="buy", amount="2", price="1900"),
    }
    ids = {}
    for name, spec in wanted.items():
        intent = OrderIntent(
            intent_id=f"demo-{run_id}-{name}", account="paper", strategy_id="demo", order=spec
        )
        await intents.submit(intent)
        ids[name] = intent.intent_id
        print(f"submitted {intent.intent_id}: {spec.summary()}")
    latest: dict[str, IntentEvent] = {}

    async def until(done: Callable[[], bool]) -> None:
        async with asyncio.timeout(60):
            async for event in events:
                latest[event.intent_id] = event
                print(f"  event {event.intent_id} #{event.seq}: {describe(event)}")
                if done():
                    return

    def status(name: str) -> IntentStatus | None:
        event = latest.get(ids[name])
        return event.status if event else None

    await until(lambda: all(status(name) is IntentStatus.OPEN for name in ids))

    await intents.modify(ids["btc-bid"], price="29950")  # chase the market
    print("modified btc-bid: price 29950")
    await intents.cancel(ids["eth-deep"], "no longer wanted")
    print("cancelled eth-deep")

    move_price(paper_url, "BTCUSDT", "29950")  # btc-bid fills
    move_price(paper_url, "ETHUSDT", "1980", volume="0.4")  # eth-bid fills partially
    await until(
        lambda: (
            status("btc-bid") is IntentStatus.FILLED
            and status("eth-deep") is IntentStatus.CANCELED
            and latest[ids["eth-bid"]].filled == Decimal("0.4")
        )
    )
    await events.aclose()
    return [await intents.state(intent_id) for intent_id in ids.values()]


def describe(event: IntentEvent) -> str:
    if event.kind is IntentEventKind.FILL and event.fill is not None:
        return f"fill {event.fill.amount} @ {event.fill.price} (filled {event.filled})"
    if event.kind is IntentEventKind.STATUS:
        return f"{event.previous_status} -> {event.status}"
    if event.kind is IntentEventKind.MODIFICATION_ACCEPTED and event.desired is not None:
        return f"modified: {event.desired.summary()} (revision {event.revision})"
    return f"{event.kind.value}: {event.reason}"


async def main(address: str, paper_url: str, run_id: str) -> None:
    from rich.console import Console
    from rich.table import Table

    intents = await IntentClient.connect(address)
    states = await run_strategy(intents, paper_url, run_id)
    table = Table(title="intents after the demo", expand=False)
    for column in ("intent", "desired", "status", "filled", "avg price", "exchange orders"):
        table.add_column(column)
    for state in states:
        average = state.average_price
        table.add_row(
            state.intent.intent_id,
            state.desired.summary(),
            state.status.value,
            f"{state.filled}/{state.desired.amount}",
            "-" if average is None else f"{average.normalize():f}",
            str(len(state.placements)),
        )
    # Wide enough for the table even when stdout is not a terminal (make demo | tee ...).
    Console(width=None if sys.stdout.isatty() else 130).print(table)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
