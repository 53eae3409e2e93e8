"""Binance klines (candles) built from a market's last-price history and its fills.

A candle exists for every interval from the one the market's history starts in up to the one
now is in, with or without trades, as on Binance: an interval in which nothing happened repeats
the previous close with zero volume. Open times are aligned like Binance's: on multiples of the
interval since the epoch, weeks on Mondays, months on the first of the month (UTC).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from exchange_kernel.sim import errors
from exchange_kernel.sim.model import ZERO, Side, Trade

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
# 1970-01-01 was a Thursday; Binance's weeks start on Monday 00:00 UTC.
FIRST_MONDAY = 4 * DAY

FIXED_INTERVALS: dict[str, int] = {
    "1s": SECOND,
    "1m": MINUTE,
    "3m": 3 * MINUTE,
    "5m": 5 * MINUTE,
    "15m": 15 * MINUTE,
    "30m": 30 * MINUTE,
    "1h": HOUR,
    "2h": 2 * HOUR,
    "4h": 4 * HOUR,
    "6h": 6 * HOUR,
    "8h": 8 * HOUR,
    "12h": 12 * HOUR,
    "1d": DAY,
    "3d": 3 * DAY,
}
INTERVALS = (*FIXED_INTERVALS, "1w", "1M")


@dataclass(frozen=True)
class Candle:
    open_time: int
    close_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    count: int
    taker_buy_volume: Decimal
    taker_buy_quote_volume: Decimal


def _month_start(ms: int, months_later: int = 0) -> int:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    index = moment.year * 12 + moment.month - 1 + months_later
    start = datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * 1000


def interval_bounds(interval: str) -> tuple[Callable[[int], int], Callable[[int], int]]:
    """(open time of the candle containing t, open time of the candle after the one at t)."""
    if interval in FIXED_INTERVALS:
        length = FIXED_INTERVALS[interval]
        return (lambda t: t - t % length), (lambda t: t - t % length + length)
    if interval == "1w":
        return (
            lambda t: t - (t - FIRST_MONDAY) % WEEK,
            lambda t: t - (t - FIRST_MONDAY) % WEEK + WEEK,
        )
    if interval == "1M":
        return _month_start, (lambda t: _month_start(t, 1))
    raise errors.invalid_interval()


def build_candles(
    history: Sequence[tuple[int, Decimal]],
    trades: Sequence[Trade],
    interval: str,
    *,
    now: int,
    start_time: int | None = None,
    end_time: int | None = None,
    limit: int = 500,
) -> list[Candle]:
    """Candles of one market, oldest first, like GET /api/v3/klines.

    `history` is the market's (time, last price) list in time order; `trades` its fills in
    time order. With `start_time` the candles opening at or after it, forwards; otherwise the
    newest `limit` candles up to `end_time` (default: now).
    """
    floor, following = interval_bounds(interval)
    if not history:
        return []
    first_open = floor(history[0][0])
    last_open = floor(now if end_time is None else min(end_time, now))
    opens: list[int] = []
    if start_time is not None:
        # Candles opening at or after start_time.
        first_wanted = start_time if floor(start_time) == start_time else following(start_time)
        t = max(first_open, first_wanted)
        while t <= last_open and len(opens) < limit:
            opens.append(t)
            t = following(t)
    else:
        t = last_open
        while t >= first_open and len(opens) < limit:
            opens.append(t)
            t = floor(t - 1)
        opens.reverse()
    times = [ts for ts, _ in history]
    trade_times = [trade.time for trade in trades]
    return [_candle(history, times, trades, trade_times, o, following(o)) for o in opens]


def _candle(
    history: Sequence[tuple[int, Decimal]],
    times: list[int],
    trades: Sequence[Trade],
    trade_times: list[int],
    open_time: int,
    next_open: int,
) -> Candle:
    first = bisect_left(times, open_time)
    end = bisect_left(times, next_open)
    # The price in force when the candle opens: the last move before it (the first price of
    # the history for the candle the market starts in).
    open_price = history[first - 1][1] if first > 0 else history[0][1]
    prices = [open_price] + [price for _, price in history[first:end]]
    in_candle = trades[bisect_left(trade_times, open_time) : bisect_left(trade_times, next_open)]
    volume = quote_volume = taker_buy = taker_buy_quote = ZERO
    for trade in in_candle:
        volume += trade.qty
        quote_volume += trade.quote_qty
        # The taker bought when the account bought as taker or sold as maker (the exchange,
        # its counterparty, then bought by taking).
        if (trade.side is Side.BUY) != trade.is_maker:
            taker_buy += trade.qty
            taker_buy_quote += trade.quote_qty
    return Candle(
        open_time=open_time,
        close_time=next_open - 1,
        open=open_price,
        high=max(prices),
        low=min(prices),
        close=prices[-1],
        volume=volume,
        quote_volume=quote_volume,
        count=len(in_candle),
        taker_buy_volume=taker_buy,
        taker_buy_quote_volume=taker_buy_quote,
    )
