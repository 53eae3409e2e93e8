"""The paper exchange: accounts, orders, a moving last price, fills and fees. No HTTP.

Liquidity model: each symbol has a last price that the operator moves (`set_price`). The
exchange itself is the counterparty of every fill:

* an order that crosses the last price when it arrives (MARKET, or a limit through the price)
  takes at the last price (taker);
* a resting order fills at its own limit price (maker) when the operator moves the last price
  through it, in price-time priority, up to the volume the move carries.

Orders never match each other. The counterparty's running position is kept in `counterparty`,
so every unit of every asset is accounted for: per asset,
``sum(free + locked over accounts) + fees_collected + counterparty`` never changes.

Every change of an account (an order's execution, its balances after a change, a balance the
operator set) is handed to the `listeners` as it happens: once per public call that changed
something, per account, in order, the executions first and then the balances they left (what
the user-data stream pushes, `exchange_kernel.sim.user_stream`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from functools import wraps
from typing import Concatenate, ParamSpec, TypeVar

from exchange_kernel.sim import errors
from exchange_kernel.sim.candles import Candle, build_candles
from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.model import (
    MARKET_TYPES,
    OPEN_STATUSES,
    STOP_LOSS_TYPES,
    STOP_TYPES,
    ZERO,
    Account,
    AccountEvent,
    Balance,
    BalanceAdjustment,
    BalancePosition,
    CancelReplace,
    CancelReplaceMode,
    Execution,
    ExecutionType,
    Market,
    NewOrder,
    Order,
    OrderStatus,
    OrderType,
    Placement,
    Side,
    Stats24h,
    StatusChange,
    TimeInForce,
    Trade,
    generate_client_order_id,
)
from exchange_kernel.sim.symbols import DEFAULT_BALANCES, DEFAULT_SYMBOLS, SymbolSpec

# The vocabulary lives in model.py; re-exported so `engine` stays a one-stop import.
__all__ = [
    "MARKET_TYPES",
    "OPEN_STATUSES",
    "STOP_TYPES",
    "Account",
    "AccountEvent",
    "Balance",
    "BalanceAdjustment",
    "BalancePosition",
    "CancelReplace",
    "CancelReplaceMode",
    "Exchange",
    "Execution",
    "ExecutionType",
    "Listener",
    "Market",
    "NewOrder",
    "Order",
    "OrderStatus",
    "OrderType",
    "Placement",
    "Side",
    "Stats24h",
    "StatusChange",
    "TimeInForce",
    "Trade",
    "generate_client_order_id",
]

COMMISSION_QUANTUM = Decimal("0.00000001")
DAY_MS = 86_400_000

# Receives one account's events of one public call: (api key, events in order).
Listener = Callable[[str, list[AccountEvent]], None]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _publishes(
    method: Callable[Concatenate[Exchange, _P], _R],
) -> Callable[Concatenate[Exchange, _P], _R]:
    """Hand the events of a public mutating call to the listeners once it is done.

    Calls nest (cancelReplace cancels and places); only the outermost one publishes, so the
    balances reported are the ones the whole call left.
    """

    @wraps(method)
    def wrapper(self: Exchange, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self._publishing += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._publishing -= 1
            if not self._publishing:
                self._publish()

    return wrapper


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Exchange:
    """In-memory Binance-like spot exchange. Every mutation is synchronous and atomic."""

    def __init__(
        self,
        symbols: Iterable[SymbolSpec] = DEFAULT_SYMBOLS,
        accounts: Mapping[str, str] | None = None,
        fee_rate: Decimal = Decimal("0.001"),
        initial_balances: Mapping[str, Decimal] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.fee_rate = Decimal(fee_rate)
        self._specs = {spec.symbol: spec for spec in symbols}
        self._default_balances = dict(initial_balances or DEFAULT_BALANCES)
        self._account_templates: dict[str, tuple[str, dict[str, Decimal]]] = {
            key: (secret, self._default_balances) for key, secret in (accounts or {}).items()
        }
        self._clock = clock or _wall_clock_ms
        self._last_ms = 0
        # Ids and sequence numbers survive reset() so that no id is ever handed out twice.
        self._next_order_id = 1
        self._next_trade_id = 1
        self._next_execution_id = 1
        self._seq = 0
        self.listeners: list[Listener] = []
        self._publishing = 0
        self._pending: list[AccountEvent] = []
        # api key -> assets whose balance changed in the current call (ordered, no repeats).
        self._touched: dict[str, dict[str, None]] = {}
        self.reset()

    # ------------------------------------------------------------------ setup & state

    def reset(self) -> None:
        """Back to the starting book: initial prices and balances, no orders, no trades."""
        now = self.now()
        self.markets: dict[str, Market] = {
            sym: Market(
                spec=spec, last=spec.initial_price, price_history=[(now, spec.initial_price)]
            )
            for sym, spec in self._specs.items()
        }
        self.accounts: dict[str, Account] = {}
        for key, (secret, balances) in self._account_templates.items():
            self.accounts[key] = self._fresh_account(key, secret, balances)
        self.orders: dict[int, Order] = {}
        self._open: dict[int, Order] = {}
        # (account, symbol, clientOrderId) -> the newest order carrying that id.
        self._by_client_id: dict[tuple[str, str, str], Order] = {}
        self.trades: list[Trade] = []
        self.fees_collected: dict[str, Decimal] = dict.fromkeys(self.assets, ZERO)
        self.counterparty: dict[str, Decimal] = dict.fromkeys(self.assets, ZERO)
        self._pending = []
        self._touched = {}

    def add_account(
        self, api_key: str, secret: str, balances: Mapping[str, Decimal] | None = None
    ) -> Account:
        template = dict(balances) if balances is not None else self._default_balances
        self._account_templates[api_key] = (secret, template)
        account = self._fresh_account(api_key, secret, template)
        self.accounts[api_key] = account
        return account

    def _fresh_account(self, key: str, secret: str, balances: Mapping[str, Decimal]) -> Account:
        return Account(
            api_key=key,
            secret=secret,
            balances={
                asset: Balance(free=Decimal(balances.get(asset, ZERO))) for asset in self.assets
            },
        )

    @property
    def assets(self) -> list[str]:
        seen: dict[str, None] = {}
        for spec in self._specs.values():
            seen[spec.base] = None
            seen[spec.quote] = None
        for asset in self._default_balances:
            seen[asset] = None
        return list(seen)

    @property
    def sequence(self) -> int:
        """Grows with every state change; Binance's `lastUpdateId` in spirit."""
        return self._seq

    @property
    def symbols(self) -> list[SymbolSpec]:
        return list(self._specs.values())

    def spec(self, symbol: str) -> SymbolSpec:
        return self._market(symbol).spec

    def last_price(self, symbol: str) -> Decimal:
        return self._market(symbol).last

    def account(self, api_key: str) -> Account | None:
        return self.accounts.get(api_key)

    def holdings(self) -> dict[str, Decimal]:
        """Per asset: every account's free+locked, plus fees collected, plus counterparty."""
        totals = {
            asset: self.fees_collected[asset] + self.counterparty[asset] for asset in self.assets
        }
        for account in self.accounts.values():
            for asset, bal in account.balances.items():
                totals[asset] = totals.get(asset, ZERO) + bal.total
        return totals

    def set_taker_liquidity(self, symbol: str, qty: Decimal | None) -> None:
        self._market(symbol).taker_liquidity = qty

    def _market(self, symbol: str) -> Market:
        market = self.markets.get(symbol)
        if market is None:
            raise errors.invalid_symbol()
        return market

    def _account(self, api_key: str) -> Account:
        account = self.accounts.get(api_key)
        if account is None:
            raise errors.invalid_api_key()
        return account

    def now(self) -> int:
        # Never let time run backwards inside one order's history.
        self._last_ms = max(self._last_ms, self._clock())
        return self._last_ms

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------------ orders

    @_publishes
    def place_order(self, api_key: str, request: NewOrder) -> Placement:
        """Accept a new order. Every order the exchange ever creates comes through here
        (cancelReplace included), so wrapping this method observes all of them."""
        account = self._account(api_key)
        market, qty = self._validate(request)
        return self._open_order(account, market, request, qty)

    def check_order(self, request: NewOrder) -> None:
        """What POST /api/v3/order/test does: parameter and filter checks, nothing placed."""
        self._validate(request)

    def get_order(
        self,
        api_key: str,
        symbol: str,
        order_id: int | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        self._market(symbol)
        order = self._find(api_key, symbol, order_id, client_order_id)
        if order is None:
            raise errors.order_does_not_exist()
        return order

    @_publishes
    def cancel_order(
        self,
        api_key: str,
        symbol: str,
        order_id: int | None = None,
        client_order_id: str | None = None,
        *,
        cancel_client_order_id: str | None = None,
    ) -> Order:
        """`cancel_client_order_id`: the cancel request's own id (Binance's newClientOrderId),
        kept on the order; one is generated when the caller sends none."""
        self._market(symbol)
        order = self._find(api_key, symbol, order_id, client_order_id)
        # Binance answers "Unknown order sent." for finished orders too, not only missing ones.
        if order is None or not order.is_open:
            raise errors.unknown_order()
        order.cancel_client_order_id = cancel_client_order_id or generate_client_order_id()
        self._finish(order, OrderStatus.CANCELED)
        return order

    @_publishes
    def cancel_open_orders(self, api_key: str, symbol: str) -> list[Order]:
        self._market(symbol)
        targets = self.open_orders(api_key, symbol)
        if not targets:
            raise errors.unknown_order()
        for order in targets:
            order.cancel_client_order_id = generate_client_order_id()
            self._finish(order, OrderStatus.CANCELED)
        return targets

    def open_orders(self, api_key: str, symbol: str | None = None) -> list[Order]:
        if symbol is not None:
            self._market(symbol)
        return sorted(
            (
                o
                for o in self._open.values()
                if o.account == api_key and (symbol is None or o.symbol == symbol)
            ),
            key=lambda o: o.order_id,
        )

    def all_orders(
        self,
        api_key: str,
        symbol: str,
        *,
        order_id: int | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = 500,
    ) -> list[Order]:
        self._market(symbol)
        selected = [
            o
            for o in self.orders.values()
            if o.account == api_key
            and o.symbol == symbol
            and (order_id is None or o.order_id >= order_id)
            and (start_time is None or o.time >= start_time)
            and (end_time is None or o.time <= end_time)
        ]
        # Like myTrades: forwards from orderId/startTime, otherwise the newest orders.
        if order_id is not None or start_time is not None:
            return selected[:limit]
        return selected[-limit:]

    @_publishes
    def cancel_replace(
        self,
        api_key: str,
        request: NewOrder,
        *,
        cancel_order_id: int | None = None,
        cancel_client_order_id: str | None = None,
        mode: CancelReplaceMode = CancelReplaceMode.STOP_ON_FAILURE,
        cancel_new_client_order_id: str | None = None,
    ) -> CancelReplace:
        account = self._account(api_key)
        if cancel_order_id is None and cancel_client_order_id is None:
            raise errors.either_id_mandatory("cancelOrderId", "cancelOrigClientOrderId")
        # A malformed replacement is rejected before anything is canceled, so the caller keeps
        # the resting order; only failures that depend on state happen after the cancel.
        _, qty = self._validate(request)
        canceled: Order | None = None
        cancel_error: BinanceError | None = None
        try:
            canceled = self.cancel_order(
                api_key,
                request.symbol,
                cancel_order_id,
                cancel_client_order_id,
                cancel_client_order_id=cancel_new_client_order_id,
            )
        except BinanceError as exc:
            cancel_error = exc
        if cancel_error is not None and mode is CancelReplaceMode.STOP_ON_FAILURE:
            return CancelReplace("FAILURE", "NOT_ATTEMPTED", cancel_error=cancel_error)
        try:
            placement = self.place_order(account.api_key, request)
        except BinanceError as exc:
            if canceled is not None:
                # Binance's one REJECTED executionReport: the cancel went through, the engine
                # refused the new order.
                self._record_rejection(account, request, qty, exc)
            return CancelReplace(
                "SUCCESS" if canceled else "FAILURE",
                "FAILURE",
                canceled=canceled,
                cancel_error=cancel_error,
                new_order_error=exc,
            )
        return CancelReplace(
            "SUCCESS" if canceled else "FAILURE",
            "SUCCESS",
            canceled=canceled,
            cancel_error=cancel_error,
            placement=placement,
        )

    def my_trades(
        self,
        api_key: str,
        symbol: str,
        *,
        order_id: int | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        from_id: int | None = None,
        limit: int = 500,
    ) -> list[Trade]:
        self._market(symbol)
        selected = [
            t
            for t in self.trades
            if t.account == api_key
            and t.symbol == symbol
            and (order_id is None or t.order_id == order_id)
            and (start_time is None or t.time >= start_time)
            and (end_time is None or t.time <= end_time)
            and (from_id is None or t.trade_id >= from_id)
        ]
        # Binance pages forwards from fromId/startTime, otherwise returns the newest trades.
        if from_id is not None or start_time is not None:
            return selected[:limit]
        return selected[-limit:]

    # ------------------------------------------------------------------ market data

    @_publishes
    def set_price(self, symbol: str, price: Decimal, volume: Decimal | None = None) -> list[Trade]:
        """Move the last price; trigger stops and fill resting orders the move went through."""
        market = self._market(symbol)
        if price <= 0:
            raise ValueError("price must be positive")
        if volume is not None and volume < 0:
            raise ValueError("volume must not be negative")
        now = self.now()
        market.last = price
        market.price_history.append((now, price))
        # The book moved with the price (the counterparty's quotes): a new lastUpdateId.
        self._next_seq()

        on_symbol = sorted(
            (o for o in self._open.values() if o.symbol == symbol), key=lambda o: o.order_id
        )
        triggered = [o for o in on_symbol if not o.is_working and _stop_triggered(o, price)]
        for order in triggered:
            order.working_time = now
            order.update_time = now
            order.priority = self._next_seq()
            # The stop enters the book: reported as NEW again, now working (`w` true).
            self._record(order, ExecutionType.NEW)
        triggered_ids = {o.order_id for o in triggered}

        budget = volume
        trades: list[Trade] = []
        resting = [
            o
            for o in on_symbol
            if o.is_working and o.order_id not in triggered_ids and _crosses(o.side, o.price, price)
        ]
        buys = sorted(
            (o for o in resting if o.side is Side.BUY), key=lambda o: (-o.price, o.priority)
        )
        sells = sorted(
            (o for o in resting if o.side is Side.SELL), key=lambda o: (o.price, o.priority)
        )
        for order in buys + sells:
            if budget is not None and budget <= 0:
                break
            qty = order.remaining if budget is None else min(order.remaining, budget)
            trades.append(self._fill(order, market, qty, order.price, is_maker=True))
            if budget is not None:
                budget -= qty
        # A triggered stop arrives after the move, so it takes at the new price like any
        # crossing limit order would; a stop-market (STOP_LOSS, TAKE_PROFIT) is a MARKET order
        # now: it takes whatever the move leaves and expires the rest.
        for order in triggered:
            if order.type in MARKET_TYPES and not self._reserve_at(order, price):
                self._finish(order, OrderStatus.EXPIRED)
                continue
            if order.type in MARKET_TYPES or _crosses(order.side, order.price, price):
                fills = self._take(order, market, budget)
                trades.extend(fills)
                if budget is not None:
                    budget -= sum((t.qty for t in fills), ZERO)
            self._expire_unfilled_remainder(order)
        return trades

    def book(
        self, symbol: str, limit: int = 100
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Bids and asks: resting orders plus the counterparty quoting around the last price.

        The counterparty shows one tick either side of the last price, so the book has a
        spread like a real one; an arriving order that reaches the last price still takes at
        the last price (the middle of that quote), as documented at the top of this module.
        """
        market = self._market(symbol)
        spec = market.spec
        depth = market.taker_liquidity
        if depth is None:
            depth = spec.market_max_qty
        bids: dict[Decimal, Decimal] = {}
        asks: dict[Decimal, Decimal] = {market.last + spec.tick_size: depth}
        if market.last - spec.tick_size >= spec.min_price:
            bids[market.last - spec.tick_size] = depth
        for order in self._open.values():
            if order.symbol != symbol or not order.is_working:
                continue
            side = bids if order.side is Side.BUY else asks
            side[order.price] = side.get(order.price, ZERO) + order.remaining
        return (
            sorted(bids.items(), key=lambda kv: -kv[0])[:limit],
            sorted(asks.items(), key=lambda kv: kv[0])[:limit],
        )

    def public_trades(
        self,
        symbol: str,
        *,
        from_id: int | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = 500,
    ) -> list[Trade]:
        """Every fill on the symbol, whoever's: the market's public tape (the counterparty is
        the other side of each)."""
        self._market(symbol)
        selected = [
            t
            for t in self.trades
            if t.symbol == symbol
            and (from_id is None or t.trade_id >= from_id)
            and (start_time is None or t.time >= start_time)
            and (end_time is None or t.time <= end_time)
        ]
        if from_id is not None or start_time is not None:
            return selected[:limit]
        return selected[-limit:]

    def candles(
        self,
        symbol: str,
        interval: str,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = 500,
    ) -> list[Candle]:
        """Binance klines from the last-price history and the fills (volume)."""
        market = self._market(symbol)
        return build_candles(
            market.price_history,
            [t for t in self.trades if t.symbol == symbol],
            interval,
            now=self.now(),
            start_time=start_time,
            end_time=end_time,
            limit=limit,
        )

    @_publishes
    def set_balances(
        self, api_key: str, balances: Mapping[str, Decimal], *, at_start: bool = False
    ) -> Account:
        """Set these assets' free balances of one account (the others are left alone).

        The difference comes from (or goes to) the counterparty, so the conservation rule of
        this module still holds. `at_start`: also the balances `reset()` goes back to.
        """
        account = self.accounts.get(api_key)
        if account is None:
            raise ValueError(f"unknown account {api_key!r}")
        unknown = sorted(set(balances) - set(self.assets))
        if unknown:
            raise ValueError(f"unknown assets: {', '.join(unknown)}")
        for asset, amount in balances.items():
            if amount < 0:
                raise ValueError(f"{asset}: a balance must not be negative")
        now = self.now()
        for asset, amount in balances.items():
            balance = account.balance(asset)
            delta = amount - balance.free
            self.counterparty[asset] -= delta
            balance.free = amount
            if delta and self.listeners:
                self._pending.append(BalanceAdjustment(api_key, asset, delta, now))
                self._touch(api_key, asset)
        if at_start:
            secret, template = self._account_templates[api_key]
            self._account_templates[api_key] = (secret, {**template, **balances})
        return account

    def stats_24h(self, symbol: str) -> Stats24h:
        market = self._market(symbol)
        now = self.now()
        since = now - DAY_MS
        history = market.price_history
        open_price = history[0][1]
        for ts, px in history:
            if ts <= since:
                open_price = px
        window = [px for ts, px in history if ts > since] + [open_price]
        trades = [t for t in self.trades if t.symbol == symbol and t.time > since]
        return Stats24h(
            open=open_price,
            high=max(window),
            low=min(window),
            last=market.last,
            volume=sum((t.qty for t in trades), ZERO),
            quote_volume=sum((t.quote_qty for t in trades), ZERO),
            last_qty=trades[-1].qty if trades else ZERO,
            first_trade_id=trades[0].trade_id if trades else -1,
            last_trade_id=trades[-1].trade_id if trades else -1,
            count=len(trades),
            open_time=since,
            close_time=now,
        )

    # ------------------------------------------------------------------ internals

    def _validate(self, request: NewOrder) -> tuple[Market, Decimal]:
        """Static checks, in Binance's order: mandatory/forbidden params, then filters."""
        market = self._market(request.symbol)
        spec = market.spec
        kind = request.type
        if request.quote_order_qty is not None and kind is not OrderType.MARKET:
            raise errors.not_required("quoteOrderQty")
        if kind in MARKET_TYPES and kind is not OrderType.MARKET:
            # STOP_LOSS / TAKE_PROFIT: quantity and stopPrice; released as a MARKET order.
            if request.time_in_force is not None:
                raise errors.not_required("timeInForce")
            if request.price is not None:
                raise errors.not_required("price")
            if request.quantity is None:
                raise errors.mandatory("quantity")
            if request.stop_price is None:
                raise errors.mandatory("stopPrice")
            spec.check_price(request.stop_price)
            spec.check_quantity(request.quantity, market=True)
            spec.check_notional(request.quantity * request.stop_price, market=True)
            return market, request.quantity
        if kind is OrderType.MARKET:
            if request.time_in_force is not None:
                raise errors.not_required("timeInForce")
            if request.price is not None:
                raise errors.not_required("price")
            if request.stop_price is not None:
                raise errors.not_required("stopPrice")
            if request.quantity is None and request.quote_order_qty is None:
                raise errors.either_id_mandatory("quantity", "quoteOrderQty")
            if request.quantity is not None and request.quote_order_qty is not None:
                raise errors.not_required("quoteOrderQty")
            if request.quantity is not None:
                qty = request.quantity
                spec.check_quantity(qty, market=True)
                spec.check_notional(qty * market.last, market=True)
            else:
                assert request.quote_order_qty is not None
                if request.quote_order_qty <= 0:
                    raise errors.invalid_quantity()
                spec.check_notional(request.quote_order_qty, market=True)
                qty = spec.floor_to_step(request.quote_order_qty / market.last)
                spec.check_quantity(qty, market=True)
            return market, qty

        if request.quantity is None:
            raise errors.mandatory("quantity")
        if request.price is None:
            raise errors.mandatory("price")
        if kind is OrderType.LIMIT_MAKER:
            if request.time_in_force is not None:
                raise errors.not_required("timeInForce")
        elif request.time_in_force is None:
            raise errors.mandatory("timeInForce")
        if kind in STOP_TYPES:
            if request.stop_price is None:
                raise errors.mandatory("stopPrice")
        elif request.stop_price is not None:
            raise errors.not_required("stopPrice")
        spec.check_price(request.price)
        if request.stop_price is not None:
            spec.check_price(request.stop_price)
        spec.check_quantity(request.quantity)
        spec.check_notional(request.price * request.quantity)
        return market, request.quantity

    def _open_order(
        self, account: Account, market: Market, request: NewOrder, qty: Decimal
    ) -> Placement:
        """Dynamic checks (state-dependent), reservation, then immediate execution if crossing."""
        spec = market.spec
        kind = request.type
        client_order_id = request.client_order_id or generate_client_order_id()
        if any(
            o.account == account.api_key and o.client_order_id == client_order_id
            for o in self._open.values()
        ):
            raise errors.duplicate_order()
        price = request.price if request.price is not None else ZERO
        stop_price = request.stop_price if request.stop_price is not None else ZERO
        if kind in STOP_TYPES and _triggers(kind, request.side, stop_price, market.last):
            raise errors.would_trigger_immediately()
        crossing = kind is OrderType.MARKET or (
            kind not in STOP_TYPES and _crosses(request.side, price, market.last)
        )
        if kind is OrderType.LIMIT_MAKER and crossing:
            raise errors.would_take()

        if request.side is Side.BUY:
            reserved_asset = spec.quote
            if kind is OrderType.MARKET:
                unit = market.last
            elif kind in MARKET_TYPES:
                # A stop-market buy holds funds at its stop price until it triggers
                # (`_reserve_at` then sets them to the price it takes at).
                unit = stop_price
            else:
                unit = price
            reserved = qty * unit
        else:
            reserved_asset = spec.base
            reserved = qty
        balance = account.balance(reserved_asset)
        if balance.free < reserved:
            raise errors.insufficient_balance()

        now = self.now()
        seq = self._next_seq()
        order = Order(
            order_id=self._next_order_id,
            client_order_id=client_order_id,
            account=account.api_key,
            symbol=spec.symbol,
            side=request.side,
            type=kind,
            time_in_force=request.time_in_force,
            price=price,
            stop_price=stop_price,
            orig_qty=qty,
            orig_quote_order_qty=request.quote_order_qty or ZERO,
            time=now,
            update_time=now,
            working_time=-1 if kind in STOP_TYPES else now,
            priority=seq,
            reserved_asset=reserved_asset,
            reserved=reserved,
            history=[StatusChange(OrderStatus.NEW, now, seq)],
        )
        self._next_order_id += 1
        balance.free -= reserved
        balance.locked += reserved
        self.orders[order.order_id] = order
        self._open[order.order_id] = order
        self._by_client_id[(account.api_key, spec.symbol, client_order_id)] = order
        self._record(order, ExecutionType.NEW)
        self._touch(account.api_key, reserved_asset)

        fills = self._take(order, market, None) if crossing else []
        self._expire_unfilled_remainder(order)
        return Placement(order, fills)

    def _take(self, order: Order, market: Market, budget: Decimal | None) -> list[Trade]:
        available = order.remaining
        if market.taker_liquidity is not None:
            available = min(available, market.taker_liquidity)
        if budget is not None:
            available = min(available, budget)
        if order.time_in_force is TimeInForce.FOK and available < order.remaining:
            return []
        if available <= 0:
            return []
        return [self._fill(order, market, available, market.last, is_maker=False)]

    def _reserve_at(self, order: Order, price: Decimal) -> bool:
        """A triggered stop-market buy: hold its funds at the price it is about to take at,
        as a MARKET buy does; False (nothing changed) when the account cannot cover that."""
        if order.side is not Side.BUY:
            return True
        balance = self.accounts[order.account].balance(order.reserved_asset)
        delta = order.remaining * price - order.reserved
        if delta > balance.free:
            return False
        balance.free -= delta
        balance.locked += delta
        order.reserved += delta
        if delta:
            self._touch(order.account, order.reserved_asset)
        return True

    def _expire_unfilled_remainder(self, order: Order) -> None:
        # MARKET (a triggered stop-market too), IOC and FOK never rest: whatever did not fill
        # on arrival expires.
        if not order.is_working:
            return
        if order.type in MARKET_TYPES or order.time_in_force in (
            TimeInForce.IOC,
            TimeInForce.FOK,
        ):
            self._finish(order, OrderStatus.EXPIRED)

    def _fill(
        self, order: Order, market: Market, qty: Decimal, price: Decimal, *, is_maker: bool
    ) -> Trade:
        spec = market.spec
        account = self.accounts[order.account]
        base = account.balance(spec.base)
        quote = account.balance(spec.quote)
        quote_qty = price * qty
        if order.side is Side.BUY:
            # Funds were reserved at the limit price; a better fill hands the difference back.
            unit_reserved = order.price if order.type not in MARKET_TYPES else price
            release = qty * unit_reserved
            quote.locked -= release
            order.reserved -= release
            quote.free += release - quote_qty
            self.counterparty[spec.quote] += quote_qty
            commission = (qty * self.fee_rate).quantize(COMMISSION_QUANTUM, ROUND_HALF_UP)
            commission_asset = spec.base
            base.free += qty - commission
            self.counterparty[spec.base] -= qty
        else:
            base.locked -= qty
            order.reserved -= qty
            self.counterparty[spec.base] += qty
            commission = (quote_qty * self.fee_rate).quantize(COMMISSION_QUANTUM, ROUND_HALF_UP)
            commission_asset = spec.quote
            quote.free += quote_qty - commission
            self.counterparty[spec.quote] -= quote_qty
        self.fees_collected[commission_asset] += commission

        now = self.now()
        trade = Trade(
            trade_id=self._next_trade_id,
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            account=order.account,
            symbol=order.symbol,
            side=order.side,
            price=price,
            qty=qty,
            quote_qty=quote_qty,
            commission=commission,
            commission_asset=commission_asset,
            time=now,
            is_maker=is_maker,
        )
        self._next_trade_id += 1
        self.trades.append(trade)
        order.trade_ids.append(trade.trade_id)
        order.executed_qty += qty
        order.cummulative_quote_qty += quote_qty
        order.update_time = now
        if order.remaining == 0:
            self._finish(order, OrderStatus.FILLED)
        else:
            self._set_status(order, OrderStatus.PARTIALLY_FILLED)
        self._record(order, ExecutionType.TRADE, trade=trade)
        self._touch(order.account, spec.base)
        self._touch(order.account, spec.quote)
        return trade

    def _finish(self, order: Order, status: OrderStatus) -> None:
        self._set_status(order, status)
        self._open.pop(order.order_id, None)
        if order.reserved:
            balance = self.accounts[order.account].balance(order.reserved_asset)
            balance.locked -= order.reserved
            balance.free += order.reserved
            order.reserved = ZERO
            self._touch(order.account, order.reserved_asset)
        # A fill reports its own FILLED (execution type TRADE); cancels and expiries are theirs.
        if status is not OrderStatus.FILLED:
            self._record(order, ExecutionType(status.value))

    # ------------------------------------------------------------------ events

    def _record(
        self,
        order: Order,
        execution_type: ExecutionType,
        *,
        trade: Trade | None = None,
        reject_reason: str = "NONE",
    ) -> None:
        if not self.listeners:
            return
        execution = Execution(
            order=copy.copy(order),
            execution_type=execution_type,
            execution_id=self._next_execution_id,
            time=self.now(),
            trade=trade,
            reject_reason=reject_reason,
        )
        self._next_execution_id += 1
        self._pending.append(execution)

    def _touch(self, api_key: str, asset: str) -> None:
        if self.listeners:
            self._touched.setdefault(api_key, {})[asset] = None

    def _record_rejection(
        self, account: Account, request: NewOrder, qty: Decimal, error: BinanceError
    ) -> None:
        """The order the engine refused, never stored: only its REJECTED report exists. It
        takes an order id, since Binance's engine numbers an order on arrival."""
        if not self.listeners:
            return
        now = self.now()
        order = Order(
            order_id=self._next_order_id,
            client_order_id=request.client_order_id or generate_client_order_id(),
            account=account.api_key,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            time_in_force=request.time_in_force,
            price=request.price if request.price is not None else ZERO,
            stop_price=request.stop_price if request.stop_price is not None else ZERO,
            orig_qty=qty,
            orig_quote_order_qty=request.quote_order_qty or ZERO,
            time=now,
            status=OrderStatus.REJECTED,
            update_time=now,
            history=[StatusChange(OrderStatus.REJECTED, now, self._next_seq())],
        )
        self._next_order_id += 1
        self._record(order, ExecutionType.REJECTED, reject_reason=errors.reject_reason(error))

    def _publish(self) -> None:
        events, touched = self._pending, self._touched
        self._pending, self._touched = [], {}
        if not self.listeners or not (events or touched):
            return
        by_account: dict[str, list[AccountEvent]] = {}
        for event in events:
            by_account.setdefault(event.account, []).append(event)
        now = self.now()
        for key, assets in touched.items():
            account = self.accounts.get(key)
            if account is None:
                continue
            position = tuple(
                (asset, account.balance(asset).free, account.balance(asset).locked)
                for asset in assets
            )
            by_account.setdefault(key, []).append(BalancePosition(key, now, position))
        for key, account_events in by_account.items():
            for listener in list(self.listeners):
                listener(key, account_events)

    def _set_status(self, order: Order, status: OrderStatus) -> None:
        if order.status is status:
            return
        now = self.now()
        order.status = status
        order.update_time = now
        order.history.append(StatusChange(status, now, self._next_seq()))

    def _find(
        self, api_key: str, symbol: str, order_id: int | None, client_order_id: str | None
    ) -> Order | None:
        if order_id is None and client_order_id is None:
            raise errors.either_id_mandatory()
        if order_id is not None:
            order = self.orders.get(order_id)
            if order is None or order.account != api_key or order.symbol != symbol:
                return None
            # With both ids Binance looks up by orderId and then insists the client id agrees.
            if client_order_id is not None and order.client_order_id != client_order_id:
                return None
            return order
        assert client_order_id is not None
        return self._by_client_id.get((api_key, symbol, client_order_id))


def _crosses(side: Side, limit: Decimal, last: Decimal) -> bool:
    return limit >= last if side is Side.BUY else limit <= last


def _triggers(kind: OrderType, side: Side, stop_price: Decimal, last: Decimal) -> bool:
    # Stop-loss buys and take-profit sells fire on a rise; the other two on a fall.
    rising = (kind in STOP_LOSS_TYPES) == (side is Side.BUY)
    return last >= stop_price if rising else last <= stop_price


def _stop_triggered(order: Order, last: Decimal) -> bool:
    return order.type in STOP_TYPES and _triggers(order.type, order.side, order.stop_price, last)
