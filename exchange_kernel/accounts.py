"""Exchange accounts: the accounts file, credentials from the environment, one ccxt client each.

Workflows only ever name an account. The worker resolves the name to credentials read from its
own environment, so no key or secret enters a workflow input, signal, memo, result or log.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt_async
from pydantic import Field, field_validator

from exchange_kernel.models import ID_RE, Value


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
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not ID_RE.match(value):
            raise ValueError(f"account name {value!r}: letters, digits and . _ : - only")
        return value

    @field_validator("exchange")
    @classmethod
    def _exchange(cls, value: str) -> str:
        if value not in ccxt_async.exchanges:
            raise ValueError(f"exchange {value!r} is not a ccxt exchange id")
        return value

    def credentials(self) -> tuple[str, str]:
        """(api key, secret) from the environment; a clear error naming the variable if unset."""
        missing = [env for env in (self.api_key_env, self.secret_env) if not os.environ.get(env)]
        if missing:
            raise AccountConfigError(
                f"account {self.name!r}: environment variable(s) {', '.join(missing)} not set"
            )
        return os.environ[self.api_key_env], os.environ[self.secret_env]


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


def build_client(config: AccountConfig) -> ccxt_async.Exchange:
    api_key, secret = config.credentials()
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
