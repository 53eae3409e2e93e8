"""Property: no asset is created or destroyed, whatever orders and price moves come in.

Every fill moves value between an account and the exchange's counterparty, fees move it to the
fee pot; so per asset, accounts' free+locked + fees + counterparty stays at its initial total.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st

from exchange_kernel.sim import Exchange
from exchange_kernel.sim.engine import (
    STOP_TYPES,
    NewOrder,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
    Trade,
)
from exchange_kernel.sim.errors import BinanceError

D = Decimal
ACCOUNTS = ("alice", "bob")
SYMBOLS = ("BTCUSDT", "SOLUSDT")
ZERO = D(0)


@dataclass(frozen=True)
class Place:
    account: str
    symbol: str
    side: Side
    type: OrderType
    tif: TimeInForce
    steps: int  # quantity in lot steps (big enough to hit insufficient balance sometimes)
    passive: bool  # limit price on the resting side of the last price, or through it
    distance: int  # limit price distance from the last price, in 0.5% increments
    stop_offset: int
    by_quote: bool


@dataclass(frozen=True)
class Cancel:
    pick: int


@dataclass(frozen=True)
class Move:
    symbol: str
    offset: int  # new price relative to the last one, in 0.5% increments
    volume_steps: int | None


@dataclass(frozen=True)
class Liquidity:
    symbol: str
    steps: int | None


places = st.builds(
    Place,
    account=st.sampled_from(ACCOUNTS),
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(list(Side)),
    type=st.sampled_from(
        [
            OrderType.LIMIT,
            OrderType.LIMIT_MAKER,
            OrderType.STOP_LOSS_LIMIT,
            OrderType.TAKE_PROFIT_LIMIT,
            OrderType.STOP_LOSS,
            OrderType.TAKE_PROFIT,
            OrderType.MARKET,
        ]
    ),
    tif=st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK]),
    steps=st.one_of(
        st.integers(200, 50_000), st.integers(1, 200), st.integers(1_000_000, 20_000_000)
    ),
    passive=st.booleans(),
    distance=st.integers(0, 6),
    stop_offset=st.integers(-6, 6),
    by_quote=st.booleans(),
)
moves = st.builds(
    Move,
    symbol=st.sampled_from(SYMBOLS),
    offset=st.one_of(st.integers(-8, -1), st.integers(1, 8)),
    volume_steps=st.one_of(st.none(), st.integers(0, 50_000)),
)
cancels = st.builds(Cancel, pick=st.integers(0, 50))
liquidity = st.builds(
    Liquidity,
    symbol=st.sampled_from(SYMBOLS),
    steps=st.one_of(st.none(), st.integers(1, 30_000)),
)
# one_of() would weigh the kinds equally; orders and price moves should dominate.
WEIGHTED = [places] * 5 + [moves] * 3 + [cancels, liquidity]
operations = st.lists(
    st.integers(0, len(WEIGHTED) - 1).flatmap(lambda i: WEIGHTED[i]),
    min_size=10,
    max_size=50,
)


def _priced(exchange: Exchange, symbol: str, offset: int) -> Decimal:
    spec = exchange.spec(symbol)
    raw = exchange.last_price(symbol) * (1 + D(offset) / 200)
    return max(spec.min_price, raw.quantize(spec.tick_size))


def _apply(exchange: Exchange, op: object) -> None:
    if isinstance(op, Place):
        spec = exchange.spec(op.symbol)
        qty = spec.step_size * op.steps
        if op.type is OrderType.MARKET:
            request = NewOrder(
                op.symbol,
                op.side,
                op.type,
                quantity=None if op.by_quote else qty,
                quote_order_qty=(qty * exchange.last_price(op.symbol)).quantize(D("0.01"))
                if op.by_quote
                else None,
            )
        else:
            stop = op.type in STOP_TYPES
            stop_market = op.type in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT)
            below = (op.side is Side.BUY) == op.passive
            request = NewOrder(
                op.symbol,
                op.side,
                op.type,
                quantity=qty,
                price=None
                if stop_market
                else _priced(exchange, op.symbol, -op.distance if below else op.distance),
                stop_price=_priced(exchange, op.symbol, op.stop_offset) if stop else None,
                time_in_force=None if op.type is OrderType.LIMIT_MAKER or stop_market else op.tif,
            )
        exchange.place_order(op.account, request)
    elif isinstance(op, Cancel):
        open_orders = [o for a in ACCOUNTS for o in exchange.open_orders(a)]
        if open_orders:
            order = open_orders[op.pick % len(open_orders)]
            exchange.cancel_order(order.account, order.symbol, order.order_id)
    elif isinstance(op, Move):
        spec = exchange.spec(op.symbol)
        volume = None if op.volume_steps is None else spec.step_size * op.volume_steps
        exchange.set_price(op.symbol, _priced(exchange, op.symbol, op.offset), volume)
    elif isinstance(op, Liquidity):
        spec = exchange.spec(op.symbol)
        exchange.set_taker_liquidity(
            op.symbol, None if op.steps is None else spec.step_size * op.steps
        )


def _check_invariants(exchange: Exchange, initial: dict[str, Decimal]) -> None:
    assert exchange.holdings() == initial

    trades_by_order: dict[int, list[Trade]] = {}
    for trade in exchange.trades:
        trades_by_order.setdefault(trade.order_id, []).append(trade)
    reserved: dict[tuple[str, str], Decimal] = {}
    for order in exchange.orders.values():
        assert ZERO <= order.executed_qty <= order.orig_qty
        assert order.reserved >= ZERO
        trades = trades_by_order.get(order.order_id, [])
        assert sum((t.qty for t in trades), ZERO) == order.executed_qty
        assert sum((t.quote_qty for t in trades), ZERO) == order.cummulative_quote_qty
        assert (order.status is OrderStatus.FILLED) == (order.executed_qty == order.orig_qty)
        if order.is_open:
            key = (order.account, order.reserved_asset)
            reserved[key] = reserved.get(key, ZERO) + order.reserved
        else:
            assert order.reserved == ZERO
        assert [h.seq for h in order.history] == sorted(h.seq for h in order.history)

    for account in exchange.accounts.values():
        for asset, balance in account.balances.items():
            assert balance.free >= ZERO, (account.api_key, asset)
            assert balance.locked >= ZERO, (account.api_key, asset)
            assert balance.locked == reserved.get((account.api_key, asset), ZERO)

    fees: dict[str, Decimal] = dict.fromkeys(exchange.assets, ZERO)
    for trade in exchange.trades:
        assert trade.commission >= ZERO
        fees[trade.commission_asset] += trade.commission
    assert fees == exchange.fees_collected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, fee_bps=st.sampled_from([0, 1, 10, 75]))
def test_no_asset_is_created_or_destroyed(ops: list[object], fee_bps: int) -> None:
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000, 7))
    exchange = Exchange(
        accounts={a: "secret" for a in ACCOUNTS},
        fee_rate=D(fee_bps) / 10_000,
        clock=lambda: next(ticks),
    )
    initial = exchange.holdings()
    for op in ops:
        try:
            _apply(exchange, op)
        except BinanceError as rejected:
            # Rejections are fine; they must be Binance's, and must change nothing (checked
            # by the invariants below).
            assert rejected.code in (-1013, -2010, -1106, -1102), rejected
        _check_invariants(exchange, initial)
    # Visible with --hypothesis-show-statistics: the runs do reach fills and every end state.
    n_trades = len(exchange.trades)
    # Steer generation towards resting orders filled by price moves and towards every end
    # state: that is where reservation bookkeeping can go wrong.
    target(float(sum(t.is_maker for t in exchange.trades)), label="maker fills")
    target(
        float(len({h.status for o in exchange.orders.values() for h in o.history})),
        label="statuses",
    )
    event("trades", "none" if not n_trades else "1-5" if n_trades <= 5 else ">5")
    for status in {h.status for o in exchange.orders.values() for h in o.history}:
        event(f"status reached: {status}")
    if any(t.is_maker for t in exchange.trades):
        event("maker fill")
