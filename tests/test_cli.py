"""The exchange-kernel command: validation before anything starts, clear errors, tables."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client
from typer.testing import CliRunner, Result

from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient
from exchange_kernel.devserver import free_port
from exchange_kernel.models import IntentStatus, OrderIntent, OrderSpec
from tests.conftest import Paper

runner = CliRunner()

#: Every command that connects to Temporal (`dev` starts its own server; `sim`, `metrics` and
#: `accounts check` never connect).
TEMPORAL_COMMANDS = (
    ["worker"],
    ["setup"],
    ["submit"],
    ["modify"],
    ["cancel"],
    ["status"],
    ["list"],
    ["owner"],
    ["stale"],
    ["resync"],
    ["watch"],
    ["halt"],
    ["resume"],
    ["orphans", "list"],
    ["orphans", "adopt"],
    ["orphans", "cancel"],
    ["group", "bracket"],
    ["group", "oco"],
    ["group", "status"],
    ["group", "cancel"],
)


def test_every_command_has_help() -> None:
    for command in (
        *("sim", "worker", "dev", "submit", "modify", "cancel", "status", "list"),
        *("owner", "stale", "resync", "watch"),
    ):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output


def test_every_command_that_connects_to_temporal_takes_a_profile() -> None:
    for command in TEMPORAL_COMMANDS:
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, (command, result.output)
        assert "--profile" in result.output, command
        assert "temporal.toml" in result.output, command


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


def test_worker_refuses_a_cache_of_no_runs(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[accounts.main]\nexchange = "binance"\n')
    result = runner.invoke(
        app, ["worker", "--accounts", str(accounts), "--max-cached-workflows", "0"]
    )
    assert result.exit_code == 2
    assert "--max-cached-workflows" in result.output


# --- --profile: a profile of temporal.toml (temporalio.envconfig) ------------------------------


async def test_profile_selects_the_connection_of_temporal_toml(
    temporal_client: Client, intents: IntentClient, tmp_path: Path
) -> None:
    server = temporal_client.service_client.config.target_host
    stopped = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.default]\naddress = "{stopped}"\n\n'
        f'[profile.kernel]\naddress = "{server}"\nnamespace = "{temporal_client.namespace}"\n\n'
        f'[profile.down]\naddress = "{stopped}"\n'
    )
    # Only the file speaks: no TEMPORAL_* variable of the machine running the tests may.
    env: dict[str, str | None] = {
        "TEMPORAL_CONFIG_FILE": str(config),
        "TEMPORAL_PROFILE": None,
        "TEMPORAL_ADDRESS": None,
        "TEMPORAL_NAMESPACE": None,
    }

    def cli(*args: str, **variables: str) -> Result:
        return runner.invoke(app, list(args), env={**env, **variables})

    async def invoke(*args: str, **variables: str) -> Any:
        return await asyncio.to_thread(cli, *args, **variables)

    intent = OrderIntent(
        intent_id=f"profile-{uuid.uuid4().hex[:10]}",
        account="paper",
        order=OrderSpec(symbol="BTC/USDT", side="buy", amount="0.01", price="1000"),
    )
    await intents.submit(intent)
    await intents.wait_for(intent.intent_id, lambda s: s.status is IntentStatus.OPEN)

    shown = await invoke("status", intent.intent_id, "--profile", "kernel", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["intent"]["intent_id"] == intent.intent_id

    # The flag is TEMPORAL_PROFILE's equivalent, and wins over it.
    through_env = await invoke("status", intent.intent_id, "--json", TEMPORAL_PROFILE="kernel")
    assert through_env.exit_code == 0, through_env.output
    overridden = await invoke(
        "status", intent.intent_id, "--profile", "kernel", "--json", TEMPORAL_PROFILE="down"
    )
    assert overridden.exit_code == 0, overridden.output

    async with asyncio.timeout(30):  # visibility lags the start by a moment
        while True:
            listed = await invoke("list", "--account", "paper", "--profile", "kernel", "--json")
            assert listed.exit_code == 0, listed.output
            if intent.intent_id in {row["intent_id"] for row in json.loads(listed.output)}:
                break
            await asyncio.sleep(0.3)

    # A profile whose server is down: the usual one-line connection error, naming the address.
    for args in (["--profile", "down"], []):  # no flag: the file's default profile
        down = await invoke("status", intent.intent_id, *args)
        assert down.exit_code == 1, down.output
        assert "cannot reach the Temporal server" in down.output
        assert stopped in down.output
    unknown = await invoke("status", intent.intent_id, "--profile", "nope")
    assert unknown.exit_code == 1, unknown.output
    assert "Profile 'nope' not found" in unknown.output

    cancelled = await invoke("cancel", intent.intent_id, "--profile", "kernel", "--json")
    assert cancelled.exit_code == 0, cancelled.output
    final = await intents.result(intent.intent_id)
    assert final.status is IntentStatus.CANCELED


# --- watch ---------------------------------------------------------------------------------------


def test_watch_takes_exactly_one_selector() -> None:
    address = f"127.0.0.1:{free_port()}"  # refused before connecting
    for args in ([], ["--account", "paper", "--intent", "x"]):
        result = runner.invoke(app, ["watch", *args, "--address", address])
        assert result.exit_code == 2, result.output
        assert "exactly one of --account, --intent, --group, --strategy" in result.output
    result = runner.invoke(
        app, ["watch", "--intent", "x", "--cursor", "nope", "--address", address]
    )
    assert result.exit_code == 2 and "not a watch cursor" in result.output


async def test_watch_json_prints_an_intents_events_with_cursors_and_ends_with_it(
    temporal_client: Client, intents: IntentClient, paper: Paper
) -> None:
    server = temporal_client.service_client.config.target_host
    await paper.move_price("BTC/USDT", "30000")
    intent = OrderIntent(
        intent_id=f"cli-watch-{uuid.uuid4().hex[:10]}",
        account="paper",
        order=OrderSpec(symbol="BTC/USDT", side="buy", amount="0.01", price="29000"),
    )
    await intents.submit(intent)
    command = ["watch", "--intent", intent.intent_id, "--json", "--address", server]
    watching = asyncio.create_task(asyncio.to_thread(runner.invoke, app, command))
    await intents.wait_for(intent.intent_id, lambda s: s.status is IntentStatus.OPEN)
    await paper.move_price("BTC/USDT", "28990")
    await intents.resync(intent.intent_id)
    result = await asyncio.wait_for(watching, 60)  # ends by itself with the intent
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert {line["intent_id"] for line in lines} == {intent.intent_id}
    assert "fill" in [line["kind"] for line in lines]
    assert lines[-1]["kind"] == "status" and lines[-1]["status"] == "filled"
    assert all(line["cursor"] for line in lines)

    # Resumed from the cursor of the first line: the rest, and the end.
    resumed = await asyncio.to_thread(
        runner.invoke, app, [*command, "--cursor", lines[0]["cursor"]]
    )
    assert resumed.exit_code == 0, resumed.output
    rest = [json.loads(line) for line in resumed.output.splitlines()]
    assert [line["seq"] for line in rest] == [line["seq"] for line in lines[1:]]

    table = await asyncio.to_thread(
        runner.invoke, app, ["watch", "--intent", intent.intent_id, "--address", server]
    )
    assert table.exit_code == 0, table.output
    assert f"{intent.intent_id} #{len(lines)}  status  partially_filled -> filled" in table.output
