"""Real ccxt `binance` clients pointed at a sim instead of api.binance.com: the REST one
(`binance_client`) and ccxt.pro's, whose user-data stream goes to the sim's WebSocket API
(`binance_pro_client`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async
import ccxt.pro as ccxt_pro

# Which of binance's per-market error tables applies, by path prefix: the same split ccxt makes
# by hostname (api.binance.com serves both /api and /sapi; fapi.binance.com serves /fapi ...).
_TABLE_BY_PATH_PREFIX = (
    ("/api/", "spot"),
    ("/sapi/", "spot"),
    ("/fapi/", "linear"),
    ("/dapi/", "inverse"),
    ("/eapi/", "option"),
    ("/papi/", "portfolioMargin"),
    ("/ws-api/", "spot"),
)

# Only what a spot-only venue can answer: no margin pairs, no sapi currency list.
_SIM_OPTIONS: dict[str, Any] = {
    "fetchMarkets": {"types": ["spot"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
}

# What the venue is: spot markets only. ccxt's binance declares margin, swap, future and option
# markets too; a client (or ccxt's own exchange tests) would expect to find some.
_SIM_HAS: dict[str, Any] = {
    "spot": True,
    "margin": False,
    "swap": False,
    "future": False,
    "option": False,
}


class _LoopbackErrors:
    """How ccxt's binance picks the per-market error table, for the sim's URLs.

    ccxt applies `exceptions['spot']` only when the URL starts with `https://api.binance.com/`;
    against `http://127.0.0.1:<port>` it would silently fall back to the generic table and raise
    different exception classes than production for some codes (e.g. -2021/-2022 from
    cancelReplace). This restores the production mapping for the sim's base URLs (the WebSocket
    API's `ws://` one included).
    """

    sim_base_urls: tuple[str, ...] = ()

    def get_exceptions_by_url(self, url: str | None, exactOrBroad: str) -> dict[str, Any]:
        for base in self.sim_base_urls:
            if url is not None and url.startswith(base + "/"):
                path = url[len(base) :]
                for prefix, market_type in _TABLE_BY_PATH_PREFIX:
                    if path.startswith(prefix):
                        table = self.safe_dict(self.exceptions, market_type, {})
                        return self.safe_dict(table, exactOrBroad, {})
                return {}
        return super().get_exceptions_by_url(url, exactOrBroad)


class _LoopbackBinance(_LoopbackErrors, ccxt_async.binance):
    """ccxt's binance, unchanged except for how it picks the per-market error table."""


class _LoopbackBinancePro(_LoopbackErrors, ccxt_pro.binance):
    """ccxt.pro's binance, unchanged except for how it picks the per-market error table."""


def _websocket_base(base_url: str) -> str:
    scheme, sep, rest = base_url.partition("://")
    return ("wss" if scheme == "https" else "ws") + sep + rest


def _rebase(url: str, base_url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("ws", "wss"):
        return _websocket_base(base_url) + parts.path
    return base_url + parts.path


def _rebase_all(section: Any, base_url: str) -> Any:
    """Every URL of a (nested) ccxt URL table, pointed at the sim; other values kept."""
    if isinstance(section, dict):
        return {name: _rebase_all(value, base_url) for name, value in section.items()}
    if isinstance(section, str) and "://" in section:
        return _rebase(section, base_url)
    return section


def _settings(api_key: str, secret: str, config: dict[str, Any]) -> dict[str, Any]:
    options = {**_SIM_OPTIONS, **config.pop("options", {})}
    has = {**_SIM_HAS, **config.pop("has", {})}
    return {
        "apiKey": api_key,
        "secret": secret,
        "enableRateLimit": True,
        # Binance's 50 ms would make every test crawl; loopback can take far more.
        "rateLimit": 5,
        **config,
        "options": options,
        "has": has,
    }


def _point_at(client: _LoopbackErrors, base_url: str) -> None:
    client.sim_base_urls = (base_url, _websocket_base(base_url))
    urls = client.urls
    # Every section, including the testnet/demo sets that sandbox or demo mode would swap in:
    # nothing this client sends may leave loopback.
    for group in ("api", "test", "demo"):
        section = urls.get(group)
        if isinstance(section, dict):
            urls[group] = _rebase_all(section, base_url)


def binance_client(base_url: str, api_key: str, secret: str, **config: Any) -> ccxt_async.binance:
    """An async ccxt binance client whose every API URL points at `base_url`.

    `config` is passed to the ccxt constructor; its `options` and `has` are merged over the
    sim's (spot-only markets, no sapi currency calls). Close the client with `await
    client.close()`.
    """
    base_url = base_url.rstrip("/")
    client = _LoopbackBinance(_settings(api_key, secret, config))
    _point_at(client, base_url)
    return client


def binance_pro_client(base_url: str, api_key: str, secret: str, **config: Any) -> ccxt_pro.binance:
    """A ccxt.pro binance client whose every URL, REST and WebSocket, points at `base_url`.

    Its spot user-data stream (`watch_orders`, `watch_my_trades`, `watch_balance`) is the sim's
    WebSocket API (`ws://<host:port>/ws-api/v3`), subscribed with the same key and secret as
    REST. `config` as for `binance_client`. Close it with `await client.close()`.
    """
    base_url = base_url.rstrip("/")
    client = _LoopbackBinancePro(_settings(api_key, secret, config))
    _point_at(client, base_url)
    return client
