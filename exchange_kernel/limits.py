"""Pre-trade limits of an account: the arithmetic and the wording, no I/O.

Two limits come from the accounts file:

- `max_notional_per_intent`: one intent's amount x price. Checked against the intent alone, so
  it lives with the exchange's own rules (`MarketRules.violations`).
- `max_open_notional_per_symbol`: what the account has resting on one symbol, summed over its
  open orders (remaining x price, buys and sells alike, kernel or not) plus the order about to
  be placed. Only the exchange knows the other orders, so the sum is taken in the activities
  (`exchange_kernel.activities.exchange`); this module says when a check is due and how a
  breach reads.

An order without a price (market, stop-market) is valued at the symbol's last price (ccxt
`fetch_ticker`, read by the activity right before the order is placed) plus a margin of
`UNPRICED_MARGIN` = 5%, for the slippage a market order can meet between that look and its
fills: both limits then apply to it as to a limit order (per intent: amount x last price
x 1.05; per symbol: that, added to what rests). A stop-market the exchange holds is valued at
the higher of its stop price and the last price; a stop-market the workflow holds is checked
when it triggers, as the market order it then becomes. No last price: refused (a risk limit
that cannot be checked does not let the order through).

Imported by workflow code: standard library and models only, nothing non-deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from exchange_kernel.models import (
    IntentChange,
    IntentState,
    OpenNotionalRequest,
    Placement,
    PlacementPhase,
)

OPEN_NOTIONAL_LIMIT = "max_open_notional_per_symbol"
INTENT_NOTIONAL_LIMIT = "max_notional_per_intent"
# Added to the last price when an order without a price is valued (see the docstring).
UNPRICED_MARGIN = Decimal("0.05")


class PreTradeLimitExceeded(Exception):
    """An order (or a modification) would break one of the account's pre-trade limits."""


def amount_text(value: Decimal) -> str:
    """1140.000 -> 1140, 0.50 -> 0.5: figures for people, exact (no rounding)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def quote_of(symbol: str) -> str:
    """BTC/USDT -> USDT; BTC/USDT:USDT (a ccxt contract) -> USDT."""
    return symbol.split("/")[-1].split(":")[0]


def open_notional_breach(
    symbol: str, resting: Decimal, adding: Decimal, limit: Decimal, valued: str | None = None
) -> str | None:
    """The rejection reason if `resting` + `adding` is above `limit`; None when within it.
    `valued` says how an order without a price was valued (`Valuation.text`)."""
    total = resting + adding
    if total <= limit:
        return None
    quote = quote_of(symbol)
    how = f": {valued}" if valued else ""
    return (
        f"open notional on {symbol} would be {amount_text(total)} {quote} "
        f"({amount_text(resting)} resting + {amount_text(adding)} for this intent{how}), above "
        f"the account's pre-trade limit {OPEN_NOTIONAL_LIMIT} = {amount_text(limit)}"
    )


@dataclass(frozen=True)
class Valuation:
    """What an order without a price is taken to be worth: amount x reference price + margin."""

    amount: Decimal
    price: Decimal  # the last price, or a held-by-the-exchange stop's stop price if higher
    price_name: str  # "last price" or "stop price"

    @property
    def notional(self) -> Decimal:
        return self.amount * self.price * (1 + UNPRICED_MARGIN)

    @property
    def text(self) -> str:
        margin = amount_text(UNPRICED_MARGIN * 100)
        return (
            f"{amount_text(self.amount)} x {self.price_name} {amount_text(self.price)} + {margin}%"
        )


def value_unpriced(
    amount: Decimal, last: Decimal | None, stop_price: Decimal | None = None
) -> Valuation | None:
    """The valuation of an order without a price; None if there is nothing to value it at.

    A stop the exchange holds fills around its stop price, so it is valued at the higher of
    that and the last price (a buy stop sits above the last price; a sell stop below it)."""
    if stop_price is not None and (last is None or stop_price > last):
        return Valuation(amount=amount, price=stop_price, price_name="stop price")
    if last is None:
        return None
    return Valuation(amount=amount, price=last, price_name="last price")


def intent_notional_breach(symbol: str, valuation: Valuation, limit: Decimal | None) -> str | None:
    """The rejection reason if an order without a price is above max_notional_per_intent."""
    if limit is None or valuation.notional <= limit:
        return None
    return (
        f"notional {amount_text(valuation.notional)} {quote_of(symbol)} ({valuation.text}) of "
        f"this market order is above the account's pre-trade limit {INTENT_NOTIONAL_LIMIT} = "
        f"{amount_text(limit)}"
    )


def replaced_notional(state: IntentState, placement: Placement) -> Decimal:
    """What the intent had resting in the order `placement` replaces (0 if it replaces none).

    A placement whose notional is not above this does not raise the intent's notional (a buy
    moved lower, an amount reduced), so the open-notional limit does not refuse it: a risk
    limit never stands in the way of reducing risk. An order that the intent did not cancel
    itself (filled, cancelled outside the kernel, never reached the exchange) replaces nothing:
    placing again adds risk that is no longer on the book.
    """
    previous = next((p for p in state.placements if p.number == placement.number - 1), None)
    # Only an order the intent is cancelling (or has cancelled) itself is replaced.
    if (
        previous is None
        or previous.price is None
        or previous.order is None
        or previous.phase not in (PlacementPhase.CANCELING, PlacementPhase.CANCELED)
    ):
        return Decimal(0)
    return max(previous.order.remaining, Decimal(0)) * previous.price


def modify_check(state: IntentState, change: IntentChange) -> OpenNotionalRequest | None:
    """The open-notional check a modification needs, or None when it needs none.

    None unless the account has the limit on this symbol (carried in the market rules) and
    the change raises the intent's notional: (amount - filled) x price, before and after.
    """
    rules = state.rules
    if rules is None or rules.account_max_open_notional is None:
        return None
    desired = state.desired
    price = change.price if change.price is not None else desired.price
    if price is None or desired.price is None:
        return None  # a market order: it never rests, so it is never modified
    amount = change.amount if change.amount is not None else desired.amount
    before = max(desired.amount - state.filled, Decimal(0)) * desired.price
    after = max(amount - state.filled, Decimal(0)) * price
    if after <= before:
        return None
    return OpenNotionalRequest(
        account=state.intent.account,
        symbol=desired.symbol,
        notional=after,
        exclude=tuple(p.client_order_id for p in state.placements if p.live),
    )
