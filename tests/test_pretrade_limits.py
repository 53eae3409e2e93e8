"""The pre-trade limit max_open_notional_per_symbol: what an account may have resting on one
symbol (remaining x price over its open orders, plus the new order).

End to end on a paper exchange of its own, so that the book these tests sum is theirs alone:
the real dev server, a worker with the limited accounts, the real ccxt client.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from exchange_kernel.accounts import AccountConfig, AccountConfigError, ExchangePool, load_accounts
from exchange_kernel.client import IntentClient, IntentRejected
from exchange_kernel.limits import (
    intent_notional_breach,
    modify_check,
    open_notional_breach,
    replaced_notional,
    value_unpriced,
)
from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    IntentChange,
    IntentState,
    IntentStatus,
    MarketRules,
    OrderIntent,
    OrderSpec,
    Placement,
    PlacementPhase,
)
from exchange_kernel.sim import binance_client, running_sim
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import WORKFLOWS
from tests.conftest import Paper
from tests.test_intents import exchange_orders, live, new_intent, resting

QUEUE = "exchange-kernel-limits"
KEY, SECRET = "EKLIMITSKEY0000000000", "EKLIMITSSECRET00000000"
KEY_ENV, SECRET_ENV = "EK_TEST_LIMITS_KEY", "EK_TEST_LIMITS_SECRET"
# Both on the same exchange account: one amends natively (Binance cancelReplace), the other
# cancels, confirms and places. One limit for every symbol.
AMEND, REPLACE = "limited", "limited-replace"
# A table: BTC/USDT has its own limit, every other symbol the "*" one.
TABLE = "limited-table"
# max_notional_per_intent = 1000 alone (no open-notional limit).
PER_INTENT = "limited-per-intent"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
LIMIT_NAMED = "above the account's pre-trade limit max_open_notional_per_symbol = 1000"


def limits_accounts(base_url: str) -> dict[str, AccountConfig]:
    os.environ[KEY_ENV], os.environ[SECRET_ENV] = KEY, SECRET
    common: dict[str, Any] = {
        "exchange": "binance",
        "api_key_env": KEY_ENV,
        "secret_env": SECRET_ENV,
        "base_url": base_url,
    }
    return {
        AMEND: AccountConfig(
            name=AMEND, native_amend=True, max_open_notional_per_symbol="1000", **common
        ),
        REPLACE: AccountConfig(
            name=REPLACE,
            options={"has": {"editOrder": False}},
            max_open_notional_per_symbol="1000",
            **common,
        ),
        TABLE: AccountConfig(
            name=TABLE,
            max_open_notional_per_symbol={"BTC/USDT": "1000", "*": "5000"},
            **common,
        ),
        PER_INTENT: AccountConfig(name=PER_INTENT, max_notional_per_intent="1000", **common),
    }


@dataclass
class Stack:
    intents: IntentClient
    paper: Paper
    exchange: Any  # a ccxt client on the same exchange account, for orders placed by hand
    submitted: list[OrderIntent] = field(default_factory=list)

    async def submit(self, intent: OrderIntent) -> OrderIntent:
        self.submitted.append(intent)
        await self.intents.submit(intent)
        return intent

    async def resting(self, intent: OrderIntent) -> IntentState:
        return await self.intents.wait_for(intent.intent_id, resting)

    async def finished(self, intent: OrderIntent) -> IntentState:
        return await asyncio.wait_for(self.intents.result(intent.intent_id), 30)

    async def order_posts(self) -> int:
        """How many order placements reached the exchange (its request log)."""
        log = await self.paper.admin("GET", "requests")
        return int(log["counts"].get("POST /api/v3/order", 0))

    async def by_hand(self, symbol: str, amount: str, price: str) -> None:
        await self.exchange.create_order(symbol, "limit", "buy", amount, price)


@pytest.fixture(scope="module")
async def services(temporal_client: Client) -> AsyncIterator[tuple[IntentClient, Paper, Any]]:
    async with (
        running_sim(port=0, accounts=[f"{KEY}:{SECRET}"]) as sim,
        aiohttp.ClientSession() as session,
    ):
        paper = Paper(base_url=sim.base_url, session=session, server=sim)
        pool = ExchangePool(limits_accounts(sim.base_url))
        exchange = binance_client(sim.base_url, KEY, SECRET)
        try:
            async with build_worker(temporal_client, pool, QUEUE):
                yield IntentClient(temporal_client, QUEUE), paper, exchange
        finally:
            await exchange.close()
            await pool.close()


@pytest.fixture
async def stack(services: tuple[IntentClient, Paper, Any]) -> AsyncIterator[Stack]:
    intents, paper, exchange = services
    for symbol, price in (("BTC/USDT", "30000"), ("ETH/USDT", "2000"), ("SOL/USDT", "100")):
        await paper.move_price(symbol, price)
    stack = Stack(intents=intents, paper=paper, exchange=exchange)
    yield stack
    # Leave an empty book to the next test: its sums must be its own.
    for intent in stack.submitted:
        try:
            await intents.cancel(intent.intent_id)
        except IntentRejected:
            pass  # already finished
        await stack.finished(intent)
    for symbol in SYMBOLS:
        for order in await exchange.fetch_open_orders(symbol):
            await exchange.cancel_order(order["id"], symbol)


# --- submission ---------------------------------------------------------------------------------


async def test_submission_above_open_notional_per_symbol_is_rejected_naming_the_limit(
    stack: Stack,
) -> None:
    first = await stack.submit(new_intent(amount="0.02", price="29000", account=AMEND))  # 580
    await stack.resting(first)

    second = await stack.submit(new_intent(amount="0.02", price="28000", account=AMEND))  # 560
    final = await stack.finished(second)
    assert final.status is IntentStatus.REJECTED
    assert final.outcome_reason == (
        "open notional on BTC/USDT would be 1140 USDT (580 resting + 560 for this intent), "
        f"{LIMIT_NAMED}"
    )
    assert (await stack.intents.state(first.intent_id)).status is IntentStatus.OPEN

    # What fits next to it still goes: 580 + 0.01 x 28000 = 860.
    third = await stack.submit(new_intent(amount="0.01", price="28000", account=AMEND))
    await stack.resting(third)


async def test_a_rejected_submission_sends_no_order_to_the_exchange(stack: Stack) -> None:
    # Orders placed by hand on the account count as much as the kernel's own.
    await stack.by_hand("BTC/USDT", "0.03", "29000")  # 870
    posts = await stack.order_posts()

    intent = await stack.submit(new_intent(amount="0.01", price="29000", account=REPLACE))
    final = await stack.finished(intent)
    assert final.status is IntentStatus.REJECTED
    assert "would be 1160 USDT (870 resting + 290 for this intent)" in (final.outcome_reason or "")
    assert await exchange_orders(stack.paper, intent) == []  # the exchange's order ledger
    assert await stack.order_posts() == posts  # its request log: no placement was even tried
    assert final.placements[0].order is None


async def test_other_symbol_is_not_counted(stack: Stack) -> None:
    btc = await stack.submit(new_intent(amount="0.03", price="29000", account=AMEND))  # 870
    await stack.resting(btc)
    eth = await stack.submit(
        new_intent(symbol="ETH/USDT", amount="0.5", price="1500", account=AMEND)  # 750
    )
    state = await stack.resting(eth)
    assert state.status is IntentStatus.OPEN


async def test_sells_count_as_well_as_buys(stack: Stack) -> None:
    buy = await stack.submit(new_intent(amount="0.02", price="29000", account=AMEND))  # 580
    await stack.resting(buy)
    sell = await stack.submit(
        new_intent(side="sell", amount="0.02", price="31000", account=AMEND)  # 620
    )
    final = await stack.finished(sell)
    assert final.status is IntentStatus.REJECTED
    assert "would be 1200 USDT" in (final.outcome_reason or "")


async def test_a_per_symbol_table_gives_each_symbol_its_limit(stack: Stack) -> None:
    # ETH/USDT is under "*" = 5000: 3000 rests although it is above BTC/USDT's 1000.
    eth = await stack.submit(new_intent(symbol="ETH/USDT", amount="2", price="1500", account=TABLE))
    await stack.resting(eth)
    more = await stack.submit(
        new_intent(symbol="ETH/USDT", amount="1.5", price="1500", account=TABLE)  # 2250
    )
    final = await stack.finished(more)
    assert final.status is IntentStatus.REJECTED
    assert "max_open_notional_per_symbol = 5000" in (final.outcome_reason or "")
    btc = await stack.submit(new_intent(amount="0.04", price="29000", account=TABLE))  # 1160
    final = await stack.finished(btc)
    assert final.status is IntentStatus.REJECTED
    assert LIMIT_NAMED in (final.outcome_reason or "")


# --- orders without a price: market, stop-market (valued at the last price + 5%) ---------------

PER_INTENT_NAMED = "above the account's pre-trade limit max_notional_per_intent = 1000"


async def test_market_buy_above_max_notional_per_intent_is_refused_before_the_exchange(
    stack: Stack,
) -> None:
    posts = await stack.order_posts()
    intent = await stack.submit(
        new_intent(amount="50", price=None, type="market", account=PER_INTENT)
    )
    final = await stack.finished(intent)
    assert final.status is IntentStatus.REJECTED
    assert final.outcome_reason == (
        "notional 1575000 USDT (50 x last price 30000 + 5%) of this market order is "
        f"{PER_INTENT_NAMED}"
    )
    assert await exchange_orders(stack.paper, intent) == []  # the exchange's ledger
    assert await stack.order_posts() == posts  # its request log: nothing was sent


async def test_market_buy_within_max_notional_per_intent_goes_through(stack: Stack) -> None:
    # 0.031 x 30000 = 930, + 5% = 976.5: within 1000.
    intent = await stack.submit(
        new_intent(amount="0.031", price=None, type="market", account=PER_INTENT)
    )
    final = await stack.finished(intent)
    assert final.status is IntentStatus.FILLED
    assert [o["status"] for o in await exchange_orders(stack.paper, intent)] == ["FILLED"]

    # The margin counts: 0.032 x 30000 = 960 would pass without it, 1008 does not.
    refused = await stack.submit(
        new_intent(amount="0.032", price=None, type="market", account=PER_INTENT)
    )
    final = await stack.finished(refused)
    assert final.status is IntentStatus.REJECTED
    assert "notional 1008 USDT (0.032 x last price 30000 + 5%)" in (final.outcome_reason or "")
    assert await exchange_orders(stack.paper, refused) == []


async def test_stop_market_above_max_notional_per_intent_is_refused_with_nothing_sent(
    stack: Stack,
) -> None:
    # Binance spot has no stop-market order: the workflow holds it, and its market order is
    # valued at the last price when the stop triggers.
    posts = await stack.order_posts()
    intent = await stack.submit(
        new_intent(
            amount="0.05", price=None, stop_price="31000", type="stop_market", account=PER_INTENT
        )
    )
    await stack.intents.wait_for(intent.intent_id, lambda s: s.stop_held)
    await stack.paper.move_price("BTC/USDT", "31000")
    final = await stack.finished(intent)
    assert final.status is IntentStatus.REJECTED
    assert final.outcome_reason == (
        "notional 1627.5 USDT (0.05 x last price 31000 + 5%) of this market order is "
        f"{PER_INTENT_NAMED}"
    )
    assert await exchange_orders(stack.paper, intent) == []
    assert await stack.order_posts() == posts


async def test_stop_market_within_max_notional_per_intent_goes_through(stack: Stack) -> None:
    intent = await stack.submit(
        new_intent(
            amount="0.03", price=None, stop_price="31000", type="stop_market", account=PER_INTENT
        )
    )
    await stack.intents.wait_for(intent.intent_id, lambda s: s.stop_held)
    await stack.paper.move_price("BTC/USDT", "31000")  # 0.03 x 31000 + 5% = 976.5
    final = await stack.finished(intent)
    assert final.status is IntentStatus.FILLED
    assert [o["status"] for o in await exchange_orders(stack.paper, intent)] == ["FILLED"]


async def test_market_orders_count_towards_open_notional(stack: Stack) -> None:
    await stack.by_hand("BTC/USDT", "0.03", "29000")  # 870 resting
    posts = await stack.order_posts()
    refused = await stack.submit(
        new_intent(amount="0.01", price=None, type="market", account=AMEND)
    )
    final = await stack.finished(refused)
    assert final.status is IntentStatus.REJECTED
    assert final.outcome_reason == (
        "open notional on BTC/USDT would be 1185 USDT (870 resting + 315 for this intent: "
        f"0.01 x last price 30000 + 5%), {LIMIT_NAMED}"
    )
    assert await exchange_orders(stack.paper, refused) == []
    assert await stack.order_posts() == posts

    fits = await stack.submit(new_intent(amount="0.004", price=None, type="market", account=AMEND))
    final = await stack.finished(fits)  # 870 + 126
    assert final.status is IntentStatus.FILLED


# --- modification -------------------------------------------------------------------------------


@pytest.mark.parametrize("account", [AMEND, REPLACE])
async def test_modification_raising_open_notional_is_rejected(stack: Stack, account: str) -> None:
    other = await stack.submit(new_intent(amount="0.02", price="29000", account=account))  # 580
    await stack.resting(other)
    intent = await stack.submit(new_intent(amount="0.01", price="29000", account=account))  # 290
    await stack.resting(intent)
    posts = await stack.order_posts()

    with pytest.raises(IntentRejected) as refused:
        await stack.intents.modify(intent.intent_id, amount="0.02")  # 580 + 580
    assert str(refused.value) == (
        "open notional on BTC/USDT would be 1160 USDT (580 resting + 580 for this intent), "
        f"{LIMIT_NAMED}"
    )
    # Refused before anything changed: the intent and its order on the exchange are as they were.
    state = await stack.intents.state(intent.intent_id)
    assert state.desired.amount == Decimal("0.01") and state.revision == 0
    assert state.status is IntentStatus.OPEN and len(state.placements) == 1
    orders = await exchange_orders(stack.paper, intent)
    assert [(o["amount"], o["status"]) for o in orders] == [("0.01", "NEW")]
    assert await stack.order_posts() == posts

    # A price raised too far is refused just the same (a buy moved up: 0.01 x 45000 = 450).
    with pytest.raises(IntentRejected, match="max_open_notional_per_symbol = 1000"):
        await stack.intents.modify(intent.intent_id, price="45000")
    # A raise that fits is accepted and placed: 580 + 0.014 x 29000 = 986.
    await stack.intents.modify(intent.intent_id, amount="0.014")
    state = await stack.intents.wait_for(
        intent.intent_id, lambda s: resting(s) and s.placements[-1].amount == Decimal("0.014")
    )
    assert len(live(await exchange_orders(stack.paper, intent))) == 1

    # The check is new workflow code (behind workflow.patched): its history replays.
    await stack.intents.cancel(intent.intent_id)
    await stack.finished(intent)
    history = await stack.intents.temporal.get_workflow_handle(intent.workflow_id).fetch_history()
    checks = [
        e
        for e in history.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "check_open_notional"
    ]
    assert len(checks) == 3  # the two refusals and the accepted raise
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


@pytest.mark.parametrize("account", [AMEND, REPLACE])
async def test_modification_reducing_notional_goes_through_over_the_limit(
    stack: Stack, account: str
) -> None:
    intent = await stack.submit(new_intent(amount="0.02", price="29000", account=account))  # 580
    await stack.resting(intent)
    await stack.by_hand("BTC/USDT", "0.02", "29000")  # the book is now 1160, above 1000

    # A buy moved lower, a smaller amount: less at risk, never refused by a risk limit.
    await stack.intents.modify(intent.intent_id, price="28000")
    await stack.intents.wait_for(
        intent.intent_id, lambda s: resting(s) and s.placements[-1].price == Decimal("28000")
    )
    await stack.intents.modify(intent.intent_id, amount="0.015")
    state = await stack.intents.wait_for(
        intent.intent_id, lambda s: resting(s) and s.placements[-1].amount == Decimal("0.015")
    )
    assert state.status is IntentStatus.OPEN
    with pytest.raises(IntentRejected, match="max_open_notional_per_symbol"):
        await stack.intents.modify(intent.intent_id, amount="0.016")


@pytest.mark.parametrize("account", [AMEND, REPLACE])
async def test_signal_modification_raising_open_notional_is_refused_and_the_intent_works_on(
    stack: Stack, account: str
) -> None:
    # A signal cannot answer: the replacement's own check refuses it, the refusal is recorded
    # with the reason, and the intent goes on working at its last accepted revision (placed
    # again if cancel-replace had cancelled it), like any modification the exchange refuses.
    other = await stack.submit(new_intent(amount="0.02", price="29000", account=account))  # 580
    await stack.resting(other)
    intent = await stack.submit(new_intent(amount="0.01", price="29000", account=account))
    await stack.resting(intent)

    await stack.intents.signal_modify(intent.intent_id, amount="0.03")  # 580 + 870
    state = await stack.intents.wait_for(
        intent.intent_id, lambda s: resting(s) and bool(s.refusals)
    )
    assert state.status is IntentStatus.OPEN
    assert state.desired.amount == Decimal("0.01")
    assert "would be 1450 USDT (580 resting + 870 for this intent)" in state.refusals[-1].reason
    assert [o["amount"] for o in live(await exchange_orders(stack.paper, intent))] == ["0.01"]
    assert "0.03" not in [o["amount"] for o in await exchange_orders(stack.paper, intent)]


# --- the accounts file --------------------------------------------------------------------------


def write_accounts(tmp_path: Path, limit_line: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[accounts.main]\napi_key_env = "K"\nsecret_env = "S"\n' + limit_line + "\n",
    )
    return path


@pytest.mark.parametrize(
    ("line", "btc", "eth"),
    [
        ('max_open_notional_per_symbol = "1000.5"', "1000.5", "1000.5"),
        ("max_open_notional_per_symbol = 1000", "1000", "1000"),
        (
            '[accounts.main.max_open_notional_per_symbol]\n"BTC/USDT" = "5000"\n"*" = 1000',
            "5000",
            "1000",
        ),
        ('max_open_notional_per_symbol = { "BTC/USDT" = "5000" }', "5000", None),
        ("", None, None),
    ],
)
def test_open_notional_limit_is_read_from_the_accounts_file(
    tmp_path: Path, line: str, btc: str | None, eth: str | None
) -> None:
    config = load_accounts(write_accounts(tmp_path, line))["main"]
    expected = [None if v is None else Decimal(v) for v in (btc, eth)]
    assert [config.open_notional_limit(s) for s in ("BTC/USDT", "ETH/USDT")] == expected


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("max_open_notional_per_symbol = 1000.5", 'as a string ("1000.5") or an integer'),
        ('max_open_notional_per_symbol = "-5"', "must be a positive number, got -5"),
        ("max_open_notional_per_symbol = 0", "must be a positive number, got 0"),
        ('max_open_notional_per_symbol = "lots"', "'lots' is not a number"),
        ('max_open_notional_per_symbol = "NaN"', "'NaN' is not a finite number"),
        ("max_open_notional_per_symbol = true", "expected a number, got bool"),
        ("max_open_notional_per_symbol = {}", "an empty table"),
        ('max_open_notional_per_symbol = { "btc-usdt" = "5" }', "'btc-usdt' is not a symbol"),
        (
            'max_open_notional_per_symbol = { "BTC/USDT" = 2.5 }',
            "max_open_notional_per_symbol['BTC/USDT']: write the limit as a string",
        ),
    ],
)
def test_a_bad_open_notional_limit_is_a_clear_error(tmp_path: Path, line: str, says: str) -> None:
    with pytest.raises(AccountConfigError) as error:
        load_accounts(write_accounts(tmp_path, line))
    message = str(error.value)
    assert "account 'main'" in message and "max_open_notional_per_symbol" in message
    assert says in message


# --- the arithmetic (pure) ----------------------------------------------------------------------


def test_the_breach_message_names_symbol_figures_and_limit() -> None:
    assert open_notional_breach("ETH/BTC", Decimal("1"), Decimal("0.5"), Decimal("2")) is None
    assert open_notional_breach("ETH/BTC", Decimal("1.5"), Decimal("0.5"), Decimal("2")) is None
    assert open_notional_breach("ETH/BTC", Decimal("1.50"), Decimal("0.75"), Decimal("2")) == (
        "open notional on ETH/BTC would be 2.25 BTC (1.5 resting + 0.75 for this intent), "
        "above the account's pre-trade limit max_open_notional_per_symbol = 2"
    )


def limited_state(**rules: Any) -> IntentState:
    intent = new_intent(amount="0.02", price="29000", account=AMEND)
    return IntentState(
        intent=intent,
        desired=intent.order,
        rules=MarketRules(symbol="BTC/USDT", **rules),
    )


def test_only_changes_raising_the_intents_notional_are_checked() -> None:
    state = limited_state(account_max_open_notional=Decimal("1000"))
    assert modify_check(state, IntentChange(price=Decimal("28000"))) is None
    assert modify_check(state, IntentChange(amount=Decimal("0.01"))) is None
    raised = modify_check(state, IntentChange(amount=Decimal("0.03"), price=Decimal("28000")))
    assert raised is not None and raised.notional == Decimal("840.00")
    assert modify_check(limited_state(), IntentChange(amount=Decimal("0.03"))) is None


def test_a_replacement_is_measured_against_what_the_intent_cancelled() -> None:
    state = limited_state()
    spec: OrderSpec = state.desired
    old = ExchangeOrder(
        exchange_order_id="1",
        client_order_id="a",
        symbol=spec.symbol,
        side=spec.side,
        type="limit",
        status=ExchangeOrderStatus.CANCELED,
        price=spec.price,
        amount=Decimal("0.02"),
        filled=Decimal("0.005"),
    )
    first = Placement(
        number=0, client_order_id="a", revision=0, price=spec.price, amount=old.amount
    )
    second = Placement(
        number=1, client_order_id="b", revision=1, price=spec.price, amount=old.amount
    )
    assert replaced_notional(state, first) == 0
    cancelled = first.model_copy(update={"order": old, "phase": PlacementPhase.CANCELED})
    state = state.model_copy(update={"placements": (cancelled, second)})
    assert replaced_notional(state, second) == Decimal("0.015") * Decimal("29000")
    # Cancelled by someone else: re-placing it (restore) adds what is no longer on the book.
    external = cancelled.model_copy(update={"phase": PlacementPhase.CANCELED_ELSEWHERE})
    assert (
        replaced_notional(state.model_copy(update={"placements": (external, second)}), second) == 0
    )


def test_max_notional_per_intent_applies_on_a_market_without_a_minimum_notional() -> None:
    rules = MarketRules(symbol="BTC/USDT", account_max_notional=Decimal("1000"))
    spec = OrderSpec(symbol="BTC/USDT", side="buy", amount="0.1", price="29000")
    assert rules.violations(spec) == [
        "notional 2900.0 is above the account's pre-trade limit max_notional_per_intent = 1000"
    ]


def test_an_order_without_a_price_is_valued_at_the_last_price_plus_the_margin() -> None:
    market = value_unpriced(Decimal("0.05"), Decimal("30000.0"))
    assert market is not None and market.notional == Decimal("1575")
    assert market.text == "0.05 x last price 30000 + 5%"
    # A stop-market the exchange holds fills around its stop: the higher of the two counts.
    buy_stop = value_unpriced(Decimal("0.05"), Decimal("30000"), stop_price=Decimal("31000"))
    assert buy_stop is not None and buy_stop.text == "0.05 x stop price 31000 + 5%"
    sell_stop = value_unpriced(Decimal("0.05"), Decimal("30000"), stop_price=Decimal("29000"))
    assert sell_stop is not None and sell_stop.price == Decimal("30000")
    assert value_unpriced(Decimal("0.05"), None) is None  # nothing to value it at: refused
    assert intent_notional_breach("BTC/USDT", market, None) is None
    assert intent_notional_breach("BTC/USDT", market, Decimal("1575")) is None
    assert intent_notional_breach("BTC/USDT", market, Decimal("1574.99")) == (
        "notional 1575 USDT (0.05 x last price 30000 + 5%) of this market order is above the "
        "account's pre-trade limit max_notional_per_intent = 1574.99"
    )
