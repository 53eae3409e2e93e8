"""The seed's store interface, complete (docs/concepts.md, "The seed's interfaces"): the intent
owning an exchange order id, intents by reconciliation status, stale intents, and a resync of
every intent of an account, through the client and the command. Real dev server, worker and
paper exchange."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner, Result

from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient, IntentNotFound
from exchange_kernel.devserver import LAST_SYNC_AT
from exchange_kernel.models import IntentState, IntentStatus
from tests.conftest import Paper, eventually
from tests.test_intents import new_intent, resting

runner = CliRunner()
LOOKUPS = ["GET /api/v3/order"]
SYNC_READS = ["GET /api/v3/openOrders", "GET /api/v3/myTrades"]


def cli_args(intents: IntentClient, *args: str) -> list[str]:
    """`args` against the test server (the namespace is the dev server's default)."""
    address = intents.temporal.service_client.config.target_host
    return [*args, "--address", address, "--namespace", intents.temporal.namespace]


async def invoke(intents: IntentClient, *args: str) -> Result:
    # In a thread: the command runs its own event loop, and the worker runs in this one.
    # Wide: rich tables fold long cells at the default 80 columns.
    return await asyncio.to_thread(
        runner.invoke, app, cli_args(intents, *args), env={"COLUMNS": "200"}
    )


# A polled intent with this stale bound looks at its order every 1.5 s at most, so a healthy
# one is never older than a few seconds (an input of the intent, not a patched global: that
# changed the decisions of every run the session's worker held).
QUICK = timedelta(seconds=3)


async def rest(
    intents: IntentClient,
    account: str = "paper",
    price: str = "21000",
    stale_after: timedelta | None = None,
) -> IntentState:
    item = new_intent(price=price, account=account).model_copy(update={"stale_after": stale_after})
    await intents.submit(item)
    return await intents.wait_for(
        item.intent_id, lambda s: resting(s) and (s.watched or account != "paper")
    )


async def finish(intents: IntentClient, *intent_ids: str) -> None:
    for intent_id in intent_ids:
        await intents.cancel(intent_id)
        assert (await intents.result(intent_id)).status is IntentStatus.CANCELED


# --- get_order_state_by_exchange_id -----------------------------------------------------------


async def test_the_intent_owning_an_exchange_order_is_found_by_its_id(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    state = await rest(intents)
    intent_id = state.intent.intent_id
    order = state.placements[-1].order
    assert order is not None

    async def found() -> bool:
        try:
            owner = await intents.intent_by_exchange_order_id(order.exchange_order_id)
        except IntentNotFound:
            return False  # visibility has not caught up yet
        return owner.intent.intent_id == intent_id

    await eventually("the owner found", found, 30)
    with pytest.raises(IntentNotFound, match="no intent owns exchange order"):
        await intents.intent_by_exchange_order_id("no-such-order-4711")

    shown = await invoke(intents, "owner", order.exchange_order_id, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["intent"]["intent_id"] == intent_id
    table = await invoke(intents, "owner", order.exchange_order_id)
    assert table.exit_code == 0, table.output
    assert f"intent {intent_id}" in table.output
    missing = await invoke(intents, "owner", "no-such-order-4711")
    assert missing.exit_code == 2
    assert "no intent owns exchange order 'no-such-order-4711'" in missing.output
    await finish(intents, intent_id)


# --- list_order_states(reconciliation_status) -------------------------------------------------


async def test_intents_are_listed_by_reconciliation_status(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent_id = (await rest(intents)).intent.intent_id

    async def listed(status: str) -> set[str]:
        rows = await intents.list(account="paper", reconciliation=status, limit=500)
        return {row.intent_id for row in rows}

    async def in_sync() -> bool:
        return intent_id in await listed("in_sync")

    await eventually("listed in_sync", in_sync, 30)
    for other in ("reconciling", "unknown", "stale"):
        assert intent_id not in await listed(other), other
    shown = await invoke(
        intents, "list", "--account", "paper", "--reconciliation", "in_sync", "--json"
    )
    assert shown.exit_code == 0, shown.output
    rows = {row["intent_id"]: row for row in json.loads(shown.stdout)}
    assert rows[intent_id]["reconciliation_status"] == "in_sync"
    assert all(row["reconciliation_status"] == "in_sync" for row in rows.values())
    await finish(intents, intent_id)


def test_list_refuses_an_unknown_reconciliation_status_before_connecting() -> None:
    result = runner.invoke(app, ["list", "--reconciliation", "drifting"])
    assert result.exit_code == 2
    assert "--reconciliation must be one of in_sync, reconciling, unknown, stale" in result.output


# --- get_stale_orders(max_age) ----------------------------------------------------------------


async def stale_ids(intents: IntentClient, account: str, max_age: float = 4) -> set[str]:
    rows = await intents.stale_intents(timedelta(seconds=max_age), account=account)
    return {row.intent_id for row in rows}


async def test_a_polled_intent_is_stale_while_its_looks_fail_and_fresh_again_after(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent_id = (await rest(intents, account="paper-replace", stale_after=QUICK)).intent.intent_id
    await asyncio.sleep(5)  # older than max_age, but it keeps looking
    assert intent_id not in await stale_ids(intents, "paper-replace")

    await paper.faults(error_503=1.0, endpoints=LOOKUPS)
    try:

        async def listed() -> bool:
            return intent_id in await stale_ids(intents, "paper-replace")

        await eventually("stale", listed, 30)
        rows = await intents.stale_intents(timedelta(seconds=4), account="paper-replace")
        row = next(r for r in rows if r.intent_id == intent_id)
        assert not row.watched and row.account == "paper-replace"
        assert row.observed_at is not None
        assert datetime.now(UTC) - row.observed_at > timedelta(seconds=4)
        assert row.observed_at == (await intents.state(intent_id)).last_sync_at

        shown = await invoke(
            intents, "stale", "--max-age", "4", "--account", "paper-replace", "--json"
        )
        assert shown.exit_code == 0, shown.output
        data = {r["intent_id"]: r for r in json.loads(shown.stdout)}
        assert data[intent_id]["watched"] is False and data[intent_id]["age_seconds"] > 4
        table = await invoke(intents, "stale", "--max-age", "4", "--account", "paper-replace")
        assert table.exit_code == 0, table.output
        assert intent_id in table.output and "its own looks" in table.output
    finally:
        await paper.faults()

    async def fresh() -> bool:
        return intent_id not in await stale_ids(intents, "paper-replace")

    await eventually("fresh again", fresh, 30)
    await finish(intents, intent_id)


async def test_a_watched_intent_is_observed_by_its_account_syncs_rounds(
    intents: IntentClient, paper: Paper
) -> None:
    """Its own last look ages (the sync tells it nothing while its order does not change),
    yet every completed round of the sync observed it; when the rounds fail, it is stale."""
    await paper.move_price("BTC/USDT", "30000")
    state = await rest(intents)
    intent_id = state.intent.intent_id
    # Longer than 3 s plus the REST rounds' interval (5 s while the user-data stream is up).
    await asyncio.sleep(9)
    assert (await intents.state(intent_id)).last_sync_at == state.last_sync_at
    # Not older than a round apart (every 5 s while the user-data stream is up, 2 s without).
    assert intent_id not in await stale_ids(intents, "paper", max_age=8)
    everyone = await intents.stale_intents(timedelta(0), account="paper")
    row = next(r for r in everyone if r.intent_id == intent_id)
    assert row.watched
    assert row.observed_at is not None and state.last_sync_at is not None
    assert row.observed_at > state.last_sync_at + timedelta(seconds=3)  # a round, not its look

    await paper.faults(error_503=1.0, endpoints=SYNC_READS)
    try:

        async def listed() -> bool:
            return intent_id in await stale_ids(intents, "paper")

        await eventually("stale while the rounds fail", listed, 30)
        shown = await invoke(intents, "stale", "--max-age", "4", "--account", "paper")
        assert shown.exit_code == 0, shown.output
        assert intent_id in shown.output and "account sync" in shown.output
    finally:
        await paper.faults()

    async def fresh() -> bool:
        # Within a round's interval (5 s while the user-data stream is up).
        return intent_id not in await stale_ids(intents, "paper", max_age=8)

    await eventually("fresh once a round completes", fresh, 40)
    await finish(intents, intent_id)


async def test_last_sync_at_in_visibility_is_never_later_than_the_last_observation(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent_id = (await rest(intents, account="paper-replace", stale_after=QUICK)).intent.intent_id
    await paper.faults(error_503=1.0, endpoints=LOOKUPS)
    try:
        # Its looks fail: it turns stale, which it publishes (an upsert with no observation).
        await eventually(
            "stale",
            lambda: reads_stale(intents, intent_id),
            30,
        )
        state = await intents.state(intent_id)
        execution = await intents.temporal.get_workflow_handle(f"intent-{intent_id}").describe()
        published = execution.typed_search_attributes.get(LAST_SYNC_AT)
        assert published is not None and state.last_sync_at is not None
        assert published <= state.last_sync_at
    finally:
        await paper.faults()
        await finish(intents, intent_id)


async def reads_stale(intents: IntentClient, intent_id: str) -> bool:
    rows = await intents.list(account="paper-replace", reconciliation="stale", limit=500)
    return any(row.intent_id == intent_id for row in rows)


def test_stale_refuses_a_negative_age_before_connecting() -> None:
    result = runner.invoke(app, ["stale", "--max-age", "-1"])
    assert result.exit_code == 2


# --- reconcile_intent / reconcile_all ---------------------------------------------------------


def looked_on_resync(state: IntentState, since: datetime) -> bool:
    return any(
        r.action == "lookup" and r.reason.startswith("resync") and r.at >= since
        for r in state.recent_actions
    )


async def test_every_running_intent_of_an_account_is_resynced(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    ids = [
        (await rest(intents, account="paper-replace", price=p)).intent.intent_id
        for p in ("21001", "21002")
    ]
    other = (await rest(intents, price="21003")).intent.intent_id  # another account

    async def visible() -> bool:
        rows = await intents.list(account="paper-replace", status="open", limit=500)
        return set(ids) <= {row.intent_id for row in rows}

    await eventually("visible", visible, 30)
    since = datetime.now(UTC)
    told = await intents.resync_account("paper-replace")
    assert set(ids) <= set(told) and other not in told
    for intent_id in ids:
        await intents.wait_for(intent_id, lambda s: looked_on_resync(s, since))
    assert not looked_on_resync(await intents.state(other), since)

    since = datetime.now(UTC)
    shown = await invoke(intents, "resync", "--account", "paper-replace", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["account"] == "paper-replace" and set(ids) <= set(data["resynced"])
    for intent_id in ids:
        await intents.wait_for(intent_id, lambda s: looked_on_resync(s, since))
    counted = await invoke(intents, "resync", "--account", "paper-replace")
    assert counted.exit_code == 0, counted.output
    assert "resync sent to" in counted.output and "running intent(s) of paper-replace" in (
        counted.output
    )

    since = datetime.now(UTC)
    one = await invoke(intents, "resync", other)
    assert one.exit_code == 0, one.output
    await intents.wait_for(other, lambda s: looked_on_resync(s, since))

    await finish(intents, *ids, other)
    done = await invoke(intents, "resync", other)
    assert done.exit_code == 2 and "already canceled" in done.output


def test_resync_takes_an_intent_or_an_account() -> None:
    for args in ([], ["some-intent", "--account", "paper"]):
        result = runner.invoke(app, ["resync", *args])
        assert result.exit_code == 2, args
        assert "give an intent id or --account" in result.output
