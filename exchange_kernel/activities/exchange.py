"""Exchange activities: place, amend, cancel and look up one intent's orders, load market rules.

Each activity is idempotent under Temporal's retries: placement looks its deterministic client
order id up before creating anything once a first attempt may have reached the exchange, and
`OrderNotFound` is returned as an observation ("absent") wherever the reconciler can reason
about it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import ccxt
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from exchange_kernel import client_ids
from exchange_kernel.accounts import ExchangePool, held_stop_types
from exchange_kernel.activities.errors import to_application_error
from exchange_kernel.limits import (
    PreTradeLimitExceeded,
    Valuation,
    intent_notional_breach,
    open_notional_breach,
    value_unpriced,
)
from exchange_kernel.models import (
    AmendRequest,
    AmendResult,
    ExchangeOrder,
    ExchangeOrderStatus,
    Fill,
    MarketRequest,
    MarketRules,
    OpenNotionalRequest,
    OrderLookup,
    OrderRequest,
    OrderType,
    PriceSeen,
    PriceWatch,
    ScanRequest,
    Side,
    SyncRequest,
    SyncResult,
    Value,
)
from exchange_kernel.reconcile import VISIBILITY_GRACE, stop_crossed, trigger_condition

T = TypeVar("T")
# ApplicationError type of a held stop's price check that found the stop not crossed yet.
STOP_NOT_TRIGGERED = "StopNotTriggered"


class ExchangeActivities:
    """The activities, bound to the worker's pool of ccxt clients."""

    def __init__(self, pool: ExchangePool, sync_queues: dict[str, str] | None = None) -> None:
        self.pool = pool
        # Per account: the round of the last sync and the open orders it saw then. A cache
        # only: when it does not follow on from the previous round (new or other worker),
        # the round reports every open order id so the workflow can resync what it can't diff.
        self._snapshots: dict[str, tuple[int, dict[str, OpenOrderMark]]] = {}
        # Per account: the task queue only this process polls for sync rounds
        # (`connection.worker_sync_queue`). Each round names it, and the workflow sends the
        # next round there, so rounds keep finding this snapshot however many workers run.
        self._sync_queues = dict(sync_queues or {})
        # Per (account, symbol) with an open-notional limit: held from the sum of the open
        # orders until the new order is created, so this worker's placements on a symbol
        # cannot both pass the check on the same book (other workers still can: docs).
        self._open_notional_locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Per (account, symbol): the last ticker request of the held stops, and when it began
        # (monotonic, and wall clock to compare with a watch's start).
        self._tickers: dict[
            tuple[str, str], tuple[float, datetime, asyncio.Future[dict[str, Any]]]
        ] = {}

    async def _call(self, account: str, call: Callable[[Any], Awaitable[T]]) -> T:
        # Imported here: the worker package imports this module, so a top-level import cycles.
        from exchange_kernel.worker.metrics import ExchangeCallMetrics

        metrics = ExchangeCallMetrics(account, self.pool)
        try:
            client = self.pool.client(account)
            return await call(metrics.counting(client))
        except Exception as exc:
            error = to_application_error(exc, self.pool.last_response_headers(account))
            metrics.failed(error)
            raise error from None

    @activity.defn
    async def load_market(self, request: MarketRequest) -> MarketRules:
        async def call(client: Any) -> MarketRules:
            markets = await client.load_markets()
            market = markets.get(request.symbol)
            if market is None:
                raise ccxt.BadSymbol(f"{client.id} has no market {request.symbol}")
            rules = market_rules(client, market)
            config = self.pool.accounts.get(request.account)
            opted_in = config is not None and config.native_amend
            return rules.model_copy(
                update={
                    "native_amend": rules.native_amend and opted_in,
                    # From ccxt's `has` as the account's client reports it (its options apply).
                    "held_stops": held_stop_types(
                        client.has, config is not None and config.held_stops
                    ),
                    "account_max_notional": config.max_notional_per_intent if config else None,
                    "account_max_open_notional": (
                        config.open_notional_limit(request.symbol) if config else None
                    ),
                    # Client order ids follow this exchange's rules (`client_ids`).
                    "exchange": config.exchange if config else client.id,
                }
            )

        return await self._call(request.account, call)

    async def _shared_ticker(
        self, account: str, symbol: str, max_age: float, not_before: datetime
    ) -> dict[str, Any]:
        """The symbol's ticker, fetched at most once per `max_age` seconds by this worker; the
        callers meanwhile share that request (or its failure, which is then forgotten). Never a
        request begun before `not_before`: a stop must not trigger on a price from before its
        watch began."""
        key = (account, symbol)
        cached = self._tickers.get(key)
        now = time.monotonic()
        if cached is None or now - cached[0] >= max_age or cached[1] < not_before:
            fetched = asyncio.ensure_future(self._call(account, lambda c: c.fetch_ticker(symbol)))
            fetched.add_done_callback(functools.partial(self._forget_failed_ticker, key))
            cached = (now, datetime.now(UTC), fetched)
            self._tickers[key] = cached
        # Shielded: one caller's cancellation (a change arrived) must not cancel the others'.
        return await asyncio.shield(cached[2])

    def _forget_failed_ticker(
        self, key: tuple[str, str], fetched: asyncio.Future[dict[str, Any]]
    ) -> None:
        if fetched.cancelled() or fetched.exception() is not None:  # retrieved: no warning
            cached = self._tickers.get(key)
            if cached is not None and cached[2] is fetched:
                del self._tickers[key]

    @activity.defn
    async def watch_price(self, request: PriceWatch) -> PriceSeen:
        """The last price once it crosses a held stop; until then, fail "not triggered yet".

        Temporal's retries are the polling loop (the attempts of a pending activity are not
        written to the history, so a stop held for a day costs the intent a handful of events).
        The "not triggered" failure asks for the account's poll interval as the next retry
        delay and is benign (no warning log, no failure metric); exchange errors keep the
        exchange retry policy's backoff. The stops held on one symbol share the worker's
        ticker requests (`_shared_ticker`): about two per poll interval, however many.
        """
        config = self.pool.accounts.get(request.account)
        poll = config.held_stop_poll_seconds if config is not None else 1.0
        ticker = await self._shared_ticker(
            request.account,
            request.symbol,
            max_age=poll / 2,
            # When this watch began: its first attempt was scheduled then.
            not_before=activity.info().scheduled_time,
        )
        last = dec(ticker.get("last"))
        if last is not None and stop_crossed(request.side, request.stop_price, last):
            return PriceSeen(price=last, at=timestamp(ticker.get("timestamp")))
        seen = "no last price" if last is None else f"last price {last}"
        raise ApplicationError(
            f"{seen} of {request.symbol}: held stop not triggered "
            f"({trigger_condition(request.side, request.stop_price)})",
            type=STOP_NOT_TRIGGERED,
            next_retry_delay=timedelta(seconds=poll),
            category=ApplicationErrorCategory.BENIGN,
        )

    @activity.defn
    async def place_order(self, request: OrderRequest) -> ExchangeOrder:
        async def call(client: Any) -> ExchangeOrder:
            # A first attempt of a never-tried placement cannot have reached the exchange;
            # every other attempt may have, and must look before it creates.
            if request.may_exist or activity.info().attempt > 1:
                found = await find_visible(client, request.symbol, request.client_order_id)
                if found is not None:
                    return found
            async with self._open_notional_checked(client, request):
                try:
                    created = await client.create_order(*create_args(request))
                except ccxt.InvalidOrder as exc:
                    if "Duplicate order" not in str(exc):
                        raise
                    # It exists (the exchange says so), perhaps not readable yet.
                    found = await find_visible(client, request.symbol, request.client_order_id)
                    if found is None:
                        raise
                    return found
            return await complete(client, created, request)

        return await self._call(request.account, call)

    @activity.defn
    async def amend_order(self, request: AmendRequest) -> AmendResult:
        """Replace an order in one exchange call; report the new order and the old one's end."""
        new = request.order

        async def call(client: Any) -> AmendResult:
            order: ExchangeOrder | None = None
            looked_up = new.may_exist or activity.info().attempt > 1
            if looked_up:
                order = await find_visible(client, new.symbol, new.client_order_id)
            if order is None:
                # The replacement was sized from the fills the workflow knew; if the old order
                # filled since, don't edit: report it, and the workflow re-plans from the truth.
                current = await find_order(
                    client, new.symbol, request.replaces_client_order_id, request.replaces_filled
                )
                if current is None or not current.status.is_live:
                    # The old order ended: maybe by this very edit, sent before by a workflow
                    # task that was lost (a reset redoes it). Report the replacement if it exists.
                    if not looked_up:
                        order = await find_visible(client, new.symbol, new.client_order_id)
                    return AmendResult(replaced=current, order=order)
                if current.filled != request.replaces_filled:
                    return AmendResult(replaced=current, order=None)
                symbol, type_, side, amount, price, params = create_args(new)
                replaced = (request.replaces_client_order_id,)
                async with self._open_notional_checked(client, new, exclude=replaced):
                    try:
                        edited = await client.edit_order(
                            request.replaces_exchange_order_id,
                            symbol,
                            type_,
                            side,
                            amount,
                            price,
                            params,
                        )
                        order = await complete(client, edited, new)
                    except (
                        ccxt.OrderNotFound,
                        ccxt.InvalidOrder,
                        ccxt.BadRequest,
                        ccxt.BadResponse,
                    ) as exc:
                        # cancelReplace refuses (Binance -2022/-2021) when the old order ended
                        # (filled, cancelled): observe both instead of guessing.
                        activity.logger.info("amend of %s refused: %s", new.client_order_id, exc)
                        order = await find_visible(client, new.symbol, new.client_order_id)
            replaced = await find_order(client, new.symbol, request.replaces_client_order_id)
            return AmendResult(replaced=replaced, order=order)

        return await self._call(request.account, call)

    @activity.defn
    async def check_open_notional(self, request: OpenNotionalRequest) -> None:
        """Refuse (PreTradeLimitExceeded, non-retryable) if the account's open notional on the
        symbol, without the orders `exclude` and with `notional` added, is above its limit."""

        async def call(client: Any) -> None:
            limit = self._open_notional_limit(request.account, request.symbol)
            if limit is None:
                return
            await refuse_open_notional_breach(
                client, request.symbol, request.notional, limit, request.exclude
            )

        await self._call(request.account, call)

    def _open_notional_limit(self, account: str, symbol: str) -> Decimal | None:
        config = self.pool.accounts.get(account)
        return config.open_notional_limit(symbol) if config is not None else None

    @asynccontextmanager
    async def _open_notional_checked(
        self, client: Any, order: OrderRequest, exclude: tuple[str, ...] = ()
    ) -> AsyncIterator[None]:
        """Run the body (the exchange call that creates `order`) only if the account's open
        notional on the symbol stays within max_open_notional_per_symbol with `order` added,
        and, for an order without a price, its value is within max_notional_per_intent.

        An order without a price (market, stop-market) is valued here, at the last price plus
        a margin (`limits.value_unpriced`): only the activity can read the last price. An
        order with a price was held to max_notional_per_intent by the workflow already
        (`MarketRules.violations`). Not checked: accounts without the limits, and orders that
        do not add to what the intent had resting in the order they replace.
        """
        config = self.pool.accounts.get(order.account)
        intent_limit = config.max_notional_per_intent if config is not None else None
        limit = self._open_notional_limit(order.account, order.symbol)
        valued: str | None = None
        if order.price is not None:
            adding = order.amount * order.price
        elif limit is None and intent_limit is None:
            adding = Decimal(0)
        else:
            valuation = await value_unpriced_order(client, order)
            breach = intent_notional_breach(order.symbol, valuation, intent_limit)
            if breach is not None:
                raise PreTradeLimitExceeded(breach)
            adding, valued = valuation.notional, valuation.text
        if limit is None or adding <= order.replaced_notional:
            yield
            return
        lock = self._open_notional_locks.setdefault((order.account, order.symbol), asyncio.Lock())
        async with lock:
            await refuse_open_notional_breach(client, order.symbol, adding, limit, exclude, valued)
            yield

    @activity.defn
    async def cancel_order(self, request: OrderLookup) -> ExchangeOrder | None:
        """Cancel, then report the order as the exchange has it (None: it has no such order)."""

        async def call(client: Any) -> ExchangeOrder | None:
            try:
                await client.cancel_order(
                    None, request.symbol, {"clientOrderId": request.client_order_id}
                )
            except ccxt.OrderNotFound:
                pass  # already ended or never existed: the lookup below tells which
            # "Not found" right after a cancel may be the exchange's read lag on an order
            # created a moment ago (its fills not final): believed only after the grace.
            return await find_visible(
                client, request.symbol, request.client_order_id, request.known_filled
            )

        return await self._call(request.account, call)

    @activity.defn
    async def fetch_order(self, request: OrderLookup) -> ExchangeOrder | None:
        """The order as the exchange has it now, with its trades; None if it has no such order."""

        async def call(client: Any) -> ExchangeOrder | None:
            return await find_order(
                client, request.symbol, request.client_order_id, request.known_filled
            )

        return await self._call(request.account, call)

    @activity.defn
    async def sync_account(self, request: SyncRequest) -> SyncResult:
        """Observe an account in bulk: what changed since the last round, at a cost per
        round that depends on the number of symbols, not on the number of resting orders."""

        config = self.pool.accounts.get(request.account)
        exchange = config.exchange if config else None

        def ours(client_order_id: str) -> bool:
            # Readable forms by prefix; on an exchange with an opaque form (UUID, 128-bit hex)
            # every id of that shape: the workflow keeps those a known intent claims.
            return client_ids.looks_ours(client_order_id, exchange)

        async def call(client: Any) -> SyncResult:
            previous = self._snapshots.get(request.account)
            cold = previous is None or previous[0] != request.round - 1
            known = {} if cold or previous is None else previous[1]
            sync = SyncRound(client, request, known, ours, beat=activity.heartbeat)
            await sync.run()
            self._snapshots[request.account] = (request.round, sync.snapshot())
            return sync.result(cold, self._sync_queues.get(request.account))

        return await self._call(request.account, call)

    @activity.defn
    async def scan_open_orders(self, request: ScanRequest) -> tuple[ExchangeOrder, ...]:
        """Every open order of the account on these symbols, ours or not."""

        async def call(client: Any) -> tuple[ExchangeOrder, ...]:
            orders: list[ExchangeOrder] = []
            for symbol in request.symbols:
                orders.extend(
                    to_exchange_order(raw) for raw in await client.fetch_open_orders(symbol)
                )
            return tuple(orders)

        return await self._call(request.account, call)

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.scan_open_orders,
            self.sync_account,
            self.load_market,
            self.watch_price,
            self.check_open_notional,
            self.place_order,
            self.amend_order,
            self.cancel_order,
            self.fetch_order,
        ]


# A part of a sync round (one request) is tried this often before the round gives it up and
# reports its symbol failed; transient errors only, the pause between tries doubles from this.
PART_ATTEMPTS = 2
PART_PAUSE = 0.2


class PartFailed(Exception):
    """One part of a sync round could not be read (after its tries)."""


class SyncRound:
    """One round of bulk observation: per symbol, the open orders and the trades since the
    cursor, then a lookup for each order gone from the open list and each order filled
    without being seen open.

    A failed request costs only its own part: the round goes on with the other symbols, the
    failed symbol keeps its marks (orders it knew stay known, so a later round still notices
    them gone) and its cursor (its trades are read again), and `failed_symbols` tells the
    workflow to run the next round soon. Errors that no retry heals (a bad key) fail the
    round as a whole, as before.
    """

    def __init__(
        self,
        client: Any,
        request: SyncRequest,
        known: dict[str, OpenOrderMark],
        ours: Callable[[str], bool],
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.beat = beat  # before each request: the activity's heartbeat
        self.request = request
        self.known = known
        self.ours = ours
        self.cursor = dict(request.trade_cursor)
        self.now_open: dict[str, OpenOrder] = {}
        self.changed: dict[str, ExchangeOrder] = {}
        self.failed: set[str] = set()
        self.failures: list[str] = []
        # Orders whose mark stays as it was (a lookup or its trades failed): looked at again.
        self.kept_marks: dict[str, OpenOrderMark] = {}
        self.unlisted: set[str] = set()  # symbols whose open orders could not be read

    async def part(self, symbol: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
        pause = PART_PAUSE
        for attempt in range(1, PART_ATTEMPTS + 1):
            self.beat()
            try:
                return await call()
            except (ccxt.NetworkError, ccxt.ExchangeNotAvailable) as exc:
                # DDoSProtection (429) is a NetworkError too: not tried again in this round,
                # the account's budget is spent; the next round comes soon enough.
                if attempt == PART_ATTEMPTS or isinstance(exc, ccxt.DDoSProtection):
                    self.failed.add(symbol)
                    self.failures.append(f"{symbol} {what}: {type(exc).__name__}: {exc}"[:200])
                    raise PartFailed(what) from exc
                await asyncio.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    async def run(self) -> None:
        filled_order_ids: dict[str, str] = {}
        cursor_before = dict(self.cursor)
        for symbol in self.request.symbols:
            try:
                listed = await self.part(
                    symbol, "open orders", functools.partial(open_orders, self.client, symbol)
                )
            except PartFailed:
                self.unlisted.add(symbol)
            else:
                for order in listed:
                    if self.ours(order.client_order_id):
                        self.now_open[order.client_order_id] = order
            try:
                trades = await self.part(symbol, "trades", functools.partial(self._trades, symbol))
            except PartFailed:
                continue
            for trade in trades:
                filled_order_ids[str(trade["order"])] = symbol
            if trades:
                self.cursor[symbol] = str(trades[-1]["id"])

        # Only what changed is converted in full: at thousands of resting orders, parsing
        # every one each round would cost the worker a core. A newly watched intent's order
        # that has fills is reported whatever the marks say: an earlier round may have seen
        # those fills before the intent was watched, when nobody could be told.
        fresh = set(self.request.new_digests)
        for client_order_id, listed in self.now_open.items():
            mark = self.known.get(client_order_id)
            if mark is None:
                if listed.filled > 0 or listed.exchange_order_id in filled_order_ids:
                    self.changed[client_order_id] = listed.convert()
            elif (mark.filled, mark.status) != (listed.filled, listed.status) or (
                listed.filled > 0 and client_ids.key_of(client_order_id) in fresh
            ):
                self.changed[client_order_id] = listed.convert()
        # Gone from the open list: one targeted lookup before anyone is told.
        for client_order_id, mark in self.known.items():
            if client_order_id in self.now_open:
                continue
            if mark.symbol in self.unlisted:
                self.kept_marks[client_order_id] = mark  # not read: still as it was
                continue
            try:
                found = await self.part(
                    mark.symbol,
                    "lookup",
                    functools.partial(find_order, self.client, mark.symbol, client_order_id),
                )
            except PartFailed:
                self.kept_marks[client_order_id] = mark
                continue
            if found is not None:
                self.changed[client_order_id] = found
        # Filled since the cursor but never seen open (placed and filled between rounds).
        seen = {o.exchange_order_id for o in (*self.changed.values(), *self.now_open.values())}
        for exchange_order_id, symbol in filled_order_ids.items():
            if exchange_order_id in seen:
                continue
            try:
                raw = await self.part(
                    symbol,
                    "order",
                    functools.partial(self.client.fetch_order, exchange_order_id, symbol),
                )
            except PartFailed:
                # Its trades are read again next round: the cursor goes back for the symbol.
                self.cursor[symbol] = cursor_before.get(symbol, self.cursor[symbol])
                continue
            order = to_exchange_order(raw)
            if self.ours(order.client_order_id):
                self.changed[order.client_order_id] = order
                if order.client_order_id in self.kept_marks:
                    # Its symbol's list was not read, but this is the order as it is now.
                    self._mark_seen(order)
        for client_order_id, order in list(self.changed.items()):
            if order.filled > 0 and not order.fills:
                try:
                    fills = await self.part(
                        order.symbol, "trades", functools.partial(order_fills, self.client, order)
                    )
                except PartFailed:
                    fills = None
                if fills is None or sum((f.amount for f in fills), Decimal(0)) < order.filled:
                    # Its trades could not be read, or not all of them yet (the exchange's
                    # reads lag): told next round instead, whole; its mark stays as it was.
                    del self.changed[client_order_id]
                    self.now_open.pop(client_order_id, None)
                    if client_order_id in self.known:
                        self.kept_marks[client_order_id] = self.known[client_order_id]
                    self.failed.add(order.symbol)
                    continue
                self.changed[client_order_id] = order.model_copy(update={"fills": fills})

    def _mark_seen(self, order: ExchangeOrder) -> None:
        if order.status.is_live:
            self.kept_marks[order.client_order_id] = OpenOrderMark(
                symbol=order.symbol, filled=order.filled, status=order.status
            )
        else:
            del self.kept_marks[order.client_order_id]

    async def _trades(self, symbol: str) -> list[dict[str, Any]]:
        since = self.cursor.get(symbol)
        if since is None:
            # First round for this symbol: start after the newest trade; earlier fills were
            # seen by the intents' own lookups, or are found by the resync that newly watched
            # intents without an open order get (`not_open`).
            newest = await self.client.fetch_my_trades(symbol, None, 1)
            self.cursor[symbol] = str(newest[-1]["id"]) if newest else "0"
            return []
        return await self.client.fetch_my_trades(symbol, None, None, {"fromId": int(since) + 1})

    def snapshot(self) -> dict[str, OpenOrderMark]:
        marks = {
            cid: OpenOrderMark(symbol=o.symbol, filled=o.filled, status=o.status)
            for cid, o in self.now_open.items()
        }
        marks.update(self.kept_marks)
        return marks

    def result(self, cold: bool, worker_queue: str | None) -> SyncResult:
        open_keys = {client_ids.key_of(cid) for cid in self.now_open}
        unread = self.unlisted
        return SyncResult(
            changed=tuple(self.changed.values()),
            not_open=tuple(
                k
                for k in self.request.new_digests
                if k not in open_keys and self.request.new_symbols.get(k) not in unread
            ),
            trade_cursor=self.cursor,
            open_client_order_ids=tuple(self.now_open) if cold else None,
            worker_queue=worker_queue,
            failed_symbols=tuple(sorted(self.failed)),
            failures=tuple(self.failures),
        )


class OpenOrderMark(Value):
    symbol: str
    filled: Decimal
    status: ExchangeOrderStatus


@dataclass(frozen=True)
class OpenOrder:
    """An open order as listed, with what a sync round compares; `convert` gives it in full."""

    client_order_id: str
    exchange_order_id: str
    symbol: str
    filled: Decimal
    status: ExchangeOrderStatus
    convert: Callable[[], ExchangeOrder]


async def open_orders(client: Any, symbol: str) -> list[OpenOrder]:
    """The account's open orders on `symbol`, converted only on demand.

    On Binance spot (and the paper exchange) the exchange's own list is read with ccxt's
    implicit endpoint and parsed per order only when asked: ccxt's `fetch_open_orders` parses
    every order, which at 10,000 open orders takes over a second of the worker's CPU per call.
    Elsewhere it is `fetch_open_orders`, compared on ccxt's unified fields.
    """
    await client.load_markets()
    market = client.market(symbol)
    if client.id == "binance" and market.get("spot") and _spot_account(client.options):
        listed = []
        for raw in await client.privateGetOpenOrders({"symbol": market["id"]}):
            status = client.parse_order_status(raw.get("status"))
            listed.append(
                OpenOrder(
                    client_order_id=str(raw.get("clientOrderId") or ""),
                    exchange_order_id=str(raw["orderId"]),
                    symbol=symbol,
                    filled=dec(raw.get("executedQty")) or Decimal(0),
                    status=STATUS.get(status or "open", ExchangeOrderStatus.OPEN),
                    convert=functools.partial(_parse_order, client, raw, market),
                )
            )
        return listed
    orders = [to_exchange_order(raw) for raw in await client.fetch_open_orders(symbol)]
    return [
        OpenOrder(
            client_order_id=o.client_order_id,
            exchange_order_id=o.exchange_order_id,
            symbol=o.symbol,
            filled=o.filled,
            status=o.status,
            convert=lambda order=o: order,
        )
        for o in orders
    ]


def _spot_account(options: dict[str, Any]) -> bool:
    """The client trades the plain spot account, where ccxt's `fetch_open_orders` reads
    `GET /api/v3/openOrders` too (not margin or portfolio margin, which other options select;
    the market's own `margin` flag only says the symbol allows margin trading)."""
    return (
        options.get("defaultType", "spot") == "spot"
        and not options.get("defaultMarginMode")
        and not options.get("portfolioMargin")
    )


def _parse_order(client: Any, raw: dict[str, Any], market: dict[str, Any]) -> ExchangeOrder:
    return to_exchange_order(client.parse_order(raw, market))


def create_args(request: OrderRequest) -> tuple[str, str, str, str, str | None, dict[str, Any]]:
    params: dict[str, Any] = {"clientOrderId": request.client_order_id}
    market = request.type in (OrderType.MARKET, OrderType.STOP_MARKET)
    if request.post_only:
        # ccxt's unified postOnly alone: it picks the exchange's own form (Binance spot:
        # LIMIT_MAKER, which refuses a timeInForce with -1106; futures: timeInForce GTX). A
        # post-only order is GTC by OrderSpec's rule, so nothing is lost by not sending it.
        params["postOnly"] = True
    elif not market:
        params["timeInForce"] = request.time_in_force.value
    if request.reduce_only:
        params["reduceOnly"] = True
    if request.stop_price is not None:
        params["triggerPrice"] = str(request.stop_price)
    # A stop goes out as ccxt's unified trigger order: its released type + triggerPrice.
    ccxt_type = "market" if market else "limit"
    price = None if request.price is None else str(request.price)
    return (
        request.symbol,
        ccxt_type,
        request.side.value,
        str(request.amount),
        price,
        params,
    )


async def refuse_open_notional_breach(
    client: Any,
    symbol: str,
    adding: Decimal,
    limit: Decimal,
    exclude: tuple[str, ...],
    valued: str | None = None,
) -> None:
    """PreTradeLimitExceeded if the open orders on `symbol` (but `exclude`) plus `adding` are
    above `limit`; `valued` says how `adding` was valued, for an order without a price."""
    resting = await resting_notional(client, symbol, exclude)
    breach = open_notional_breach(symbol, resting, adding, limit, valued)
    if breach is not None:
        raise PreTradeLimitExceeded(breach)


async def value_unpriced_order(client: Any, order: OrderRequest) -> Valuation:
    """A market or stop-market order valued at the last price (+ margin), fetched now;
    PreTradeLimitExceeded when the exchange gives no last price to value it at."""
    ticker = await client.fetch_ticker(order.symbol)
    valuation = value_unpriced(order.amount, dec(ticker.get("last")) or None, order.stop_price)
    if valuation is None:
        raise PreTradeLimitExceeded(
            f"no last price of {order.symbol} to value this market order at: the account's "
            "pre-trade limits cannot be checked"
        )
    return valuation


async def resting_notional(client: Any, symbol: str, exclude: tuple[str, ...] = ()) -> Decimal:
    """Remaining x price over the account's open orders on `symbol`, except `exclude` (client
    order ids). Every open order counts, buys and sells, the kernel's and those placed by hand;
    a stop-market resting on the exchange counts at its stop price; one without any price (a
    market order caught open) cannot be valued and is left out."""
    total = Decimal(0)
    for raw in await client.fetch_open_orders(symbol):
        order = to_exchange_order(raw)
        price = order.price or order.stop_price
        if order.client_order_id in exclude or price is None:
            continue
        total += max(order.remaining, Decimal(0)) * price
    return total


async def find_visible(
    client: Any, symbol: str, client_order_id: str, known_filled: Decimal | None = None
) -> ExchangeOrder | None:
    """Look an order up that may have been created a moment ago (by an earlier attempt, or just
    before a cancel): exchanges' reads lag their writes, so "not found" is believed only
    VISIBILITY_GRACE after this attempt started (every earlier write came before that)."""
    found = await find_order(client, symbol, client_order_id, known_filled)
    if found is not None:
        return found
    started = activity.info().started_time
    waited = datetime.now(UTC) - started if started.tzinfo else timedelta(0)
    if waited < VISIBILITY_GRACE:
        await asyncio.sleep((VISIBILITY_GRACE - waited).total_seconds())
        found = await find_order(client, symbol, client_order_id, known_filled)
    return found


async def find_order(
    client: Any, symbol: str, client_order_id: str, known_filled: Decimal | None = None
) -> ExchangeOrder | None:
    """Look an order up by client order id; its trades too when it filled more than we knew."""
    try:
        raw = await client.fetch_order(None, symbol, {"clientOrderId": client_order_id})
    except ccxt.OrderNotFound:
        return None
    order = to_exchange_order(raw)
    if order.filled > (known_filled or Decimal(0)) and not order.fills:
        order = order.model_copy(update={"fills": await order_fills(client, order)})
    return order


async def complete(client: Any, raw: dict[str, Any], request: OrderRequest) -> ExchangeOrder:
    order = to_exchange_order(raw, request)
    if order.filled > 0 and not order.fills:
        order = order.model_copy(update={"fills": await order_fills(client, order)})
    return order


async def order_fills(client: Any, order: ExchangeOrder) -> tuple[Fill, ...]:
    trades = await client.fetch_my_trades(
        order.symbol, None, None, {"orderId": order.exchange_order_id}
    )
    mine = [t for t in trades if str(t.get("order")) == order.exchange_order_id]
    return tuple(to_fill(t, order) for t in mine)


def dec(value: Any) -> Decimal | None:
    """ccxt hands numbers over as floats; their shortest repr is the exchange's decimal string."""
    if value is None:
        return None
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def timestamp(ms: Any) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


STATUS = {
    "open": ExchangeOrderStatus.OPEN,
    "closed": ExchangeOrderStatus.CLOSED,
    "canceled": ExchangeOrderStatus.CANCELED,
    "expired": ExchangeOrderStatus.EXPIRED,
    "rejected": ExchangeOrderStatus.REJECTED,
}


def to_exchange_order(raw: dict[str, Any], request: OrderRequest | None = None) -> ExchangeOrder:
    amount = dec(raw.get("amount")) or (request.amount if request else Decimal(0))
    filled = dec(raw.get("filled")) or Decimal(0)
    status = STATUS.get(raw.get("status") or "open", ExchangeOrderStatus.OPEN)
    fee = raw.get("fee") or {}
    order = ExchangeOrder(
        exchange_order_id=str(raw["id"]),
        client_order_id=raw.get("clientOrderId") or (request.client_order_id if request else ""),
        symbol=raw.get("symbol") or (request.symbol if request else ""),
        side=raw.get("side") or (request.side if request else Side.BUY),
        type=str(raw.get("type") or ""),
        status=status,
        price=dec(raw.get("price")) or None,
        stop_price=dec(raw.get("triggerPrice") or raw.get("stopPrice")) or None,
        amount=amount,
        filled=filled,
        average_price=dec(raw.get("average")) or None,
        fee=dec(fee.get("cost")) or Decimal(0),
        fee_currency=fee.get("currency"),
        updated_at=timestamp(raw.get("lastUpdateTimestamp") or raw.get("timestamp")),
    )
    trades = raw.get("trades") or []
    fills = tuple(to_fill(t, order) for t in trades if t.get("id") is not None)
    return order.model_copy(update={"fills": fills}) if fills else order


def to_fill(trade: dict[str, Any], order: ExchangeOrder) -> Fill:
    fee = trade.get("fee") or {}
    return Fill(
        trade_id=str(trade["id"]),
        exchange_order_id=order.exchange_order_id,
        client_order_id=order.client_order_id,
        price=dec(trade.get("price")) or Decimal(0),
        amount=dec(trade.get("amount")) or Decimal(0),
        fee=dec(fee.get("cost")) or Decimal(0),
        fee_currency=fee.get("currency"),
        # A create answer's trades carry no time of their own (Binance's FULL response): they
        # happened when the order was taken, its transaction time.
        timestamp=timestamp(trade.get("timestamp")) or order.updated_at,
    )


def market_rules(client: Any, market: dict[str, Any]) -> MarketRules:
    """The symbol's rules as ccxt reports them (binance: PRICE_FILTER, LOT_SIZE, NOTIONAL)."""
    precision = market.get("precision") or {}
    limits = market.get("limits") or {}
    amount_limits = limits.get("amount") or {}
    price_limits = limits.get("price") or {}
    cost_limits = limits.get("cost") or {}

    def positive(value: Any) -> Decimal | None:
        number = dec(value)
        return number if number else None

    has_edit = bool(client.has.get("editOrder"))
    return MarketRules(
        symbol=market["symbol"],
        tick_size=positive(precision.get("price")),
        step_size=positive(precision.get("amount")),
        min_amount=positive(amount_limits.get("min")),
        max_amount=positive(amount_limits.get("max")),
        min_price=positive(price_limits.get("min")),
        max_price=positive(price_limits.get("max")),
        min_notional=positive(cost_limits.get("min")),
        max_notional=positive(cost_limits.get("max")),
        native_amend=has_edit,
    )
