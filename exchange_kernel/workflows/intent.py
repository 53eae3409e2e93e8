"""OrderIntentWorkflow: one durable workflow per intent, converging the exchange on it.

The workflow makes no decision: it asks `reconcile.plan(state, now)` for the next action,
executes it (an exchange activity, a message to another workflow, or a wait), and records what
came back with `reconcile.record`. Every input of a decision is in `self.state`, the one thing
a continue-as-new carries. Modifications and cancellations arrive as signals (fire and forget)
or as updates (validated, answered). Every step also records its events in the state
(`events.record`), which watchers read with the `changes` update, a long poll.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from exchange_kernel import events, reconcile
    from exchange_kernel.activities.errors import EXCHANGE_RETRY
    from exchange_kernel.connection import account_task_queue
    from exchange_kernel.devserver import (
        EXCHANGE_ORDER_IDS,
        INTENT_STATUS,
        LAST_SYNC_AT,
        RECONCILIATION_STATUS,
    )
    from exchange_kernel.limits import modify_check, replaced_notional
    from exchange_kernel.models import (
        AmendRequest,
        AmendResult,
        ExchangeOrder,
        IntentBrief,
        IntentChange,
        IntentEvents,
        IntentStart,
        IntentState,
        MarketRequest,
        MarketRules,
        OrderLookup,
        OrderRequest,
        Placement,
        PriceSeen,
        PriceWatch,
        ReconciliationStatus,
        WatchRequest,
        account_sync_id,
        group_workflow_id,
    )
    from exchange_kernel.reconcile import (
        Abandoned,
        Amended,
        Observed,
        Outcome,
        PriceCrossed,
        Refused,
        RulesLoaded,
        Sent,
        Unanswered,
    )
    from exchange_kernel.worker.metrics import IntentMetrics

# How long one write (place, amend, cancel) may keep retrying before its outcome is unknown.
EXCHANGE_CALL_BUDGET = timedelta(minutes=5)
# A lookup gives up sooner: the plan simply looks again, and meanwhile the state can say the
# view is stale instead of waiting minutes inside one activity.
LOOKUP_BUDGET = timedelta(seconds=20)
# ccxt times out a request after 10 s; a worker killed mid-call is noticed after this.
EXCHANGE_CALL_TIMEOUT = timedelta(seconds=15)
# LastSyncAt is published when it has moved on this much (or with any other change).
LAST_SYNC_STEP = timedelta(seconds=10)
# The local activity for market rules: a cache hit takes a millisecond; longer means the
# exchange is being asked, which the regular activity does better.
LOCAL_RULES_BUDGET = timedelta(seconds=2)
# A watcher's long poll (`changes`) answers empty after this and is asked again: an update
# whose caller went away holds one of the few update slots of the workflow only this long.
CHANGES_WAIT = timedelta(seconds=30)

# Activities on the workflow's own task queue, outside the account's activity rate limit:
# market rules (ccxt's cache), and held stops' price polls, whose ticker requests the worker
# shares per symbol (`ExchangeActivities._shared_ticker`): held on the account's queue, every
# held stop's poll would take a share of the rate limit that placements need.
WORKFLOW_QUEUE_ACTIVITIES = ("load_market", "watch_price")


def _rejection(error: ActivityError | ApplicationError) -> str | None:
    """The exchange's refusal, if the call failed with a non-retryable exchange error."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        return cause.message
    return None


def _failure(error: ActivityError) -> Refused | Unanswered:
    refusal = _rejection(error)
    if refusal is not None:
        return Refused(reason=refusal)
    return Unanswered(error=str(error.cause or error), at=workflow.now())


def _change_rejected(reason: str) -> ApplicationError:
    return ApplicationError(reason, type="ChangeRejected", non_retryable=True)


@workflow.defn(name="OrderIntent")
class OrderIntentWorkflow:
    @workflow.init
    def __init__(self, start: IntentStart) -> None:
        self.metrics = IntentMetrics(start, workflow.info().workflow_start_time)
        self.state = start.state or IntentState(
            intent=start.intent, desired=start.intent.order, poll_interval=reconcile.POLL_FIRST
        )
        # Set by every signal and update: wakes a wait. Not a decision input (the plan reads
        # the state), only "something may have changed, plan again".
        self.dirty = False
        self.inbox: list[ExchangeOrder] = []
        # What visibility shows already (search attributes, memo): saves repeated upserts.
        self.published: dict[str, object] = {}
        # The run is about to continue as new (`releasing`) or to end (`ending`): watchers'
        # long polls answer now, so that they never hold the run open.
        self.releasing = False
        self.ending = False

    # --- reading -------------------------------------------------------------------------------

    @workflow.query(name="state")
    def query_state(self) -> IntentState:
        return self.state

    @workflow.update(name="changes")
    async def changes_update(self, after: int) -> IntentEvents:
        """A watcher's long poll: the kept events with a seq past `after`, as soon as there is
        one; an empty answer after CHANGES_WAIT (ask again), or at once when the run continues
        as new or ends (`finished`). Changes nothing."""
        try:
            await workflow.wait_condition(
                lambda: self.state.event_seq != after or self.releasing or self.ending,
                timeout=CHANGES_WAIT,
                timeout_summary="a watcher's long poll",
            )
        except TimeoutError:
            pass
        found, gap = events.since(self.state, after)
        return IntentEvents(
            intent_id=self.state.intent.intent_id,
            events=found,
            last_seq=self.state.event_seq,
            gap=gap,
            finished=self.ending,
        )

    @changes_update.validator
    def _validate_changes(self, after: int) -> None:
        if after < 0:
            raise ApplicationError(
                f"changes after {after}: a seq is 0 or more", type="BadRequest", non_retryable=True
            )

    # --- signals: fire and forget ------------------------------------------------------------

    @workflow.signal(name="modify")
    def modify_signal(self, change: IntentChange) -> None:
        try:
            changed, _ = reconcile.receive_change(self.state, change, workflow.now())
            self._step(changed)
        except reconcile.ChangeRejected as exc:
            self._step(reconcile.note(self.state, "modify rejected", str(exc), workflow.now()))
        self.dirty = True

    @workflow.signal(name="cancel")
    def cancel_signal(self, reason: str) -> None:
        try:
            self._step(reconcile.request_cancel(self.state, reason or "cancelled", workflow.now()))
        except reconcile.ChangeRejected as exc:
            self._step(reconcile.note(self.state, "cancel rejected", str(exc), workflow.now()))
        self.dirty = True

    @workflow.signal
    def observed(self, order: ExchangeOrder) -> None:
        """An observation pushed from outside (the account-level sync)."""
        self.inbox.append(order)
        self.dirty = True

    @workflow.signal
    def halted(self, reason: str | None) -> None:
        """The account's kill switch (from the account sync): refuse changes adding risk."""
        self._step(reconcile.set_halted(self.state, reason, workflow.now()))
        self.dirty = True

    @workflow.signal
    def resync(self) -> None:
        """Look at the exchange now instead of at the next poll."""
        self._step(reconcile.request_resync(self.state, workflow.now()))
        self.dirty = True

    @workflow.signal
    def sync_lapsed(self, since: datetime | None) -> None:
        """From the account sync: no round completed since `since` (None: rounds complete
        again). The intent's view is stale meanwhile."""
        self._step(reconcile.watch_lapsed(self.state, since, workflow.now()))
        self.dirty = True

    @workflow.signal
    def release(self) -> None:
        """From the intent's group: a triggered held stop (`release_by_group`) may place now."""
        self._step(reconcile.release(self.state, workflow.now()))
        self.dirty = True

    @workflow.signal
    def repaired(self, reason: str) -> None:
        """Sent by `exchange-kernel repair` just before it resets the run (and re-applied to
        the new run ahead of the redone task): from now on every placement looks its client
        order id up before creating, so an order the discarded history placed, open or ended,
        is found instead of placed again."""
        self._step(reconcile.mark_repaired(self.state, reason, workflow.now()))
        self.dirty = True

    # --- updates: validated, answered ----------------------------------------------------------

    @workflow.update(name="modify")
    async def modify_update(self, change: IntentChange) -> IntentBrief:
        await self._check_open_notional(change)
        try:
            changed, number = reconcile.receive_change(
                self.state, change, workflow.now(), answered=True
            )
        except reconcile.ChangeRejected as exc:  # the intent moved on during the check
            raise _change_rejected(str(exc)) from None
        self._step(changed)
        self.dirty = True
        revision = self.state.revision
        if any(p.number == number for p in self.state.pending_changes):
            # A lower amount: judged on the live order's final fills first.
            await workflow.wait_condition(
                lambda: reconcile.judgment(self.state, number) is not None
            )
            judged = reconcile.judgment(self.state, number)
            assert judged is not None
            if judged.rejection is not None:
                raise _change_rejected(judged.rejection)
            revision = judged.revision
        # Answered once the exchange has the change (or refused its order: then the intent
        # works on at its last accepted revision, and the refusal is the answer).
        await workflow.wait_condition(
            lambda: reconcile.change_settled(self.state, revision, workflow.now())
        )
        refusal = reconcile.refusal_of(self.state, revision)
        if refusal is not None:
            raise _change_rejected(refusal.reason)
        return self.state.brief()

    async def _check_open_notional(self, change: IntentChange) -> None:
        """A change raising the intent's notional on an account with max_open_notional_per_symbol
        is checked against the exchange's open orders before it is accepted, so the caller
        gets the refusal and the resting order stays as it is. (Signals cannot answer: theirs
        is the placement's own check, which ends the intent rejected.)"""
        request = modify_check(self.state, change)
        if request is None:
            return
        try:
            await self._activity(
                "check_open_notional",
                request,
                None,
                f"pre-trade check: open notional on {request.symbol}",
            )
        except ActivityError as error:
            reason = _rejection(error) or (
                f"max_open_notional_per_symbol could not be checked: {error.cause or error}"
            )
            raise _change_rejected(reason) from None

    @modify_update.validator
    def _validate_modify(self, change: IntentChange) -> None:
        try:
            reconcile.check_change(self.state, change)
        except reconcile.ChangeRejected as exc:
            raise _change_rejected(str(exc)) from None

    @workflow.update(name="cancel")
    def cancel_update(self, reason: str) -> IntentBrief:
        self._step(reconcile.request_cancel(self.state, reason or "cancelled", workflow.now()))
        self.dirty = True
        return self.state.brief()

    @cancel_update.validator
    def _validate_cancel(self, reason: str) -> None:
        try:
            reconcile.check_cancel(self.state)
        except reconcile.ChangeRejected as exc:
            raise _change_rejected(str(exc)) from None

    # --- the loop ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, start: IntentStart) -> IntentState:
        while True:
            # Cleared before deciding: a signal or update landing anywhere after this point
            # (even during an await below) wakes the next wait instead of being lost.
            self.dirty = False
            self._take_inbox()
            self._step(reconcile.refresh(self.state, workflow.now()))
            action = reconcile.plan(self.state, workflow.now())
            self._publish()
            if isinstance(action, reconcile.Finish) and self.state.status.is_terminal:
                # Let in-flight updates answer before the workflow closes.
                self.ending = True
                await workflow.wait_condition(workflow.all_handlers_finished)
                return self.state
            if isinstance(action, reconcile.Wait | reconcile.WatchPrice) and self._run_full(start):
                await self._continue_as_new(start)
                continue  # still here: something changed meanwhile, plan again
            if isinstance(action, reconcile.Wait):
                await self._wait(action)
                continue
            asked_at = workflow.now()
            self._step(reconcile.begin(self.state, action, asked_at))
            outcome = await self._execute(action)
            self._step(reconcile.record(self.state, action, outcome, asked_at))

    def _quiet(self) -> bool:
        """Nothing pending and settled: every update waiting for its change has its answer."""
        settled = (ReconciliationStatus.IN_SYNC, ReconciliationStatus.STALE)
        return not self.state.pending_changes and self.state.reconciliation_status in settled

    def _run_full(self, start: IntentStart) -> bool:
        """Continue as new at a quiet moment past the run's event bound (the continue-as-new
        waits for all handlers to finish)."""
        if not self._quiet():
            return False
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= start.max_run_events
        )

    async def _continue_as_new(self, start: IntentStart) -> None:
        # An update that lands now waits for its change to settle, which needs the loop: then
        # the loop goes on and continues as new at a later quiet moment.
        # Watchers' long polls answer at once (they ask the next run).
        self.releasing = True
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() or not self._quiet())
        if workflow.all_handlers_finished() and self._quiet():
            self._take_inbox()
            workflow.continue_as_new(start.model_copy(update={"state": self.state}))
        self.releasing = False

    async def _wait(self, action: reconcile.Wait) -> None:
        try:
            await workflow.wait_condition(
                lambda: self.dirty,
                timeout=action.after,
                timeout_summary="next look at the exchange, or expiry",
            )
        except TimeoutError:
            pass

    def _step(self, state: IntentState) -> None:
        """Take the state after a step, with the events that the step made."""
        self.state = events.record(self.state, state, workflow.now())

    def _take_inbox(self) -> None:
        now = workflow.now()
        for order in self.inbox:
            self._step(reconcile.observe(self.state, order, now))
        self.inbox.clear()

    # --- executing actions ---------------------------------------------------------------------

    async def _execute(self, action: reconcile.Action) -> Outcome | None:
        match action:
            case reconcile.LoadRules():
                return await self._load_rules()
            case reconcile.Place(placement=placement):
                return await self._place(placement)
            case reconcile.Amend(replaces=replaces, placement=placement):
                return await self._amend(self.state.placement(replaces), placement)
            case reconcile.Cancel(number=number):
                return await self._look("cancel_order", self.state.placement(number))
            case reconcile.Lookup(number=number):
                return await self._look("fetch_order", self.state.placement(number))
            case reconcile.WatchPrice():
                return await self._watch_price(action)
            case reconcile.Watch(placement=number):
                return await self._watch(number)
            case reconcile.Unwatch():
                sync = account_sync_id(self.state.intent.account)
                return await self._tell(sync, "unwatch", self.state.intent.intent_id)
            case reconcile.Report(update=update):
                group_id = self.state.intent.group_id
                assert group_id is not None
                return await self._tell(group_workflow_id(group_id), "member_update", update)
        return None  # bookkeeping (expire, judge, finish): the recorder does it all

    async def _place(self, placement: Placement) -> Outcome:
        request = self._order_request(placement)
        try:
            order = await self._activity(
                "place_order",
                request,
                ExchangeOrder,
                f"place {placement.client_order_id}: {self._describe(placement)}",
            )
        except ActivityError as error:
            return _failure(error)
        return Observed(order=order)

    async def _amend(self, old: Placement, new: Placement) -> Outcome:
        assert old.order is not None
        request = AmendRequest(
            account=self.state.intent.account,
            replaces_client_order_id=old.client_order_id,
            replaces_exchange_order_id=old.order.exchange_order_id,
            replaces_filled=old.order.filled,
            order=self._order_request(new),
        )
        summary = f"amend {old.client_order_id} -> {new.client_order_id}: {self._describe(new)}"
        try:
            result = await self._activity("amend_order", request, AmendResult, summary)
        except ActivityError as error:
            return _failure(error)
        return Amended(replaced=result.replaced, order=result.order)

    async def _look(self, activity: str, placement: Placement) -> Outcome:
        """Cancel (then look) or look: the order as the exchange has it, or None."""
        request = OrderLookup(
            account=self.state.intent.account,
            symbol=self.state.desired.symbol,
            client_order_id=placement.client_order_id,
            known_filled=placement.filled,
        )
        verb = "cancel" if activity == "cancel_order" else "look up"
        try:
            order = await self._activity(
                activity,
                request,
                ExchangeOrder | None,
                f"{verb} {placement.client_order_id}",
                budget=EXCHANGE_CALL_BUDGET if activity == "cancel_order" else LOOKUP_BUDGET,
            )
        except ActivityError as error:
            return Unanswered(error=str(error.cause or error))
        return Observed(order=order)

    async def _load_rules(self) -> Outcome:
        """The rules first as a local activity: the worker's ccxt client usually has the markets
        cached, so this takes a millisecond and the first placement is scheduled in the same
        workflow task. A slow or failing exchange gets one short attempt, then the regular
        activity, whose attempts and last failure show as a pending activity in the UI."""
        request = MarketRequest(account=self.state.intent.account, symbol=self.state.desired.symbol)
        summary = f"market rules of {request.symbol}"
        rules: MarketRules | None = None
        try:
            rules = await workflow.execute_local_activity(
                "load_market",
                request,
                result_type=MarketRules,
                schedule_to_close_timeout=LOCAL_RULES_BUDGET,
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=summary,
            )
        except (ActivityError, ApplicationError) as error:
            # A rejection (unknown symbol, a pre-trade limit) is final; anything else: retry.
            refusal = _rejection(error)
            if refusal is not None:
                return Refused(reason=refusal)
        except TimeoutError:
            pass
        if rules is None:
            try:
                rules = await self._activity("load_market", request, MarketRules, summary)
            except ActivityError as error:
                return _failure(error)
        return RulesLoaded(rules=rules, halted=await self._account_halt(request))

    async def _account_halt(self, request: MarketRequest) -> str | None:
        """The kill switch as the account's sync has it now: a halt set after a client checked
        it, before this workflow started, still stops the first order. Unreadable (Temporal
        busy): None; the sync's own signal reaches the intent soon after."""
        try:
            return await workflow.execute_local_activity(
                "account_halt",
                request,
                result_type=str | None,  # type: ignore[arg-type]
                schedule_to_close_timeout=LOCAL_RULES_BUDGET,
                retry_policy=RetryPolicy(maximum_attempts=2),
                summary=f"kill switch of {request.account}",
            )
        except (ActivityError, ApplicationError, TimeoutError):
            return None

    async def _watch_price(self, action: reconcile.WatchPrice) -> Outcome:
        """Hold a stop: watch the last price until it crosses the stop, the plan changes (a
        change, a cancel) or the intent expires. Nothing but ticker requests reaches the
        exchange. One activity for the whole wait, whose retries are the polling: the history
        grows by a few events per watch, not per look at the price."""
        desired = self.state.desired
        revision = self.state.revision
        condition = reconcile.trigger_condition(action.side, action.stop_price)
        workflow.set_current_details(
            f"stop held by the workflow: {desired.summary()}, placed when {condition}"
        )
        request = PriceWatch(
            account=self.state.intent.account,
            symbol=desired.symbol,
            side=action.side,
            stop_price=action.stop_price,
        )
        handle = workflow.start_activity(
            "watch_price",
            request,
            result_type=PriceSeen,
            task_queue=self._task_queue("watch_price"),
            start_to_close_timeout=EXCHANGE_CALL_TIMEOUT,
            # No overall budget: a stop may be held for days. Exchange errors back off as
            # for every exchange call; "not triggered yet" asks for the poll interval.
            retry_policy=EXCHANGE_RETRY,
            summary=f"price of {desired.symbol} for held stop @ {action.stop_price} ({condition})",
        )

        def outdated() -> bool:
            # Watch on while the plan is still this watch; a change (even of the amount: the
            # memo shows it), a cancel or an expiry ends it. A resync leaves it be.
            again = reconcile.plan(self.state, workflow.now())
            return not (
                isinstance(again, reconcile.WatchPrice)
                and (again.side, again.stop_price) == (action.side, action.stop_price)
                and self.state.revision == revision
            )

        try:
            await workflow.wait_condition(
                lambda: handle.done() or (self.dirty and outdated()),
                timeout=action.after,
                timeout_summary="held stop: expiry",
            )
        except TimeoutError:
            pass
        if not handle.done():
            handle.cancel()
        try:
            seen = await handle
        except ActivityError as error:
            if isinstance(error.cause, CancelledError):
                return Abandoned()
            return Unanswered(error=str(error.cause or error))
        finally:
            workflow.set_current_details("")
        return PriceCrossed(price=seen.price)

    async def _watch(self, number: int) -> Outcome:
        """Register with the account sync (not delivered: no sync runs, the intent polls)."""
        intent = self.state.intent
        request = WatchRequest(
            intent_id=intent.intent_id,
            symbol=self.state.desired.symbol,
            exchange=self.state.rules.exchange if self.state.rules is not None else None,
            placement=number,
        )
        return await self._tell(account_sync_id(intent.account), "watch", request)

    async def _tell(self, workflow_id: str, signal: str, arg: object) -> Sent:
        handle = workflow.get_external_workflow_handle(workflow_id)
        try:
            await handle.signal(signal, arg)
        except Exception as exc:  # the other workflow is not running
            return Sent(delivered=False, note=str(exc))
        return Sent(delivered=True)

    async def _activity(
        self,
        activity: str,
        arg: object,
        result_type: object,
        summary: str,
        *,
        budget: timedelta = EXCHANGE_CALL_BUDGET,
    ) -> object:
        # Exchange calls go to the account's task queue, whose rate limit holds across every
        # worker serving the account (docs/operations.md). Market rules stay on the workflow's
        # queue: ccxt serves them from the worker's market cache (one request per worker
        # process), and an activity on the workflow's own queue can start eagerly, without a
        # round trip through the server.
        return await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,  # type: ignore[arg-type]
            task_queue=self._task_queue(activity),
            start_to_close_timeout=EXCHANGE_CALL_TIMEOUT,
            schedule_to_close_timeout=budget,
            retry_policy=EXCHANGE_RETRY,
            summary=summary,
        )

    def _task_queue(self, activity: str) -> str:
        task_queue = workflow.info().task_queue
        if activity not in WORKFLOW_QUEUE_ACTIVITIES:
            task_queue = account_task_queue(task_queue, self.state.intent.account)
        return task_queue

    # --- visibility ----------------------------------------------------------------------------

    def _publish(self) -> None:
        """Keep search attributes and memo current; upsert only what changed (each is an event)."""
        state = self.state
        self.metrics.observe(workflow.metric_meter(), state, workflow.now())
        values: dict[str, object] = {
            "status": state.status.value,
            "reconciliation": state.reconciliation_status.value,
            "order_ids": tuple(state.exchange_order_ids),
        }
        changed = {k: v for k, v in values.items() if self.published.get(k) != v}
        # LastSyncAt: when the exchange was last observed for the intent. Published with any
        # other change, else only once it has moved on by LAST_SYNC_STEP (an event per poll
        # would cost more than the figure is worth; a watched intent's sync rounds are not
        # events of its own: `IntentClient.stale_intents` reads the sync for those).
        observed = state.last_sync_at
        shown = self.published.get("last_sync_at")
        if observed is not None and (
            not isinstance(shown, datetime) or observed - shown >= LAST_SYNC_STEP
        ):
            changed["last_sync_at"] = observed
        if changed:
            updates = [
                INTENT_STATUS.value_set(state.status.value),
                RECONCILIATION_STATUS.value_set(state.reconciliation_status.value),
            ]
            if state.exchange_order_ids:
                updates.append(EXCHANGE_ORDER_IDS.value_set(state.exchange_order_ids))
            if observed is not None:
                updates.append(LAST_SYNC_AT.value_set(observed))
                values["last_sync_at"] = observed
            workflow.upsert_search_attributes(updates)
            self.published.update(values)
        summary = self._summary()
        if self.published.get("summary") != summary:
            workflow.upsert_memo({"summary": summary})
            self.published["summary"] = summary

    def _summary(self) -> str:
        # The desired order only: the memo changes (one history event) when a modification
        # does; status and fills are in the search attributes and the state query.
        summary = self.state.desired.summary()
        if self.state.holds_stop:
            summary = f"{summary} (stop held by the workflow)"
        return summary

    # --- requests ------------------------------------------------------------------------------

    def _order_request(self, placement: Placement) -> OrderRequest:
        desired = self.state.desired
        order_type, stop_price = reconcile.order_type_on_exchange(self.state)
        return OrderRequest(
            account=self.state.intent.account,
            symbol=desired.symbol,
            side=desired.side,
            type=order_type,
            client_order_id=placement.client_order_id,
            amount=placement.amount,
            price=placement.price,
            stop_price=stop_price,
            time_in_force=desired.time_in_force,
            post_only=desired.post_only,
            reduce_only=desired.reduce_only,
            may_exist=self.state.repaired,
            replaced_notional=replaced_notional(self.state, placement),
        )

    def _describe(self, placement: Placement) -> str:
        desired = self.state.desired
        price = "market" if placement.price is None else str(placement.price)
        text = f"{desired.side.value} {placement.amount} {desired.symbol} @ {price}"
        if self.state.holds_stop:
            text = f"{text}, held stop {desired.stop_price} triggered"
        return text
