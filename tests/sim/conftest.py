"""A fresh sim per test, the real ccxt binance client on it, and its admin API.

Also the tally of ccxt's own exchange tests (`test_ccxt_exchange_suite.py`, marker
`ccxt_suite`), printed at the end of every run that ran any of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import ccxt.async_support as ccxt_async
import pytest

from exchange_kernel.sim import (
    DEMO_API_KEY,
    DEMO_SECRET,
    SimServer,
    binance_client,
    running_sim,
)
from exchange_kernel.sim.admin_client import AdminClient

CCXT_SUITE_MARKER = "ccxt_suite"
# nodeid -> passed, for the tests marked ccxt_suite (a failed setup counts as a failure).
_ccxt_suite_outcomes: dict[str, bool] = {}

SECOND_KEY = "second-key"
SECOND_SECRET = "second-secret"


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    async with running_sim(port=0, accounts=[f"{SECOND_KEY}:{SECOND_SECRET}"]) as server:
        yield server


@pytest.fixture
def second_account() -> tuple[str, str]:
    return SECOND_KEY, SECOND_SECRET


@pytest.fixture
async def admin(sim: SimServer) -> AsyncIterator[AdminClient]:
    async with AdminClient(sim.base_url) as client:
        yield client


@pytest.fixture
async def make_client(sim: SimServer) -> AsyncIterator[Any]:
    """Factory for extra ccxt clients (other keys, wrong secrets); all closed at teardown."""
    clients: list[ccxt_async.binance] = []

    def make(
        api_key: str = DEMO_API_KEY, secret: str = DEMO_SECRET, **config: Any
    ) -> ccxt_async.binance:
        # ccxt sleeps 250 ms in close() to let TLS transports wind down; loopback has none.
        config.setdefault("timeout_on_exit", 0)
        client = binance_client(sim.base_url, api_key, secret, **config)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: Any) -> ccxt_async.binance:
    exchange = make_client()
    await exchange.load_markets()
    return exchange


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{CCXT_SUITE_MARKER}: one of ccxt's own exchange tests, run on the sim"
    )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if CCXT_SUITE_MARKER not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _ccxt_suite_outcomes[report.nodeid] = report.passed


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ccxt_suite_outcomes:
        return
    passed = sum(_ccxt_suite_outcomes.values())
    total = len(_ccxt_suite_outcomes)
    terminalreporter.write_line(f"ccxt's own exchange tests: {passed} of {total} pass")
    for nodeid, ok in _ccxt_suite_outcomes.items():
        if not ok:
            terminalreporter.write_line(f"  failed: {nodeid}")
