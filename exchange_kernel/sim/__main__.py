"""`python -m exchange_kernel.sim --port 8900 --account KEY:SECRET --fee 0.001 [--feed ...]`"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

from exchange_kernel.sim.feed import (
    DEFAULT_INTERVAL,
    DEFAULT_SYMBOL,
    DEFAULT_VOLATILITY,
    RANDOM_WALK,
    feed_from_options,
)
from exchange_kernel.sim.server import DEFAULT_FEE_RATE, parse_balances, run


def _fee(value: str) -> Decimal:
    try:
        fee = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {value!r}") from None
    if not 0 <= fee < 1:
        raise argparse.ArgumentTypeError("fee must be in [0, 1)")
    return fee


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {value!r}") from None


def _account(value: str) -> str:
    key, sep, secret = value.partition(":")
    if not (key and sep and secret):
        raise argparse.ArgumentTypeError(f"expected KEY:SECRET, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m exchange_kernel.sim",
        description="Paper exchange speaking the Binance spot REST API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument(
        "--account",
        action="append",
        type=_account,
        default=[],
        metavar="KEY:SECRET",
        help="extra account (repeatable); the demo account is always present",
    )
    parser.add_argument("--fee", type=_fee, default=DEFAULT_FEE_RATE, help="fee rate, e.g. 0.001")
    parser.add_argument(
        "--balance",
        action="append",
        default=[],
        metavar="KEY:ASSET=AMOUNT",
        help="an account's free balance of an asset at start (repeatable)",
    )
    parser.add_argument(
        "--feed",
        metavar=f"{RANDOM_WALK}|FILE.csv",
        help="move the markets: a seeded random walk, or OHLCV candles replayed from a CSV "
        "file (timestamp,open,high,low,close[,volume])",
    )
    parser.add_argument("--seed", type=int, help="random walk seed (default: a new walk each run)")
    parser.add_argument(
        "--volatility",
        type=_decimal,
        default=DEFAULT_VOLATILITY,
        help="random walk: relative standard deviation of one step",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help="seconds per random-walk step, or per replayed candle",
    )
    parser.add_argument("--feed-symbol", default=DEFAULT_SYMBOL, help="the symbol a CSV feed moves")
    parser.add_argument("--loop", action="store_true", help="replay the CSV file again at its end")
    args = parser.parse_args(argv)
    try:
        balances = parse_balances(args.balance)
        feed = feed_from_options(
            args.feed,
            seed=args.seed,
            volatility=args.volatility,
            interval=args.interval,
            symbol=args.feed_symbol,
            loop=args.loop,
        )
    except ValueError as exc:
        parser.error(str(exc))
    run(
        host=args.host,
        port=args.port,
        accounts=args.account,
        fee_rate=args.fee,
        feed=feed,
        balances=balances,
    )


if __name__ == "__main__":
    main()
