"""Binance's error vocabulary.

Codes, messages and HTTP statuses are copied from what api.binance.com answers, because ccxt
maps errors by exact message first and by code second: a paraphrased message would change the
exception class the caller sees.
"""

from __future__ import annotations

from typing import Any

DECIMAL_PATTERN = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"
INTEGER_PATTERN = r"^-?[0-9]{1,20}$"
CLIENT_ORDER_ID_PATTERN = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"


class BinanceError(Exception):
    """A rejection exactly as Binance words it: `{"code": ..., "msg": ...}` plus HTTP status."""

    def __init__(
        self, code: int, msg: str, http_status: int = 400, data: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status
        self.data = data

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.data is not None:
            body["data"] = self.data
        return body


def insufficient_balance() -> BinanceError:
    return BinanceError(-2010, "Account has insufficient balance for requested action.")


def duplicate_order() -> BinanceError:
    return BinanceError(-2010, "Duplicate order sent.")


def would_take() -> BinanceError:
    return BinanceError(-2010, "Order would immediately match and take.")


def would_trigger_immediately() -> BinanceError:
    return BinanceError(-2010, "Order would trigger immediately.")


def order_does_not_exist() -> BinanceError:
    return BinanceError(-2013, "Order does not exist.")


def unknown_order() -> BinanceError:
    return BinanceError(-2011, "Unknown order sent.")


def filter_failure(filter_type: str) -> BinanceError:
    return BinanceError(-1013, f"Filter failure: {filter_type}")


def invalid_quantity() -> BinanceError:
    return BinanceError(-1013, "Invalid quantity.")


def invalid_price() -> BinanceError:
    return BinanceError(-1013, "Invalid price.")


def invalid_symbol() -> BinanceError:
    return BinanceError(-1121, "Invalid symbol.")


def invalid_side() -> BinanceError:
    return BinanceError(-1117, "Invalid side.")


def invalid_order_type() -> BinanceError:
    return BinanceError(-1116, "Invalid orderType.")


def invalid_time_in_force() -> BinanceError:
    return BinanceError(-1115, "Invalid timeInForce.")


def mandatory(param: str) -> BinanceError:
    return BinanceError(
        -1102, f"Mandatory parameter '{param}' was not sent, was empty/null, or malformed."
    )


def either_id_mandatory(
    id_param: str = "orderId", client_param: str = "origClientOrderId"
) -> BinanceError:
    return BinanceError(
        -1102, f"Param '{client_param}' or '{id_param}' must be sent, but both were empty/null!"
    )


def not_required(param: str) -> BinanceError:
    return BinanceError(-1106, f"Parameter '{param}' sent when not required.")


def illegal_characters(param: str, pattern: str) -> BinanceError:
    return BinanceError(
        -1100, f"Illegal characters found in parameter '{param}'; legal range is '{pattern}'."
    )


def invalid_interval() -> BinanceError:
    return BinanceError(-1120, "Invalid interval.")


def bad_limit(param: str = "limit") -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{param}'.")


def api_key_format_invalid() -> BinanceError:
    return BinanceError(-2014, "API-key format invalid.", http_status=401)


def invalid_api_key() -> BinanceError:
    return BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", http_status=401)


def invalid_signature() -> BinanceError:
    return BinanceError(-1022, "Signature for this request is not valid.")


def outside_recv_window() -> BinanceError:
    return BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")


def timestamp_ahead(ms: int) -> BinanceError:
    return BinanceError(-1021, f"Timestamp for this request was {ms}ms ahead of the server's time.")


def recv_window_too_large() -> BinanceError:
    return BinanceError(-1131, "recvWindow must be less than 60000")


def unsupported_operation(detail: str) -> BinanceError:
    # -1020 keeps ccxt's mapping on BadRequest, which is not retryable: a request the sim does
    # not implement must fail loudly instead of being retried as a network blip.
    return BinanceError(-1020, f"This operation is not supported. ({detail})")


def too_many_requests() -> BinanceError:
    return BinanceError(
        -1003,
        "Too many requests; current limit of IP(127.0.0.1) request weight is 6000 per minute."
        " Please use WebSocket Streams for live updates to avoid polling the API.",
        http_status=429,
    )


def cancel_replace_failed(data: dict[str, Any]) -> BinanceError:
    return BinanceError(-2022, "Order cancel-replace failed.", http_status=400, data=data)


def cancel_replace_partially_failed(data: dict[str, Any]) -> BinanceError:
    return BinanceError(-2021, "Order cancel-replace partially failed.", http_status=409, data=data)


# Binance's "Order reject reason" (`r` of an executionReport) for the -2010 messages the engine
# raises once an order has reached it. The first three are Binance's published table; the
# duplicate's name is the sim's guess.
_REJECT_REASONS = {
    "Account has insufficient balance for requested action.": "INSUFFICIENT_BALANCES",
    "Order would trigger immediately.": "STOP_PRICE_WOULD_TRIGGER_IMMEDIATELY",
    "Order would immediately match and take.": "WOULD_MATCH_IMMEDIATELY",
    "Duplicate order sent.": "DUPLICATE_ORDER",
}


def reject_reason(error: BinanceError) -> str:
    return _REJECT_REASONS.get(error.msg, "NONE")


# WebSocket API. The user-data subscription codes follow Binance's 2025 changelog as the sim
# remembers it; they are not checked against a live answer.
def subscription_already_active() -> BinanceError:
    return BinanceError(-2035, "User Data Stream subscription already active.")


def subscription_not_active() -> BinanceError:
    return BinanceError(-2036, "User Data Stream subscription not active.")


def malformed_request(detail: str) -> BinanceError:
    return BinanceError(-1102, f"Malformed request: {detail}")
