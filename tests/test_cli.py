"""The exchange-kernel command: validation before anything starts, clear errors, tables."""

from __future__ import annotations

import time
from pathlib import Path

from typer.testing import CliRunner

from exchange_kernel.cli import app
from exchange_kernel.devserver import free_port

runner = CliRunner()


def test_every_command_has_help() -> None:
    for command in ("sim", "worker", "dev", "submit", "modify", "cancel", "status", "list"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output


def test_submit_with_bad_amount_names_the_field_and_starts_nothing() -> None:
    # No Temporal server is listening at this address: validation must fail before connecting.
    address = f"127.0.0.1:{free_port()}"
    result = runner.invoke(
        app,
        [
            *("submit", "--symbol", "BTC/USDT", "--side", "buy", "--amount", "-1"),
            *("--price", "1", "--address", address),
        ],
    )
    assert result.exit_code == 2
    assert "amount" in result.output and "positive" in result.output


def test_submit_limit_without_price_is_refused() -> None:
    result = runner.invoke(
        app, ["submit", "--symbol", "BTC/USDT", "--side", "buy", "--amount", "1"]
    )
    assert result.exit_code == 2
    assert "needs a price" in result.output


def test_submit_bad_symbol_form_is_refused() -> None:
    result = runner.invoke(
        app, ["submit", "--symbol", "btcusdt", "--side", "buy", "--amount", "1", "--price", "1"]
    )
    assert result.exit_code == 2
    assert "BTC/USDT" in result.output


def test_status_against_a_stopped_server_fails_fast_with_a_clear_message() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = runner.invoke(app, ["status", "some-intent", "--address", address])
    elapsed = time.monotonic() - started
    assert result.exit_code == 1
    assert "cannot reach the Temporal server" in result.output
    assert address in result.output
    assert elapsed < 30  # fails instead of hanging; the bound is loose on purpose


def test_worker_with_missing_credentials_names_the_variable(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        '[accounts.main]\nexchange = "binance"\n'
        'api_key_env = "EK_TEST_UNSET_KEY"\nsecret_env = "EK_TEST_UNSET_SECRET"\n'
    )
    result = runner.invoke(app, ["worker", "--accounts", str(accounts)])
    assert result.exit_code == 2
    assert "EK_TEST_UNSET_KEY" in result.output
