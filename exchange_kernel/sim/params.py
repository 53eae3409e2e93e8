"""Reading Binance request parameters, with Binance's validation errors."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from enum import StrEnum
from typing import TypeVar

from exchange_kernel.sim import errors
from exchange_kernel.sim.model import NewOrder, OrderType, Side, TimeInForce

_DECIMAL = re.compile(errors.DECIMAL_PATTERN)
_INT = re.compile(errors.INTEGER_PATTERN)
_CLIENT_ID = re.compile(errors.CLIENT_ORDER_ID_PATTERN)

E = TypeVar("E", bound=StrEnum)

Params = dict[str, str]


def text(params: Params, name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise errors.mandatory(name)
        return None
    return value


def decimal(params: Params, name: str, *, required: bool = False) -> Decimal | None:
    raw = text(params, name, required=required)
    if raw is None:
        return None
    if not _DECIMAL.match(raw):
        raise errors.illegal_characters(name, errors.DECIMAL_PATTERN)
    return Decimal(raw)


def integer(params: Params, name: str, *, required: bool = False) -> int | None:
    raw = text(params, name, required=required)
    if raw is None:
        return None
    if not _INT.match(raw):
        raise errors.illegal_characters(name, errors.INTEGER_PATTERN)
    return int(raw)


def client_order_id(params: Params, name: str) -> str | None:
    raw = text(params, name)
    if raw is not None and not _CLIENT_ID.match(raw):
        raise errors.illegal_characters(name, errors.CLIENT_ORDER_ID_PATTERN)
    return raw


def enum(
    params: Params, name: str, kind: type[E], error: errors.BinanceError, *, required: bool = False
) -> E | None:
    raw = text(params, name, required=required)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise error from None


def symbol(params: Params) -> str:
    value = text(params, "symbol", required=True)
    assert value is not None
    return value


def symbol_list(params: Params) -> list[str] | None:
    """`symbol=X` or `symbols=["X","Y"]`; None when neither was sent."""
    single = text(params, "symbol")
    if single is not None:
        return [single]
    many = text(params, "symbols")
    if many is None:
        return None
    try:
        parsed = json.loads(many)
    except ValueError:
        raise errors.illegal_characters("symbols", '["SYMBOL",...]') from None
    if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
        raise errors.illegal_characters("symbols", '["SYMBOL",...]')
    return parsed


def limit(params: Params, default: int, maximum: int) -> int:
    value = integer(params, "limit")
    if value is None:
        return default
    if value <= 0:
        raise errors.bad_limit()
    return min(value, maximum)


def new_order(params: Params, client_id_param: str = "newClientOrderId") -> NewOrder:
    """The order part of POST /api/v3/order (and of cancelReplace)."""
    sym = symbol(params)
    side = enum(params, "side", Side, errors.invalid_side(), required=True)
    kind = enum(params, "type", OrderType, errors.invalid_order_type(), required=True)
    assert side is not None and kind is not None
    return NewOrder(
        symbol=sym,
        side=side,
        type=kind,
        quantity=decimal(params, "quantity"),
        quote_order_qty=decimal(params, "quoteOrderQty"),
        price=decimal(params, "price"),
        stop_price=decimal(params, "stopPrice"),
        time_in_force=enum(params, "timeInForce", TimeInForce, errors.invalid_time_in_force()),
        client_order_id=client_order_id(params, client_id_param),
    )


def response_type(params: Params, kind: OrderType) -> str:
    # Binance: MARKET and LIMIT answer FULL by default, every other type ACK.
    default = "FULL" if kind in (OrderType.MARKET, OrderType.LIMIT) else "ACK"
    value = text(params, "newOrderRespType") or default
    if value not in ("ACK", "RESULT", "FULL"):
        raise errors.illegal_characters("newOrderRespType", "^(ACK|RESULT|FULL)$")
    return value
