"""Shared fixtures: the real Temporal dev server, the paper exchange, a worker, an IntentClient.

Everything is started by the suite itself (CI has no services running) and stopped after it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import sync_task_queue
from exchange_kernel.devserver import start_local_environment
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import ensure_account_syncs
from exchange_kernel.workflows.account_sync import AccountSyncWorkflow

TASK_QUEUE = "exchange-kernel-tests"
# Recognisable values: the secret-hygiene checks look for them in histories and logs.
TEST_KEY_ENV = "EK_TEST_PAPER_KEY"
TEST_SECRET_ENV = "EK_TEST_PAPER_SECRET"
# An account that holds what a modest real one does (its own key on the paper exchange): orders
# beyond it are refused with InsufficientFunds, as a real exchange refuses them.
REAL_KEY = "ek-test-real-account-key"
REAL_SECRET = "ek-test-real-account-secret"
REAL_KEY_ENV = "EK_TEST_REAL_KEY"
REAL_SECRET_ENV = "EK_TEST_REAL_SECRET"
# "paper-fresh" has a key of its own: its account sync follows its own user-data stream, which
# then neither sees nor takes up the stream faults that tests of "paper"'s stream inject.
FRESH_KEY = "ek-test-fresh-account-key"
FRESH_SECRET = "ek-test-fresh-account-secret"
FRESH_KEY_ENV = "EK_TEST_FRESH_KEY"
FRESH_SECRET_ENV = "EK_TEST_FRESH_SECRET"
REAL_BALANCES = {
    "USDT": Decimal("2000"),
    "BTC": Decimal("0.05"),
    "ETH": Decimal("1"),
    "SOL": Decimal("10"),
}


@dataclass
class Paper:
    """The paper exchange under test, with its admin API."""

    base_url: str
    session: aiohttp.ClientSession
    server: Any

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method, f"{self.base_url}/sim/v1/{path}", json=body
        ) as response:
            response.raise_for_status()
            return await response.json()

    async def move_price(self, symbol: str, price: str, volume: str | None = None) -> Any:
        body: dict[str, str] = {"symbol": symbol.replace("/", ""), "price": price}
        if volume is not None:
            body["volume"] = volume
        return await self.admin("POST", "price", body)

    async def orders(self) -> list[dict[str, Any]]:
        data = await self.admin("GET", "orders")
        return data["orders"] if isinstance(data, dict) else data

    async def orders_of(self, client_order_prefix: str) -> list[dict[str, Any]]:
        return [
            o
            for o in await self.orders()
            if str(o.get("client_order_id", o.get("clientOrderId", ""))).startswith(
                client_order_prefix
            )
        ]

    async def faults(self, **settings: Any) -> Any:
        return await self.admin("POST", "faults", settings)


def paper_accounts(base_url: str) -> dict[str, AccountConfig]:
    os.environ[TEST_KEY_ENV] = DEMO_API_KEY
    os.environ[TEST_SECRET_ENV] = DEMO_SECRET
    os.environ[REAL_KEY_ENV] = REAL_KEY
    os.environ[REAL_SECRET_ENV] = REAL_SECRET
    os.environ[FRESH_KEY_ENV] = FRESH_KEY
    os.environ[FRESH_SECRET_ENV] = FRESH_SECRET
    common = {"exchange": "binance", "api_key_env": TEST_KEY_ENV, "secret_env": TEST_SECRET_ENV}
    return {
        # native amend (opted in): ccxt's binance edits with cancelReplace
        "paper": AccountConfig(name="paper", base_url=base_url, native_amend=True, **common),
        # with a pre-trade limit from the accounts file; no user-data stream (when a test starts
        # its account sync, REST alone observes it, as on exchanges without a stream)
        "paper-limited": AccountConfig(
            name="paper-limited",
            base_url=base_url,
            max_notional_per_intent=Decimal("1000"),
            user_stream=False,
            **common,
        ),
        # the cancel -> confirm -> place path, for exchanges without an edit
        "paper-replace": AccountConfig(
            name="paper-replace",
            base_url=base_url,
            options={"has": {"editOrder": False}},
            **common,
        ),
        # observed by an account sync that a test starts itself, with its own staleness bound
        # (tests/test_freshness.py); the session's "paper" sync keeps the defaults
        "paper-fresh": AccountConfig(
            name="paper-fresh",
            base_url=base_url,
            exchange="binance",
            api_key_env=FRESH_KEY_ENV,
            secret_env=FRESH_SECRET_ENV,
        ),
        # stops held by the workflow (watching the price, then a market/limit order), although
        # the paper exchange takes stop-limit orders itself
        "paper-held": AccountConfig(
            name="paper-held",
            base_url=base_url,
            held_stops=True,
            **common,
        ),
        # modest balances (REAL_BALANCES), cancel -> confirm -> place
        "paper-real": AccountConfig(
            name="paper-real",
            base_url=base_url,
            exchange="binance",
            api_key_env=REAL_KEY_ENV,
            secret_env=REAL_SECRET_ENV,
            options={"has": {"editOrder": False}},
        ),
    }


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_local_environment(data_converter=pydantic_data_converter)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def paper() -> AsyncIterator[Paper]:
    async with running_sim(port=0) as server, aiohttp.ClientSession() as session:
        server.exchange.add_account(REAL_KEY, REAL_SECRET, REAL_BALANCES)
        server.exchange.add_account(FRESH_KEY, FRESH_SECRET)
        yield Paper(base_url=server.base_url, session=session, server=server)


@pytest.fixture(scope="session")
async def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
async def worker(temporal_client: Client, paper: Paper) -> AsyncIterator[Any]:
    pool = ExchangePool(paper_accounts(paper.base_url))
    running = build_worker(temporal_client, pool, TASK_QUEUE)
    task = asyncio.create_task(running.run())
    # "paper" is observed by its account sync; "paper-replace" keeps per-intent polling, so
    # both observation paths run in every end-to-end test module.
    await ensure_account_syncs(temporal_client, ["paper"], TASK_QUEUE)
    try:
        yield running
    finally:
        await running.shutdown()
        await task
        await pool.close()
        await _replay_account_syncs(temporal_client)


async def _replay_account_syncs(client: Client) -> None:
    """Replay every account-sync run the session wrote (they live through the whole session,
    across worker restarts and extra workers); a history that does not replay is saved under
    EK_NONDETERMINISM_DIR (default: .pytest_cache/nondeterminism) and fails the session."""
    replayer = Replayer(workflows=[AccountSyncWorkflow], data_converter=pydantic_data_converter)
    out = Path(os.environ.get("EK_NONDETERMINISM_DIR", ".pytest_cache/nondeterminism"))
    bad = []
    # The session worker's syncs (other tests' syncs run on queues of their own, some with
    # bounds patched that a replay here would not have).
    query = f"WorkflowType = 'AccountSync' AND TaskQueue = '{sync_task_queue(TASK_QUEUE)}'"
    async for execution in client.list_workflows(query):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        history = await handle.fetch_history()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{execution.id}-{execution.run_id}.json"
            path.write_text(history.to_json())
            bad.append(f"{path}: {result.replay_failure}")
    # A sync stuck on a nondeterminism error stops observing its account for every test after
    # it: fail the session with the history saved, whichever test met it first.
    assert not bad, "account-sync histories that do not replay:\n" + "\n".join(bad)


@pytest.fixture
async def intents(temporal_client: Client, worker: Any) -> IntentClient:
    return IntentClient(temporal_client, TASK_QUEUE)


@pytest.fixture(autouse=True)
async def _no_faults_left(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "paper" in request.fixturenames:
        paper: Paper = request.getfixturevalue("paper")
        await paper.faults()


async def eventually(what: str, check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    """Poll `check` until it holds; an AssertionError naming `what` after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {within:.0f} s") from None


def dec(value: Any) -> Decimal:
    return Decimal(str(value))
