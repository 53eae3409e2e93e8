"""HTTP client for a sim's `/sim/v1/` operator API, for tests, demos and external checkers."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any

import aiohttp


class SimAdminError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"sim admin answered {status}: {body}")
        self.status = status
        self.body = body


class AdminClient:
    """`async with AdminClient(sim.base_url) as admin: await admin.price("BTCUSDT", "29000")`."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        url = f"{self.base_url}/sim/v1/{path}"
        async with self._session.request(method, url, json=body, params=query) as response:
            payload = await response.json(content_type=None)
            if response.status != 200:
                raise SimAdminError(response.status, payload)
            return payload

    async def price(
        self,
        symbol: str,
        price: str,
        volume: str | None = None,
        taker_liquidity: str | None = None,
    ) -> list[dict[str, Any]]:
        """Move the last price; returns the trades the move caused."""
        body: dict[str, Any] = {"symbol": symbol, "price": price}
        if volume is not None:
            body["volume"] = volume
        if taker_liquidity is not None:
            body["taker_liquidity"] = taker_liquidity
        return (await self._call("POST", "price", body))["trades"]

    async def prices(self) -> dict[str, str]:
        return await self._call("GET", "prices")

    async def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Replace the fault profile; no settings = everything off."""
        return await self._call("POST", "faults", settings)

    async def faults(self) -> dict[str, Any]:
        return await self._call("GET", "faults")

    async def orders(self, **filters: str) -> list[dict[str, Any]]:
        """Filters: account, symbol, status."""
        return (await self._call("GET", "orders", query=filters))["orders"]

    async def trades(self, **filters: str) -> list[dict[str, Any]]:
        """Filters: account, symbol."""
        return (await self._call("GET", "trades", query=filters))["trades"]

    async def balances(self) -> dict[str, Any]:
        return await self._call("GET", "balances")

    async def set_balances(self, account: str, balances: Mapping[str, str | Decimal]) -> Any:
        """Set these assets' free balances of one account (API key); the others stay."""
        body = {"account": account, "balances": {a: str(v) for a, v in balances.items()}}
        return (await self._call("POST", "balances", body))["balances"]

    async def requests(self, limit: int | None = None) -> dict[str, Any]:
        return await self._call(
            "GET", "requests", query=None if limit is None else {"limit": limit}
        )

    async def reset(self) -> None:
        await self._call("POST", "reset")
