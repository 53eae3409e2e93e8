"""The account's user-data stream, pushed to its intents as it arrives.

`follow_user_stream` is one long-running activity per account, started by the account's sync
workflow (so however many workers serve the account, one stream follows it) on the account's
task queue. It subscribes with ccxt.pro (`watch_orders`; the trades of each order come with it,
from ccxt's `myTrades` cache that the same events fill), and signals `observed` to the intent
that owns each changed order, as it changes. Which intent owns a client order id is the sync
workflow's knowledge (the intents it watches); the activity asks it (query `owners`) for ids it
has not met, and remembers the answers.

Nothing here has to be exact: an event can be late, repeated or lost. The intent merges an
observation by trade id and its placement phases never move backwards, so a repeated or late
event changes nothing; a lost one is found by the REST account sync, which runs as a backstop
on a longer interval while the stream is up and at once after every (re)connect (the activity
signals `stream_connected`). The activity heartbeats; a worker that dies takes the stream with
it, and Temporal starts it again on another worker after the heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

import ccxt
from temporalio import activity
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel import client_ids
from exchange_kernel.accounts import ExchangePool, build_stream_client, user_stream_off
from exchange_kernel.activities.exchange import order_fills, to_exchange_order, to_fill
from exchange_kernel.models import ExchangeOrder, StreamRequest, workflow_id_for

log = logging.getLogger(__name__)

# How often the activity heartbeats while the stream is quiet (the workflow's heartbeat
# timeout is a few times this).
HEARTBEAT_EVERY = 1.0
# Pause before reconnecting after the stream was lost, doubling up to the ceiling.
RECONNECT_FIRST = 0.2
RECONNECT_CEILING = 5.0
# Owners remembered per stream (client order id -> intent id); the oldest are forgotten first.
OWNERS_KEPT = 20_000
OWNERS_QUERY_TIMEOUT = timedelta(seconds=2)
# A client order id the sync did not know is not asked about again for this long.
UNKNOWN_RETRY = 1.0


class SyncGone(Exception):
    """The sync run that started this stream has ended (it continued as new: the new run
    follows the stream itself)."""


class StreamActivities:
    """The user-data stream activity, bound to the worker's accounts and Temporal client."""

    def __init__(self, pool: ExchangePool, client: Client) -> None:
        self.pool = pool
        self.client = client

    def all(self) -> list[Any]:
        return [self.follow_user_stream]

    @activity.defn
    async def follow_user_stream(self, request: StreamRequest) -> str:
        """Follow the account's stream until cancelled; returns at once, saying why, when the
        account has none (the sync workflow then observes by REST alone)."""
        config = self.pool.accounts.get(request.account)
        if config is None:
            return f"account {request.account!r} is not configured on this worker"
        off = user_stream_off(config)
        if off is not None:
            return off
        follower = StreamFollower(
            self.client,
            request,
            lambda: build_stream_client(config),
            lambda: self.pool.client(request.account),
        )
        try:
            await follower.run()
        except SyncGone:
            pass
        return "stopped"


class StreamFollower:
    """One account's stream: connect, tell the sync, forward events; reconnect when lost."""

    def __init__(self, client: Client, request: StreamRequest, connect: Any, rest: Any) -> None:
        self.client = client
        self.request = request
        self.connect = connect
        self.rest = rest  # the account's REST client (the worker's, with its rate limiter)
        self.sync = client.get_workflow_handle(request.sync_workflow_id)
        self.owners: dict[str, str] = {}
        # Client order ids the sync said no watched intent owns, and when it said so: not
        # asked about again within UNKNOWN_RETRY (ids of other accounts on the same exchange
        # account, orders placed by hand), so the sync is not queried on every event.
        self.unknown: dict[str, float] = {}
        self.exchange: str | None = None

    async def run(self) -> None:
        pause = RECONNECT_FIRST
        while True:
            exchange = self.connect()
            self.exchange = exchange.id
            try:
                await self._follow(exchange)
            except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
                # Lost (dropped, terminated by the exchange, refused): the REST sync takes over
                # until the stream is back.
                log.warning("user stream of %s lost: %s", self.request.account, exc)
                await self._tell_sync("stream_lost", f"{type(exc).__name__}: {exc}"[:200])
            finally:
                with contextlib.suppress(Exception):
                    await exchange.close()
            await self._sleep_beating(pause)
            pause = min(pause * 2, RECONNECT_CEILING)

    async def _follow(self, exchange: Any) -> None:
        watch = asyncio.ensure_future(exchange.watch_orders())
        try:
            # Subscribed once authenticated: from here on no change is missed, and the REST
            # round the sync runs now covers what happened before.
            await self._beating(exchange.authenticate({"type": "spot"}))
            await self._tell_sync("stream_connected", None)
            while True:
                orders = await self._beating(watch)
                watch = asyncio.ensure_future(exchange.watch_orders())
                await self._forward(exchange, orders)
        finally:
            if not watch.done():
                watch.cancel()
            with contextlib.suppress(BaseException):
                await watch

    async def _beating(self, awaitable: Any) -> Any:
        """Await while heartbeating (a cancel from the workflow arrives through a heartbeat)."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
                if done:
                    return task.result()
                activity.heartbeat()
        finally:
            if not task.done():
                task.cancel()

    async def _sleep_beating(self, seconds: float) -> None:
        await self._beating(asyncio.sleep(seconds))

    async def _forward(self, exchange: Any, raw_orders: list[dict[str, Any]]) -> None:
        observed: dict[str, ExchangeOrder] = {}
        for raw in raw_orders:
            order = to_exchange_order(raw)
            if order.client_order_id and client_ids.looks_ours(
                order.client_order_id, self.exchange
            ):
                observed[order.client_order_id] = order
        if not observed:
            return
        now = asyncio.get_running_loop().time()
        self.unknown = {c: t for c, t in self.unknown.items() if now - t < UNKNOWN_RETRY}
        # A fill or an end is always asked about (its intent may have registered a moment
        # ago); an order merely placed is not asked about again for a while.
        ask = [
            c
            for c, o in observed.items()
            if c not in self.owners
            and (c not in self.unknown or o.filled > 0 or not o.status.is_live)
        ]
        await self._learn_owners(ask)
        for cid in list(observed):
            if cid not in self.owners:
                # No watched intent (yet: it registers once its order rests): its own look
                # or the REST round finds the change.
                self.unknown.setdefault(cid, now)
                del observed[cid]
        await self._send(exchange, observed)
        activity.heartbeat()

    async def _send(self, exchange: Any, observed: dict[str, ExchangeOrder]) -> None:
        sends = []
        for cid, order in observed.items():
            intent_id = self.owners[cid]
            if order.filled > 0:
                complete = await self._with_fills(exchange, order)
                if complete is None:
                    continue  # its trades could not be read: the REST round tells it whole
                order = complete
            sends.append(self._observed(intent_id, order))
        await asyncio.gather(*sends)

    async def _with_fills(self, exchange: Any, order: ExchangeOrder) -> ExchangeOrder | None:
        """The order with every one of its trades: from the stream when they add up to what it
        filled, else (an event was lost, or came before its trade) read over REST. An intent
        must never see a fill amount its trades do not account for: it could end without them."""
        fills = _fills(exchange, order)
        if sum((f.amount for f in fills), Decimal(0)) >= order.filled:
            return order.model_copy(update={"fills": fills})
        try:
            fills = await order_fills(self.rest(), order)
        except (ccxt.NetworkError, ccxt.ExchangeError) as exc:
            log.info("trades of %s not read: %s", order.client_order_id, exc)
            return None
        if sum((f.amount for f in fills), Decimal(0)) < order.filled:
            return None  # the exchange's reads lag: the REST round looks again
        return order.model_copy(update={"fills": fills})

    async def _learn_owners(self, client_order_ids: list[str]) -> None:
        if not client_order_ids:
            return
        try:
            # Bounded: while the sync's worker is gone the query would wait for it, and every
            # event behind this one with it; unknown owners are asked again (`unknown`).
            found = await self.sync.query(
                "owners",
                client_order_ids,
                result_type=dict[str, str],
                rpc_timeout=OWNERS_QUERY_TIMEOUT,
            )
        except (RPCError, WorkflowQueryFailedError) as exc:
            log.warning("owners of %d order(s) unknown: %s", len(client_order_ids), exc)
            return
        self.owners.update(found)
        while len(self.owners) > OWNERS_KEPT:
            del self.owners[next(iter(self.owners))]

    async def _observed(self, intent_id: str, order: ExchangeOrder) -> None:
        handle = self.client.get_workflow_handle(workflow_id_for(intent_id))
        try:
            await handle.signal("observed", order)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            self.owners = {c: i for c, i in self.owners.items() if i != intent_id}

    async def _tell_sync(self, signal: str, arg: str | None) -> None:
        try:
            if arg is None:
                await self.sync.signal(signal)
            else:
                await self.sync.signal(signal, arg)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise SyncGone from exc
            raise


def _fills(exchange: Any, order: ExchangeOrder) -> tuple[Any, ...]:
    """The order's trades that the stream has delivered (ccxt keeps the recent ones)."""
    trades = exchange.myTrades or []
    return tuple(
        to_fill(trade, order)
        for trade in trades
        if str(trade.get("order")) == order.exchange_order_id
    )
