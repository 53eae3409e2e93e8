"""OrderIntentWorkflow: one durable workflow per intent, converging the exchange on it.

The workflow holds no trading logic: it asks `reconcile.plan()` for the next action, executes it
through an exchange activity, records what it observed, and repeats. Modifications and
cancellations arrive as signals (fire and forget) or as updates (validated, answered).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from exchange_kernel import client_ids, reconcile
    from exchange_kernel.activities.errors import EXCHANGE_RETRY
    from exchange_kernel.connection import account_task_queue
    from exchange_kernel.devserver import (
        EXCHANGE_ORDER_IDS,
        INTENT_STATUS,
        LAST_SYNC_AT,
        RECONCILIATION_STATUS,
    )
    from exchange_kernel.limits import OPEN_NOTIONAL_PATCH, modify_check, replaced_notional
    from exchange_kernel.models import (
        ActionRecord,
        AmendRequest,
        AmendResult,
        ExchangeOrder,
        IntentChange,
        IntentStart,
        IntentState,
        IntentStatus,
        MarketRequest,
        MarketRules,
        MemberUpdate,
        OrderLookup,
        OrderRequest,
        Placement,
        PriceSeen,
        PriceWatch,
        WatchRequest,
        account_sync_id,
        group_workflow_id,
    )
    from exchange_kernel.worker.metrics import IntentMetrics

# How long one exchange call may keep retrying before the workflow treats its outcome as unknown.
EXCHANGE_CALL_BUDGET = timedelta(minutes=5)
# ccxt times out a request after 10 s; a worker killed mid-call is noticed after this.
EXCHANGE_CALL_TIMEOUT = timedelta(seconds=15)
# The local activity for market rules in the first workflow task: a cache hit takes a
# millisecond; longer means the exchange is being asked, which the regular activity does better.
LOCAL_RULES_BUDGET = timedelta(seconds=2)
# Consecutive exchange calls that exhausted their budget before the intent is given up (failed).
MAX_UNANSWERED_CALLS = 3
# A resync that arrived during an exchange call is acted on when the loop next plans to wait,
# not only when a wait ends (see the Wait branch of `run`).
RESYNC_LEVEL_PATCH = "resync-level-triggered"


def _rejection(error: ActivityError) -> str | None:
    """The exchange's refusal, if the activity failed with a non-retryable exchange error."""
    cause = error.cause
    if isinstance(cause, ApplicationError) and cause.non_retryable:
        return cause.message
    return None


# Activities on the workflow's own task queue, outside the account's activity rate limit:
# market rules (ccxt's cache), and held stops' price polls, whose ticker requests the worker
# shares per symbol (`ExchangeActivities._shared_ticker`): held on the account's queue, every
# held stop's poll would take a share of the rate limit that placements need.
WORKFLOW_QUEUE_ACTIVITIES = ("load_market", "watch_price")


@workflow.defn(name="OrderIntent")
class OrderIntentWorkflow:
    @workflow.init
    def __init__(self, start: IntentStart) -> None:
        self.metrics = IntentMetrics(start, workflow.info().workflow_start_time)
        self.state = start.state or IntentState(intent=start.intent, desired=start.intent.order)
        self.dirty = False
        self.inbox: list[ExchangeOrder] = []
        self.unanswered = 0
        self.published: dict[str, object] = {}
        self.last_error = ""
        self.resync_requested = False
        self.watched = start.watched
        self.watch_refused = False
        self.group_missing = False
        self.reported: tuple[object, ...] = ()
        # Set by `exchange-kernel repair`: the run was reset, so an order of the discarded
        # history may already exist under any placement's client order id (even ended).
        self.repaired = False

    # --- reading -------------------------------------------------------------------------------

    @workflow.query(name="state")
    def query_state(self) -> IntentState:
        return self.state

    # --- signals: fire and forget ------------------------------------------------------------

    @workflow.signal(name="modify")
    def modify_signal(self, change: IntentChange) -> None:
        try:
            self.state = reconcile.apply_change(self.state, change, workflow.now())
        except reconcile.ChangeRejected as exc:
            self._note("modify rejected", str(exc))
        self.dirty = True

    @workflow.signal(name="cancel")
    def cancel_signal(self, reason: str) -> None:
        try:
            self.state = reconcile.request_cancel(self.state, reason or "cancelled", workflow.now())
        except reconcile.ChangeRejected as exc:
            self._note("cancel rejected", str(exc))
        self.dirty = True

    @workflow.signal
    def observed(self, order: ExchangeOrder) -> None:
        """An observation pushed from outside (the account-level sync)."""
        self.inbox.append(order)
        self.dirty = True

    @workflow.signal
    def halted(self, reason: str | None) -> None:
        """The account's kill switch (from the account sync): refuse changes adding risk."""
        self.state = reconcile.set_halted(self.state, reason, workflow.now())

    @workflow.signal
    def resync(self) -> None:
        """Look at the exchange now instead of at the next poll."""
        self.dirty = True
        self.resync_requested = True

    @workflow.signal
    def repaired(self, reason: str) -> None:
        """Sent by `exchange-kernel repair` just before it resets the run (and re-applied to
        the new run ahead of the redone task): from now on every placement looks its client
        order id up before creating, so an order the discarded history placed, open or ended,
        is found instead of placed again."""
        self.repaired = True
        self._note("repaired", reason)

    # --- updates: validated, answered ----------------------------------------------------------

    @workflow.update(name="modify")
    async def modify_update(self, change: IntentChange) -> IntentState:
        await self._check_open_notional(change)
        try:
            self.state = reconcile.apply_change(self.state, change, workflow.now())
        except reconcile.ChangeRejected as exc:  # the intent moved on during the check
            raise ApplicationError(str(exc), type="ChangeRejected", non_retryable=True) from None
        self.dirty = True
        return self.state

    async def _check_open_notional(self, change: IntentChange) -> None:
        """A change raising the intent's notional on an account with max_open_notional_per_symbol
        is checked against the exchange's open orders before it is accepted, so the caller
        gets the refusal and the resting order stays as it is. (Signals cannot answer: theirs
        is the placement's own check, which ends the intent rejected.)"""
        request = modify_check(self.state, change)
        if request is None or not workflow.patched(OPEN_NOTIONAL_PATCH):
            return
        try:
            await self._call(
                "check_open_notional",
                request,
                None,
                f"pre-trade check: open notional on {request.symbol}",
            )
        except ActivityError as error:
            reason = _rejection(error) or (
                f"max_open_notional_per_symbol could not be checked: {error.cause or error}"
            )
            raise ApplicationError(reason, type="ChangeRejected", non_retryable=True) from None

    @modify_update.validator
    def _validate_modify(self, change: IntentChange) -> None:
        try:
            reconcile.check_change(self.state, change)
        except reconcile.ChangeRejected as exc:
            raise ApplicationError(str(exc), type="ChangeRejected", non_retryable=True) from None

    @workflow.update(name="cancel")
    def cancel_update(self, reason: str) -> IntentState:
        self.state = reconcile.request_cancel(self.state, reason or "cancelled", workflow.now())
        self.dirty = True
        return self.state

    @cancel_update.validator
    def _validate_cancel(self, reason: str) -> None:
        try:
            reconcile.check_cancel(self.state)
        except reconcile.ChangeRejected as exc:
            raise ApplicationError(str(exc), type="ChangeRejected", non_retryable=True) from None

    # --- the loop ------------------------------------------------------------------------------

    @workflow.run
    async def run(self, start: IntentStart) -> IntentState:
        poll = start.poll_first
        if self.state.rules is None:
            rules = await self._load_rules(local_first=start.local_rules_first)
            if rules is None:
                return await self._finish_now()
            self.state = self.state.model_copy(update={"rules": rules})

        while True:
            # Cleared before deciding: a signal or update landing anywhere after this point
            # (even during an await below) wakes the next wait instead of being lost.
            self.dirty = False
            self._take_inbox()
            if self._expired() and not self.state.expiring:
                self.state = reconcile.request_expiry(self.state, workflow.now())
            action = reconcile.plan(self.state)
            self._publish()
            await self._report_to_group()
            if isinstance(action, reconcile.Finish):
                return await self._finish(action)
            if self.unanswered >= MAX_UNANSWERED_CALLS:
                return await self._finish(
                    reconcile.Finish(
                        status=IntentStatus.FAILED,
                        reason=f"gave up after {self.unanswered} unanswered exchange calls: "
                        f"{self.last_error}",
                    )
                )
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._take_inbox()
                workflow.continue_as_new(
                    start.model_copy(update={"state": self.state, "watched": self.watched})
                )
            if isinstance(action, reconcile.Wait):
                if not self.watched and self.state.live_placement is not None:
                    self.watched = await self._watch()
                # Level-triggered: what the loop does next follows from the state alone, not from
                # whether a change and an activity's result came in one activation or in two.
                # The core may split a cold start's task differently from a replay (an update
                # handled on a cold start, temporalio/sdk-python#1591; docs/reliability.md,
                # finding 2); acting on a pending resync only when a wait ends made the
                # commands depend on that split (tests/test_cold_update.py).
                if self.resync_requested and workflow.patched(RESYNC_LEVEL_PATCH):
                    self.resync_requested = False
                    await self._look_at_live_order()
                    continue
                # Watched by the account sync: it tells us when our order changes, so no
                # per-intent polling (exchange load stays flat in the number of resting
                # intents). Otherwise poll with backoff.
                timeout = None if self.watched else poll
                until_expiry = self._until_expiry()
                if until_expiry is not None:
                    timeout = until_expiry if timeout is None else min(timeout, until_expiry)
                try:
                    await workflow.wait_condition(
                        lambda: self.dirty,
                        timeout=timeout,
                        timeout_summary="next look at the exchange, or expiry",
                    )
                except TimeoutError:
                    if self._expired():
                        continue
                    poll = min(poll * 2, start.poll_ceiling)
                    await self._look_at_live_order()
                    continue
                if self.resync_requested and not workflow.patched(RESYNC_LEVEL_PATCH):
                    # Runs recorded before the patch: the resync is acted on here.
                    self.resync_requested = False
                    await self._look_at_live_order()
                continue
            if isinstance(action, reconcile.WatchPrice):
                await self._watch_price(action)
                continue
            await self._execute(action)
            poll = start.poll_first

    async def _watch_price(self, action: reconcile.WatchPrice) -> None:
        """Hold a stop: watch the last price until it crosses the stop, a change or a cancel
        arrives, or the intent expires. Nothing but ticker requests reaches the exchange.

        One activity for the whole wait, whose retries are the polling (`watch_price`): the
        history grows by a few events per watch, not per look at the price. A change or a
        cancel abandons it; the next plan starts another for the new stop, or finishes.
        """
        if not self.watched:
            # Registered with the account sync although nothing is on the exchange yet: the
            # kill switch reaches the intents it watches (halt, cancel-all).
            self.watched = await self._watch()
        self.state = reconcile.start(self.state, action, workflow.now())
        desired = self.state.desired
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
        try:
            # Level-triggered: watch on while the plan is still this watch. A resync from the
            # account sync leaves it be; a change (new stop price, amount: the memo shows it),
            # a cancel or an expiry end it.
            await workflow.wait_condition(
                lambda: handle.done() or (self.dirty and self._watch_outdated(action)),
                timeout=self._until_expiry(),
                timeout_summary="held stop: expiry",
            )
        except TimeoutError:
            pass
        self.resync_requested = False  # nothing on the exchange to look at
        if not handle.done():
            handle.cancel()
        try:
            seen = await handle
        except ActivityError as error:
            if not isinstance(error.cause, CancelledError):
                self._count_unanswered(error)
            return
        finally:
            workflow.set_current_details("")
        self.unanswered = 0
        self.state = reconcile.observe_price(self.state, seen.price, workflow.now())

    def _watch_outdated(self, action: reconcile.WatchPrice) -> bool:
        return (
            reconcile.plan(self.state) != action or self.published.get("summary") != self._summary()
        )

    async def _report_to_group(self) -> None:
        """Tell the intent's group (OCO, bracket) how far it has filled and where it stands."""
        group_id = self.state.intent.group_id
        report = (self.state.filled, self.state.status)
        if group_id is None or self.group_missing or report == self.reported:
            return
        self.reported = report
        handle = workflow.get_external_workflow_handle(group_workflow_id(group_id))
        update = MemberUpdate(
            intent_id=self.state.intent.intent_id,
            filled=self.state.filled,
            status=self.state.status,
        )
        try:
            await handle.signal("member_update", update)
        except Exception:
            # A group id used as a plain label, with no group workflow: nothing to tell.
            self.group_missing = True

    def _expired(self) -> bool:
        expires_at = self.state.intent.expires_at
        return expires_at is not None and workflow.now() >= expires_at

    def _until_expiry(self) -> timedelta | None:
        expires_at = self.state.intent.expires_at
        if expires_at is None or self.state.expiring:
            return None
        return max(expires_at - workflow.now(), timedelta(milliseconds=1))

    async def _watch(self) -> bool:
        """Register with the account sync; False (poll instead) if there is none."""
        if self.watch_refused:
            return False
        intent = self.state.intent
        live = self.state.live_placement
        exchange = self.state.rules.exchange if self.state.rules is not None else None
        if self.state.stop_held:
            # Nothing on the exchange yet: its first order will be the next placement.
            number = len(self.state.placements)
        elif live is None or not client_ids.belongs_to(
            live.client_order_id, intent.intent_id, live.number, exchange
        ):
            # An adopted order carries another client order id: the sync cannot map it to us.
            return False
        else:
            number = live.number
        handle = workflow.get_external_workflow_handle(account_sync_id(intent.account))
        request = WatchRequest(
            intent_id=intent.intent_id,
            symbol=self.state.desired.symbol,
            exchange=exchange,
            placement=number,
        )
        try:
            await handle.signal("watch", request)
        except Exception as exc:  # the sync is not running: fall back to polling
            self.watch_refused = True
            self._note("polling", f"no account sync to watch this intent: {exc}")
            return False
        return True

    async def _unwatch(self) -> None:
        intent = self.state.intent
        handle = workflow.get_external_workflow_handle(account_sync_id(intent.account))
        try:
            await handle.signal("unwatch", intent.intent_id)
        except Exception:
            pass
        self.watched = False

    def _take_inbox(self) -> None:
        now = workflow.now()
        for order in self.inbox:
            self.state = reconcile.observe(self.state, order, now)
        self.inbox.clear()

    # --- executing actions ---------------------------------------------------------------------

    async def _execute(self, action: reconcile.Action) -> None:
        self.state = reconcile.start(self.state, action, workflow.now())
        match action:
            case reconcile.Place(placement=placement):
                await self._place(placement)
            case reconcile.Amend(replaces=replaces, placement=placement):
                await self._amend(self.state.placements[replaces], placement)
            case reconcile.Cancel(placement=number):
                await self._cancel(self.state.placements[number])
            case reconcile.Lookup(placement=number):
                await self._lookup(self.state.placements[number])

    async def _place(self, placement: Placement) -> None:
        request = self._order_request(placement)
        try:
            order = await self._call(
                "place_order",
                request,
                ExchangeOrder,
                f"place {placement.client_order_id}: {self._describe(placement)}",
            )
        except ActivityError as error:
            self._failed_call(placement, error)
            return
        self.state = reconcile.observe(self.state, order, workflow.now())

    async def _amend(self, old: Placement, new: Placement) -> None:
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
            result = await self._call("amend_order", request, AmendResult, summary)
        except ActivityError as error:
            # The old order may or may not have been cancelled: look before anything else.
            self.state = reconcile.unknown(self.state, old.number)
            self._failed_call(new, error)
            return
        now = workflow.now()
        if result.replaced is not None:
            self.state = reconcile.observe(self.state, result.replaced, now)
        if result.order is not None:
            self.state = reconcile.observe(self.state, result.order, now)
        elif result.replaced is not None and result.replaced.status.is_live:
            self.state = reconcile.amend_skipped(self.state, old.number, new.number, now)
        else:
            self.state = reconcile.observe_absent(self.state, new.number, now)

    async def _cancel(self, placement: Placement) -> None:
        request = self._lookup_request(placement)
        try:
            order = await self._call(
                "cancel_order",
                request,
                ExchangeOrder | None,
                f"cancel {placement.client_order_id}",
            )
        except ActivityError as error:
            self.state = reconcile.unknown(self.state, placement.number)
            self._count_unanswered(error)
            return
        self._record_lookup(placement, order)

    async def _lookup(self, placement: Placement) -> None:
        request = self._lookup_request(placement)
        try:
            order = await self._call(
                "fetch_order",
                request,
                ExchangeOrder | None,
                f"look up {placement.client_order_id}",
            )
        except ActivityError as error:
            self._count_unanswered(error)
            return
        self._record_lookup(placement, order)

    async def _look_at_live_order(self) -> None:
        live = self.state.live_placement
        if live is not None:
            await self._lookup(live)

    def _record_lookup(self, placement: Placement, order: ExchangeOrder | None) -> None:
        now = workflow.now()
        if order is None:
            self.state = reconcile.observe_absent(self.state, placement.number, now)
        else:
            self.state = reconcile.observe(self.state, order, now)

    async def _load_rules(self, *, local_first: bool) -> MarketRules | None:
        request = MarketRequest(account=self.state.intent.account, symbol=self.state.desired.symbol)
        summary = f"market rules of {request.symbol}"
        rules = await self._local_rules(request, summary) if local_first else None
        if isinstance(rules, str):
            return self._rules_failed(IntentStatus.REJECTED, rules)
        if rules is not None:
            return rules
        try:
            # The regular activity: during an exchange outage its attempts and last failure
            # show as a pending activity in the UI, and queries keep answering.
            return await self._call("load_market", request, MarketRules, summary)
        except ActivityError as error:
            rejection = _rejection(error)
            if rejection is not None:
                return self._rules_failed(IntentStatus.REJECTED, rejection)
            return self._rules_failed(
                IntentStatus.FAILED, f"could not load market rules: {error.cause}"
            )

    async def _local_rules(self, request: MarketRequest, summary: str) -> MarketRules | str | None:
        """The rules as a local activity: the worker's ccxt client usually has the markets
        cached, so this takes a millisecond and the first placement is scheduled in the same
        workflow task. A slow or failing exchange gets one short attempt, then the regular
        activity (None). A rejection (unknown symbol, a pre-trade limit) is final: its reason."""
        try:
            return await workflow.execute_local_activity(
                "load_market",
                request,
                result_type=MarketRules,
                schedule_to_close_timeout=LOCAL_RULES_BUDGET,
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=summary,
            )
        except ActivityError as error:
            return _rejection(error)
        except ApplicationError as error:  # a local activity's failure may come unwrapped
            return error.message if error.non_retryable else None
        except TimeoutError:
            return None

    def _rules_failed(self, status: IntentStatus, reason: str) -> None:
        self.state = reconcile.finish(
            self.state, reconcile.Finish(status=status, reason=reason), workflow.now()
        )

    async def _call(self, activity: str, arg: object, result_type: object, summary: str) -> object:
        # Exchange calls go to the account's task queue, whose rate limit holds across every
        # worker serving the account (docs/operations.md). Market rules stay on the workflow's
        # queue: ccxt serves them from the worker's market cache (one request per worker
        # process), and an activity on the workflow's own queue can start eagerly, without a
        # round trip through the server.
        result = await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,  # type: ignore[arg-type]
            task_queue=self._task_queue(activity),
            start_to_close_timeout=EXCHANGE_CALL_TIMEOUT,
            schedule_to_close_timeout=EXCHANGE_CALL_BUDGET,
            retry_policy=EXCHANGE_RETRY,
            summary=summary,
        )
        self.unanswered = 0
        return result

    def _task_queue(self, activity: str) -> str:
        task_queue = workflow.info().task_queue
        # No workflow.patched: a replay matches an activity by its id and type, not by its task
        # queue (tests/test_replay.py replays runs recorded before account queues), and a patch
        # would cost every run two history events (its marker and TemporalChangeVersion).
        if activity not in WORKFLOW_QUEUE_ACTIVITIES:
            task_queue = account_task_queue(task_queue, self.state.intent.account)
        return task_queue

    def _failed_call(self, placement: Placement, error: ActivityError) -> None:
        rejection = _rejection(error)
        if rejection is not None:
            self.state = reconcile.reject(self.state, placement.number, rejection, workflow.now())
        else:
            self.state = reconcile.unknown(self.state, placement.number)
            self._count_unanswered(error)

    def _count_unanswered(self, error: ActivityError) -> None:
        self.unanswered += 1
        self.last_error = str(error.cause or error)
        self._note("exchange call failed", self.last_error)

    # --- finishing and visibility --------------------------------------------------------------

    async def _finish(self, action: reconcile.Finish) -> IntentState:
        if not self.state.status.is_terminal:
            self.state = reconcile.finish(self.state, action, workflow.now())
        return await self._finish_now()

    async def _finish_now(self) -> IntentState:
        if self.watched:
            await self._unwatch()
        self._publish()
        await self._report_to_group()
        # Let in-flight updates answer before the workflow closes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

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
        if changed:
            updates = [
                INTENT_STATUS.value_set(state.status.value),
                RECONCILIATION_STATUS.value_set(state.reconciliation_status.value),
            ]
            if state.exchange_order_ids:
                updates.append(EXCHANGE_ORDER_IDS.value_set(state.exchange_order_ids))
            updates.append(LAST_SYNC_AT.value_set(workflow.now()))
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

    def _note(self, action: str, reason: str) -> None:
        record = ActionRecord(at=workflow.now(), action=action, reason=reason)
        actions = (*self.state.recent_actions, record)[-reconcile.RECENT_ACTIONS :]
        self.state = self.state.model_copy(update={"recent_actions": actions})

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
            may_exist=self.repaired,
            replaced_notional=replaced_notional(self.state, placement),
        )

    def _lookup_request(self, placement: Placement) -> OrderLookup:
        return OrderLookup(
            account=self.state.intent.account,
            symbol=self.state.desired.symbol,
            client_order_id=placement.client_order_id,
            known_filled=placement.filled,
        )

    def _describe(self, placement: Placement) -> str:
        desired = self.state.desired
        price = "market" if placement.price is None else str(placement.price)
        text = f"{desired.side.value} {placement.amount} {desired.symbol} @ {price}"
        if self.state.holds_stop:
            text = f"{text}, held stop {desired.stop_price} triggered"
        return text
