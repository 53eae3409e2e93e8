"""The exchange-kernel command: validation before anything starts, clear errors, tables."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from typer.testing import CliRunner, Result

from exchange_kernel import cli as cli_module
from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient, IntentListing, StaleIntent
from exchange_kernel.devserver import free_port
from exchange_kernel.models import (
    ExchangeOrder,
    ExchangeOrderStatus,
    GroupState,
    IntentGroup,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    Orphan,
    Placement,
    PlacementPhase,
    ReconciliationStatus,
)
from exchange_kernel.repair import ResetPoint
from tests.conftest import TASK_QUEUE as TEST_TASK_QUEUE
from tests.conftest import Paper, eventually

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


# --- without a server: the commands against a stand-in client -----------------------------------


def placed(intent: OrderIntent, filled: str = "0") -> Placement:
    """The intent's first order, observed resting on the exchange."""
    order = ExchangeOrder(
        exchange_order_id="4711",
        client_order_id=f"ek-test-{intent.intent_id}-0",
        symbol=intent.order.symbol,
        side=intent.order.side,
        type=intent.order.type.value,
        status=ExchangeOrderStatus.OPEN,
        price=intent.order.price,
        amount=intent.order.amount,
        filled=Decimal(filled),
    )
    return Placement(
        number=0,
        client_order_id=order.client_order_id,
        revision=0,
        price=intent.order.price,
        amount=intent.order.amount,
        phase=PlacementPhase.OPEN,
        order=order,
    )


class StandIn:
    """An IntentClient without a server: records what the CLI asks, answers what a test set.
    `states`: the intent's states one after another (`wait_for` walks them, `state` is the
    last one), as the intent would move through them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.states: list[IntentState] = []
        self.listings: list[IntentListing] = []
        self.halts: dict[str, str] = {}
        self.orphan_list: list[Orphan] = []
        self.temporal = None

    async def submit(self, intent: OrderIntent) -> IntentState:
        self.calls.append(("submit", intent))
        return IntentState(intent=intent, desired=intent.order)

    async def wait_for(
        self, intent_id: str, condition: Callable[[IntentState], bool], within: timedelta
    ) -> IntentState:
        self.calls.append(("wait_for", within))
        for state in self.states:
            if condition(state):
                return state
        raise TimeoutError

    async def state(self, intent_id: str) -> IntentState:
        return self.states[-1]

    async def list(self, **filters: Any) -> list[IntentListing]:
        self.calls.append(("list", filters))
        return self.listings

    async def stale_intents(self, max_age: timedelta, *, account: str | None) -> list[StaleIntent]:
        return [
            StaleIntent(**row.model_dump(), observed_at=None, watched=False)
            for row in self.listings
        ]

    async def halt(
        self, account: str, symbol: str | None, *, cancel_all: bool, reason: str
    ) -> dict[str, str]:
        self.halts[symbol or "*"] = reason
        return self.halts

    async def resume(self, account: str, symbol: str | None) -> dict[str, str]:
        self.halts.pop(symbol or "*", None)
        return self.halts

    async def orphans(self, account: str, symbols: tuple[str, ...]) -> list[Orphan]:
        return self.orphan_list

    async def adopt(self, order: ExchangeOrder, account: str, intent_id: str) -> IntentState:
        spec = OrderSpec(
            symbol=order.symbol, side=order.side, amount=order.amount, price=order.price
        )
        intent = OrderIntent(intent_id=intent_id, account=account, order=spec)
        return IntentState(intent=intent, desired=spec, status=IntentStatus.OPEN)

    async def cancel_orphan(
        self, account: str, symbol: str, client_order_id: str
    ) -> ExchangeOrder | None:
        for orphan in self.orphan_list:
            if orphan.order.client_order_id == client_order_id:
                return orphan.order.model_copy(update={"status": ExchangeOrderStatus.CANCELED})
        return None

    async def submit_group(self, group: IntentGroup) -> GroupState:
        self.calls.append(("submit_group", group))
        return GroupState(group=group)

    async def cancel_group(self, group_id: str, reason: str) -> None:
        self.calls.append(("cancel_group", (group_id, reason)))


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    client = StandIn()

    async def connect(*args: Any, **kwargs: Any) -> StandIn:
        return client

    monkeypatch.setattr(IntentClient, "connect", staticmethod(connect))
    return client


def cli(*args: str, columns: int = 200) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": str(columns)})


def a_limit_intent(intent_id: str = "cli-test-0001", price: str = "29000") -> OrderIntent:
    return OrderIntent(
        intent_id=intent_id,
        account="paper",
        order=OrderSpec(symbol="BTC/USDT", side="buy", amount="0.01", price=price),
    )


SUBMIT = ("submit", "--symbol", "BTC/USDT", "--side", "buy", "--amount", "0.01")


def test_every_command_that_talks_to_temporal_prints_json_for_scripts() -> None:
    for command in TEMPORAL_COMMANDS:
        if command == ["worker"]:
            continue
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, (command, result.output)
        assert "--json" in result.output, command


def test_halt_and_resume_print_the_halts_as_json(stand_in: StandIn) -> None:
    halted = cli(
        "halt", "--account", "paper", "--symbol", "BTC/USDT", "--reason", "drill", "--json"
    )
    assert halted.exit_code == 0, halted.output
    assert json.loads(halted.stdout) == {
        "account": "paper",
        "symbol": "BTC/USDT",
        "cancel_all": False,
        "reason": "drill",
        "halts": {"BTC/USDT": "drill"},
    }
    resumed = cli("resume", "--account", "paper", "--symbol", "BTC/USDT", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout) == {"account": "paper", "symbol": "BTC/USDT", "halts": {}}


def test_orphans_adopt_and_cancel_print_json(stand_in: StandIn) -> None:
    order = placed(a_limit_intent()).order
    assert order is not None
    stand_in.orphan_list = [Orphan(order=order, kind="manual")]

    adopted = cli("orphans", "adopt", order.client_order_id, "--account", "paper", "--id", "x1")
    assert adopted.exit_code == 0, adopted.output
    assert "adopted" in adopted.stdout
    adopted = cli(
        "orphans", "adopt", order.client_order_id, "--account", "paper", "--id", "x1", "--json"
    )
    assert adopted.exit_code == 0, adopted.output
    report = json.loads(adopted.stdout)
    assert report["intent"]["intent_id"] == "x1" and report["status"] == "open"

    args = ("--account", "paper", "--symbol", "BTC/USDT", "--json")
    cancelled = cli("orphans", "cancel", order.client_order_id, *args)
    assert cancelled.exit_code == 0, cancelled.output
    shown = json.loads(cancelled.stdout)
    assert shown["client_order_id"] == order.client_order_id
    assert shown["order"]["status"] == "canceled"
    missing = json.loads(cli("orphans", "cancel", "ek-nope-0", *args).stdout)
    assert missing["order"] is None


def test_group_commands_print_the_ids_they_started_as_json(
    stand_in: StandIn, tmp_path: Path
) -> None:
    bracket = cli(
        *("group", "bracket", "--symbol", "ETH/USDT", "--side", "buy", "--amount", "1"),
        *("--price", "1990", "--take-profit", "2100", "--stop-loss", "1900", "--id", "b1"),
        "--json",
    )
    assert bracket.exit_code == 0, bracket.output
    assert json.loads(bracket.stdout) == {
        "group_id": "b1",
        "workflow_id": "group-b1",
        "kind": "bracket",
        "members": ["b1.entry", "b1.take_profit", "b1.stop_loss"],
    }

    members = [
        a_limit_intent("o1-low", price="29000").model_dump(mode="json"),
        a_limit_intent("o1-high", price="31000").model_dump(mode="json"),
    ]
    file = tmp_path / "oco.json"
    file.write_text(json.dumps({"group_id": "o1", "account": "paper", "members": members}))
    oco = cli("group", "oco", str(file), "--json")
    assert oco.exit_code == 0, oco.output
    assert json.loads(oco.stdout)["members"] == ["o1-low", "o1-high"]

    cancelled = cli("group", "cancel", "o1", "--reason", "done", "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout) == {"group_id": "o1", "cancel_sent": True, "reason": "done"}
    assert ("cancel_group", ("o1", "done")) in stand_in.calls


def test_repair_prints_the_reset_point_as_json(
    stand_in: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    point = ResetPoint(
        workflow_id="intent-stuck-1",
        run_id="run-1",
        workflow_task_completed_id=33,
        diverged_at=35,
        error="[TMPRL1100] Nondeterminism error",
        discarded_orders=("ek-abc-1",),
    )

    async def stuck_run(client: Any, workflow_id: str) -> ResetPoint:
        return point

    async def reset(client: Any, at: ResetPoint, reason: str) -> str:
        return "run-2"

    monkeypatch.setattr(cli_module, "stuck_run", stuck_run)
    monkeypatch.setattr(cli_module, "reset", reset)
    shown = cli("repair", "stuck-1", "--json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["reset"] is False and report["new_run_id"] is None
    assert report["reset_point"]["workflow_task_completed_id"] == 33
    assert report["reset_point"]["discarded_orders"] == ["ek-abc-1"]
    done = json.loads(cli("repair", "stuck-1", "--yes", "--json").stdout)
    assert done["reset"] is True and done["new_run_id"] == "run-2"


def test_submit_maps_reduce_only_and_expires_at(stand_in: StandIn) -> None:
    result = cli(
        *SUBMIT,
        *("--price", "29000", "--reduce-only", "--expires-at", "2999-01-01T12:00:00+02:00"),
    )
    assert result.exit_code == 0, result.output
    [(_, intent)] = [call for call in stand_in.calls if call[0] == "submit"]
    assert intent.order.reduce_only is True
    assert intent.expires_at == datetime(2999, 1, 1, 10, tzinfo=UTC)


def test_submit_refuses_a_bad_expiry_before_connecting() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens: refused before connecting
    for value, says in (
        ("tomorrow", "not an ISO-8601 time"),
        ("2999-01-01T12:00:00", "needs a time zone"),
        ("2001-01-01T12:00:00Z", "has already passed"),
    ):
        args = (*SUBMIT, "--price", "29000", "--expires-at", value, "--address", address)
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, (value, result.output)
        assert "--expires-at" in result.output and says in result.output, value


def test_submit_wait_shows_the_intent_resting_with_its_order(stand_in: StandIn) -> None:
    intent = a_limit_intent()
    stand_in.states = [
        IntentState(intent=intent, desired=intent.order),  # placing
        IntentState(
            intent=intent,
            desired=intent.order,
            placements=(placed(intent),),
            next_placement=1,
            status=IntentStatus.OPEN,
            reconciliation_status=ReconciliationStatus.IN_SYNC,
        ),
    ]
    result = cli(*SUBMIT, "--price", "29000", "--id", intent.intent_id, "--wait")
    assert result.exit_code == 0, result.output
    assert f"{intent.intent_id} resting: order ek-test-{intent.intent_id}-0" in result.stdout
    assert ("wait_for", timedelta(seconds=30)) in stand_in.calls


def test_submit_wait_json_has_the_outcome_and_the_state(stand_in: StandIn) -> None:
    intent = a_limit_intent()
    filled = placed(intent, filled="0.01")
    filled = filled.model_copy(
        update={
            "phase": PlacementPhase.FILLED,
            "order": filled.order.model_copy(update={"status": ExchangeOrderStatus.CLOSED}),
        }
    )
    stand_in.states = [
        IntentState(
            intent=intent,
            desired=intent.order,
            placements=(filled,),
            status=IntentStatus.FILLED,
            reconciliation_status=ReconciliationStatus.IN_SYNC,
        )
    ]
    args = (*SUBMIT, "--price", "29000", "--id", intent.intent_id, "--wait", "--json")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["outcome"] == "filled" and shown["intent_id"] == intent.intent_id
    assert shown["state"]["filled"] == "0.01"

    human = cli(*args[:-1])
    assert f"{intent.intent_id} filled: 0.01 @ 29000" in human.stdout


def test_submit_wait_for_a_rejected_intent_says_why_and_exits_2(stand_in: StandIn) -> None:
    intent = a_limit_intent(price="29000.001")
    stand_in.states = [
        IntentState(
            intent=intent,
            desired=intent.order,
            status=IntentStatus.REJECTED,
            outcome_reason="price 29000.001 is not a multiple of the tick size 0.01",
        )
    ]
    args = (*SUBMIT, "--price", "29000.001", "--id", intent.intent_id, "--wait")
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert f"intent {intent.intent_id} rejected: price 29000.001 is not" in result.output
    shown = cli(*args, "--json")
    assert shown.exit_code == 2
    assert json.loads(shown.stdout)["outcome"] == "rejected"

    stand_in.states = [stand_in.states[0].model_copy(update={"status": IntentStatus.FAILED})]
    assert cli(*args).exit_code == 1


def test_submit_wait_gives_up_after_its_timeout(stand_in: StandIn) -> None:
    intent = a_limit_intent()
    stand_in.states = [IntentState(intent=intent, desired=intent.order)]  # never placed
    args = (*SUBMIT, "--price", "29000", "--id", intent.intent_id, "--wait", "--wait-timeout", "2")
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "did not rest, fill or end within 2 s" in result.output
    assert f"exchange-kernel status {intent.intent_id}" in result.output
    assert ("wait_for", timedelta(seconds=2)) in stand_in.calls
    shown = cli(*args, "--json")
    assert shown.exit_code == 1
    assert json.loads(shown.stdout)["outcome"] == "timeout"


def test_submit_wait_shows_a_held_stop_as_held(stand_in: StandIn) -> None:
    intent = OrderIntent(
        intent_id="cli-held-1",
        account="paper",
        hold_stop=True,
        order=OrderSpec(
            symbol="BTC/USDT", side="sell", type="stop_market", amount="0.01", stop_price="29000"
        ),
    )
    stand_in.states = [
        IntentState(
            intent=intent, desired=intent.order, reconciliation_status=ReconciliationStatus.IN_SYNC
        )
    ]
    result = cli(
        *("submit", "--symbol", "BTC/USDT", "--side", "sell", "--amount", "0.01"),
        *("--type", "stop_market", "--stop-price", "29000", "--wait"),
    )
    assert result.exit_code == 0, result.output
    assert "held: the workflow holds the stop" in result.stdout
    assert "last <= 29000" in result.stdout


def listed(intent_id: str, status: str = "open", reconciliation: str = "in_sync") -> IntentListing:
    return IntentListing(
        intent_id=intent_id,
        account="paper-replace",
        symbol="BTC/USDT",
        group_id=None,
        status=status,
        reconciliation_status=reconciliation,
        summary="buy 0.01 BTC/USDT @ 29000 stop 28000",
        started_at=None,
        closed_at=None,
    )


def test_list_shows_ids_whole_at_80_columns(stand_in: StandIn) -> None:
    ids = ["cli-0123456789ab", "bracket-0123456789-take_profit", "adopted-0123456789"]
    stand_in.listings = [listed(intent_id, status="partially_filled") for intent_id in ids]
    result = cli("list", columns=80)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for intent_id in ids:
        assert intent_id in result.stdout


def test_stale_shows_ids_whole_at_80_columns(stand_in: StandIn) -> None:
    ids = ["cli-0123456789ab", "t-0123456789"]
    stand_in.listings = [listed(intent_id) for intent_id in ids]
    result = cli("stale", columns=80)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    for intent_id in ids:
        assert intent_id in result.stdout


def test_list_gives_ids_too_long_for_a_table_a_line_each(stand_in: StandIn) -> None:
    long_id = "a-rather-long-intent-id-from-a-strategy-2026-12-03T20.11.24Z-0001" + "-x" * 20
    stand_in.listings = [listed(long_id), listed("cli-0123456789ab")]
    result = cli("list", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert long_id in lines and "cli-0123456789ab" in lines
    assert "  paper-replace  open  in_sync  buy 0.01 BTC/USDT @ 29000 stop 28000" in lines


def test_list_filters_by_strategy(stand_in: StandIn) -> None:
    result = cli("list", "--strategy", "grid-1", "--json")
    assert result.exit_code == 0, result.output
    [(_, filters)] = [call for call in stand_in.calls if call[0] == "list"]
    assert filters["strategy"] == "grid-1"


def test_a_finished_intent_reads_ended_not_in_sync_in_tables(stand_in: StandIn) -> None:
    intent = a_limit_intent()
    stand_in.states = [
        IntentState(
            intent=intent,
            desired=intent.order,
            status=IntentStatus.REJECTED,
            reconciliation_status=ReconciliationStatus.IN_SYNC,
            outcome_reason="tick size",
        )
    ]
    table = cli("status", intent.intent_id)
    assert table.exit_code == 0, table.output
    [row] = [line for line in table.stdout.splitlines() if "reconciliation" in line]
    assert "ended" in row and "in_sync" not in row
    shown = json.loads(cli("status", intent.intent_id, "--json").stdout)
    assert shown["reconciliation_status"] == "in_sync"  # the field as it is

    stand_in.listings = [listed("t-ended", status="rejected"), listed("t-open")]
    rows = cli("list").stdout.splitlines()
    assert "ended" in next(line for line in rows if "t-ended" in line)
    assert "in_sync" in next(line for line in rows if "t-open" in line)


# --- submit --wait, list --strategy and status against the real stack ---------------------------


@pytest.fixture
def on_the_test_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's client starts intents on the test worker's task queue, not the CLI's default."""
    connect = IntentClient.connect

    async def on_test_queue(*args: Any, **kwargs: Any) -> IntentClient:
        client = await connect(*args, **kwargs)
        client.task_queue = TEST_TASK_QUEUE
        return client

    monkeypatch.setattr(IntentClient, "connect", staticmethod(on_test_queue))


async def test_submit_wait_shows_resting_filled_and_rejected_intents(
    temporal_client: Client, intents: IntentClient, paper: Paper, on_the_test_worker: None
) -> None:
    server = temporal_client.service_client.config.target_host
    await paper.move_price("BTC/USDT", "30000")
    strategy = f"cli-wait-{uuid.uuid4().hex[:8]}"

    async def invoke(*args: str) -> Result:
        command = [*args, "--address", server]
        return await asyncio.to_thread(runner.invoke, app, command, env={"COLUMNS": "200"})

    async def submit(intent_id: str, *args: str) -> Result:
        return await invoke(*SUBMIT, "--id", intent_id, "--strategy", strategy, "--wait", *args)

    resting_id, filled_id, rejected_id = (f"{strategy}-{n}" for n in ("rest", "fill", "reject"))
    resting = await submit(resting_id, "--price", "29000", "--json")
    assert resting.exit_code == 0, resting.output
    shown = json.loads(resting.stdout)
    assert shown["outcome"] == "resting" and shown["state"]["status"] == "open"

    filled = await submit(filled_id, "--type", "market")
    assert filled.exit_code == 0, filled.output
    assert f"{filled_id} filled: 0.01 @ " in filled.stdout

    held_id = f"{strategy}-held"  # Binance spot has no stop-market: the workflow holds it
    held = await invoke(
        *("submit", "--symbol", "BTC/USDT", "--side", "sell", "--amount", "0.01"),
        *("--type", "stop_market", "--stop-price", "29000", "--id", held_id, "--wait"),
    )
    assert held.exit_code == 0, held.output
    assert f"{held_id} held: the workflow holds the stop" in held.stdout
    await intents.cancel(held_id)

    rejected = await submit(rejected_id, "--price", "29000.001")
    assert rejected.exit_code == 2, rejected.output
    assert f"intent {rejected_id} rejected: " in rejected.output
    assert "tick size" in rejected.output

    status = await invoke("status", rejected_id)
    assert status.exit_code == 0, status.output
    [row] = [line for line in status.stdout.splitlines() if "reconciliation" in line]
    assert "ended" in row and "in_sync" not in row

    async def all_listed() -> bool:
        listed = await invoke("list", "--strategy", strategy, "--json")
        assert listed.exit_code == 0, listed.output
        found = {row["intent_id"] for row in json.loads(listed.stdout)}
        return found == {resting_id, filled_id, rejected_id}

    await eventually("the strategy's intents listed", all_listed)
    other = await invoke("list", "--strategy", f"{strategy}-other", "--json")
    assert json.loads(other.stdout) == []

    await intents.cancel(resting_id)
    assert (await intents.result(resting_id)).status is IntentStatus.CANCELED


async def test_halt_and_resume_json_through_the_account_sync(
    temporal_client: Client, intents: IntentClient
) -> None:
    server = temporal_client.service_client.config.target_host
    scope = ("--account", "paper", "--symbol", "DOGE/USDT")  # no test trades it

    async def invoke(*args: str) -> Result:
        return await asyncio.to_thread(runner.invoke, app, [*args, "--address", server])

    try:
        halted = await invoke("halt", *scope, "--reason", "cli json", "--json")
        assert halted.exit_code == 0, halted.output
        shown = json.loads(halted.stdout)
        assert shown["halts"]["DOGE/USDT"] == "cli json" and shown["cancel_all"] is False
    finally:
        resumed = await invoke("resume", *scope, "--json")
    assert resumed.exit_code == 0, resumed.output
    assert "DOGE/USDT" not in json.loads(resumed.stdout)["halts"]


async def test_group_bracket_and_cancel_json_name_the_group_and_its_legs(
    temporal_client: Client, intents: IntentClient, paper: Paper, on_the_test_worker: None
) -> None:
    server = temporal_client.service_client.config.target_host
    await paper.move_price("ETH/USDT", "2000")
    group_id = f"cli-bracket-{uuid.uuid4().hex[:8]}"

    async def invoke(*args: str) -> Result:
        return await asyncio.to_thread(runner.invoke, app, [*args, "--address", server])

    bracket = await invoke(
        *("group", "bracket", "--symbol", "ETH/USDT", "--side", "buy", "--amount", "0.1"),
        *("--price", "1500", "--take-profit", "2100", "--stop-loss", "1400"),
        *("--id", group_id, "--json"),
    )
    assert bracket.exit_code == 0, bracket.output
    shown = json.loads(bracket.stdout)
    assert shown["group_id"] == group_id and shown["kind"] == "bracket"
    entry = shown["members"][0]
    await intents.wait_for(entry, lambda s: s.status is IntentStatus.OPEN)

    cancelled = await invoke("group", "cancel", group_id, "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout)["cancel_sent"] is True
    await asyncio.wait_for(intents.group_result(group_id), 30)
    assert (await intents.state(entry)).status is IntentStatus.CANCELED
