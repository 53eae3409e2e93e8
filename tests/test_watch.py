"""End to end: strategy code follows intents through `IntentClient.watch` (the `changes` long
poll), on the real dev server and the paper exchange, without polling their states."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy

from exchange_kernel.client import IntentClient, IntentNotFound, IntentRejected
from exchange_kernel.devserver import intent_search_attributes
from exchange_kernel.models import (
    IntentEvent,
    IntentEventKind,
    IntentEvents,
    IntentStart,
    IntentStatus,
    OrderIntent,
)
from exchange_kernel.watch import IntentWatch, WatchCursor
from exchange_kernel.workflows.intent import CHANGES_WAIT, OrderIntentWorkflow
from tests.conftest import TASK_QUEUE, Paper, eventually
from tests.test_intents import new_intent, resting

K = IntentEventKind


class Collected:
    """A watch consumed in the background, every event kept (with the cursor after it)."""

    def __init__(self, watch: IntentWatch) -> None:
        self.watch = watch
        self.events: list[IntentEvent] = []
        self.cursors: list[str] = []
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.watch:
            self.events.append(event)
            self.cursors.append(self.watch.cursor)

    def of(self, intent_id: str) -> list[IntentEvent]:
        return [e for e in self.events if e.intent_id == intent_id]

    async def until(self, what: str, check: Callable[[list[IntentEvent]], bool]) -> None:
        async def holds() -> bool:
            if self.task.done():
                self.task.result()  # a failed watch fails the test with its error
            return check(self.events)

        await eventually(what, holds)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.watch.aclose()


def statuses(events: list[IntentEvent]) -> list[IntentStatus]:
    return [e.status for e in events if e.kind is K.STATUS]


def assert_numbered(events: list[IntentEvent]) -> None:
    """One intent's events: seqs 1, 2, 3, ... with none missing or repeated."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), [
        (e.seq, e.kind) for e in events
    ]


async def test_watching_an_intent_yields_its_fills_and_status_in_order_and_ends_with_it(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="29000", amount="0.02")
    await intents.submit(intent)
    watched = Collected(intents.watch(intent_id=intent.intent_id))
    await watched.until("open", lambda es: IntentStatus.OPEN in statuses(es))

    await paper.move_price("BTC/USDT", "29000", volume="0.005")
    await intents.resync(intent.intent_id)
    await watched.until("the first fill", lambda es: any(e.kind is K.FILL for e in es))
    await paper.move_price("BTC/USDT", "28990")
    await intents.resync(intent.intent_id)
    await asyncio.wait_for(watched.task, 30)  # ends by itself after the last event

    events = watched.events
    assert_numbered(events)
    assert statuses(events) == [
        IntentStatus.OPEN,
        IntentStatus.PARTIALLY_FILLED,
        IntentStatus.FILLED,
    ]
    fills = [e for e in events if e.kind is K.FILL]
    assert fills[0].fill is not None and fills[0].fill.amount == Decimal("0.005")
    assert fills[0].filled == Decimal("0.005")
    assert sum(e.fill.amount for e in fills if e.fill) == Decimal("0.02")
    assert all(e.fill and e.fill.price == Decimal("29000") and e.fill.fee for e in fills)
    assert len({e.fill.trade_id for e in fills if e.fill}) == len(fills)
    assert events[-1].kind is K.STATUS and events[-1].status is IntentStatus.FILLED
    assert events[-1].filled == Decimal("0.02")
    final = await intents.result(intent.intent_id)
    assert [e.seq for e in final.events] == [e.seq for e in events]


async def test_accepted_and_refused_modifications_and_the_cancel_are_watched(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("ETH/USDT", "2000")
    intent = new_intent(symbol="ETH/USDT", amount="1", price="1990")
    await intents.submit(intent)
    watched = Collected(intents.watch(intent_id=intent.intent_id))
    await watched.until("open", lambda es: IntentStatus.OPEN in statuses(es))
    await paper.move_price("ETH/USDT", "1990", volume="0.3")
    await intents.resync(intent.intent_id)
    await watched.until("the fill", lambda es: any(e.kind is K.FILL for e in es))
    await paper.move_price("ETH/USDT", "2000")

    await intents.modify(intent.intent_id, price="1985")
    await intents.signal_modify(intent.intent_id, amount="0.2")  # below the 0.3 filled
    await watched.until("the refusal", lambda es: any(e.kind is K.MODIFICATION_REFUSED for e in es))
    await intents.cancel(intent.intent_id, "strategy done")
    await asyncio.wait_for(watched.task, 30)

    events = watched.events
    assert_numbered(events)
    [accepted] = [e for e in events if e.kind is K.MODIFICATION_ACCEPTED]
    assert accepted.revision == 1
    assert accepted.desired is not None and accepted.desired.price == Decimal("1985")
    [refused] = [e for e in events if e.kind is K.MODIFICATION_REFUSED]
    assert refused.reason == "amount 0.2 is below the 0.3 already filled"
    [cancel] = [e for e in events if e.kind is K.CANCEL_REQUESTED]
    assert cancel.reason == "strategy done"
    order = [e.kind for e in events if e.kind is not K.STATUS]
    assert order == [K.FILL, K.MODIFICATION_ACCEPTED, K.MODIFICATION_REFUSED, K.CANCEL_REQUESTED]
    assert events[-1].status is IntentStatus.CANCELED and events[-1].filled == Decimal("0.3")


async def test_a_modification_the_exchange_refuses_is_watched_with_the_revision_gone_back_to(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    # paper-real holds 2,000 USDT: 0.5 BTC at 28,000 is far beyond it.
    intent = new_intent(price="28000", amount="0.01", account="paper-real")
    await intents.submit(intent)
    watched = Collected(intents.watch(intent_id=intent.intent_id))
    await watched.until("open", lambda es: IntentStatus.OPEN in statuses(es))
    with pytest.raises(IntentRejected, match=r"InsufficientFunds|insufficient"):
        await intents.modify(intent.intent_id, amount="0.5")
    await watched.until("the refusal", lambda es: any(e.kind is K.MODIFICATION_REFUSED for e in es))
    refused = next(e for e in watched.events if e.kind is K.MODIFICATION_REFUSED)
    assert (refused.revision, refused.reverted_to) == (1, 0)
    assert refused.desired is not None and refused.desired.amount == Decimal("0.01")
    await intents.cancel(intent.intent_id)
    await asyncio.wait_for(watched.task, 30)


async def test_a_watch_resumed_from_a_cursor_yields_only_later_events_and_never_skips_one(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("SOL/USDT", "100")
    intent = new_intent(symbol="SOL/USDT", amount="1", price="95")
    await intents.submit(intent)
    first = Collected(intents.watch(intent_id=intent.intent_id))
    for price in ("94", "93", "92"):
        await intents.modify(intent.intent_id, price=price)
    await first.until(
        "three modifications",
        lambda es: sum(e.kind is K.MODIFICATION_ACCEPTED for e in es) == 3,
    )
    await first.stop()
    # Resume from the middle: after the second event.
    taken_at = first.events[1].seq
    cursor = first.cursors[1]
    await intents.modify(intent.intent_id, price="91")
    await intents.cancel(intent.intent_id)
    second = Collected(intents.watch(intent_id=intent.intent_id, cursor=cursor))
    await asyncio.wait_for(second.task, 30)

    assert second.events[0].seq == taken_at + 1
    assert_numbered([*first.events[:2], *second.events])
    assert second.events[-1].status is IntentStatus.CANCELED
    prices = [
        e.desired.price for e in second.events if e.desired and e.kind is K.MODIFICATION_ACCEPTED
    ]
    assert prices[-1] == Decimal("91")
    # A cursor taken after the last event: nothing more to yield, the watch ends at once.
    done = Collected(intents.watch(intent_id=intent.intent_id, cursor=second.cursors[-1]))
    await asyncio.wait_for(done.task, 10)
    assert done.events == []


async def test_watching_a_strategy_picks_up_an_intent_submitted_after_the_watch_began(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    strategy = f"s-{uuid.uuid4().hex[:8]}"
    early = tagged(new_intent(price="27000"), strategy)
    await intents.submit(early)
    gone = tagged(new_intent(price="27000"), strategy)  # ended before the watch began
    await intents.submit(gone)
    await intents.cancel(gone.intent_id)
    await intents.result(gone.intent_id)
    await intents.wait_for(early.intent_id, resting)
    watched = Collected(intents.watch(strategy_id=strategy))
    await watched.until("the running intent", lambda es: bool(watched.of(early.intent_id)))

    late = tagged(new_intent(price="29500"), strategy)
    await intents.submit(late)
    await paper.move_price("BTC/USDT", "29500")
    await intents.resync(late.intent_id)
    await watched.until(
        "the late intent filled",
        lambda es: IntentStatus.FILLED in statuses(watched.of(late.intent_id)),
    )
    other = new_intent(price="27000")  # another strategy's: not watched
    await intents.submit(other)
    await intents.cancel(early.intent_id)
    await watched.until(
        "the early intent cancelled",
        lambda es: IntentStatus.CANCELED in statuses(watched.of(early.intent_id)),
    )
    await watched.stop()
    assert_numbered(watched.of(late.intent_id))
    assert_numbered(watched.of(early.intent_id))
    assert {e.intent_id for e in watched.events} == {early.intent_id, late.intent_id}
    await intents.cancel(other.intent_id)


async def test_watching_an_account_picks_up_a_new_intent_and_resumes_from_its_cursor(
    intents: IntentClient, paper: Paper
) -> None:
    account = "paper-held"  # few intents of other tests live there
    await paper.move_price("ETH/USDT", "2000")
    watched = Collected(intents.watch(account=account))
    await asyncio.sleep(0.5)
    first = new_intent(symbol="ETH/USDT", amount="0.1", price="1900", account=account)
    await intents.submit(first)
    await watched.until(
        "the new intent open", lambda es: IntentStatus.OPEN in statuses(watched.of(first.intent_id))
    )
    cursor = watched.cursors[-1]
    await watched.stop()

    # While nobody watches: it is modified and cancelled, and another intent comes and goes.
    await intents.modify(first.intent_id, price="1901")
    await intents.cancel(first.intent_id)
    second = new_intent(symbol="ETH/USDT", amount="0.1", price="1800", account=account)
    await intents.submit(second)
    await intents.wait_for(second.intent_id, resting)
    await intents.cancel(second.intent_id)
    await intents.result(second.intent_id)

    resumed = Collected(intents.watch(account=account, cursor=cursor))
    await resumed.until(
        "both cancelled",
        lambda es: (
            IntentStatus.CANCELED in statuses(resumed.of(first.intent_id))
            and IntentStatus.CANCELED in statuses(resumed.of(second.intent_id))
        ),
    )
    await resumed.stop()
    before = watched.of(first.intent_id)
    after = resumed.of(first.intent_id)
    assert after[0].seq == before[-1].seq + 1  # only later events, none skipped
    assert_numbered([*before, *after])
    assert_numbered(resumed.of(second.intent_id))


async def test_a_pending_long_poll_does_not_hold_back_continue_as_new(
    intents: IntentClient, paper: Paper
) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="26000", account="paper-replace")  # polls on its own
    # Short runs: the intent continues as new past 60 history events.
    await intents.temporal.start_workflow(
        OrderIntentWorkflow.run,
        IntentStart(intent=intent, max_run_events=60),
        id=intent.workflow_id,
        task_queue=TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=intent_search_attributes(intent),
    )
    await intents.wait_for(intent.intent_id, resting)
    handle = intents.temporal.get_workflow_handle(intent.workflow_id)
    first_run = (await handle.describe()).run_id
    watched = Collected(intents.watch(intent_id=intent.intent_id))
    await watched.until("open", lambda es: IntentStatus.OPEN in statuses(es))
    await asyncio.sleep(0.5)  # the next long poll is waiting in the workflow

    started = time.monotonic()
    for _ in range(20):  # each resync is a look: a few history events
        await intents.resync(intent.intent_id)
        await asyncio.sleep(0.05)

    async def continued() -> bool:
        return (await handle.describe()).run_id != first_run

    # Well within the long poll's own wait: the poll let go of the run.
    await eventually("continue-as-new", continued, within=CHANGES_WAIT.total_seconds() / 2)
    assert time.monotonic() - started < CHANGES_WAIT.total_seconds() / 2
    # The watch follows the next run: its events go on from the same seq.
    await intents.modify(intent.intent_id, price="26001")
    await intents.cancel(intent.intent_id)
    await asyncio.wait_for(watched.task, 30)
    assert_numbered(watched.events)
    changes = [e.kind for e in watched.events if e.kind is not K.STATUS]
    assert changes[-2:] == [K.MODIFICATION_ACCEPTED, K.CANCEL_REQUESTED]
    assert watched.events[-1].status is IntentStatus.CANCELED


async def test_watching_an_unknown_intent_raises_not_found(intents: IntentClient) -> None:
    with pytest.raises(IntentNotFound, match="no intent 'no-such-intent'"):
        async for _ in intents.watch(intent_id="no-such-intent"):
            pass


def test_a_watch_takes_exactly_one_selector(intents: IntentClient) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        intents.watch()
    with pytest.raises(ValueError, match="exactly one"):
        intents.watch(intent_id="a", account="paper")
    with pytest.raises(ValueError, match="not a watch cursor"):
        intents.watch(intent_id="a", cursor="garbage!")


async def test_changes_refuses_a_negative_seq(intents: IntentClient, paper: Paper) -> None:
    await paper.move_price("BTC/USDT", "30000")
    intent = new_intent(price="27000")
    await intents.submit(intent)
    handle = intents.temporal.get_workflow_handle(intent.workflow_id)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("changes", -1, result_type=IntentEvents)
    assert "0 or more" in str(refused.value.cause)
    await intents.cancel(intent.intent_id)


def tagged(intent: OrderIntent, strategy_id: str) -> OrderIntent:
    return intent.model_copy(update={"strategy_id": strategy_id})


def test_a_cursor_round_trips_and_stays_printable() -> None:
    at = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    cursor = WatchCursor({"a": 3, "b.c:d-1": 12}, {"e": at}, at)
    text = cursor.encode()
    assert text.isascii() and " " not in text and "=" not in text
    again = WatchCursor.decode(text)
    assert (again.seqs, again.done, again.since) == (cursor.seqs, cursor.done, cursor.since)
    with pytest.raises(ValueError, match="not a watch cursor"):
        WatchCursor.decode(text[:-4])
