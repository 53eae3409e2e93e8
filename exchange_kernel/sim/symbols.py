"""Spot symbols and the trading filters Binance enforces on them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from exchange_kernel.sim import errors

ORDER_TYPES = (
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
)


@dataclass(frozen=True)
class SymbolSpec:
    """One spot market with the filter values Binance publishes in exchangeInfo."""

    symbol: str
    base: str
    quote: str
    initial_price: Decimal
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    max_notional: Decimal = Decimal("9000000")

    def check_price(self, price: Decimal) -> None:
        if price <= 0:
            raise errors.invalid_price()
        if price < self.min_price or price > self.max_price:
            raise errors.filter_failure("PRICE_FILTER")
        if (price - self.min_price) % self.tick_size != 0:
            raise errors.filter_failure("PRICE_FILTER")

    def check_quantity(self, qty: Decimal, *, market: bool = False) -> None:
        if qty <= 0:
            raise errors.invalid_quantity()
        if qty < self.min_qty or qty > self.max_qty or (qty - self.min_qty) % self.step_size != 0:
            raise errors.filter_failure("LOT_SIZE")
        if market and qty > self.market_max_qty:
            raise errors.filter_failure("MARKET_LOT_SIZE")

    def check_notional(self, notional: Decimal, *, market: bool = False) -> None:
        # Binance's NOTIONAL filter: applyMinToMarket=true, applyMaxToMarket=false.
        if notional < self.min_notional:
            raise errors.filter_failure("NOTIONAL")
        if not market and notional > self.max_notional:
            raise errors.filter_failure("NOTIONAL")

    def floor_to_step(self, qty: Decimal) -> Decimal:
        steps = (qty / self.step_size).to_integral_value(rounding=ROUND_FLOOR)
        return (steps * self.step_size).quantize(self.step_size)


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec(
        symbol="BTCUSDT",
        base="BTC",
        quote="USDT",
        initial_price=Decimal("30000"),
        tick_size=Decimal("0.01"),
        min_price=Decimal("0.01"),
        max_price=Decimal("1000000"),
        step_size=Decimal("0.00001"),
        min_qty=Decimal("0.00001"),
        max_qty=Decimal("9000"),
        market_max_qty=Decimal("120"),
        min_notional=Decimal("5"),
    ),
    SymbolSpec(
        symbol="ETHUSDT",
        base="ETH",
        quote="USDT",
        initial_price=Decimal("2000"),
        tick_size=Decimal("0.01"),
        min_price=Decimal("0.01"),
        max_price=Decimal("1000000"),
        step_size=Decimal("0.0001"),
        min_qty=Decimal("0.0001"),
        max_qty=Decimal("9000"),
        market_max_qty=Decimal("2500"),
        min_notional=Decimal("5"),
    ),
    SymbolSpec(
        symbol="SOLUSDT",
        base="SOL",
        quote="USDT",
        initial_price=Decimal("100"),
        tick_size=Decimal("0.01"),
        min_price=Decimal("0.01"),
        max_price=Decimal("10000"),
        step_size=Decimal("0.001"),
        min_qty=Decimal("0.001"),
        max_qty=Decimal("9000000"),
        market_max_qty=Decimal("40000"),
        min_notional=Decimal("5"),
    ),
)

# Generous enough that tests and demos never trip over funding, small enough to stay readable.
DEFAULT_BALANCES: dict[str, Decimal] = {
    "USDT": Decimal("1000000"),
    "BTC": Decimal("100"),
    "ETH": Decimal("1000"),
    "SOL": Decimal("10000"),
}
