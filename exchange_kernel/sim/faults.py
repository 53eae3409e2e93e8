"""Fault injection in front of the exchange API (`/api/v3/*` only).

Rate limits and 5xx answers are decided *before* the request reaches the engine, so nothing is
committed. `drop_response` is decided after the engine committed an order mutation and then
hangs up without answering: the client sees a network error while the order exists. That is
the case an idempotent order workflow has to survive.

`visibility_lag_ms` is read-after-write lag, as real exchanges show it: for that long after an
order is created, the lookups (GET /api/v3/order answers -2013 "Order does not exist.",
openOrders, allOrders and myTrades leave it and its fills out) do not see it yet; the matching
engine does (it fills, and a cancel finds it). It applies to every account and endpoint,
whatever `endpoints` says, and does not count against `max_faults`.

The `stream_*` faults act on the user-data stream of the WebSocket API (`/ws-api/v3`), per
event and per subscribed connection, whatever `endpoints` says; they count against
`max_faults`. `stream_disconnect` drops the connection (no close frame) instead of sending the
event, `stream_terminate` sends `eventStreamTerminated` instead of it and closes,
`stream_drop_event` leaves the event out, `stream_delay_ms` holds every event for a time drawn
from the range (events keep their order). A lost event is not sent again: after a reconnect a
client has to look at the orders it cares about, as against Binance.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from exchange_kernel.sim import errors

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GUARDED_PREFIX = "/api/v3/"
ORDER_MUTATIONS = frozenset(
    {
        ("POST", "/api/v3/order"),
        ("DELETE", "/api/v3/order"),
        ("POST", "/api/v3/order/cancelReplace"),
        ("DELETE", "/api/v3/openOrders"),
    }
)
FAULT_KEY = web.RequestKey("sim_fault", str)
# Counted in `injected` (lookups that did not see an order) but no fault of a request.
VISIBILITY_LAG = "visibility_lag"
STREAM_DISCONNECT = "stream_disconnect"
STREAM_TERMINATE = "stream_terminate"
STREAM_DROP_EVENT = "stream_drop_event"
_PROBABILITIES = (
    "error_500",
    "error_503",
    "rate_limit_429",
    "drop_response",
    STREAM_DISCONNECT,
    STREAM_TERMINATE,
    STREAM_DROP_EVENT,
)
_RANGES = ("latency_ms", "stream_delay_ms")


@dataclass
class FaultConfig:
    """Probabilities are per request in [0, 1]; everything off by default."""

    error_500: float = 0.0
    error_503: float = 0.0
    rate_limit_429: float = 0.0
    retry_after: int = 1
    drop_response: float = 0.0
    latency_ms: tuple[int, int] = (0, 0)
    seed: int | None = None
    # Restrict faults to these "METHOD /path" endpoints; None = every /api/v3 endpoint.
    endpoints: list[str] | None = None
    # Restrict request faults to requests made with these API keys (X-MBX-APIKEY); None = all.
    # One test's faults then leave other clients of the same paper exchange alone.
    api_keys: list[str] | None = None
    # Stop injecting after this many faults (latency is not a fault); None = no limit.
    max_faults: int | None = None
    # Read-after-write lag of order lookups, in milliseconds after an order's creation.
    visibility_lag_ms: int = 0
    # User-data stream: per event, probabilities of losing the connection, of ending the stream
    # (eventStreamTerminated, then close), of leaving the event out; a delay range for all.
    stream_disconnect: float = 0.0
    stream_terminate: float = 0.0
    stream_drop_event: float = 0.0
    stream_delay_ms: tuple[int, int] = (0, 0)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FaultConfig:
        unknown = set(body) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        config = cls(**{k: v for k, v in body.items() if k not in _RANGES})
        for name in _RANGES:
            if name in body:
                low, high = body[name]
                setattr(config, name, (int(low), int(high)))
            low, high = getattr(config, name)
            if low < 0 or high < low:
                raise ValueError(f"{name} must be [min, max] with 0 <= min <= max")
        for name in _PROBABILITIES:
            value = float(getattr(config, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
            setattr(config, name, value)
        if config.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        config.visibility_lag_ms = int(config.visibility_lag_ms)
        if config.visibility_lag_ms < 0:
            raise ValueError("visibility_lag_ms must not be negative")
        if config.endpoints is not None:
            config.endpoints = [str(e) for e in config.endpoints]
        if config.api_keys is not None:
            config.api_keys = [str(k) for k in config.api_keys]
        return config


@dataclass
class FaultInjector:
    config: FaultConfig = field(default_factory=FaultConfig)
    injected: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def configure(self, config: FaultConfig) -> None:
        self.config = config
        self.injected = {}
        self._rng = random.Random(config.seed)

    def reset(self) -> None:
        self.configure(FaultConfig())

    def to_json(self) -> dict[str, Any]:
        body = asdict(self.config)
        for name in _RANGES:
            body[name] = list(getattr(self.config, name))
        body["injected"] = dict(self.injected)
        return body

    def _applies(self, request: web.Request) -> bool:
        if not request.path.startswith(GUARDED_PREFIX):
            return False
        endpoints, keys = self.config.endpoints, self.config.api_keys
        if keys is not None and request.headers.get("X-MBX-APIKEY") not in keys:
            return False
        return endpoints is None or f"{request.method} {request.path}" in endpoints

    def _draw(self, probability: float) -> bool:
        # Always draw, so a seeded run makes the same decisions whatever the probabilities hit.
        return self._rng.random() < probability

    def hides(self, created_at: int, now: int) -> bool:
        """Whether an order created at `created_at` is still invisible to lookups at `now`."""
        lag = self.config.visibility_lag_ms
        if lag <= 0 or now >= created_at + lag:
            return False
        self.injected[VISIBILITY_LAG] = self.injected.get(VISIBILITY_LAG, 0) + 1
        return True

    def stream_fate(self) -> str | None:
        """What becomes of one user-data event on one connection: a `STREAM_*` fault, or None
        (delivered)."""
        config = self.config
        # Every draw is made, so a seeded run decides the same whatever the probabilities hit.
        terminate = self._draw(config.stream_terminate)
        disconnect = self._draw(config.stream_disconnect)
        drop = self._draw(config.stream_drop_event)
        for name, hit in (
            (STREAM_TERMINATE, terminate),
            (STREAM_DISCONNECT, disconnect),
            (STREAM_DROP_EVENT, drop),
        ):
            if hit and self._take_allowance(name):
                return name
        return None

    def stream_delay(self) -> float:
        """Seconds to hold one user-data event back."""
        low, high = self.config.stream_delay_ms
        return self._rng.uniform(low, high) / 1000 if high > 0 else 0.0

    def _take_allowance(self, name: str) -> bool:
        limit = self.config.max_faults
        taken = sum(n for fault, n in self.injected.items() if fault != VISIBILITY_LAG)
        if limit is not None and taken >= limit:
            return False
        self.injected[name] = self.injected.get(name, 0) + 1
        return True

    def _roll(self, name: str, probability: float) -> bool:
        return self._draw(probability) and self._take_allowance(name)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._applies(request):
            return await handler(request)
        config = self.config
        low, high = config.latency_ms
        if high > 0:
            await asyncio.sleep(self._rng.uniform(low, high) / 1000)
        if self._roll("rate_limit_429", config.rate_limit_429):
            request[FAULT_KEY] = "rate_limit_429"
            error = errors.too_many_requests()
            return web.json_response(
                error.body(), status=429, headers={"Retry-After": str(config.retry_after)}
            )
        # Non-JSON bodies, like the load balancer in front of Binance sends: ccxt then maps on
        # the HTTP status alone (ExchangeNotAvailable) instead of a Binance error code.
        if self._roll("error_503", config.error_503):
            request[FAULT_KEY] = "error_503"
            return web.Response(status=503, text="Service Unavailable")
        if self._roll("error_500", config.error_500):
            request[FAULT_KEY] = "error_500"
            return web.Response(status=500, text="Internal Server Error")
        mutation = (request.method, request.path) in ORDER_MUTATIONS
        drop = mutation and self._draw(config.drop_response)
        response = await handler(request)
        # Only a committed mutation is worth losing the answer to; a rejection changed nothing.
        if (
            drop
            and response.status < 400
            and request.transport is not None
            and self._take_allowance("drop_response")
        ):
            request[FAULT_KEY] = "drop_response"
            request.transport.abort()
        return response
