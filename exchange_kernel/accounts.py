"""Exchange accounts: the accounts file, credentials from the environment, one ccxt client each.

Workflows only ever name an account. The worker resolves the name to credentials read from its
own environment, so no key or secret enters a workflow input, signal, memo, result or log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt_async
from pydantic import BaseModel, Field, field_validator

from exchange_kernel.models import ID_RE, STOP_TYPES, SYMBOL_RE, OrderType, Value


class AccountConfigError(ValueError):
    """The accounts file or the environment it points at is wrong."""


class AccountConfig(Value):
    """One account of the accounts file (`[accounts.NAME]`)."""

    name: str
    exchange: str = "binance"
    api_key_env: str
    secret_env: str
    base_url: str | None = Field(
        default=None, description="the paper exchange's address; only for exchange = binance"
    )
    sandbox: bool = False
    # Modify with the exchange's one-call edit (ccxt editOrder; Binance cancelReplace) instead
    # of cancel, confirm, place. Opt-in: the replacement is sized from the fills seen before
    # the call, so fills landing in between can overfill (docs/reliability.md).
    native_amend: bool = False
    # Pre-trade limit: an intent (or a modification) whose notional, amount x price in the
    # quote currency, is above this is rejected naming the limit.
    max_notional_per_intent: Decimal | None = None
    # Exchange requests per second that all the workers serving the account may send together:
    # the account task queue's rate limit derives from it (`activities_per_second`). Default:
    # ccxt's rateLimit for the exchange (1000 / rateLimit ms).
    max_requests_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # Pre-trade limit: what the account may have resting on one symbol (remaining x price of
    # its open orders, plus the order about to be placed), in the symbol's quote currency.
    # One number for every symbol, or a table: symbol -> limit, "*" for the symbols not listed.
    max_open_notional_per_symbol: Decimal | dict[str, Decimal] | None = None
    # Stop orders held by the intent workflow (watching the last price, then placing a market
    # or limit order) even where the exchange has stop orders of its own. Without it, only
    # the stop types that ccxt reports the exchange lacks are held (`held_stop_types`).
    held_stops: bool = False
    # How often a held stop looks at the last price (one ticker request per held stop each
    # time): the reaction time of a held stop, against the account's request budget. The
    # looks are activity retries, which Temporal starts no sooner than a second apart.
    held_stop_poll_seconds: float = Field(default=1.0, ge=1, le=300, allow_inf_nan=False)
    # The exchange's user-data stream (ccxt.pro `watch_orders`): fills and order changes pushed
    # to the intents as they happen, with the REST account sync as a backstop on a longer
    # interval. None: on wherever ccxt.pro's class for the exchange has `watchOrders`.
    user_stream: bool | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    client_id_lookup: bool | None = Field(
        default=None,
        description="the exchange's ccxt fetchOrder and cancelOrder work with params "
        "{'clientOrderId': ...} and no order id: default from CLIENT_ID_LOOKUP; set true only "
        "after checking ccxt's code for that exchange",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ID_RE.fullmatch(value):
            raise ValueError(f"account name {value!r}: letters, digits and . _ : - only")
        return value

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, value: str) -> str:
        if value not in ccxt_async.exchanges:
            raise ValueError(f"exchange {value!r} is not a ccxt exchange id")
        return value

    @field_validator("max_open_notional_per_symbol", mode="before")
    @classmethod
    def _open_notional_input(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, dict):
            if not value:
                raise ValueError(
                    "max_open_notional_per_symbol: an empty table; give a number, or symbols "
                    '(and "*" for the others) with their limits'
                )
            for symbol, limit in value.items():
                if symbol != "*" and not (isinstance(symbol, str) and SYMBOL_RE.fullmatch(symbol)):
                    raise ValueError(
                        f"max_open_notional_per_symbol: {symbol!r} is not a symbol like "
                        '"BTC/USDT" (BASE/QUOTE, upper case) nor "*"'
                    )
                _limit_number(limit, f"max_open_notional_per_symbol[{symbol!r}]")
            return value
        return _limit_number(value, "max_open_notional_per_symbol")

    @field_validator("max_open_notional_per_symbol")
    @classmethod
    def _open_notional_positive(
        cls, value: Decimal | dict[str, Decimal] | None
    ) -> Decimal | dict[str, Decimal] | None:
        limits = value.items() if isinstance(value, dict) else [(None, value)]
        for symbol, limit in limits:
            if limit is None:
                continue
            name = "max_open_notional_per_symbol" + ("" if symbol is None else f"[{symbol!r}]")
            if not limit.is_finite() or limit <= 0:
                raise ValueError(f"{name} must be a positive number, got {limit}")
        return value

    def open_notional_limit(self, symbol: str) -> Decimal | None:
        """max_open_notional_per_symbol for `symbol` (None: no limit there)."""
        limit = self.max_open_notional_per_symbol
        if isinstance(limit, dict):
            return limit.get(symbol, limit.get("*"))
        return limit

    def credentials(self) -> tuple[str, str]:
        """(api key, secret) from the environment; a clear error naming the variable if unset."""
        missing = [env for env in (self.api_key_env, self.secret_env) if not os.environ.get(env)]
        if missing:
            raise AccountConfigError(
                f"account {self.name!r}: environment variable(s) {', '.join(missing)} not set"
            )
        return os.environ[self.api_key_env], os.environ[self.secret_env]


def _limit_number(value: object, name: str) -> object:
    """Refuse what cannot be an exact limit before pydantic coerces it: a TOML float (1000.5
    is a binary float there), a boolean, anything that is not a finite number."""
    if isinstance(value, float):
        raise ValueError(
            f'{name}: write the limit as a string ("{value}") or an integer, not a float: '
            "binary floats cannot hold most amounts exactly"
        )
    if isinstance(value, int | Decimal | str) and not isinstance(value, bool):
        try:
            number = Decimal(value)
        except ArithmeticError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if not number.is_finite():
            raise ValueError(f"{name}: {value!r} is not a finite number")
        return value
    raise ValueError(f"{name}: expected a number, got {type(value).__name__} {value!r}")


def load_accounts(path: Path) -> dict[str, AccountConfig]:
    """Read an accounts TOML file: a table `[accounts.NAME]` per account."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AccountConfigError(f"accounts file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise AccountConfigError(f"accounts file {path}: {exc}") from exc
    tables = data.get("accounts")
    if not isinstance(tables, dict) or not tables:
        raise AccountConfigError(f"accounts file {path} has no [accounts.NAME] table")
    accounts = {}
    for name, table in tables.items():
        try:
            accounts[name] = AccountConfig.model_validate({"name": name, **table})
        except ValueError as exc:
            raise AccountConfigError(f"accounts file {path}, account {name!r}: {exc}") from exc
    return accounts


class ExchangePool:
    """One ccxt client per account for the life of the worker process.

    ccxt's rate limiter lives in the client, so sharing one client per account is what keeps
    every activity of that account inside the exchange's limits.
    """

    def __init__(self, accounts: dict[str, AccountConfig]) -> None:
        self.accounts = accounts
        self._clients: dict[str, ccxt_async.Exchange] = {}

    def client(self, account: str) -> ccxt_async.Exchange:
        existing = self._clients.get(account)
        if existing is not None:
            return existing
        config = self.accounts.get(account)
        if config is None:
            known = ", ".join(sorted(self.accounts)) or "none"
            raise AccountConfigError(f"unknown account {account!r} (configured: {known})")
        client = build_client(config)
        self._clients[account] = client
        return client

    def last_response_headers(self, account: str) -> dict[str, str] | None:
        """Headers of the account client's last response (ccxt keeps them; Retry-After)."""
        client = self._clients.get(account)
        return getattr(client, "last_response_headers", None) if client else None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


#: The unified calls the kernel needs from every exchange (ccxt `has` flags).
REQUIRED_CAPABILITIES = ("createOrder", "cancelOrder", "fetchOrder")

#: Exchanges whose ccxt `fetchOrder` and `cancelOrder` accept `params={"clientOrderId": id}`
#: with no exchange order id, as the activities call them. ccxt has no `has` flag for this, so
#: it was read off ccxt 4.5's source, exchange by exchange. Idempotent placement depends on it:
#: a retried placement looks its client order id up before it creates anything.
#: Certified exchanges that are *not* here, and why (ccxt 4.5): bingx, bybit and cryptocom look
#: orders up by exchange id only; gate's cancelOrder needs the id (its fetchOrder would do).
CLIENT_ID_LOOKUP = frozenset(
    {
        "binance",
        "binanceusdm",
        "binancecoinm",
        "bitget",
        "hashkey",
        "hyperliquid",
        "kucoin",
        "kucoinfutures",
        "mexc",  # spot; its contract API looks up by exchange id
        "okx",
        "phemex",
        "woofipro",
    }
)


def capability_client(config: AccountConfig) -> Any:
    """A ccxt client built only to read `has`, `rateLimit` and urls: no credentials, no I/O.

    The synchronous class: `has` is the same as the async one's, and nothing needs closing.
    The account's `options` apply, so a `has` override there counts.
    """
    import ccxt

    settings = dict(config.options)
    if config.base_url is not None:
        return ccxt.binance(settings)
    client = getattr(ccxt, config.exchange)(settings)
    if config.sandbox:
        client.set_sandbox_mode(True)
    return client


def capabilities(config: AccountConfig) -> dict[str, bool]:
    """What the account's exchange can do, as far as the kernel cares (no network)."""
    has = capability_client(config).has
    found = {name: bool(has.get(name)) for name in (*REQUIRED_CAPABILITIES, "editOrder")}
    found["clientOrderIdLookup"] = client_id_lookup(config)
    return found


def client_id_lookup(config: AccountConfig) -> bool:
    if config.client_id_lookup is not None:
        return config.client_id_lookup
    return config.base_url is not None or config.exchange in CLIENT_ID_LOOKUP


#: Per stop type, the ccxt `has` flag saying the exchange takes such an order natively.
STOP_CAPABILITIES = {
    OrderType.STOP_LIMIT: "createStopLimitOrder",
    OrderType.STOP_MARKET: "createStopMarketOrder",
}


def held_stop_types(has: dict[str, Any], held_stops: bool = False) -> tuple[OrderType, ...]:
    """The stop types the workflow must hold for an exchange with these ccxt `has` flags.

    A type is native when ccxt says so (`createStopLimitOrder` / `createStopMarketOrder` true);
    an explicit false (binance spot has no stop-market order, coinbase neither) means held.
    Where ccxt leaves the specific flag unset, the generic `createStopOrder` or
    `createTriggerOrder` (the `triggerPrice` parameter the activities send) decides.
    `held_stops` (accounts file) holds every stop type.
    """
    if held_stops:
        return tuple(t for t in OrderType if t in STOP_TYPES)
    generic = has.get("createStopOrder") is True or has.get("createTriggerOrder") is True
    held = []
    for order_type, flag in STOP_CAPABILITIES.items():
        specific = has.get(flag)
        native = specific is True or (specific is None and generic)
        if not native:
            held.append(order_type)
    return tuple(held)


def check_capabilities(config: AccountConfig) -> list[str]:
    """Why the kernel cannot trade this account: one message per missing capability.

    An empty list means it can. A missing `editOrder` is not a problem: amendments then
    cancel, confirm and place (`MarketRules.native_amend` follows `has['editOrder']`).
    """
    found = capabilities(config)
    problems = [
        f"account {config.name!r}: ccxt's {config.exchange} has no {name} (has['{name}'] is "
        "false); the kernel needs it"
        for name in REQUIRED_CAPABILITIES
        if not found[name]
    ]
    if found["fetchOrder"] and not found["clientOrderIdLookup"]:
        problems.append(
            f"account {config.name!r}: ccxt's {config.exchange} is not known to fetch and cancel "
            "orders by client order id (fetchOrder/cancelOrder with params.clientOrderId), "
            "which idempotent placement needs. Known: "
            f"{', '.join(sorted(CLIENT_ID_LOOKUP))}. If you have checked that ccxt's "
            f"{config.exchange} does it, set client_id_lookup = true for the account."
        )
    return problems


def ensure_capabilities(accounts: dict[str, AccountConfig]) -> None:
    """Refuse (AccountConfigError) accounts the kernel cannot trade safely; all named at once."""
    problems = [problem for config in accounts.values() for problem in check_capabilities(config)]
    if problems:
        raise AccountConfigError("; ".join(problems))


#: An exchange activity sends one to three requests: a first placement one (create), a retried
#: one two (look up, then create), one more when it filled (its trades); a sync round two per
#: symbol. The account task queue admits `requests_per_second / REQUESTS_PER_ACTIVITY`
#: activities per second, across all workers.
REQUESTS_PER_ACTIVITY = 2.0


def requests_per_second(config: AccountConfig) -> float | None:
    """The account's request budget: `max_requests_per_second`, else ccxt's `rateLimit` (ms
    between requests) as requests per second; None if ccxt has none."""
    if config.max_requests_per_second is not None:
        return config.max_requests_per_second
    # Built as the worker builds it (the paper exchange's client has its own rateLimit), without
    # credentials: constructing a ccxt client does no I/O and opens no session.
    rate_limit = getattr(_make_client(config, "", ""), "rateLimit", None)
    return 1000 / float(rate_limit) if rate_limit else None


def activities_per_second(config: AccountConfig) -> float | None:
    """The account task queue's rate limit (Temporal's max_task_queue_activities_per_second)."""
    requests = requests_per_second(config)
    return None if requests is None else requests / REQUESTS_PER_ACTIVITY


def build_client(config: AccountConfig) -> ccxt_async.Exchange:
    api_key, secret = config.credentials()
    redact_in_logs(api_key, secret)
    return _make_client(config, api_key, secret)


def user_stream_off(config: AccountConfig) -> str | None:
    """Why the account has no user-data stream (None: it has one). No network."""
    if config.user_stream is False:
        return "user_stream = false in the accounts file"
    import ccxt.pro as ccxt_pro

    exchange = "binance" if config.base_url is not None else config.exchange
    pro_class = getattr(ccxt_pro, exchange, None)
    if pro_class is None:
        return f"ccxt.pro has no {exchange}"
    if not pro_class({"options": dict(config.options)}).has.get("watchOrders"):
        return f"ccxt.pro's {exchange} has no watchOrders"
    return None


def build_stream_client(config: AccountConfig) -> Any:
    """A ccxt.pro client for the account's user-data stream (close it with `await close()`)."""
    api_key, secret = config.credentials()
    redact_in_logs(api_key, secret)
    if config.base_url is not None:
        from exchange_kernel.sim import binance_pro_client

        return binance_pro_client(config.base_url, api_key, secret, **config.options)
    import ccxt.pro as ccxt_pro

    client = getattr(ccxt_pro, config.exchange)(
        {"apiKey": api_key, "secret": secret, "enableRateLimit": True, **config.options}
    )
    if config.sandbox:
        client.set_sandbox_mode(True)
    return client


class SecretRedactor(logging.Filter):
    """Blanks credentials out of log records: ccxt logs each request's headers (the API key
    among them) at DEBUG on its own logger."""

    def __init__(self) -> None:
        super().__init__("exchange_kernel.redact")
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for secret in self.secrets:
            redacted = redacted.replace(secret, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


REDACTOR = SecretRedactor()
CCXT_LOGGERS = ("ccxt", "ccxt.base.exchange", "ccxt.async_support.base.exchange")


def redact_in_logs(*secrets: str) -> None:
    REDACTOR.secrets.update(s for s in secrets if s)
    for name in CCXT_LOGGERS:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)


def _make_client(config: AccountConfig, api_key: str, secret: str) -> ccxt_async.Exchange:
    if config.base_url is not None:
        if config.exchange != "binance":
            raise AccountConfigError(
                f"account {config.name!r}: base_url is for the paper exchange (exchange = binance)"
            )
        from exchange_kernel.sim import binance_client

        return binance_client(config.base_url, api_key, secret, **config.options)
    exchange_class = getattr(ccxt_async, config.exchange)
    client = exchange_class(
        {"apiKey": api_key, "secret": secret, "enableRateLimit": True, **config.options}
    )
    if config.sandbox:
        client.set_sandbox_mode(True)
    return client


# --- `exchange-kernel accounts check` ----------------------------------------------------------


class AccountCheck(BaseModel):
    """What `accounts check` found out about one account (network: markets and balance)."""

    name: str
    exchange: str
    reachable: bool
    authenticated: bool | None  # None: could not tell (unreachable, or no credentials to try)
    capabilities: dict[str, bool]
    rate_limit_ms: float | None
    problems: list[str]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reachable and self.authenticated is True and not self.problems


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def check_account(config: AccountConfig) -> AccountCheck:
    """Load the markets (reachable?) and the balance (authenticated?) of one account.

    Never raises for what the exchange answers: every failure becomes part of the report.
    The secret never appears in it (ccxt's messages carry the exchange's answer, not the key).
    """
    import ccxt

    capabilities_found = capabilities(config)
    problems = check_capabilities(config)
    notes: list[str] = []
    try:
        api_key, secret = config.credentials()
        have_credentials = True
    except AccountConfigError as exc:
        api_key, secret, have_credentials = "", "", False
        notes.append(str(exc))
    reachable = False
    authenticated: bool | None = None
    client = _make_client(config, api_key, secret)
    rate_limit = getattr(client, "rateLimit", None)
    try:
        try:
            await client.load_markets()
            reachable = True
        except ccxt.AuthenticationError as exc:  # some exchanges sign their market calls
            reachable, authenticated = True, False
            notes.append(_short(exc))
        except Exception as exc:
            notes.append(f"markets: {_short(exc)}")
        if reachable and authenticated is None and have_credentials:
            try:
                await client.fetch_balance()
                authenticated = True
            except (ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.AccountSuspended) as exc:
                authenticated = False
                notes.append(f"balance: {_short(exc)}")
            except Exception as exc:
                notes.append(f"balance: {_short(exc)}")
    finally:
        await client.close()
    return AccountCheck(
        name=config.name,
        exchange=config.exchange
        + (" (sandbox)" if config.sandbox else "")
        + (" (paper)" if config.base_url else ""),
        reachable=reachable,
        authenticated=authenticated,
        capabilities=capabilities_found,
        rate_limit_ms=float(rate_limit) if rate_limit is not None else None,
        problems=problems,
        detail="; ".join(notes),
    )


async def check_accounts(accounts: dict[str, AccountConfig]) -> list[AccountCheck]:
    """`check_account` for every account, concurrently, in the file's order."""
    return list(await asyncio.gather(*(check_account(c) for c in accounts.values())))
