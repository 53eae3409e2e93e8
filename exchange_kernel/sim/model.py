"""The exchange's vocabulary: sides, order types and statuses, orders, trades, balances.

Names and values are Binance's, so they can go onto the wire unchanged.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.symbols import SymbolSpec

ZERO = Decimal(0)


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    LIMIT_MAKER = "LIMIT_MAKER"
    STOP_LOSS = "STOP_LOSS"
    STOP_LOSS_LIMIT = "STOP_LOSS_LIMIT"
    TAKE_PROFIT = "TAKE_PROFIT"
    TAKE_PROFIT_LIMIT = "TAKE_PROFIT_LIMIT"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class ExecutionType(StrEnum):
    """What happened to an order, as Binance's user-data stream names it (`x`)."""

    NEW = "NEW"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    TRADE = "TRADE"
    EXPIRED = "EXPIRED"


class CancelReplaceMode(StrEnum):
    STOP_ON_FAILURE = "STOP_ON_FAILURE"
    ALLOW_FAILURE = "ALLOW_FAILURE"


OPEN_STATUSES = frozenset({OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED})
# Orders that wait for the last price to reach their stopPrice before they work.
STOP_TYPES = frozenset(
    {
        OrderType.STOP_LOSS,
        OrderType.STOP_LOSS_LIMIT,
        OrderType.TAKE_PROFIT,
        OrderType.TAKE_PROFIT_LIMIT,
    }
)
# Orders with no price of their own: they take at the last price (a stop-market once triggered)
# and never rest.
MARKET_TYPES = frozenset({OrderType.MARKET, OrderType.STOP_LOSS, OrderType.TAKE_PROFIT})
# Stops that fire on a rise for a buy and on a fall for a sell (take-profits the other way).
STOP_LOSS_TYPES = frozenset({OrderType.STOP_LOSS, OrderType.STOP_LOSS_LIMIT})


@dataclass
class Balance:
    free: Decimal = ZERO
    locked: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.free + self.locked


@dataclass
class Account:
    api_key: str
    secret: str
    balances: dict[str, Balance]

    def balance(self, asset: str) -> Balance:
        return self.balances.setdefault(asset, Balance())


@dataclass(frozen=True)
class NewOrder:
    """An order request as the client phrased it (already parsed from the wire)."""

    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal | None = None
    quote_order_qty: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce | None = None
    client_order_id: str | None = None


@dataclass(frozen=True)
class StatusChange:
    status: OrderStatus
    time: int
    seq: int


@dataclass(eq=False)
class Order:
    order_id: int
    client_order_id: str
    account: str
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce | None
    price: Decimal
    stop_price: Decimal
    orig_qty: Decimal
    orig_quote_order_qty: Decimal
    time: int
    status: OrderStatus = OrderStatus.NEW
    executed_qty: Decimal = ZERO
    cummulative_quote_qty: Decimal = ZERO
    update_time: int = 0
    # Binance reports -1 for a stop order that has not triggered yet.
    working_time: int = -1
    # Sequence number at which the order started working: time priority among equal prices.
    priority: int = 0
    reserved_asset: str = ""
    reserved: Decimal = ZERO
    history: list[StatusChange] = field(default_factory=list)
    trade_ids: list[int] = field(default_factory=list)
    # The id of the request that canceled the order (Binance's newClientOrderId of a cancel).
    cancel_client_order_id: str = ""

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_working(self) -> bool:
        return self.is_open and self.working_time >= 0

    @property
    def remaining(self) -> Decimal:
        return self.orig_qty - self.executed_qty


@dataclass(frozen=True)
class Trade:
    trade_id: int
    order_id: int
    client_order_id: str
    account: str
    symbol: str
    side: Side
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_maker: bool


@dataclass(frozen=True)
class Placement:
    order: Order
    fills: list[Trade]


@dataclass(frozen=True)
class CancelReplace:
    cancel_result: str  # SUCCESS | FAILURE
    new_order_result: str  # SUCCESS | FAILURE | NOT_ATTEMPTED
    canceled: Order | None = None
    cancel_error: BinanceError | None = None
    placement: Placement | None = None
    new_order_error: BinanceError | None = None


@dataclass(frozen=True)
class Execution:
    """One change of one order: what an `executionReport` of the user-data stream reports.

    `order` is a copy of the order right after the change (its lists are shared, its fields are
    not), so the event can be rendered later and still say what was true at `time`.
    """

    order: Order
    execution_type: ExecutionType
    execution_id: int
    time: int
    trade: Trade | None = None
    # Binance's "Order reject reason" (`r`): NONE unless the execution type is REJECTED.
    reject_reason: str = "NONE"

    @property
    def account(self) -> str:
        return self.order.account


@dataclass(frozen=True)
class BalancePosition:
    """Free and locked of some assets of one account after a change (`outboundAccountPosition`)."""

    account: str
    time: int
    balances: tuple[tuple[str, Decimal, Decimal], ...]


@dataclass(frozen=True)
class BalanceAdjustment:
    """A balance change that is no trade (the operator set it): Binance's `balanceUpdate`."""

    account: str
    asset: str
    delta: Decimal
    time: int


AccountEvent = Execution | BalancePosition | BalanceAdjustment


@dataclass
class Market:
    spec: SymbolSpec
    last: Decimal
    # Most a single taker order can get from the counterparty; None = unlimited.
    taker_liquidity: Decimal | None = None
    price_history: list[tuple[int, Decimal]] = field(default_factory=list)


@dataclass(frozen=True)
class Stats24h:
    open: Decimal
    high: Decimal
    low: Decimal
    last: Decimal
    volume: Decimal
    quote_volume: Decimal
    last_qty: Decimal
    first_trade_id: int
    last_trade_id: int
    count: int
    open_time: int
    close_time: int


def generate_client_order_id() -> str:
    """An id in the style Binance generates when the client sends none (22 alphanumerics)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(22))
