"""Serving the paper exchange over HTTP: in-process for tests, blocking for the CLI."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from decimal import Decimal, InvalidOperation
from types import TracebackType

from aiohttp import web

from exchange_kernel.sim import admin, api, ws_api
from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.feed import Feed, run_feed
from exchange_kernel.sim.state import STATE, SimState

DEMO_API_KEY = "paper-demo-key"
DEMO_SECRET = "paper-demo-secret"
DEFAULT_FEE_RATE = Decimal("0.001")

AccountSpec = str | tuple[str, str]
Balances = Mapping[str, Mapping[str, Decimal]]


def parse_accounts(accounts: Iterable[AccountSpec] | None) -> dict[str, str]:
    """`KEY:SECRET` strings (or `(key, secret)` pairs) plus the demo account, always present."""
    parsed = {DEMO_API_KEY: DEMO_SECRET}
    for spec in accounts or ():
        if isinstance(spec, str):
            key, sep, secret = spec.partition(":")
            if not sep or not key or not secret:
                raise ValueError(f"account must look like KEY:SECRET, got {spec!r}")
        else:
            key, secret = spec
        parsed[key] = secret
    return parsed


def parse_balances(specs: Iterable[str] | None) -> dict[str, dict[str, Decimal]]:
    """`KEY:ASSET=AMOUNT` strings -> {key: {asset: amount}} (later ones win)."""
    parsed: dict[str, dict[str, Decimal]] = {}
    for spec in specs or ():
        key, sep, assignment = spec.rpartition(":")
        asset, eq, amount = assignment.partition("=")
        if not (key and sep and asset and eq and amount):
            raise ValueError(f"balance must look like KEY:ASSET=AMOUNT, got {spec!r}")
        try:
            value = Decimal(amount)
        except InvalidOperation:
            raise ValueError(f"balance {spec!r}: {amount!r} is not a decimal number") from None
        if not value.is_finite() or value < 0:
            raise ValueError(f"balance {spec!r}: the amount must not be negative")
        parsed.setdefault(key, {})[asset.strip().upper()] = value
    return parsed


def build_app(state: SimState) -> web.Application:
    # Outermost first: record every request, then faults, then turn errors into Binance JSON.
    app = web.Application(
        middlewares=[api.request_recorder, state.faults.middleware, api.binance_errors]
    )
    app[STATE] = state
    app.add_routes(admin.routes)
    app.add_routes(api.routes)
    app.add_routes(ws_api.routes)

    async def close_streams(app: web.Application) -> None:
        await app[STATE].streams.shutdown()

    app.on_shutdown.append(close_streams)
    # Anything else (sapi, fapi, unknown paths or methods) gets a non-retryable Binance error.
    app.router.add_route("*", "/{tail:.*}", api.unsupported)
    return app


class SimServer:
    """One paper exchange listening on loopback.

    `exchange` is the live engine, for direct inspection or setup from tests. `feed` moves
    the markets while the server runs (`exchange_kernel.sim.feed`); `balances` sets accounts'
    free balances at start ({api key: {asset: amount}}), also what `POST /sim/v1/reset`
    returns to.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Iterable[AccountSpec] | None = None,
        fee_rate: Decimal = DEFAULT_FEE_RATE,
        exchange: Exchange | None = None,
        feed: Feed | None = None,
        balances: Balances | None = None,
    ) -> None:
        if exchange is None:
            exchange = Exchange(accounts=parse_accounts(accounts), fee_rate=Decimal(fee_rate))
        elif accounts:
            for key, secret in parse_accounts(accounts).items():
                exchange.add_account(key, secret)
        for key, assets in (balances or {}).items():
            exchange.set_balances(key, assets, at_start=True)
        if feed is not None:
            feed.check(exchange)
        self.host = host
        self.port = port
        self.feed = feed
        self.state = SimState(exchange=exchange)
        self.app = build_app(self.state)
        self._runner: web.AppRunner | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self.base_url = ""

    @property
    def exchange(self) -> Exchange:
        return self.state.exchange

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("sim server already started")
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        self.base_url = f"http://{host}:{port}"
        if self.feed is not None:
            self._feed_task = asyncio.create_task(run_feed(self.feed, self.exchange))

    async def stop(self) -> None:
        task, self._feed_task = self._feed_task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@asynccontextmanager
async def running_sim(
    port: int = 0,
    accounts: Iterable[AccountSpec] | None = None,
    fee_rate: Decimal = DEFAULT_FEE_RATE,
    host: str = "127.0.0.1",
    feed: Feed | None = None,
    balances: Balances | None = None,
) -> AsyncIterator[SimServer]:
    """`async with running_sim() as sim:` -> `sim.base_url`, `sim.exchange`; stops on exit."""
    server = SimServer(
        host=host, port=port, accounts=accounts, fee_rate=fee_rate, feed=feed, balances=balances
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def serve_forever(
    host: str,
    port: int,
    accounts: Iterable[AccountSpec] | None,
    fee_rate: Decimal,
    feed: Feed | None = None,
    balances: Balances | None = None,
) -> None:
    server = SimServer(
        host=host, port=port, accounts=accounts, fee_rate=fee_rate, feed=feed, balances=balances
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(sig, stop.set)
    keys = ", ".join(server.exchange.accounts)
    # Tools (and the subprocess test) wait for this line to know the server is up.
    print(f"exchange_kernel.sim listening on {server.base_url} (accounts: {keys})", flush=True)
    if feed is not None:
        print(f"market feed: {feed.describe()}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(
    host: str = "127.0.0.1",
    port: int = 8900,
    accounts: list[str] | None = None,
    fee_rate: Decimal = DEFAULT_FEE_RATE,
    *,
    feed: Feed | None = None,
    balances: Balances | None = None,
) -> None:
    """Serve the sim until SIGINT/SIGTERM. Blocking; for the `exchange-kernel sim` command."""
    asyncio.run(serve_forever(host, port, accounts, Decimal(fee_rate), feed, balances))
