"""Accounts on real exchanges: sandbox mode, capability checks, client order id rules, and
`exchange-kernel accounts check` against the paper exchange."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import ccxt
import ccxt.async_support as ccxt_async
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from exchange_kernel import client_ids
from exchange_kernel.accounts import (
    CLIENT_ID_LOOKUP,
    REQUESTS_PER_ACTIVITY,
    AccountConfig,
    AccountConfigError,
    activities_per_second,
    build_client,
    capabilities,
    capability_client,
    check_capabilities,
    ensure_capabilities,
    load_accounts,
    requests_per_second,
)
from exchange_kernel.cli import app
from exchange_kernel.devserver import free_port
from exchange_kernel.models import ID_RE, client_order_id
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, SimServer
from exchange_kernel.worker import run_worker

runner = CliRunner()


def account(exchange: str = "binance", **fields: object) -> AccountConfig:
    return AccountConfig(
        name=f"{exchange}-test",
        exchange=exchange,
        api_key_env="EK_T_KEY",
        secret_env="EK_T_SEC",
        **fields,
    )


def certified_exchanges() -> list[str]:
    """What the installed ccxt marks `certified` in its exchanges' describe()."""
    return [name for name in ccxt.exchanges if getattr(ccxt, name)().describe().get("certified")]


# --- sandbox ------------------------------------------------------------------------------------


async def test_sandbox_switches_binance_to_its_testnet_urls_without_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EK_T_KEY", "key")
    monkeypatch.setenv("EK_T_SEC", "secret")
    live = build_client(account())
    sandboxed = build_client(account(sandbox=True))
    try:
        live_url = live.urls["api"]["public"]
        sandbox_url = sandboxed.urls["api"]["public"]
        assert "api.binance.com" in live_url
        assert sandbox_url != live_url
        assert sandbox_url == ccxt_async.binance().urls["test"]["public"]
        assert "testnet" in sandbox_url
        assert sandboxed.isSandboxModeEnabled and not live.isSandboxModeEnabled
        assert sandboxed.apiKey == "key"
    finally:
        await live.close()
        await sandboxed.close()
    # The capability check reads the same sandboxed client, without credentials.
    assert capability_client(account(sandbox=True)).urls["api"]["public"] == sandbox_url


def test_any_ccxt_exchange_id_is_accepted_and_others_are_refused() -> None:
    for name in ("okx", "kraken", "coinbase", "bybit"):
        assert account(name).exchange == name
    with pytest.raises(ValueError, match="not a ccxt exchange id"):
        account("not-an-exchange")


# --- capabilities -------------------------------------------------------------------------------


def test_certified_exchange_in_the_lookup_table_passes() -> None:
    for name in ("binance", "okx", "kucoin", "bitget"):
        assert check_capabilities(account(name)) == [], name
    caps = capabilities(account("binance"))
    assert caps == {
        "createOrder": True,
        "cancelOrder": True,
        "fetchOrder": True,
        "editOrder": True,
        "clientOrderIdLookup": True,
    }


def test_missing_capabilities_are_named() -> None:
    # Overrides in `options` reach ccxt's `has`, so the check sees what the client will do.
    no_create = account(options={"has": {"createOrder": False, "cancelOrder": False}})
    problems = check_capabilities(no_create)
    assert len(problems) == 2
    assert "has no createOrder" in problems[0] and "has no cancelOrder" in problems[1]
    # A real one: ccxt's coinspot cannot fetch an order at all.
    assert not ccxt.coinspot().has.get("fetchOrder")
    (problem,) = check_capabilities(account("coinspot"))
    assert "has no fetchOrder" in problem and "coinspot" in problem


def test_an_exchange_without_client_id_lookup_is_refused_unless_the_account_says_so() -> None:
    (problem,) = check_capabilities(account("bybit"))
    assert "client order id" in problem and "client_id_lookup = true" in problem
    assert check_capabilities(account("bybit", client_id_lookup=True)) == []
    assert check_capabilities(account("binance", client_id_lookup=False)) != []


def test_missing_edit_order_is_not_a_problem_amends_cancel_and_replace() -> None:
    paper = account(base_url="http://127.0.0.1:1", options={"has": {"editOrder": False}})
    assert capabilities(paper)["editOrder"] is False
    assert check_capabilities(paper) == []


def test_the_lookup_table_names_real_exchanges_with_the_calls() -> None:
    for name in CLIENT_ID_LOOKUP:
        assert name in ccxt.exchanges, name
        has = getattr(ccxt, name)().has
        assert has.get("fetchOrder") and has.get("cancelOrder"), name


async def test_the_worker_refuses_accounts_it_cannot_trade_before_it_starts() -> None:
    accounts = {
        "good": account("binance"),
        "bad": account("coinspot").model_copy(update={"name": "bad"}),
    }
    with pytest.raises(AccountConfigError) as raised:
        ensure_capabilities(accounts)
    assert "'bad'" in str(raised.value) and "fetchOrder" in str(raised.value)
    # run_worker checks first: it never touches the (here absent) Temporal client.
    with pytest.raises(AccountConfigError, match="fetchOrder"):
        await run_worker(None, accounts)  # type: ignore[arg-type]


def test_client_id_lookup_is_an_accounts_file_field(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[accounts.main]\nexchange = "bybit"\napi_key_env = "K"\nsecret_env = "S"\n'
        "client_id_lookup = true\n"
    )
    assert load_accounts(path)["main"].client_id_lookup is True


# --- the account task queue's rate limit --------------------------------------------------------


def test_the_account_rate_limit_comes_from_ccxt_or_the_accounts_file(tmp_path: Path) -> None:
    binance_ms = ccxt.binance().rateLimit  # ms between requests: 50 in ccxt 4.5
    assert requests_per_second(account()) == pytest.approx(1000 / binance_ms)
    assert activities_per_second(account()) == pytest.approx(
        1000 / binance_ms / REQUESTS_PER_ACTIVITY
    )
    # The paper exchange's client is built as the worker builds it: its own 5 ms.
    paper = account(base_url="http://127.0.0.1:1")
    assert requests_per_second(paper) == pytest.approx(200)
    # An options override of ccxt's rateLimit counts; an explicit budget wins over both.
    assert requests_per_second(account(options={"rateLimit": 250})) == pytest.approx(4)
    explicit = account(options={"rateLimit": 250}, max_requests_per_second=3)
    assert activities_per_second(explicit) == pytest.approx(3 / REQUESTS_PER_ACTIVITY)

    path = tmp_path / "accounts.toml"
    path.write_text(
        '[accounts.main]\nexchange = "okx"\napi_key_env = "K"\nsecret_env = "S"\n'
        "max_requests_per_second = 8\n"
    )
    assert activities_per_second(load_accounts(path)["main"]) == pytest.approx(4)
    for bad in ("0", "-1", '"fast"'):
        path.write_text(
            '[accounts.main]\nexchange = "okx"\napi_key_env = "K"\nsecret_env = "S"\n'
            f"max_requests_per_second = {bad}\n"
        )
        with pytest.raises(AccountConfigError, match="max_requests_per_second"):
            load_accounts(path)


# --- client order ids ---------------------------------------------------------------------------

intent_ids = st.from_regex(ID_RE, fullmatch=True)


def test_every_certified_exchange_has_a_rule() -> None:
    certified = certified_exchanges()
    assert "binance" in certified and len(certified) >= 5
    missing = [name for name in certified if name not in client_ids.RULES]
    assert not missing, f"certified exchanges without a client id rule: {missing}"
    for name in client_ids.RULES:
        assert name in ccxt.exchanges, name


@given(intent_id=intent_ids, placement=st.integers(min_value=0, max_value=10**9))
def test_binance_ids_are_exactly_the_kernels_ids(intent_id: str, placement: int) -> None:
    expected = client_order_id(intent_id, placement)
    for name in ("binance", "binanceusdm", "binancecoinm"):
        assert client_order_id(intent_id, placement, name) == expected
        assert client_ids.client_order_id_for(name, intent_id, placement) == expected


def test_binance_ids_match_recorded_histories() -> None:
    # Recorded workflow histories depend on this exact form.
    assert re.fullmatch(r"ek-[0-9a-f]{16}-3", client_order_id("grid-btc-29900", 3))
    assert client_order_id("grid-btc-29900", 3, "binance") == client_order_id("grid-btc-29900", 3)


@pytest.mark.parametrize("exchange", [*sorted(client_ids.RULES), "someexchange"])
@given(intent_id=intent_ids, placement=st.integers(min_value=0, max_value=999_999))
def test_generated_ids_satisfy_the_exchange_rule(
    exchange: str, intent_id: str, placement: int
) -> None:
    rule = client_ids.rule_for(exchange)
    client_id = client_ids.client_order_id_for(exchange, intent_id, placement)
    assert rule.accepts(client_id), (exchange, client_id)
    assert len(client_id) <= rule.max_length
    assert re.fullmatch(rule.pattern, client_id)
    # Deterministic: a retried placement asks about the same id.
    assert client_ids.client_order_id_for(exchange, intent_id, placement) == client_id


@pytest.mark.parametrize("exchange", [*sorted(client_ids.RULES), "someexchange"])
def test_ids_differ_across_placements_and_intents(exchange: str) -> None:
    ids = {
        client_ids.client_order_id_for(exchange, f"intent-{i}", n)
        for i in range(50)
        for n in range(20)
    }
    assert len(ids) == 50 * 20


def test_special_forms() -> None:
    okx = client_ids.client_order_id_for("okx", "a", 7)
    assert okx.isalnum() and okx.startswith("ek") and okx.endswith("n7")
    gate = client_ids.client_order_id_for("gate", "a", 7)
    # ccxt's gate refuses more than 28 characters and adds "t-" only when it is missing.
    assert gate.startswith("t-") and len(gate) <= 28
    assert gate == "t-" + client_order_id("a", 7)
    hyper = client_ids.client_order_id_for("hyperliquid", "a", 7)
    assert re.fullmatch(r"0x[0-9a-f]{32}", hyper)
    for name in ("kraken", "coinbase"):
        parsed = uuid.UUID(client_ids.client_order_id_for(name, "a", 7))
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert client_ids.client_order_id_for("kraken", "a", 7) != client_ids.client_order_id_for(
        "kraken", "a", 8
    )


def test_unlisted_exchanges_get_the_documented_default() -> None:
    assert client_ids.rule_for("someexchange") is client_ids.DEFAULT_RULE
    assert client_ids.client_order_id_for("someexchange", "x", 1) == client_order_id("x", 1)


def test_a_placement_number_too_long_for_the_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit okx"):
        client_ids.client_order_id_for("okx", "a", 10**20)
    with pytest.raises(ValueError):
        client_ids.client_order_id_for("binance", "a", -1)


# --- exchange-kernel accounts check against the paper exchange -----------------------------------


@pytest.fixture(scope="module")
def paper_url() -> Iterator[str]:
    """The paper exchange on its own event loop in a thread (the CLI runs asyncio.run)."""
    loop = asyncio.new_event_loop()
    server = SimServer(port=0)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield server.base_url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_accounts_check_on_the_paper_exchange(paper_url: str, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "accounts.toml"
    path.write_text(
        f'[accounts.paper]\nexchange = "binance"\napi_key_env = "EK_CK_KEY"\n'
        f'secret_env = "EK_CK_SECRET"\nbase_url = "{paper_url}"\n\n'
        f'[accounts.badkey]\nexchange = "binance"\napi_key_env = "EK_CK_KEY"\n'
        f'secret_env = "EK_CK_WRONG"\nbase_url = "{paper_url}"\n\n'
        f'[accounts.nobody]\nexchange = "binance"\napi_key_env = "EK_CK_KEY"\n'
        f'secret_env = "EK_CK_SECRET"\nbase_url = "{closed}"\n'
    )
    env = {"EK_CK_KEY": DEMO_API_KEY, "EK_CK_SECRET": DEMO_SECRET, "EK_CK_WRONG": "not-it"}

    result = runner.invoke(app, ["accounts", "check", "--accounts", str(path)], env=env)
    assert result.exit_code == 1, result.output  # not every account is usable
    rows = {
        line.split("│")[1].strip(): line
        for line in result.output.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    assert "not authenticated" in rows["badkey"]
    assert "not authenticated" not in rows["paper"]
    assert "not authenticated" not in rows["nobody"]
    assert "not-it" not in result.output  # the secret is never printed

    as_json = runner.invoke(app, ["accounts", "check", "--accounts", str(path), "--json"], env=env)
    checks = {c["name"]: c for c in json.loads(as_json.output)}
    paper = checks["paper"]
    assert paper["reachable"] and paper["authenticated"] is True and not paper["problems"]
    assert paper["capabilities"] == {
        "createOrder": True,
        "cancelOrder": True,
        "fetchOrder": True,
        "editOrder": True,
        "clientOrderIdLookup": True,
    }
    assert paper["rate_limit_ms"] == 5  # the paper client's; binance's own is 50
    wrong = checks["badkey"]
    assert wrong["reachable"] is True and wrong["authenticated"] is False
    assert "AuthenticationError" in wrong["detail"]
    nobody = checks["nobody"]
    assert nobody["reachable"] is False and nobody["authenticated"] is None
    assert "markets:" in nobody["detail"]


def test_accounts_check_all_good_exits_zero_and_missing_variables_are_named(
    paper_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(
        f'[accounts.paper]\nexchange = "binance"\napi_key_env = "EK_CK_KEY"\n'
        f'secret_env = "EK_CK_SECRET"\nbase_url = "{paper_url}"\n'
    )
    env = {"EK_CK_KEY": DEMO_API_KEY, "EK_CK_SECRET": DEMO_SECRET}
    result = runner.invoke(app, ["accounts", "check", "--accounts", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "5 ms" in result.output and "edit" in result.output

    result = runner.invoke(
        app, ["accounts", "check", "--accounts", str(path)], env={"EK_CK_SECRET": None}
    )
    assert result.exit_code == 1
    assert "EK_CK_SECRET" in result.output


def test_accounts_check_with_a_missing_file_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["accounts", "check", "--accounts", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())
