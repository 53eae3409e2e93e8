"""`python -m exchange_kernel.sim --port 8900 --account KEY:SECRET --fee 0.001`"""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation

from exchange_kernel.sim.server import DEFAULT_FEE_RATE, run


def _fee(value: str) -> Decimal:
    try:
        fee = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {value!r}") from None
    if not 0 <= fee < 1:
        raise argparse.ArgumentTypeError("fee must be in [0, 1)")
    return fee


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
    args = parser.parse_args(argv)
    run(host=args.host, port=args.port, accounts=args.account, fee_rate=args.fee)


if __name__ == "__main__":
    main()
