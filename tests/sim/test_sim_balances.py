"""Balances per account: set by the operator at start (`--balance`) or at any time (admin API)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import pytest
from typer.testing import CliRunner

from exchange_kernel.cli import app
from exchange_kernel.sim import DEMO_API_KEY, SimServer, running_sim
from exchange_kernel.sim.admin_client import AdminClient, SimAdminError
from exchange_kernel.sim.server import parse_balances

BTC = "BTC/USDT"


async def test_posted_balances_set_those_assets_free_and_leave_the_others(
    client: ccxt_async.binance, admin: AdminClient, sim: SimServer
) -> None:
    before = (await admin.balances())["accounts"][DEMO_API_KEY]
    answer = await admin.set_balances(DEMO_API_KEY, {"ETH": "1.5", "USDT": "1000"})
    assert answer["ETH"] == {"free": "1.5", "locked": "0"}
    assert answer["USDT"] == {"free": "1000", "locked": "0"}
    assert answer["BTC"] == before["BTC"] and answer["SOL"] == before["SOL"]
    balance = await client.fetch_balance()
    assert balance["ETH"]["free"] == pytest.approx(1.5)
    assert balance["USDT"]["free"] == pytest.approx(1000)
    assert balance["BTC"]["free"] == pytest.approx(100)


async def test_posted_balances_are_per_account(
    make_client: Any, admin: AdminClient, second_account: tuple[str, str]
) -> None:
    await admin.set_balances(second_account[0], {"USDT": "10"})
    mine = await make_client().fetch_balance()
    theirs = await make_client(*second_account).fetch_balance()
    assert theirs["USDT"]["free"] == pytest.approx(10)
    assert mine["USDT"]["free"] == pytest.approx(1_000_000)


async def test_an_order_beyond_a_posted_balance_is_insufficient_funds(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await admin.set_balances(DEMO_API_KEY, {"USDT": "100"})
    with pytest.raises(ccxt_async.InsufficientFunds):
        await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    await client.create_order(BTC, "limit", "buy", 0.003, 29000)  # 87 USDT


async def test_a_posted_balance_leaves_locked_funds_locked(
    client: ccxt_async.binance, admin: AdminClient
) -> None:
    await client.create_order(BTC, "limit", "buy", 0.01, 29000)
    answer = await admin.set_balances(DEMO_API_KEY, {"USDT": "5"})
    assert answer["USDT"]["free"] == "5"
    assert Decimal(answer["USDT"]["locked"]) == 290


async def test_posted_balances_keep_every_unit_accounted_for(
    admin: AdminClient, sim: SimServer
) -> None:
    holdings = sim.exchange.holdings()
    await admin.set_balances(DEMO_API_KEY, {"ETH": "1.5", "BTC": "250"})
    assert sim.exchange.holdings() == holdings
    assert sim.exchange.counterparty["BTC"] == Decimal(-150)


@pytest.mark.parametrize(
    ("account", "balances", "message"),
    [
        ("nobody", {"USDT": "1"}, "unknown account 'nobody'"),
        (DEMO_API_KEY, {"DOGE": "1"}, "unknown assets: DOGE"),
        (DEMO_API_KEY, {"USDT": "-1"}, "must not be negative"),
        (DEMO_API_KEY, {"USDT": "lots"}, "USDT is not a number"),
        (DEMO_API_KEY, {}, "balances must be an object"),
    ],
)
async def test_a_bad_balance_is_refused_and_changes_nothing(
    admin: AdminClient, account: str, balances: dict[str, str], message: str
) -> None:
    before = await admin.balances()
    with pytest.raises(SimAdminError) as refused:
        await admin.set_balances(account, balances)
    assert refused.value.status == 400
    assert message in refused.value.body["error"]
    assert await admin.balances() == before


async def test_reset_returns_to_the_start_balances_not_the_posted_ones(
    admin: AdminClient,
) -> None:
    await admin.set_balances(DEMO_API_KEY, {"USDT": "1"})
    await admin.reset()
    assert (await admin.balances())["accounts"][DEMO_API_KEY]["USDT"]["free"] == "1000000"


async def test_start_balances_apply_at_start_and_after_reset() -> None:
    balances = parse_balances([f"{DEMO_API_KEY}:USDT=250.5", "k2:ETH=3", "k2:eth=4"])
    assert balances == {DEMO_API_KEY: {"USDT": Decimal("250.5")}, "k2": {"ETH": Decimal(4)}}
    async with (
        running_sim(accounts=["k2:s2"], balances=balances) as sim,
        AdminClient(sim.base_url) as admin,
    ):
        accounts = (await admin.balances())["accounts"]
        assert accounts[DEMO_API_KEY]["USDT"]["free"] == "250.5"
        assert accounts[DEMO_API_KEY]["BTC"]["free"] == "100"
        assert accounts["k2"]["ETH"]["free"] == "4"
        await admin.set_balances("k2", {"ETH": "0"})
        await admin.reset()
        assert (await admin.balances())["accounts"]["k2"]["ETH"]["free"] == "4"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("USDT=5", "KEY:ASSET=AMOUNT"),
        ("key:USDT", "KEY:ASSET=AMOUNT"),
        ("key:USDT=five", "not a decimal number"),
        ("key:USDT=-5", "must not be negative"),
    ],
)
def test_a_malformed_start_balance_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_balances([spec])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--balance", "nobody:USDT=5"], "unknown account 'nobody'"),
        (["--balance", f"{DEMO_API_KEY}:DOGE=5"], "unknown assets: DOGE"),
        (["--balance", "USDT=5"], "KEY:ASSET=AMOUNT"),
    ],
)
def test_sim_command_refuses_a_bad_balance_before_starting(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["sim", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
