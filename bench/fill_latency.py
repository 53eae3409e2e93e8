"""Fill latency bench: a fill on the exchange -> the intent's state shows it (and -> the
strategy's `IntentClient.watch` yields it, where the client has `watch`).

Two accounts on one paper exchange, each with its account sync: `stream` follows the
exchange's user-data stream (the default where ccxt.pro has `watchOrders`; REST rounds are a
backstop every 5 s), `rest` has `user_stream = false` (REST rounds every 2 s, as before 0.3).
For each, `--n` intents rest on ETH/USDT at distinct prices; then, one at a time, the price is
moved onto an intent's limit (the paper exchange fills it while answering the admin request)
and the clock starts when that answer arrives. It stops when

- state: a state query (repeated every `--poll-ms`) shows the intent filled;
- watch: the intent's `watch` iterator yields the fill (started before the move).

The samples are sequential, so one fill's work does not queue behind another's. Also printed:
exchange requests per minute at rest with the intents resting (the paper exchange's request
counter, over `--window` seconds), per account.

Everything runs in this process (dev server aside): worker, paper exchange and client share a
core, as on a small VM.

    .venv/bin/python bench/fill_latency.py [--n 40] [--window 30] [--json]

It prints figures; it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import OrderIntent, account_sync_id
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import ensure_account_syncs
from exchange_kernel.workflows.account_sync import AccountSyncStatus

QUEUE = "bench-fills"
KEY_ENV = "EK_BENCH_FILLS_KEY"
SECRET_ENV = "EK_BENCH_FILLS_SECRET"
SYMBOL = "ETH/USDT"
START = Decimal("2000")
AMOUNT = "0.01"
MODES = {"stream": None, "rest": False}  # account -> user_stream


def accounts(base_url: str) -> dict[str, AccountConfig]:
    os.environ[KEY_ENV] = DEMO_API_KEY
    os.environ[SECRET_ENV] = DEMO_SECRET
    return {
        name: AccountConfig(
            name=name,
            api_key_env=KEY_ENV,
            secret_env=SECRET_ENV,
            base_url=base_url,
            user_stream=user_stream,
            max_requests_per_second=50,
        )
        for name, user_stream in MODES.items()
    }


def pct(values: list[float], p: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 1),
        "p99_ms": round(pct(ms, 99), 1),
        "max_ms": round(max(ms), 1),
    }


class Paper:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/sim/v1/{path}"
        async with self.session.request(method, url, json=body) as response:
            response.raise_for_status()
            return await response.json()

    async def price(self, price: Decimal) -> None:
        await self.admin("POST", "price", {"symbol": SYMBOL.replace("/", ""), "price": str(price)})

    async def requests(self) -> int:
        counts = (await self.admin("GET", "requests"))["counts"]
        return sum(v for k, v in counts.items() if "/api/v3/" in k)


async def wait_until(check: Any, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("not within the bench's bound")
        await asyncio.sleep(0.05)


async def rest_intents(intents: IntentClient, account: str, n: int) -> list[tuple[str, Decimal]]:
    placed = []
    for i in range(n):
        price = START - Decimal(10) - Decimal(i) / 10
        intent = OrderIntent.model_validate(
            {
                "intent_id": f"fills-{account}-{uuid.uuid4().hex[:8]}",
                "account": account,
                "order": {
                    "symbol": SYMBOL,
                    "side": "buy",
                    "type": "limit",
                    "amount": AMOUNT,
                    "price": str(price),
                },
            }
        )
        await intents.submit(intent)
        placed.append((intent.intent_id, price))
    for intent_id, _ in placed:

        async def watched(intent_id: str = intent_id) -> bool:
            state = await intents.state(intent_id)
            return bool(state.placements) and state.watched

        await wait_until(watched)
    return placed


async def measure(
    intents: IntentClient, paper: Paper, placed: list[tuple[str, Decimal]], poll: float
) -> dict[str, list[float]]:
    """Highest price first: each move fills exactly the next intent."""
    state_s: list[float] = []
    watch_s: list[float] = []
    has_watch = hasattr(intents, "watch")
    for intent_id, price in placed:
        seen = asyncio.Event()
        watcher = None
        if has_watch:
            watcher = asyncio.create_task(first_fill(intents, intent_id, seen))
            await asyncio.sleep(0.2)  # the long-poll is in place
        await paper.price(price)
        t0 = time.perf_counter()
        state_s.append(await state_shows_fill(intents, intent_id, poll) - t0)
        if watcher is not None:
            await asyncio.wait_for(seen.wait(), 30)
            watch_s.append(watcher.result() - t0)
        await paper.price(START)
    return {"state": state_s, "watch": watch_s}


async def state_shows_fill(intents: IntentClient, intent_id: str, poll: float) -> float:
    """When a state query first shows the fill (queries `poll` seconds apart)."""
    while True:
        if (await intents.state(intent_id)).filled > 0:
            return time.perf_counter()
        await asyncio.sleep(poll)


async def first_fill(intents: Any, intent_id: str, seen: asyncio.Event) -> float:
    async for event in intents.watch(intent_id=intent_id):
        if str(getattr(event, "kind", "")) == "fill":
            seen.set()
            return time.perf_counter()
    raise RuntimeError(f"{intent_id} ended without a fill event")


async def at_rest(paper: Paper, window: float) -> float:
    before = await paper.requests()
    await asyncio.sleep(window)
    return (await paper.requests() - before) * 60 / window


async def run(n: int, window: float, poll: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ek-fills-") as tmp:
        server = DevServer(port=free_port(), headless=True, db_filename=Path(tmp) / "t.sqlite")
        async with server:
            client: Client = await server.connect(data_converter=pydantic_data_converter)
            async with running_sim(port=0) as sim, aiohttp.ClientSession() as session:
                paper = Paper(sim.base_url, session)
                await paper.price(START)
                pool = ExchangePool(accounts(sim.base_url))
                worker = build_worker(client, pool, QUEUE)
                intents = IntentClient(client, QUEUE)
                try:
                    async with worker:
                        await ensure_account_syncs(client, list(MODES), QUEUE)
                        for account in MODES:
                            placed = await rest_intents(intents, account, n)
                            status = await client.get_workflow_handle(
                                account_sync_id(account)
                            ).query("status", result_type=AccountSyncStatus)
                            rest_rate = await at_rest(paper, window)
                            placed.sort(key=lambda p: p[1], reverse=True)
                            figures = await measure(intents, paper, placed, poll)
                            results[account] = {
                                "stream": status.stream,
                                "requests_per_minute_at_rest": round(rest_rate, 1),
                                "fill_to_state": summary(figures["state"]),
                                "fill_to_watch": summary(figures["watch"])
                                if figures["watch"]
                                else None,
                            }
                            print(account, json.dumps(results[account]), flush=True)
                finally:
                    await pool.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="fills per account")
    parser.add_argument("--window", type=float, default=30, help="seconds measured at rest")
    parser.add_argument("--poll-ms", type=float, default=2, help="state query spacing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args.n, args.window, args.poll_ms / 1000))
    print()
    print(
        f"{'account':8} {'stream':28} {'req/min at rest':>16} {'state p50/p99 ms':>18} "
        f"{'watch p50/p99 ms':>18}"
    )
    for account, r in results.items():
        state = r["fill_to_state"]
        watch = r["fill_to_watch"]
        watched = f"{watch['p50_ms']}/{watch['p99_ms']}" if watch else "-"
        print(
            f"{account:8} {r['stream'][:28]:28} {r['requests_per_minute_at_rest']:>16} "
            f"{state['p50_ms']}/{state['p99_ms']:>8} {watched:>18}"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
