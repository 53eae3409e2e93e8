"""Resilience: no Temporal server, an exchange that is down and comes back, a wrong secret.

Real dev server, real ccxt, paper exchanges over HTTP; each scenario gets its own paper exchange,
worker and task queue, so the exchange's request log counts only what the scenario caused.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import TemporalUnreachable
from exchange_kernel.devserver import free_port
from exchange_kernel.models import (
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    intent_digest,
)
from exchange_kernel.sim import running_sim
from exchange_kernel.sim.admin_client import AdminClient
from exchange_kernel.worker import build_worker
from exchange_kernel.workflows.intent import EXCHANGE_RETRY

KEY = "RESILIENCE-KEY-5d1c"
SECRET = "resilience-secret-93be"
# The network family of ccxt errors: what a stopped exchange must produce (retryable).
NETWORK_ERRORS = {"NetworkError", "ExchangeNotAvailable", "RequestTimeout"}


@asynccontextmanager
async def worker_for(
    client: Client, accounts: dict[str, AccountConfig]
) -> AsyncIterator[IntentClient]:
    """A worker on a task queue of its own, serving `accounts`."""
    task_queue = f"resilience-{uuid.uuid4().hex[:8]}"
    pool = ExchangePool(accounts)
    worker = build_worker(client, pool, task_queue)
    task = asyncio.create_task(worker.run())
    try:
        yield IntentClient(client, task_queue)
    finally:
        await worker.shutdown()
        await task
        await pool.close()


def account(name: str, base_url: str, key_env: str, secret_env: str) -> AccountConfig:
    return AccountConfig(name=name, base_url=base_url, api_key_env=key_env, secret_env=secret_env)


def new_intent(account_name: str, **order: Any) -> OrderIntent:
    spec = {"symbol": "BTC/USDT", "side": "buy", "amount": "0.01", "price": "29000", **order}
    return OrderIntent(
        intent_id=f"res-{uuid.uuid4().hex[:10]}", account=account_name, order=OrderSpec(**spec)
    )


def resting(state: IntentState) -> bool:
    return state.status is IntentStatus.OPEN and state.reconciliation_status.value == "in_sync"


async def orders_of(admin: AdminClient, intent: OrderIntent) -> list[dict[str, Any]]:
    prefix = f"ek-{intent_digest(intent.intent_id)}-"
    return [o for o in await admin.orders() if o["client_order_id"].startswith(prefix)]


# --- (a) no Temporal server -------------------------------------------------------------------


async def test_connect_to_nothing_fails_fast_naming_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TemporalUnreachable) as raised:
        await asyncio.wait_for(IntentClient.connect(address=address), 30)
    elapsed = time.monotonic() - started
    assert address in str(raised.value)
    assert "cannot reach the Temporal server" in str(raised.value)
    assert elapsed < 15, elapsed


async def test_connect_to_something_that_is_not_temporal_fails_fast() -> None:
    """An HTTP/1 server (the paper exchange) where Temporal's gRPC is expected."""
    async with running_sim(port=0) as sim:
        address = f"127.0.0.1:{sim.port}"
        started = time.monotonic()
        with pytest.raises(TemporalUnreachable) as raised:
            await asyncio.wait_for(IntentClient.connect(address=address), 30)
        assert address in str(raised.value)
        assert time.monotonic() - started < 15


@pytest.mark.parametrize("address", ["localhost:99999", "256.1.1.1:7233", "not a host"])
async def test_a_malformed_address_is_refused_naming_it(address: str) -> None:
    with pytest.raises(TemporalUnreachable) as raised:
        await asyncio.wait_for(IntentClient.connect(address=address), 30)
    assert repr(address) in str(raised.value)


def test_the_cli_names_a_malformed_address_instead_of_a_traceback() -> None:
    result = CliRunner().invoke(app, ["status", "some-intent", "--address", "localhost:99999"])
    assert result.exit_code == 1, result.output
    assert "localhost:99999" in result.output
    assert "Traceback" not in result.output


# --- (b) the exchange is down, then back --------------------------------------------------------


async def pending_exchange_call(client: Client, workflow_id: str) -> Any:
    """The intent's pending activity (the exchange call being retried), or None."""
    description = await client.get_workflow_handle(workflow_id).describe()
    pending = description.raw_description.pending_activities
    return pending[0] if pending else None


async def test_worker_retries_while_the_exchange_is_down_and_recovers(
    temporal_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EK_RESILIENCE_KEY", KEY)
    monkeypatch.setenv("EK_RESILIENCE_SECRET", SECRET)
    port = free_port()
    # A paper exchange on a fixed port, stopped before anything is submitted: the intent's
    # first calls find nothing listening.
    async with running_sim(port=port, accounts=[f"{KEY}:{SECRET}"]) as first:
        base_url = first.base_url
    assert first.state.requests.total == 0

    accounts = {"flaky": account("flaky", base_url, "EK_RESILIENCE_KEY", "EK_RESILIENCE_SECRET")}
    async with worker_for(temporal_client, accounts) as intents:
        intent = new_intent("flaky")
        await intents.submit(intent)
        down_since = time.monotonic()

        # The exchange call fails with a network error and is retried (not given up on).
        async with asyncio.timeout(20):
            while True:
                pending = await pending_exchange_call(temporal_client, intent.workflow_id)
                if pending is not None and pending.attempt >= 3:
                    break
                await asyncio.sleep(0.2)
        failure = pending.last_failure
        assert failure.application_failure_info.type in NETWORK_ERRORS, failure
        assert not failure.application_failure_info.non_retryable
        assert f"127.0.0.1:{port}" in failure.message, failure.message
        # ... at the pace of the retry policy (1 s, then doubling), not in a tight loop
        gap = (
            pending.next_attempt_schedule_time.ToDatetime()
            - pending.last_attempt_complete_time.ToDatetime()
        ).total_seconds()
        expected = EXCHANGE_RETRY.initial_interval.total_seconds() * (
            EXCHANGE_RETRY.backoff_coefficient ** (pending.attempt - 2)
        )
        assert expected * 0.9 <= gap <= expected * 1.1 + 0.5, (gap, expected, pending.attempt)
        state = await intents.state(intent.intent_id)
        assert state.status is IntentStatus.PENDING
        assert not state.placements  # still loading the market rules: nothing was sent

        # A few seconds down in all; the attempts stay within what the policy allows.
        await asyncio.sleep(max(0.0, 4 - (time.monotonic() - down_since)))
        pending = await pending_exchange_call(temporal_client, intent.workflow_id)
        attempts_while_down = pending.attempt
        assert 3 <= attempts_while_down <= 4, attempts_while_down  # failed at ~0, ~1, ~3 s
        assert (await intents.state(intent.intent_id)).status is IntentStatus.PENDING

        # Back on the same port (a fresh exchange: nothing of the intent had reached the old one).
        async with (
            running_sim(port=port, accounts=[f"{KEY}:{SECRET}"]) as second,
            AdminClient(second.base_url) as admin,
        ):
            state = await intents.wait_for(intent.intent_id, resting, timedelta(seconds=60))
            assert len(state.placements) == 1
            orders = await orders_of(admin, intent)
            assert len(orders) == 1, orders
            assert orders[0]["status"] == "NEW"
            counts = (await admin.requests())["counts"]
            assert counts.get("POST /api/v3/order") == 1, counts

            # and it goes on to fill like any other intent
            await admin.price("BTCUSDT", "28990")
            await intents.resync(intent.intent_id)
            final = await asyncio.wait_for(intents.result(intent.intent_id), 60)
            assert final.status is IntentStatus.FILLED
            assert final.filled == Decimal("0.01")
            orders = await orders_of(admin, intent)
            assert len(orders) == 1 and orders[0]["status"] == "FILLED", orders


# --- (c) wrong credentials: rejected at once, no retry storm -----------------------------------


@pytest.mark.parametrize(
    ("secret", "key", "reason"),
    [
        ("not-the-secret", KEY, "Signature for this request is not valid"),
        (SECRET, "NOT-REGISTERED-KEY", "Invalid API-key"),
    ],
    ids=["wrong-secret", "unknown-key"],
)
async def test_wrong_credentials_reject_the_intent_after_a_bounded_number_of_requests(
    temporal_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    secret: str,
    key: str,
    reason: str,
) -> None:
    monkeypatch.setenv("EK_RESILIENCE_BAD_KEY", key)
    monkeypatch.setenv("EK_RESILIENCE_BAD_SECRET", secret)
    async with (
        running_sim(port=0, accounts=[f"{KEY}:{SECRET}"]) as sim,
        AdminClient(sim.base_url) as admin,
    ):
        accounts = {
            "badcreds": account(
                "badcreds", sim.base_url, "EK_RESILIENCE_BAD_KEY", "EK_RESILIENCE_BAD_SECRET"
            )
        }
        async with worker_for(temporal_client, accounts) as intents:
            intent = new_intent("badcreds")
            await intents.submit(intent)
            final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
            assert final.status is IntentStatus.REJECTED
            assert "AuthenticationError" in (final.outcome_reason or ""), final.outcome_reason
            assert reason in (final.outcome_reason or ""), final.outcome_reason

            log = await admin.requests()
            signed = [r for r in log["recent"] if r["api_key"] is not None]
            assert log["total"] <= 3, log
            assert len(signed) == 1, log  # one refused placement, not retried
            assert signed[0]["status"] in (400, 401), signed
            assert not await orders_of(admin, intent)

            # nothing keeps knocking: the rejected intent is finished
            await asyncio.sleep(3)
            assert (await admin.requests())["total"] == log["total"]
