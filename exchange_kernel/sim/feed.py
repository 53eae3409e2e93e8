"""Markets that move by themselves: a seeded random walk, or OHLCV candles replayed from a file.

Every step moves a last price with `Exchange.set_price`, the call behind the admin API's
`POST /sim/v1/price`, so a step fills crossing resting orders and triggers stops exactly as an
operator's price does. The admin API keeps working alongside: a walk steps from whatever the
last price is, so a price posted by hand is where the next step starts.

Candle files are CSV, one candle per line, columns in ccxt's OHLCV order:

    timestamp,open,high,low,close,volume

`timestamp` (epoch milliseconds) only orders the lines; the replay runs at `interval` seconds
per candle on the sim's own clock. `volume` may be left out or empty (no limit). A header line
before the first candle and lines starting with `#` are skipped. Each candle is played as four
prices, open, then the extreme nearer the open (low for a rising candle, high for a falling
one), the other extreme, then close; together they fill at most the candle's volume.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Protocol

from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.errors import BinanceError
from exchange_kernel.sim.model import ZERO
from exchange_kernel.sim.symbols import SymbolSpec

log = logging.getLogger(__name__)

RANDOM_WALK = "random-walk"
DEFAULT_VOLATILITY = Decimal("0.001")
DEFAULT_INTERVAL = 1.0
DEFAULT_SYMBOL = "BTCUSDT"
POINTS_PER_CANDLE = 4


class Feed(Protocol):
    """Moves prices one step at a time; `run_feed` paces the steps."""

    step_seconds: float

    def check(self, exchange: Exchange) -> None:
        """Raise ValueError if the feed cannot run on this exchange (e.g. an unknown symbol)."""

    def advance(self, exchange: Exchange) -> bool:
        """Take one step; False once there is nothing left to play."""

    def describe(self) -> str: ...


def _on_tick(spec: SymbolSpec, price: Decimal) -> Decimal:
    ticks = (price / spec.tick_size).to_integral_value(rounding=ROUND_HALF_EVEN)
    return min(max(ticks * spec.tick_size, spec.min_price), spec.max_price)


def _symbol_id(symbol: str) -> str:
    return symbol.replace("/", "").upper()


@dataclass
class RandomWalk:
    """Every symbol's last price takes a step of `volatility` (relative standard deviation)
    every `step_seconds`: last x (1 + volatility x z), z standard normal from a generator
    seeded with `seed` (None: a different walk every run), on the symbol's tick."""

    seed: int | None = None
    volatility: Decimal = DEFAULT_VOLATILITY
    step_seconds: float = DEFAULT_INTERVAL
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.volatility < 1:
            raise ValueError("volatility must be in [0, 1): the relative size of one step")
        if self.step_seconds <= 0:
            raise ValueError("interval must be positive")
        self._rng = random.Random(self.seed)

    def check(self, exchange: Exchange) -> None:
        return None

    def next_price(self, spec: SymbolSpec, last: Decimal) -> Decimal:
        # The draw is a float, the price stays Decimal: the draw is rounded to 12 places first.
        z = Decimal(f"{self._rng.gauss(0.0, 1.0):.12f}")
        return _on_tick(spec, last * (1 + self.volatility * z))

    def advance(self, exchange: Exchange) -> bool:
        for spec in exchange.symbols:
            price = self.next_price(spec, exchange.last_price(spec.symbol))
            exchange.set_price(spec.symbol, price)
        return True

    def describe(self) -> str:
        seed = "unseeded" if self.seed is None else f"seed {self.seed}"
        return (
            f"random walk on every symbol ({seed}, volatility {self.volatility} "
            f"per {self.step_seconds:g}s step)"
        )


@dataclass(frozen=True)
class CsvCandle:
    timestamp: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal | None

    def path(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        if self.close >= self.open:
            return self.open, self.low, self.high, self.close
        return self.open, self.high, self.low, self.close


def read_candles(path: Path) -> list[CsvCandle]:
    """The candles of a CSV file (see the module docstring), oldest first."""
    candles: list[CsvCandle] = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if not candles and not cells[0].lstrip("-").isdigit():
                continue  # a header
            if len(cells) not in (5, 6):
                raise ValueError(
                    f"{path}:{number}: expected timestamp,open,high,low,close[,volume]"
                )
            try:
                timestamp = int(cells[0])
                open_, high, low, close = (Decimal(c) for c in cells[1:5])
                volume = Decimal(cells[5]) if len(cells) == 6 and cells[5] else None
            except (ValueError, InvalidOperation):
                raise ValueError(f"{path}:{number}: not a number in {row}") from None
            if not ZERO < low <= min(open_, close) <= max(open_, close) <= high:
                raise ValueError(f"{path}:{number}: needs 0 < low <= open, close <= high")
            if volume is not None and volume < 0:
                raise ValueError(f"{path}:{number}: volume must not be negative")
            candles.append(CsvCandle(timestamp, open_, high, low, close, volume))
    if not candles:
        raise ValueError(f"{path}: no candles")
    candles.sort(key=lambda c: c.timestamp)
    return candles


@dataclass
class CandleReplay:
    """One symbol's last price replays `candles`, one candle every `interval` seconds."""

    candles: list[CsvCandle]
    symbol: str = DEFAULT_SYMBOL
    interval: float = DEFAULT_INTERVAL
    loop: bool = False
    source: str = "candles"
    _next: int = field(default=0, init=False)
    _volume_left: Decimal | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        self.symbol = _symbol_id(self.symbol)

    @property
    def step_seconds(self) -> float:
        return self.interval / POINTS_PER_CANDLE

    def check(self, exchange: Exchange) -> None:
        try:
            exchange.spec(self.symbol)
        except BinanceError:
            known = ", ".join(spec.symbol for spec in exchange.symbols)
            raise ValueError(f"unknown symbol {self.symbol!r} (the sim lists {known})") from None

    def advance(self, exchange: Exchange) -> bool:
        total = len(self.candles) * POINTS_PER_CANDLE
        if self._next >= total:
            if not self.loop:
                return False
            self._next = 0
        candle, point = divmod(self._next, POINTS_PER_CANDLE)
        if point == 0:
            self._volume_left = self.candles[candle].volume
        price = self.candles[candle].path()[point]
        trades = exchange.set_price(self.symbol, price, self._volume_left)
        if self._volume_left is not None:
            self._volume_left -= sum((t.qty for t in trades), ZERO)
        self._next += 1
        return self._next < total or self.loop

    def describe(self) -> str:
        again = ", then again" if self.loop else ""
        return (
            f"{len(self.candles)} candles from {self.source} on {self.symbol}, "
            f"one every {self.interval:g}s{again}"
        )


def feed_from_options(
    feed: str | None,
    *,
    seed: int | None = None,
    volatility: Decimal = DEFAULT_VOLATILITY,
    interval: float = DEFAULT_INTERVAL,
    symbol: str = DEFAULT_SYMBOL,
    loop: bool = False,
) -> Feed | None:
    """The feed the command line asks for: None, `random-walk` or a CSV file's path."""
    if feed is None:
        return None
    if feed == RANDOM_WALK:
        return RandomWalk(seed=seed, volatility=Decimal(volatility), step_seconds=interval)
    path = Path(feed)
    if not path.is_file():
        raise ValueError(f"--feed {feed!r}: neither {RANDOM_WALK!r} nor a CSV file")
    return CandleReplay(
        read_candles(path), symbol=symbol, interval=interval, loop=loop, source=path.name
    )


async def run_feed(feed: Feed, exchange: Exchange) -> None:
    """Step the feed until it ends (or the task is cancelled), the first step at once."""
    try:
        while True:
            if not feed.advance(exchange):
                return
            await asyncio.sleep(feed.step_seconds)
    except asyncio.CancelledError:
        raise
    except Exception:  # a feed bug must not go unnoticed, nor take the exchange down
        log.exception("the market feed stopped")
