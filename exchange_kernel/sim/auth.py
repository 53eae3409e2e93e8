"""Binance's SIGNED endpoint security: API key header, HMAC-SHA256 signature, timing window."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

from exchange_kernel.sim import errors
from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.model import Account

DEFAULT_RECV_WINDOW = 5000
MAX_RECV_WINDOW = 60000
# Binance rejects timestamps more than this far ahead of its own clock.
MAX_CLOCK_AHEAD_MS = 1000

_INT = re.compile(errors.INTEGER_PATTERN)


def _split_signature(raw: str) -> tuple[str, str | None]:
    """Remove the `signature` parameter from a raw urlencoded string, keeping the rest verbatim."""
    if not raw:
        return "", None
    kept: list[str] = []
    signature: str | None = None
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = unquote(part[len("signature=") :])
        else:
            kept.append(part)
    return "&".join(kept), signature


def request_params(raw_query: str, raw_body: str) -> dict[str, str]:
    """All parameters of a request; Binance lets the query string win over the body."""
    params = dict(parse_qsl(raw_body, keep_blank_values=True))
    params.update(parse_qsl(raw_query, keep_blank_values=True))
    return params


def authenticate(
    exchange: Exchange,
    api_key: str | None,
    raw_query: str,
    raw_body: str,
    now_ms: int,
) -> Account:
    """Return the account a SIGNED request acts for, or raise the error Binance would."""
    account = _account(exchange, api_key)
    # Binance signs "totalParams": the query string immediately followed by the body.
    query_payload, query_signature = _split_signature(raw_query)
    body_payload, body_signature = _split_signature(raw_body)
    signature = query_signature or body_signature
    if not signature:
        raise errors.mandatory("signature")
    params = request_params(raw_query, raw_body)
    _verify(account, query_payload + body_payload, signature, params, now_ms)
    return account


def authenticate_ws(exchange: Exchange, params: dict[str, Any], now_ms: int) -> Account:
    """The account a signed WebSocket API request acts for (`apiKey` among its params).

    Binance's WebSocket API signs the params other than `signature`, sorted by name, as
    `name=value` joined by `&`, values as sent (not URL-encoded).
    """
    api_key = params.get("apiKey")
    if api_key is not None and not isinstance(api_key, str):
        raise errors.api_key_format_invalid()
    account = _account(exchange, api_key)
    signature = params.get("signature")
    if not isinstance(signature, str) or not signature:
        raise errors.mandatory("signature")
    texts = {name: _ws_text(value) for name, value in params.items() if name != "signature"}
    payload = "&".join(f"{name}={texts[name]}" for name in sorted(texts))
    _verify(account, payload, signature, texts, now_ms)
    return account


def _ws_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _account(exchange: Exchange, api_key: str | None) -> Account:
    if not api_key:
        raise errors.api_key_format_invalid()
    account = exchange.account(api_key)
    if account is None:
        raise errors.invalid_api_key()
    return account


def _verify(
    account: Account, payload: str, signature: str, params: dict[str, str], now_ms: int
) -> None:
    timestamp_raw = params.get("timestamp", "")
    if not timestamp_raw:
        raise errors.mandatory("timestamp")
    if not _INT.match(timestamp_raw):
        raise errors.illegal_characters("timestamp", errors.INTEGER_PATTERN)
    recv_window_raw = params.get("recvWindow", "")
    recv_window = DEFAULT_RECV_WINDOW
    if recv_window_raw:
        if not _INT.match(recv_window_raw):
            raise errors.illegal_characters("recvWindow", errors.INTEGER_PATTERN)
        recv_window = int(recv_window_raw)
        if recv_window > MAX_RECV_WINDOW:
            raise errors.recv_window_too_large()

    expected = hmac.new(account.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise errors.invalid_signature()

    timestamp = int(timestamp_raw)
    if timestamp >= now_ms + MAX_CLOCK_AHEAD_MS:
        raise errors.timestamp_ahead(MAX_CLOCK_AHEAD_MS)
    if now_ms - timestamp > recv_window:
        raise errors.outside_recv_window()
