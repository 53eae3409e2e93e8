"""The account sync maps orders back to intents for opaque client order id forms (UUID).

The paper exchange speaks only Binance, whose ids are readable (`ek-<digest>-<n>`): the
end-to-end tests cover that path. Here the real AccountSyncWorkflow runs on the real Temporal dev
server, in the worker's sandbox, for an account on kraken (UUID client order ids); what the
exchange reports is scripted (a stand-in `sync_account` activity) and the intents are stand-ins
that record the signals the sync sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta
from decimal import Decimal

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from exchange_kernel.client_ids import client_order_id_for, key_of
from exchange_kernel.connection import account_task_queue
from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    Side,
    SyncRequest,
    SyncResult,
    WatchRequest,
    account_sync_id,
    workflow_id_for,
)
from exchange_kernel.worker.run import WORKFLOW_RUNNER
from exchange_kernel.workflows.account_sync import AccountSyncStart, AccountSyncWorkflow

EXCHANGE = "kraken"


def order(client_order_id: str, filled: str = "0") -> ExchangeOrder:
    return ExchangeOrder(
        exchange_order_id=client_order_id[:8],
        client_order_id=client_order_id,
        symbol="BTC/USD",
        side=Side.BUY,
        type="limit",
        status=ExchangeOrderStatus.OPEN,
        price=Decimal(100),
        amount=Decimal(1),
        filled=Decimal(filled),
    )


@workflow.defn(name="StandInIntent")
class StandInIntent:
    """Records what the account sync tells it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @workflow.signal
    def observed(self, order: ExchangeOrder) -> None:
        self.seen.append(f"observed {order.client_order_id}")

    @workflow.signal
    def resync(self) -> None:
        self.seen.append("resync")

    @workflow.query
    def signals(self) -> list[str]:
        return self.seen

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


class ScriptedExchange:
    """The exchange's side of the rounds: the open orders and which of them changed."""

    def __init__(self, open_orders: list[ExchangeOrder], changed: list[ExchangeOrder]) -> None:
        self.open_orders = open_orders
        self.changed = changed
        self.requests: list[SyncRequest] = []

    @activity.defn(name="sync_account")
    async def sync_account(self, request: SyncRequest) -> SyncResult:
        self.requests.append(request)
        open_keys = {key_of(o.client_order_id) for o in self.open_orders}
        return SyncResult(
            changed=tuple(self.changed),  # every round: a watch may land after the first
            not_open=tuple(k for k in request.new_digests if k not in open_keys),
        )


async def test_sync_maps_uuid_client_order_ids_to_their_intents(temporal_client: Client) -> None:
    run = uuid.uuid4().hex[:8]
    queue = f"client-ids-sync-{run}"
    a, b, c = (f"uuid-{run}-{name}" for name in "abc")
    # a: placement 0 resting, then its replacement (placement 1) fills.
    # b: watched at placement 3 (after amends); that order changes.
    # c: its order is gone before the first round: told to look for itself.
    a0, a1 = (client_order_id_for(EXCHANGE, a, n) for n in (0, 1))
    b3 = client_order_id_for(EXCHANGE, b, 3)
    foreign = str(uuid.uuid4())  # someone else's order on the account: nobody is told
    exchange = ScriptedExchange(
        open_orders=[order(a0), order(b3), order(foreign)],
        changed=[order(a1, filled="1"), order(b3, filled="0.5"), order(foreign, filled="1")],
    )
    account = f"kraken-{run}"
    workers = [
        Worker(
            temporal_client,
            task_queue=queue,
            workflows=[AccountSyncWorkflow, StandInIntent],
            workflow_runner=WORKFLOW_RUNNER,
        ),
        # the sync schedules its exchange activities on the account's own task queue
        Worker(
            temporal_client,
            task_queue=account_task_queue(queue, account),
            activities=[exchange.sync_account],
        ),
    ]
    async with contextlib.AsyncExitStack() as running:
        for w in workers:
            await running.enter_async_context(w)
        for intent_id in (a, b, c):
            await temporal_client.start_workflow(
                StandInIntent.run, id=workflow_id_for(intent_id), task_queue=queue
            )
        sync = await temporal_client.start_workflow(
            AccountSyncWorkflow.run,
            AccountSyncStart(account=account, interval=timedelta(hours=1)),
            id=account_sync_id(account),
            task_queue=queue,
        )
        try:
            await sync.signal(
                "watch", WatchRequest(intent_id=a, symbol="BTC/USD", exchange=EXCHANGE, placement=0)
            )
            await sync.signal(
                "watch", WatchRequest(intent_id=b, symbol="BTC/USD", exchange=EXCHANGE, placement=3)
            )
            await sync.signal(
                "watch", WatchRequest(intent_id=c, symbol="BTC/USD", exchange=EXCHANGE, placement=0)
            )

            async def signals(intent_id: str) -> list[str]:
                handle = temporal_client.get_workflow_handle(workflow_id_for(intent_id))
                return await handle.query(StandInIntent.signals)

            # Rounds until every intent was told something (a round may start before the last
            # watch lands; the others are then checked in the next one).
            for _ in range(50):
                await sync.signal("sync_now")
                await asyncio.sleep(0.2)
                if all([await signals(i) for i in (a, b, c)]):
                    break
            await sync.signal("sync_now")
            await asyncio.sleep(0.5)  # anything else on its way would land by now
            seen = {i: await signals(i) for i in (a, b, c)}
            assert set(seen[a]) == {f"observed {a1}"}
            assert set(seen[b]) == {f"observed {b3}"}
            assert seen[c] == ["resync"]  # once: when it was new
            # The fresh intents were named by their live ids (UUIDs carry no digest).
            keys = {k for r in exchange.requests for k in r.new_digests}
            assert keys == {a0, b3, client_order_id_for(EXCHANGE, c, 0)}
        finally:
            for intent_id in (a, b, c):
                await temporal_client.get_workflow_handle(workflow_id_for(intent_id)).terminate()
            await sync.terminate()
