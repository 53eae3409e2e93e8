"""The kill switch: halt refuses new risk, cancels still work, cancel-all empties the book,
resume lifts it, and the halt survives a worker restart."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from temporalio.client import Client

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.client import IntentClient, IntentRejected
from exchange_kernel.models import IntentStatus
from exchange_kernel.worker import build_worker
from exchange_kernel.worker.run import ensure_account_syncs
from tests.conftest import TEST_KEY_ENV, TEST_SECRET_ENV, Paper
from tests.test_intents import new_intent, resting

QUEUE = "exchange-kernel-halt"
ACCOUNT = "paper-halt"


def halt_accounts(base_url: str) -> dict[str, AccountConfig]:
    return {
        ACCOUNT: AccountConfig(
            name=ACCOUNT,
            api_key_env=TEST_KEY_ENV,
            secret_env=TEST_SECRET_ENV,
            base_url=base_url,
        )
    }


async def test_halt_refuses_risk_cancel_all_empties_the_book_and_resume_lifts_it(
    temporal_client: Client, paper: Paper, worker: object
) -> None:
    intents = IntentClient(temporal_client, QUEUE)
    await paper.move_price("SOL/USDT", "100")
    pool = ExchangePool(halt_accounts(paper.base_url))
    try:
        async with build_worker(temporal_client, pool, QUEUE):
            await ensure_account_syncs(temporal_client, [ACCOUNT], QUEUE)
            resting_sol = [
                new_intent(symbol="SOL/USDT", amount="1", price=p, account=ACCOUNT)
                for p in ("90", "91")
            ]
            other = new_intent(symbol="ETH/USDT", amount="0.1", price="1500", account=ACCOUNT)
            for intent in (*resting_sol, other):
                await intents.submit(intent)
                await intents.wait_for(intent.intent_id, resting)

            assert await intents.halt(ACCOUNT, "SOL/USDT", reason="risk check") == {
                "SOL/USDT": "risk check"
            }
            assert await intents.halts(ACCOUNT) == {"SOL/USDT": "risk check"}
            with pytest.raises(IntentRejected, match="halted"):
                await intents.submit(
                    new_intent(symbol="SOL/USDT", amount="1", price="89", account=ACCOUNT)
                )
            with pytest.raises(IntentRejected, match="reduce risk"):
                await intents.modify(resting_sol[0].intent_id, amount="2")
            with pytest.raises(IntentRejected, match="reduce risk"):
                await intents.modify(resting_sol[0].intent_id, price="95")  # a buy, higher
            # Risk-reducing changes and other symbols still go through.
            reduced = await intents.modify(resting_sol[0].intent_id, price="85")
            assert reduced.desired.price == Decimal("85")
            await intents.modify(other.intent_id, price="1510")

        # The halt survives the worker: a new worker process sees it.
        async with build_worker(temporal_client, pool, QUEUE):
            assert await intents.halts(ACCOUNT) == {"SOL/USDT": "risk check"}
            await intents.halt(ACCOUNT, "SOL/USDT", cancel_all=True, reason="risk check")
            for intent in resting_sol:
                final = await asyncio.wait_for(intents.result(intent.intent_id), 30)
                assert final.status is IntentStatus.CANCELED
                assert "kill switch" in (final.outcome_reason or "")
            assert (await intents.state(other.intent_id)).status is IntentStatus.OPEN

            assert await intents.resume(ACCOUNT, "SOL/USDT") == {}
            again = new_intent(symbol="SOL/USDT", amount="1", price="89", account=ACCOUNT)
            await intents.submit(again)
            await intents.wait_for(again.intent_id, resting)
            for intent in (again, other):
                await intents.cancel(intent.intent_id)
                await intents.result(intent.intent_id)
    finally:
        await pool.close()
