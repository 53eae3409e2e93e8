"""AccountSyncWorkflow: one per account, observing the account's orders in bulk.

Resting intents register here (`watch`) and stop polling their own orders. Each round asks the
exchange for the open orders and the new trades of the watched symbols (a cost per round that
does not grow with the number of resting intents), and signals `observed` to exactly the
intents whose orders changed.

Orders are mapped back to intents with `client_ids.Owners`: a readable client order id
(`ek-<digest>-<n>` and the other forms that spell the digest) names its intent; an opaque one
(UUID, 128-bit hex: exchanges that take nothing else) is recognised only because a watched intent
claims it (its ids are computed from the intent id, the exchange and the placement number).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout
from temporalio.workflow import ActivityCancellationType, ActivityHandle

with workflow.unsafe.imports_passed_through():
    from exchange_kernel.activities.errors import EXCHANGE_RETRY
    from exchange_kernel.client_ids import Owners
    from exchange_kernel.connection import account_task_queue, sync_task_queue
    from exchange_kernel.models import (
        ExchangeOrder,
        HaltRequest,
        IntentSignal,
        OrderLookup,
        ScanRequest,
        StreamRequest,
        SyncRequest,
        SyncResult,
        Value,
        WatchRequest,
        halt_scope,
        workflow_id_for,
    )
    from exchange_kernel.reconcile import STALE_AFTER


# Signals sent to intents per workflow task.
SIGNAL_BATCH = 500
# Continue as new past this many history events, sooner than Temporal suggests: every `watch`
# is an event, and a worker that lost the run from its cache (a failed or timed-out task, e.g.
# a continue-as-new meeting a signal) replays the whole history in one task. Thousands of
# intents submitted at once made that replay outlast the task timeout, again and again.
MAX_HISTORY_EVENTS = 2000
# One round's budget, retries included: below the intents' staleness bound, so a failing
# exchange is noticed (and the watched intents told their view lapsed) within about it.
ROUND_BUDGET = timedelta(seconds=20)


class AccountSyncStart(Value):
    """The workflow's input; on continue-as-new, also what it carries over.

    Every number the workflow decides by is here (defaults: the module's constants), never
    read from a module global at run time: a test that changed a global in the worker's
    process changed the decisions of every sync it ran, and their histories did not replay."""

    account: str
    interval: timedelta = timedelta(seconds=2)
    # While the account's user-data stream is up, REST rounds are a backstop: this far apart.
    backstop_interval: timedelta = timedelta(seconds=5)
    watched: dict[str, str] = {}  # intent id -> symbol
    trade_cursor: dict[str, str] = {}
    round: int = 0
    # The kill switch, durable here: scope ("*" = the whole account, or a symbol) -> reason.
    halts: dict[str, str] = {}
    # Scopes halted with --cancel-all: intents that start resting there are cancelled too.
    cancel_all: tuple[str, ...] = ()
    # How watched intents spell their client order ids (from their watch requests): intent id
    # -> ccxt exchange id, and -> highest placement number known. Absent: the kernel's form.
    exchanges: dict[str, str] = {}
    placements: dict[str, int] = {}
    # The kernel's task queue: the account's activity queue derives from it. None: the
    # workflow's own.
    task_queue: str | None = None
    # The last completed round, and since when the watched intents were told the view lapsed.
    last_round_at: datetime | None = None
    # Per symbol: when a round last read it whole, and since when its intents were told
    # their view lapsed (a symbol whose reads keep failing lapses alone).
    symbol_read_at: dict[str, datetime] = {}
    lapsed: dict[str, datetime] = {}
    # The task queue of the worker process that served the last round (its snapshot is the
    # one the next round diffs against); None: the account's queue, any worker.
    home_queue: str | None = None
    # A symbol not read whole for this long lapses (its watched intents are told); a round's
    # budget; when to continue as new; signals per workflow task.
    stale_after: timedelta = STALE_AFTER
    round_budget: timedelta = ROUND_BUDGET
    max_history_events: int = MAX_HISTORY_EVENTS
    signal_batch: int = SIGNAL_BATCH


class AccountSyncStatus(Value):
    account: str
    watched: int
    symbols: tuple[str, ...]
    round: int
    last_round_at: datetime | None
    last_error: str | None
    signals_sent: int
    # The user-data stream: "starting", "up", "down" (lost, reconnecting: REST rounds at the
    # normal interval meanwhile) or "off: <why>" (REST alone).
    stream: str = "starting"
    stream_connects: int = 0
    stream_error: str | None = None


# A round's requests each take well under this (the account's rate limiter may hold one back
# for a while): a round silent for longer ran on a worker that died.
ROUND_HEARTBEAT_TIMEOUT = timedelta(seconds=5)
# After a round with a failed part, the next round comes this soon (the account queue's rate
# limit still holds it back when the account's budget is spent).
RETRY_PART_AFTER = timedelta(milliseconds=500)
# The user-data stream activity heartbeats every second; this long without one, it is started
# again (on another worker of the account, or the restarted one), 1-2 s later.
STREAM_HEARTBEAT_TIMEOUT = timedelta(seconds=3)
STREAM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=2),
)
# How long a round waits for the worker that served the previous one: a live worker polls its
# own queue all the time, so a round not started by then means the worker is gone (killed,
# restarted, shut down), and the round goes to any worker of the account instead.
HOME_WAIT = timedelta(seconds=3)


@workflow.defn(name="AccountSync")
class AccountSyncWorkflow:
    @workflow.init
    def __init__(self, start: AccountSyncStart) -> None:
        self.start = start
        self.watched: dict[str, str] = dict(start.watched)
        self.trade_cursor = dict(start.trade_cursor)
        self.round = start.round
        self.sync_requested = False
        self.last_round_at: datetime | None = start.last_round_at
        # Per symbol: the last round that read it whole; the intents told their view lapsed.
        self.symbol_read_at: dict[str, datetime] = dict(start.symbol_read_at)
        self.lapsed: dict[str, datetime] = dict(start.lapsed)
        self.home_queue: str | None = start.home_queue
        self.last_error: str | None = None
        self.failing_rounds = 0  # consecutive rounds with a failed part
        self.stream_activity: ActivityHandle[str] | None = None
        self.stream = "starting"
        self.stream_connects = 0
        self.stream_error: str | None = None
        self.signals_sent = 0
        self.halt_reasons: dict[str, str] = dict(start.halts)
        self.cancel_all: tuple[str, ...] = tuple(start.cancel_all)
        # Watched since the last round: the round checks each has an open order.
        self.fresh: set[str] = set(start.watched)
        # Watch and unwatch signals not applied yet (see `_apply_inbox`), and the client order
        # ids of the intents they register (for the `owners` query meanwhile).
        self.inbox: list[WatchRequest | str] = []
        self.pending_owners = Owners()
        self.notices_due = False
        self.stream_watcher: asyncio.Task[None] | None = None
        self.closing = False
        # Client order id -> intent, for every form (kept in step with `watched`).
        self.owner_ids = Owners()
        for intent_id in self.watched:
            self.owner_ids.add(
                intent_id, start.exchanges.get(intent_id), start.placements.get(intent_id, 0)
            )

    @workflow.signal
    def watch(self, request: WatchRequest) -> None:
        """Applied at the loop's next turn, never while a round's result is being handled:
        what a round signals then depends only on the state it started from, however the
        worker splits a workflow task's events into activations (a signal that came with a
        round's result is handled before it on replay, and may be handled after it live)."""
        self.inbox.append(request)
        self.pending_owners.add(request.intent_id, request.exchange, request.placement)
        if self.lapsed.get(request.symbol) is not None or self._halt_reason(request.symbol):
            self.notices_due = True  # it has to be told at once: a turn of the loop now

    def _apply_inbox(self) -> list[tuple[str, str, object]]:
        """Apply the watch and unwatch signals received since the last turn; the signals the
        newly watched intents are due (their symbol's view lapsed, a halt covers it), as
        (intent id, signal, argument)."""
        inbox, self.inbox = self.inbox, []
        self.pending_owners = Owners()
        sends: list[tuple[str, str, object]] = []
        for item in inbox:
            if isinstance(item, str):
                self._forget(item)
                continue
            self.watched[item.intent_id] = item.symbol
            # A symbol not read yet counts its age from when it was first watched.
            self.symbol_read_at.setdefault(item.symbol, workflow.now())
            self.owner_ids.add(item.intent_id, item.exchange, item.placement)
            self.fresh.add(item.intent_id)
            lapsed_since = self.lapsed.get(item.symbol)
            if lapsed_since is not None:
                sends.append((item.intent_id, "sync_lapsed", lapsed_since))
            reason = self._halt_reason(item.symbol)
            if reason is not None:
                sends.append((item.intent_id, "halted", reason))
                if {"*", item.symbol} & set(self.cancel_all):
                    sends.append((item.intent_id, "cancel", f"kill switch: {reason}"))
        return sends

    @workflow.update
    async def halt(self, request: HaltRequest) -> dict[str, str]:
        """Refuse new risk in scope; with cancel_all, cancel every live intent in scope."""
        scope = halt_scope(request.symbol)
        self.halt_reasons[scope] = request.reason
        if request.cancel_all and scope not in self.cancel_all:
            self.cancel_all = (*self.cancel_all, scope)
        self._publish_halts()
        sends = []
        for intent_id, symbol in list(self.watched.items()):
            if scope in ("*", symbol):
                sends.append(self._signal(intent_id, "halted", request.reason))
                if request.cancel_all:
                    sends.append(
                        self._signal(intent_id, "cancel", f"kill switch: {request.reason}")
                    )
        await asyncio.gather(*sends)
        # Every other running intent of the scope too (adopted orders, intents that poll or
        # are still loading their rules): found in visibility.
        await self._tell_all(request.symbol, "halted", request.reason)
        if request.cancel_all:
            await self._tell_all(request.symbol, "cancel", f"kill switch: {request.reason}")
        return dict(self.halt_reasons)

    @workflow.update
    async def resume(self, symbol: str | None) -> dict[str, str]:
        scope = halt_scope(symbol)
        self.halt_reasons.pop(scope, None)
        self.cancel_all = tuple(s for s in self.cancel_all if s != scope)
        self._publish_halts()
        sends = [
            self._signal(intent_id, "halted", self._halt_reason(watched_symbol))
            for intent_id, watched_symbol in self.watched.items()
            if scope in ("*", watched_symbol)
        ]
        await asyncio.gather(*sends)
        await self._tell_all(symbol, "halted", self.halt_reasons.get("*"))
        if symbol is None:
            # Symbols halted on their own stay halted.
            for halted_symbol, reason in sorted(self.halt_reasons.items()):
                if halted_symbol != "*":
                    await self._tell_all(halted_symbol, "halted", reason)
        return dict(self.halt_reasons)

    async def _tell_all(self, symbol: str | None, signal: str, arg: str | None) -> None:
        await workflow.execute_activity(
            "signal_account_intents",
            IntentSignal(account=self.start.account, symbol=symbol, signal=signal, arg=arg),
            result_type=int,
            task_queue=workflow.info().task_queue,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=EXCHANGE_RETRY,
            summary=f"{signal} to every intent of {self.start.account} ({symbol or 'all'})",
        )

    @workflow.update
    async def scan(self, symbols: tuple[str, ...]) -> tuple[ExchangeOrder, ...]:
        """Every open order on the watched symbols and `symbols` (the client tells orphans
        apart with visibility: an intent may be watched here yet gone, e.g. terminated)."""
        request = ScanRequest(
            account=self.start.account,
            # Intents whose watch is not applied yet count: their symbols are read too.
            symbols=tuple(sorted(set(symbols) | set(self._watched_now().values()))),
        )
        orders = await workflow.execute_activity(
            "scan_open_orders",
            request,
            task_queue=self._activity_queue(),
            result_type=tuple[ExchangeOrder, ...],
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=EXCHANGE_RETRY,
            summary=f"scan open orders of {request.account} for orphans",
        )
        return orders

    @workflow.update
    async def cancel_orphan(self, lookup: OrderLookup) -> ExchangeOrder | None:
        """Cancel an order no intent owns (by client order id), and report how it ended."""
        return await workflow.execute_activity(
            "cancel_order",
            lookup,
            task_queue=self._activity_queue(),
            result_type=ExchangeOrder | None,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=timedelta(minutes=5),
            retry_policy=EXCHANGE_RETRY,
            summary=f"cancel orphan {lookup.client_order_id}",
        )

    @workflow.query(name="halts")
    def query_halts(self) -> dict[str, str]:
        return dict(self.halt_reasons)

    def _publish_halts(self) -> None:
        # In the memo, so a client reads it with a describe (served by the Temporal server)
        # instead of a query that waits for a worker: submit stays fast under load.
        workflow.upsert_memo({"halts": dict(self.halt_reasons)})

    def _halt_reason(self, symbol: str) -> str | None:
        return self.halt_reasons.get(symbol) or self.halt_reasons.get("*")

    @workflow.signal
    def unwatch(self, intent_id: str) -> None:
        self.inbox.append(intent_id)  # applied at the loop's next turn, as `watch`
        self.pending_owners.discard(intent_id)

    def _forget(self, intent_id: str) -> None:
        self.watched.pop(intent_id, None)
        self.owner_ids.discard(intent_id)

    @workflow.signal
    def sync_now(self) -> None:
        self.sync_requested = True

    @workflow.signal
    def stream_connected(self) -> None:
        """The user-data stream is (again) subscribed: a REST round now covers the gap."""
        self.stream = "up"
        self.stream_connects += 1
        self.sync_requested = True

    @workflow.signal
    def stream_lost(self, reason: str) -> None:
        """The stream dropped: REST rounds at the normal interval until it is back."""
        self.stream = "down"
        self.stream_error = reason
        self.sync_requested = True

    @workflow.query
    def owners(self, client_order_ids: list[str]) -> dict[str, str]:
        """Of these client order ids, those a watched intent owns: id -> intent id."""
        found = {}
        for client_order_id in client_order_ids:
            # A query changes nothing; intents whose watch is not applied yet count.
            owner = self.owner_ids.lookup(client_order_id) or self.pending_owners.lookup(
                client_order_id
            )
            if owner is not None:
                found[client_order_id] = owner[0]
        return found

    @workflow.query(name="watched")
    def query_watched(self) -> dict[str, str]:
        """The intents this sync observes: intent id -> symbol (signals not applied yet
        included)."""
        return self._watched_now()

    def _watched_now(self) -> dict[str, str]:
        watched = dict(self.watched)
        for item in self.inbox:
            if isinstance(item, str):
                watched.pop(item, None)
            else:
                watched[item.intent_id] = item.symbol
        return watched

    @workflow.query
    def status(self) -> AccountSyncStatus:
        return AccountSyncStatus(
            account=self.start.account,
            watched=len(self._watched_now()),
            symbols=self._symbols(),
            round=self.round,
            last_round_at=self.last_round_at,
            last_error=self.last_error,
            signals_sent=self.signals_sent,
            stream=self.stream,
            stream_connects=self.stream_connects,
            stream_error=self.stream_error,
        )

    @workflow.run
    async def run(self, start: AccountSyncStart) -> None:
        if self.halt_reasons:
            self._publish_halts()  # carried over a continue-as-new
        self._start_stream()
        round_due = True
        next_round_at = workflow.now()
        while True:
            # A turn starts after a wait (a timer, or a signal that asked for it): in every
            # replay, the same signals have arrived by then.
            requested, self.sync_requested, self.notices_due = self.sync_requested, False, False
            await self._send([self._signal(*notice) for notice in self._apply_inbox()])
            if self._history_full():
                await self._continue_as_new(start)
            if round_due or requested:
                interval = start.backstop_interval if self.stream == "up" else start.interval
                if self.watched:
                    if await self._round():
                        # Some part failed: read again soon, sooner than the interval, later
                        # each time it fails again (the account queue's rate limit holds too).
                        self.failing_rounds += 1
                        backoff = RETRY_PART_AFTER * 2 ** min(self.failing_rounds - 1, 6)
                        interval = min(interval, backoff)
                    else:
                        self.failing_rounds = 0
                next_round_at = workflow.now() + interval
            remaining = next_round_at - workflow.now()
            round_due = remaining <= timedelta(0)
            if round_due:
                continue
            # A request that came meanwhile (sync_now, the stream (re)connected or lost) ends
            # the wait with a round; a watch due a signal, with a turn that sends it.
            try:
                await workflow.wait_condition(
                    lambda: self.sync_requested or self.notices_due,
                    timeout=remaining,
                    timeout_summary="next sync round",
                )
            except TimeoutError:
                round_due = True

    async def _continue_as_new(self, start: AccountSyncStart) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        self.closing = True
        if self.stream_activity is not None:
            self.stream_activity.cancel()  # the next run follows the stream itself
        kernel_queue = self._kernel_queue()
        # Watches that came since this turn began are carried over; the signals they are due
        # (a lapse, a halt) are not sent: rare at that moment, and an intent reads the halts
        # itself when it is submitted.
        self._apply_inbox()
        workflow.continue_as_new(
            start.model_copy(
                update={
                    "watched": self.watched,
                    "trade_cursor": self.trade_cursor,
                    "round": self.round,
                    "halts": self.halt_reasons,
                    "cancel_all": self.cancel_all,
                    "exchanges": self._exchanges(),
                    "placements": {i: self.owner_ids.placement(i) for i in self.watched},
                    "task_queue": kernel_queue,
                    "last_round_at": self.last_round_at,
                    "symbol_read_at": self._read_at_of_watched(),
                    "lapsed": self.lapsed,
                    "home_queue": self.home_queue,
                }
            ),
            # A run on the kernel's queue moves to the syncs' own.
            task_queue=sync_task_queue(kernel_queue),
        )

    def _start_stream(self) -> None:
        self.stream_activity = workflow.start_activity(
            "follow_user_stream",
            StreamRequest(account=self.start.account, sync_workflow_id=workflow.info().workflow_id),
            task_queue=self._activity_queue(),
            result_type=str,
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=STREAM_HEARTBEAT_TIMEOUT,
            retry_policy=STREAM_RETRY,
            cancellation_type=ActivityCancellationType.TRY_CANCEL,
            summary=f"user-data stream of {self.start.account}",
        )
        self.stream_watcher = asyncio.create_task(self._watch_stream(self.stream_activity))

    async def _watch_stream(self, activity: ActivityHandle[str]) -> None:
        """The stream activity returns only when the account has no stream (or after its
        6 hours: then it starts again); failed, it is started again at once."""
        try:
            ended = await activity
        except ActivityError as error:  # failed (or cancelled for a continue-as-new)
            if self.closing:
                return
            self.stream_error = str(error)
            self._start_stream()
            return
        if self.closing:
            return
        if ended == "stopped":
            self._start_stream()
        else:
            self.stream = f"off: {ended}"

    def _history_full(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self.start.max_history_events
        )

    def _kernel_queue(self) -> str:
        return self.start.task_queue or workflow.info().task_queue

    def _activity_queue(self) -> str:
        """The account's task queue: its rate limit holds across workers. (Replay does not compare
        an activity's task queue, so runs recorded before it existed replay unchanged.)"""
        return account_task_queue(self._kernel_queue(), self.start.account)

    def _symbols(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.watched.values())))

    def _exchanges(self) -> dict[str, str]:
        exchanges = {i: self.owner_ids.exchange(i) for i in self.watched}
        return {i: e for i, e in exchanges.items() if e is not None}

    async def _round(self) -> bool:
        """One round; True when some part of it failed (to be read again soon)."""
        self.round += 1
        fresh = sorted(i for i in self.fresh if i in self.watched)
        request = SyncRequest(
            account=self.start.account,
            symbols=self._symbols(),
            round=self.round,
            trade_cursor=self.trade_cursor,
            new_digests=tuple(sorted(self.owner_ids.key(i) for i in fresh)),
            new_symbols={self.owner_ids.key(i): self.watched[i] for i in fresh},
        )
        self.fresh = set()
        try:
            result = await self._observe(request)
        except ActivityError as error:
            self.last_error = str(error.cause or error)
            self.fresh.update(fresh)
            await self._check_lapse()
            return False
        failed = set(result.failed_symbols)
        self.last_error = "; ".join(result.failures) or None
        now = workflow.now()
        if not failed:
            self.last_round_at = now  # a round that read every symbol whole
        for symbol in request.symbols:
            if symbol not in failed:
                self.symbol_read_at[symbol] = now
        # A failed symbol's new intents are checked again next round.
        self.fresh.update(i for i in fresh if self.watched.get(i) in failed)
        self.trade_cursor = dict(result.trade_cursor)
        self.home_queue = result.worker_queue
        sends = []
        for symbol in [s for s in self.lapsed if s not in failed]:
            # The view is back: this round saw everything that changed during the gap.
            del self.lapsed[symbol]
            sends.extend(
                self._signal(i, "sync_lapsed", None)
                for i, watched_symbol in list(self.watched.items())
                if watched_symbol == symbol
            )
        for order in result.changed:
            # None: not a watched intent's (another kernel's, by hand, or an opaque-form id
            # no watched intent claims).
            owner = self.owner_ids.owner(order.client_order_id)
            if owner is not None:
                sends.append(self._signal(owner[0], "observed", order))
        for key in result.not_open:
            # Filled or cancelled before this sync ever saw it open: let the intent look.
            intent_id = self.owner_ids.owner_of_key(key)
            if intent_id is not None:
                sends.append(self._signal(intent_id, "resync", None))
        if result.open_client_order_ids is not None:
            # No snapshot to diff against: every watched intent without an open order may
            # have missed something; let each look for itself once.
            with_open = set()
            for cid in result.open_client_order_ids:
                owner = self.owner_ids.owner(cid)
                if owner is not None:
                    with_open.add(owner[0])
            for intent_id, symbol in self.watched.items():
                if intent_id not in with_open and symbol not in failed:
                    sends.append(self._signal(intent_id, "resync", None))
        # In batches: Temporal refuses a workflow task that leaves more than 2,000 signals in
        # flight (limit.numPendingSignals), and a worker restart makes the first round signal
        # every watched intent; smaller tasks also stay clear of the deadlock detector.
        await self._send(sends)
        if failed:
            await self._check_lapse()
        return bool(failed)

    async def _send(self, sends: list[Coroutine[Any, Any, None]]) -> None:
        batch = self.start.signal_batch
        for first in range(0, len(sends), batch):
            await asyncio.gather(*sends[first : first + batch])

    def _read_at_of_watched(self) -> dict[str, datetime]:
        symbols = set(self.watched.values())
        return {s: t for s, t in self.symbol_read_at.items() if s in symbols}

    async def _observe(self, request: SyncRequest) -> SyncResult:
        """Run the round where the previous one ran: the worker processes each keep the open
        orders their last round saw, and a round that follows on from it sends only what
        changed. Sent anywhere else (N workers: most rounds), a round is cold: it tells every
        partly filled intent again and resyncs every watched intent without an open order.
        The worker gone, the round goes to the account's queue: one cold round on any worker,
        which is the next rounds' home."""
        if self.home_queue is not None:
            try:
                return await self._execute_round(request, self.home_queue, HOME_WAIT)
            except ActivityError as error:
                cause = error.cause
                gone = isinstance(cause, ActivityTimeout) and (
                    cause.type is TimeoutType.SCHEDULE_TO_START
                )
                if not gone:
                    raise
                self.home_queue = None
        return await self._execute_round(request, self._activity_queue(), None)

    async def _execute_round(
        self, request: SyncRequest, task_queue: str, start_within: timedelta | None
    ) -> SyncResult:
        return await workflow.execute_activity(
            "sync_account",
            request,
            task_queue=task_queue,
            result_type=SyncResult,
            schedule_to_start_timeout=start_within,
            # A worker killed mid-round must not leave the account unobserved long: the round
            # heartbeats before each of its requests, and is run again when that stops.
            start_to_close_timeout=timedelta(seconds=15),
            heartbeat_timeout=ROUND_HEARTBEAT_TIMEOUT,
            schedule_to_close_timeout=self.start.round_budget,
            retry_policy=EXCHANGE_RETRY,
            summary=f"sync {request.account}: {len(request.symbols)} symbol(s)",
        )

    async def _check_lapse(self) -> None:
        """A symbol not read whole for longer than the intents' staleness bound: tell its
        watched intents once (their state says `stale` until a round reads it again)."""
        now = workflow.now()
        started = workflow.info().start_time
        sends = []
        for symbol in self._symbols():
            if symbol in self.lapsed:
                continue
            since = self.symbol_read_at.setdefault(symbol, self.last_round_at or started)
            if now - since <= self.start.stale_after:
                continue
            self.lapsed[symbol] = since
            sends.extend(
                self._signal(i, "sync_lapsed", since)
                for i, watched_symbol in list(self.watched.items())
                if watched_symbol == symbol
            )
        await self._send(sends)

    async def _signal(self, intent_id: str, name: str, arg: object) -> None:
        handle = workflow.get_external_workflow_handle(workflow_id_for(intent_id))
        try:
            if arg is None and name == "resync":
                await handle.signal(name)
            else:
                await handle.signal(name, arg)
            self.signals_sent += 1
        except Exception:
            # The intent has finished (and its unwatch is on the way or lost): stop watching.
            self._forget(intent_id)
