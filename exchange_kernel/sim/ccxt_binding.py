"""A real ccxt `binance` client pointed at a sim instead of api.binance.com."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async

# Which of binance's per-market error tables applies, by path prefix: the same split ccxt makes
# by hostname (api.binance.com serves both /api and /sapi; fapi.binance.com serves /fapi ...).
_TABLE_BY_PATH_PREFIX = (
    ("/api/", "spot"),
    ("/sapi/", "spot"),
    ("/fapi/", "linear"),
    ("/dapi/", "inverse"),
    ("/eapi/", "option"),
    ("/papi/", "portfolioMargin"),
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


class _LoopbackBinance(ccxt_async.binance):
    """ccxt's binance, unchanged except for how it picks the per-market error table.

    ccxt applies `exceptions['spot']` only when the URL starts with `https://api.binance.com/`;
    against `http://127.0.0.1:<port>` it would silently fall back to the generic table and raise
    different exception classes than production for some codes (e.g. -2021/-2022 from
    cancelReplace). This restores the production mapping for the sim's base URL.
    """

    sim_base_url: str = ""

    def get_exceptions_by_url(self, url: str | None, exactOrBroad: str) -> dict[str, Any]:
        base = self.sim_base_url
        if url is not None and base and url.startswith(base + "/"):
            path = url[len(base) :]
            for prefix, market_type in _TABLE_BY_PATH_PREFIX:
                if path.startswith(prefix):
                    table = self.safe_dict(self.exceptions, market_type, {})
                    return self.safe_dict(table, exactOrBroad, {})
            return {}
        return super().get_exceptions_by_url(url, exactOrBroad)


def _rebase(url: str, base_url: str) -> str:
    parts = urlsplit(url)
    return base_url + parts.path


def binance_client(base_url: str, api_key: str, secret: str, **config: Any) -> ccxt_async.binance:
    """An async ccxt binance client whose every API URL points at `base_url`.

    `config` is passed to the ccxt constructor; its `options` and `has` are merged over the
    sim's (spot-only markets, no sapi currency calls). Close the client with `await
    client.close()`.
    """
    base_url = base_url.rstrip("/")
    options = {**_SIM_OPTIONS, **config.pop("options", {})}
    has = {**_SIM_HAS, **config.pop("has", {})}
    settings: dict[str, Any] = {
        "apiKey": api_key,
        "secret": secret,
        "enableRateLimit": True,
        # Binance's 50 ms would make every test crawl; loopback can take far more.
        "rateLimit": 5,
        **config,
        "options": options,
        "has": has,
    }
    client = _LoopbackBinance(settings)
    client.sim_base_url = base_url
    urls = client.urls
    # Every section, including the testnet/demo sets that sandbox or demo mode would swap in:
    # nothing this client sends may leave loopback.
    for group in ("api", "test", "demo"):
        section = urls.get(group)
        if isinstance(section, dict):
            urls[group] = {name: _rebase(url, base_url) for name, url in section.items()}
    return client
