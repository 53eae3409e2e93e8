"""Stops held by the workflow, where the exchange has no stop order (or the account says
`held_stops = true`): nothing reaches the exchange until the last price crosses the stop, then
a plain market or limit order is placed and reconciled like any other.

End to end on the real stack: the dev server, the worker, ccxt's binance client and the paper
exchange, whose admin API moves the price. The account `paper-held` (tests/conftest.py) holds
every stop although the paper exchange takes stop-limit orders itself.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowExecutionStatus

from exchange_kernel.accounts import AccountConfig, ExchangePool, held_stop_types
from exchange_kernel.client import IntentClient
from exchange_kernel.models import (
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    OrderType,
    intent_digest,
)
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import ensure_account_syncs
from tests.conftest import TEST_KEY_ENV, TEST_SECRET_ENV, Paper
from tests.test_groups import eth_bracket
from tests.test_intents import record_history, resting

HELD = "paper-held"


def stop_intent(
    *,
    type: str = "stop_market",
    side: str = "sell",
    amount: str = "1",
    stop_price: str = "95",
    price: str | None = None,
    symbol: str = "SOL/USDT",
    account: str = HELD,
) -> OrderIntent:
    return OrderIntent(
        intent_id=f"t-held-{uuid.uuid4().hex[:10]}",
        account=account,
        order=OrderSpec(
            symbol=symbol,
            side=side,
            type=type,
            amount=amount,
            price=price,
            stop_price=stop_price,
        ),
    )


def held(state: IntentState) -> bool:
    return state.stop_held and state.reconciliation_status.value == "in_sync"


async def exchange_orders(paper: Paper, intent_id: str) -> list[dict[str, Any]]:
    """Every order the paper exchange ever took with one of the intent's client order ids."""
    return await paper.orders_of(f"ek-{intent_digest(intent_id)}-")


async def ticker_requests(paper: Paper) -> int:
    log = await paper.admin("GET", "requests?limit=0")
    return int(log["counts"].get("GET /api/v3/ticker/24hr", 0))


async def stays_off_the_exchange(paper: Paper, intent_id: str, seconds: float = 1.5) -> None:
    """Polls of the price go by (a second apart) without any order."""
    before = await ticker_requests(paper)
    await asyncio.sleep(seconds)
    assert await ticker_requests(paper) > before, "the held stop is not watching the price"
    assert await exchange_orders(paper, intent_id) == []


async def signalled(handle: Any, name: str) -> bool:
    history = await handle.fetch_history()
    return any(
        e.workflow_execution_signaled_event_attributes.signal_name == name
        for e in history.events
        if e.event_type is EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )


# --- which stops are held: from ccxt's `has`, or the accounts file -------------------------


def test_stop_types_are_held_where_ccxt_reports_no_such_order() -> None:
    assert held_stop_types(ccxt.binance().has) == (OrderType.STOP_MARKET,)
    assert held_stop_types(ccxt.kraken().has) == ()
    everything = (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
    assert held_stop_types(ccxt.bitstamp().has) == everything
    assert held_stop_types(ccxt.gemini().has) == everything  # ccxt says nothing: held
    assert held_stop_types(ccxt.kraken().has, held_stops=True) == everything


async def test_stop_market_is_held_on_binance_which_has_no_spot_stop_market(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("SOL/USDT", "100")
    intent = stop_intent(account="paper")  # not configured to hold: ccxt's binance decides
    await intents.submit(intent)
    state = await intents.wait_for(intent.intent_id, held)
    assert state.rules is not None and state.rules.held_stops == (OrderType.STOP_MARKET,)
    await intents.cancel(intent.intent_id, "done")
    final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
    assert final.status is IntentStatus.CANCELED
    assert await exchange_orders(paper, intent.intent_id) == []


# --- a held stop-market -----------------------------------------------------------------------


async def test_held_stop_reaches_the_exchange_only_when_the_price_crosses(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("SOL/USDT", "100")
    intent = stop_intent()
    await intents.submit(intent)
    state = await intents.wait_for(
        intent.intent_id,
        lambda s: held(s) and bool(s.recent_actions) and s.recent_actions[-1].action != "modify",
    )
    assert state.status is IntentStatus.PENDING and state.placements == ()
    assert state.report()["stop_held"] is True
    watch = state.recent_actions[-1]
    assert watch.action == "watch_price" and "last <= 95" in watch.reason
    await stays_off_the_exchange(paper, intent.intent_id)

    # The Temporal UI: the watch is a pending activity whose last failure is the last price
    # seen; the workflow's current details say what is held.
    handle = intents.temporal.get_workflow_handle(intent.workflow_id)
    [pending] = (await handle.describe()).raw_description.pending_activities
    assert pending.activity_type.name == "watch_price" and pending.attempt > 1
    assert "last price 100.0 of SOL/USDT: held stop not triggered" in pending.last_failure.message
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert "stop held by the workflow" in metadata.current_details
    assert "last <= 95" in metadata.current_details

    await paper.move_price("SOL/USDT", "96")  # lower, not through the stop
    await stays_off_the_exchange(paper, intent.intent_id)

    await paper.move_price("SOL/USDT", "94.5")
    final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
    assert final.status is IntentStatus.FILLED
    assert final.filled == Decimal("1") and final.average_price == Decimal("94.5")
    assert not final.stop_held
    [placement] = final.placements
    assert placement.price is None and placement.stop_price is None
    assert any("held stop triggered (last price 94.5" in a.reason for a in final.recent_actions)
    [order] = await exchange_orders(paper, intent.intent_id)
    assert order["type"] == "MARKET" and order["status"] == "FILLED"

    described = await handle.describe()
    assert described.status is WorkflowExecutionStatus.COMPLETED
    assert "(stop held by the workflow)" in await described.memo_value("summary")
    history = await handle.fetch_history()
    summaries = [
        e.user_metadata.summary.data
        for e in history.events
        if e.event_type is EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert any(b"price of SOL/USDT for held stop @ 95" in s for s in summaries), summaries
    # Looking at the price every second for seconds cost no events: the polls are retries of
    # one pending activity, not history.
    assert len(history.events) <= 45, len(history.events)
    await record_history(intents.temporal, intent, "held_stop_market")


async def test_cancelling_a_held_stop_ends_cancelled_with_no_exchange_order(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("SOL/USDT", "100")
    intent = stop_intent(type="stop_limit", price="94")
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, held)

    # A new stop price is only what the workflow watches: no exchange call.
    changed = await intents.modify(intent.intent_id, stop_price="90")
    assert changed.desired.stop_price == Decimal("90")
    await intents.wait_for(
        intent.intent_id, lambda s: held(s) and "last <= 90" in s.recent_actions[-1].reason
    )
    await paper.move_price("SOL/USDT", "93")  # through the old stop, not the new one
    await stays_off_the_exchange(paper, intent.intent_id)

    await intents.cancel(intent.intent_id, "strategy stopped")
    cancelling = await intents.state(intent.intent_id)
    assert cancelling.cancel_reason == "strategy stopped"
    final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
    assert final.status is IntentStatus.CANCELED
    assert final.outcome_reason == "strategy stopped"
    assert final.placements == () and final.filled == 0
    assert await exchange_orders(paper, intent.intent_id) == []
    await record_history(intents.temporal, intent, "held_stop_cancelled")


HELD_TOGETHER = 12
WINDOW = 4.0


async def test_stops_held_on_one_symbol_share_the_ticker_requests(
    intents: IntentClient, paper: Paper
) -> None:
    """Each held stop polls once a second; a dozen of them on one symbol cost the exchange the
    worker's shared ticker requests (at most two a second), not a dozen a second. The polls
    run on the workflow's queue, not the account's rate-limited one."""
    await paper.move_price("SOL/USDT", "100")
    stops = [stop_intent(stop_price=f"{50 + i}") for i in range(HELD_TOGETHER)]
    await asyncio.gather(*(intents.submit(i) for i in stops))
    for intent in stops:
        await intents.wait_for(intent.intent_id, held)
    await asyncio.sleep(1.5)  # every stop is past its first look, polling at its interval

    before = await ticker_requests(paper)
    await asyncio.sleep(WINDOW)
    per_second = (await ticker_requests(paper) - before) / WINDOW
    # Unshared, a dozen stops polling every second send about 12 a second.
    assert 0 < per_second <= 3, per_second

    handle = intents.temporal.get_workflow_handle(stops[0].workflow_id)
    [pending] = (await handle.describe()).raw_description.pending_activities
    assert pending.activity_type.name == "watch_price" and pending.attempt >= 3
    history = await handle.fetch_history()
    [queue] = [
        e.activity_task_scheduled_event_attributes.task_queue.name
        for e in history.events
        if e.event_type is EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert "-account-" not in queue, queue
    await asyncio.gather(*(intents.cancel(i.intent_id) for i in stops))
    for intent in stops:
        final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
        assert final.status is IntentStatus.CANCELED and final.placements == ()


# --- a bracket whose stop-loss is held --------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "market_stop"),
    # stop-limit held because the account says so; stop-market held because ccxt reports no
    # stop-market order for Binance spot
    [(HELD, False), ("paper", True)],
)
async def test_bracket_stop_loss_is_held_then_released_and_the_take_profit_cancelled(
    intents: IntentClient, paper: Paper, account: str, market_stop: bool
) -> None:
    await paper.move_price("ETH/USDT", "2000")
    gid = f"g-held-{uuid.uuid4().hex[:8]}"
    group = eth_bracket(gid, account, market_stop)
    await intents.submit_group(group)
    await intents.wait_for(group.leg_id("entry"), resting)
    await paper.move_price("ETH/USDT", "1990")
    await intents.resync(group.leg_id("entry"))

    within = timedelta(seconds=30)
    await intents.wait_for(group.leg_id("take_profit"), resting, within=within)
    stop = await intents.wait_for(
        group.leg_id("stop_loss"),
        lambda s: held(s) and s.desired.amount == Decimal("0.999"),
        within=within,
    )
    assert stop.desired.stop_price == Decimal("1900")
    await stays_off_the_exchange(paper, group.leg_id("stop_loss"))

    # Through the stop: released as a limit sell @ 1895, which takes at once at 1898 (or as
    # a market sell).
    await paper.move_price("ETH/USDT", "1898")
    sl = await asyncio.wait_for(intents.result(group.leg_id("stop_loss")), 30)
    assert sl.status is IntentStatus.FILLED and sl.filled == Decimal("0.999")
    [order] = await exchange_orders(paper, group.leg_id("stop_loss"))
    if market_stop:
        assert order["type"] == "MARKET" and sl.average_price == Decimal("1898")
    else:
        assert order["type"] == "LIMIT" and Decimal(str(order["price"])) == Decimal("1895")

    tp = await asyncio.wait_for(intents.result(group.leg_id("take_profit")), 30)
    assert tp.status is IntentStatus.CANCELED and tp.filled == 0
    assert "stop-loss triggered" in (tp.outcome_reason or "")
    final = await asyncio.wait_for(intents.group_result(gid), 30)
    assert final.overfill == {}


# --- the kill switch reaches held stops -------------------------------------------------------

HALT_QUEUE = "exchange-kernel-held-halt"
HALT_ACCOUNT = "paper-held-halt"


async def test_kill_switch_cancels_a_held_stop(
    temporal_client: Client, paper: Paper, worker: object
) -> None:
    """A held stop has no exchange order, yet it registers with its account's sync, so that
    `halt --cancel-all` cancels it like any live intent (an account of its own: the halt is
    durable)."""
    intents = IntentClient(temporal_client, HALT_QUEUE)
    config = AccountConfig(
        name=HALT_ACCOUNT,
        api_key_env=TEST_KEY_ENV,
        secret_env=TEST_SECRET_ENV,
        base_url=paper.base_url,
        held_stops=True,
    )
    await paper.move_price("SOL/USDT", "100")
    pool = ExchangePool({HALT_ACCOUNT: config})
    try:
        async with build_worker(temporal_client, pool, HALT_QUEUE):
            await ensure_account_syncs(temporal_client, [HALT_ACCOUNT], HALT_QUEUE)
            intent = stop_intent(account=HALT_ACCOUNT)
            await intents.submit(intent)
            await intents.wait_for(intent.intent_id, held)
            # The sync's first round asks a newly watched intent to look for itself: the
            # watch goes on (a resync changes nothing for a held stop).
            handle = temporal_client.get_workflow_handle(intent.workflow_id)
            async with asyncio.timeout(15):
                for _ in itertools.count():
                    if await signalled(handle, "resync"):
                        break
                    await asyncio.sleep(0.2)
            await stays_off_the_exchange(paper, intent.intent_id)
            state = await intents.state(intent.intent_id)
            assert [a.action for a in state.recent_actions].count("watch_price") == 1

            await intents.halt(HALT_ACCOUNT, "SOL/USDT", cancel_all=True, reason="risk check")
            final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
            assert final.status is IntentStatus.CANCELED
            assert final.outcome_reason == "kill switch: risk check"
            assert await exchange_orders(paper, intent.intent_id) == []
            assert await intents.resume(HALT_ACCOUNT, "SOL/USDT") == {}
    finally:
        await pool.close()
