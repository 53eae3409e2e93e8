"""IntentClient: what strategy code imports to submit, modify, cancel and inspect intents."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel import client_ids
from exchange_kernel.connection import TASK_QUEUE, TemporalUnreachable, connect
from exchange_kernel.devserver import (
    EXCHANGE_ORDER_IDS,
    INTENT_ACCOUNT,
    INTENT_GROUP,
    INTENT_STATUS,
    INTENT_SYMBOL,
    LAST_SYNC_AT,
    RECONCILIATION_STATUS,
    STRATEGY_ID,
    intent_search_attributes,
)
from exchange_kernel.models import (
    ID_RE,
    ExchangeOrder,
    GroupState,
    HaltRequest,
    IntentBrief,
    IntentChange,
    IntentGroup,
    IntentStart,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderLookup,
    OrderSpec,
    OrderType,
    Orphan,
    ReconciliationStatus,
    Value,
    account_sync_id,
    group_workflow_id,
    workflow_id_for,
)
from exchange_kernel.reconcile import adopted, increases_risk, refresh
from exchange_kernel.repair import last_task_failure
from exchange_kernel.workflows.account_sync import AccountSyncStatus
from exchange_kernel.workflows.group import IntentGroupWorkflow
from exchange_kernel.workflows.intent import OrderIntentWorkflow

if TYPE_CHECKING:
    from exchange_kernel.watch import IntentWatch

ORPHAN_GRACE = timedelta(seconds=10)
# `stale_intents`: how long one intent's state query may take before it counts as unanswerable.
STATE_READ_TIMEOUT = 5.0
# Queries or signals to intents in flight at once (stale_intents, resync_account).
FAN_OUT = 32


class IntentError(Exception):
    """What the client raises about an intent. Two kinds that need different handling:
    `IntentRejected` (refused: trying again changes nothing) and `IntentUnavailable` (the
    server did not let the call reach the intent: nothing was sent; try again)."""


class AlreadyExistsError(IntentError):
    """An intent with this id exists with a different spec."""


class IntentNotFound(IntentError, LookupError):
    pass


class IntentRejected(IntentError, ValueError):
    """The intent refused a modification or cancellation; the message says why."""


class IntentUnavailable(IntentError):
    """The intent cannot answer now: its last workflow task timed out (its worker stopped, or
    is overloaded) and runs again when a worker picks it up. The call did not reach the
    intent (nothing was changed): try again shortly. Not an `IntentRejected`, so code that
    handles refusals does not take it for one."""


class IntentStuck(IntentUnavailable):
    """The intent's workflow task keeps failing (a nondeterminism error, say): it answers
    nothing until `exchange-kernel repair` (docs/operations.md) or a fixed worker."""


class IntentListing(Value):
    """One row of `list()`: what visibility knows without asking the workflow."""

    intent_id: str
    account: str | None
    symbol: str | None
    group_id: str | None
    status: str | None
    reconciliation_status: str | None
    summary: str | None
    started_at: datetime | None
    closed_at: datetime | None


class StaleIntent(IntentListing):
    """One row of `stale_intents()`: a running intent whose view of the exchange is too old."""

    # When the exchange was last observed for it: its own last look at its orders, or the
    # last completed round of its account sync while that sync watches it. None: never.
    observed_at: datetime | None
    watched: bool  # its account sync observes it (else it looks at its orders itself)


class IntentClient:
    def __init__(self, client: Client, task_queue: str = TASK_QUEUE) -> None:
        self.temporal = client
        self.task_queue = task_queue

    @classmethod
    async def connect(
        cls,
        address: str | None = None,
        namespace: str | None = None,
        task_queue: str = TASK_QUEUE,
        *,
        profile: str | None = None,
    ) -> IntentClient:
        """Connect through envconfig (`profile` of temporal.toml, default TEMPORAL_PROFILE or
        'default'; TEMPORAL_* variables), overridden by `address` and `namespace`."""
        try:
            client = await connect(address, namespace, profile=profile)
        except ValueError as exc:
            # temporalio refuses a malformed target ("invalid port number") without naming it.
            raise TemporalUnreachable(
                f"invalid Temporal server address {address!r} ({exc}): expected host:port"
            ) from None
        return cls(client, task_queue)

    # --- submitting ----------------------------------------------------------------------------

    async def submit(self, intent: OrderIntent | Mapping[str, Any]) -> IntentState:
        """Start the intent's workflow; idempotent for the same id and the same spec.

        The intent is validated again as the worker will decode it, so one built with
        `model_construct` or `model_copy(update=...)` (which skip validation) is refused here
        (pydantic's ValidationError, naming the field) instead of starting a workflow that
        cannot decode its input.
        """
        intent = _validated(intent)
        await self._refuse_if_halted(intent.account, intent.order.symbol, "new intents")
        summary = intent.summary()
        try:
            await self.temporal.start_workflow(
                OrderIntentWorkflow.run,
                IntentStart(intent=intent),
                id=intent.workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=intent_search_attributes(intent),
                memo={"summary": summary},
                static_summary=f"{intent.account}: {summary}",
                request_eager_start=True,
            )
        except WorkflowAlreadyStartedError:
            existing = await self.state(intent.intent_id)
            if existing.intent != intent:
                raise AlreadyExistsError(
                    f"intent {intent.intent_id!r} already exists with another spec "
                    f"({existing.intent.summary()}, {existing.status.value})"
                ) from None
            return existing
        return IntentState(intent=intent, desired=intent.order)

    async def submit_group(self, group: IntentGroup) -> GroupState:
        """Start an OCO or bracket group; its members become ordinary intents."""
        summary = f"{group.kind.value} group {group.group_id}"
        pairs = [
            SearchAttributePair(INTENT_ACCOUNT, group.account),
            SearchAttributePair(INTENT_GROUP, group.group_id),
        ]
        if group.strategy_id:
            pairs.append(SearchAttributePair(STRATEGY_ID, group.strategy_id))
        try:
            await self.temporal.start_workflow(
                IntentGroupWorkflow.run,
                group,
                id=group_workflow_id(group.group_id),
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=TypedSearchAttributes(pairs),
                memo={"summary": summary},
                static_summary=summary,
            )
        except WorkflowAlreadyStartedError:
            existing = await self.group_state(group.group_id)
            if existing.group != group:
                raise AlreadyExistsError(
                    f"group {group.group_id!r} already exists with other members"
                ) from None
            return existing
        return GroupState(group=group)

    async def group_state(self, group_id: str) -> GroupState:
        handle = self.temporal.get_workflow_handle(group_workflow_id(group_id))
        try:
            return await handle.query("state", result_type=GroupState)
        except RPCError as exc:
            raise await self._not_found(group_id, exc, handle.id) from None

    async def cancel_group(self, group_id: str, reason: str = "cancelled by user") -> None:
        """Cancel every live member of the group (fills are kept)."""
        handle = self.temporal.get_workflow_handle(group_workflow_id(group_id))
        try:
            await handle.signal("cancel", reason)
        except RPCError as exc:
            raise await self._not_found(group_id, exc, handle.id) from None

    async def group_result(self, group_id: str) -> GroupState:
        handle = self.temporal.get_workflow_handle(
            group_workflow_id(group_id), result_type=GroupState
        )
        return await handle.result()

    # --- changing ------------------------------------------------------------------------------

    async def modify(
        self,
        intent_id: str,
        *,
        price: Decimal | str | None = None,
        amount: Decimal | str | None = None,
        stop_price: Decimal | str | None = None,
    ) -> IntentBrief:
        """Change price, amount and/or stop price; returns the intent in brief or raises
        IntentRejected. A held stop's new stop price is simply what it watches from then on.

        A lower amount is answered once the live order is cancelled and its fills are final
        (the remaining is then placed again): it is never accepted on a view that the exchange
        has already overtaken."""
        change = IntentChange(price=price, amount=amount, stop_price=stop_price)
        await self._refuse_risk_if_halted(intent_id, change)
        return await self._update(intent_id, "modify", change)

    async def cancel(self, intent_id: str, reason: str = "cancelled by user") -> IntentBrief:
        return await self._update(intent_id, "cancel", reason)

    async def signal_modify(
        self,
        intent_id: str,
        *,
        price: Decimal | str | None = None,
        amount: Decimal | str | None = None,
        stop_price: Decimal | str | None = None,
    ) -> None:
        """Fire and forget: a rejected change only shows in the intent's recent actions."""
        change = IntentChange(price=price, amount=amount, stop_price=stop_price)
        await self._refuse_risk_if_halted(intent_id, change)
        await self._signal(intent_id, "modify", change)

    async def signal_cancel(self, intent_id: str, reason: str = "cancelled by user") -> None:
        await self._signal(intent_id, "cancel", reason)

    async def signal_observed(self, intent_id: str, order: ExchangeOrder) -> None:
        await self._signal(intent_id, "observed", order)

    async def resync(self, intent_id: str) -> None:
        """Have the intent look at the exchange now (a finished intent has nothing to look at)."""
        try:
            await self._signal(intent_id, "resync", None)
        except IntentRejected:
            pass

    async def resync_account(self, account: str) -> list[str]:
        """Have every running intent of the account look at the exchange now; returns the ids
        of the intents told. They are found through visibility, which trails a start by a
        moment: an intent submitted a second ago may be left out (it has just looked anyway)."""
        running = (
            "WorkflowType = 'OrderIntent' AND ExecutionStatus = 'Running' "
            f"AND IntentAccount = '{_quoted(account)}'"
        )
        ids = [e.id.removeprefix("intent-") async for e in self.temporal.list_workflows(running)]
        gate = asyncio.Semaphore(FAN_OUT)

        async def tell(intent_id: str) -> bool:
            async with gate:
                try:
                    await self.temporal.get_workflow_handle(workflow_id_for(intent_id)).signal(
                        "resync"
                    )
                except RPCError as exc:
                    if exc.status == RPCStatusCode.NOT_FOUND:
                        return False  # finished since visibility listed it
                    raise
                return True

        told = await asyncio.gather(*(tell(i) for i in ids))
        return [i for i, ok in zip(ids, told, strict=True) if ok]

    # --- orphans -------------------------------------------------------------------------------

    async def orphans(self, account: str, symbols: tuple[str, ...] = ()) -> list[Orphan]:
        """Open orders of the account that no running intent owns: ours left by a finished or
        crashed predecessor ("kernel"), or placed by hand ("manual")."""
        handle = self.temporal.get_workflow_handle(account_sync_id(account))
        try:
            candidates = await handle.execute_update(
                "scan", tuple(symbols), result_type=tuple[ExchangeOrder, ...]
            )
        except RPCError as exc:
            raise self._no_sync(account, exc) from None
        owned: set[str] = set()
        running = "WorkflowType = 'OrderIntent' AND ExecutionStatus = 'Running'"
        async for execution in self.temporal.list_workflows(running):
            owned.update(execution.typed_search_attributes.get(EXCHANGE_ORDER_IDS) or ())
        # An order placed a moment ago may not be in its intent's search attributes yet.
        settled = datetime.now(UTC) - ORPHAN_GRACE
        found = []
        for order in candidates:
            if order.exchange_order_id in owned:
                continue
            if order.updated_at is not None and order.updated_at > settled:
                continue
            cid = order.client_order_id
            if client_ids.parse(cid) is not None:
                # A readable form (ek-<digest>-<n>, ...): ours whether or not visibility still
                # knows the intent.
                owner = await self._owner(order.exchange_order_id)
                intent_id = owner[0] if owner else None
                found.append(Orphan(order=order, kind="kernel", intent_id=intent_id))
            elif client_ids.is_opaque(cid):
                # An opaque form (UUID, 128-bit hex) names no intent: ours only if an intent
                # claims the order (its ExchangeOrderIds); otherwise reported as placed by hand.
                owner = await self._owner(order.exchange_order_id)
                if owner is not None:
                    found.append(Orphan(order=order, kind="kernel", intent_id=owner[0]))
                else:
                    found.append(Orphan(order=order, kind="manual"))
            else:
                found.append(Orphan(order=order, kind="manual"))
        return found

    async def _owner(self, exchange_order_id: str) -> tuple[str, bool] | None:
        """(intent id, running) of the intent whose ExchangeOrderIds holds this order: a running
        one first (an adopted order is claimed by its adopter and by the intent that placed
        it), else the newest."""
        query = (
            f"WorkflowType = 'OrderIntent' AND ExchangeOrderIds = '{_quoted(exchange_order_id)}'"
        )
        found = None
        async for execution in self.temporal.list_workflows(query, limit=20):
            running = execution.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
            if running:
                return execution.id.removeprefix("intent-"), True
            found = found or (execution.id.removeprefix("intent-"), False)
        return found

    async def adopt(
        self,
        order: ExchangeOrder,
        account: str,
        intent_id: str,
        *,
        strategy_id: str | None = None,
    ) -> IntentState:
        """Make an orphan order an intent: the intent starts with that order as its live
        placement and keeps it converging from there (modify, cancel, fills) like any other."""
        spec = OrderSpec(
            symbol=order.symbol,
            side=order.side,
            type=_adopted_type(order),
            amount=order.amount,
            price=order.price,
            stop_price=order.stop_price,
        )
        intent = OrderIntent(
            intent_id=intent_id,
            account=account,
            order=spec,
            strategy_id=strategy_id,
            tags={"adopted": order.client_order_id},
        )
        state = adopted(intent, order)
        await self._refuse_if_halted(account, spec.symbol, "adoptions")
        try:
            await self.temporal.start_workflow(
                OrderIntentWorkflow.run,
                IntentStart(intent=intent, state=state),
                id=intent.workflow_id,
                task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                search_attributes=intent_search_attributes(intent),
                memo={"summary": intent.summary()},
                static_summary=f"{account}: {intent.summary()} (adopted)",
            )
        except WorkflowAlreadyStartedError:
            raise AlreadyExistsError(f"intent {intent_id!r} already exists") from None
        return state

    async def cancel_orphan(
        self, account: str, symbol: str, client_order_id: str
    ) -> ExchangeOrder | None:
        """Cancel an order that no intent owns; returns it as the exchange has it after."""
        handle = self.temporal.get_workflow_handle(account_sync_id(account))
        lookup = OrderLookup(account=account, symbol=symbol, client_order_id=client_order_id)
        try:
            return await handle.execute_update(
                "cancel_orphan", lookup, result_type=ExchangeOrder | None
            )
        except RPCError as exc:
            raise self._no_sync(account, exc) from None

    # --- the kill switch -----------------------------------------------------------------------

    async def halt(
        self,
        account: str,
        symbol: str | None = None,
        *,
        cancel_all: bool = False,
        reason: str = "halted by user",
    ) -> dict[str, str]:
        """Refuse new intents and risk-increasing changes on the account (or one symbol);
        cancels still work. With cancel_all, every live intent in scope is cancelled. Durable:
        the state lives in the account's sync workflow."""
        request = HaltRequest(symbol=symbol, cancel_all=cancel_all, reason=reason)
        handle = self.temporal.get_workflow_handle(account_sync_id(account))
        try:
            return await handle.execute_update("halt", request, result_type=dict[str, str])
        except RPCError as exc:
            raise self._no_sync(account, exc) from None

    async def resume(self, account: str, symbol: str | None = None) -> dict[str, str]:
        handle = self.temporal.get_workflow_handle(account_sync_id(account))
        try:
            return await handle.execute_update("resume", symbol, result_type=dict[str, str])
        except RPCError as exc:
            raise self._no_sync(account, exc) from None

    async def halts(self, account: str) -> dict[str, str]:
        """Halted scopes of the account ("*" = all symbols) with their reasons."""
        handle = self.temporal.get_workflow_handle(account_sync_id(account))
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return {}  # no sync workflow, so no kill switch was ever set
            raise
        memo = await description.memo()
        halts = memo.get("halts") if isinstance(memo, dict) else None
        return dict(halts) if isinstance(halts, dict) else {}

    async def _refuse_if_halted(self, account: str, symbol: str, what: str) -> None:
        halts = await self.halts(account)
        reason = halts.get(symbol) or halts.get("*")
        if reason is not None:
            raise IntentRejected(f"account {account} is halted ({reason}): {what} are refused")

    async def _refuse_risk_if_halted(self, intent_id: str, change: IntentChange) -> None:
        state = await self.state(intent_id)
        halts = await self.halts(state.intent.account)
        reason = halts.get(state.desired.symbol) or halts.get("*")
        if reason is not None and increases_risk(state.desired, change):
            raise IntentRejected(
                f"account {state.intent.account} is halted ({reason}): only cancels and "
                "changes that reduce risk are accepted"
            )

    @staticmethod
    def _no_sync(account: str, exc: RPCError) -> Exception:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return IntentNotFound(
                f"account {account!r} has no running account sync (is a worker running with "
                "this account?)"
            )
        return exc

    # --- reading -------------------------------------------------------------------------------

    async def state(self, intent_id: str) -> IntentState:
        """The intent's state, its reconciliation status as of now: the workflow computed it at
        its last step, and a view that has aged past `reconcile.STALE_AFTER` since then (a
        lookup in flight against a failing exchange) reads `stale`."""
        handle = self._handle(intent_id)
        try:
            state = await handle.query("state", result_type=IntentState)
            return refresh(state, datetime.now(UTC))
        except RPCError as exc:
            raise await self._not_found(intent_id, exc, handle.id) from None
        except WorkflowQueryFailedError as exc:
            raise IntentNotFound(f"intent {intent_id!r} cannot be read: {exc}") from None

    async def result(self, intent_id: str) -> IntentState:
        """Wait until the intent is terminal and return its final state."""
        return await self._handle(intent_id).result()

    async def wait_for(
        self,
        intent_id: str,
        condition: Callable[[IntentState], bool],
        within: timedelta = timedelta(seconds=30),
        interval: timedelta = timedelta(milliseconds=100),
    ) -> IntentState:
        """Poll the intent's state until `condition` holds (TimeoutError after `within`).
        Following an intent without polling: `watch`."""
        async with asyncio.timeout(within.total_seconds()):
            while True:
                try:
                    state = await self.state(intent_id)
                except IntentNotFound:
                    pass  # not started yet (a group starts its members shortly after)
                else:
                    if condition(state):
                        return state
                await asyncio.sleep(interval.total_seconds())

    def watch(
        self,
        *,
        intent_id: str | None = None,
        group_id: str | None = None,
        account: str | None = None,
        strategy_id: str | None = None,
        cursor: str | None = None,
        include_finished: bool = False,
    ) -> IntentWatch:
        """The events (`IntentEvent`: fills, status moves, modifications accepted or refused,
        cancel requests) of one intent, a group, an account or a strategy (exactly one of
        them), as they happen: `async for event in intents.watch(account="paper")`.

        From each intent's first kept event (the most recent `events.KEEP_EVENTS`), or after
        `cursor` (the watch's `.cursor` after an event). At least once: dedupe by
        (`intent_id`, `seq`). One intent: the iteration ends after its last event (an unknown
        id raises IntentNotFound). A group, account or strategy: its running intents, and
        those that start later (found within a few seconds), until the iteration stops; with
        `include_finished`, also those that had ended before the watch began.
        Long polls on the intents' workflows (the `changes` update), no polling of states:
        exchange_kernel/watch.py."""
        from exchange_kernel.watch import IntentWatch  # it builds on this client

        return IntentWatch(
            self,
            intent_id=intent_id,
            group_id=group_id,
            account=account,
            strategy_id=strategy_id,
            cursor=cursor,
            include_finished=include_finished,
        )

    async def list(
        self,
        *,
        account: str | None = None,
        symbol: str | None = None,
        group: str | None = None,
        status: IntentStatus | str | None = None,
        strategy: str | None = None,
        reconciliation: ReconciliationStatus | str | None = None,
        limit: int | None = None,
    ) -> list[IntentListing]:
        """Intents by their search attributes, newest first (`reconciliation="stale"`: those
        whose view of the exchange had aged past `reconcile.STALE_AFTER` at their last step)."""
        clauses = ["WorkflowType = 'OrderIntent'"]
        for name, value in (
            ("IntentAccount", account),
            ("IntentSymbol", symbol),
            ("IntentGroup", group),
            ("IntentStatus", None if status is None else IntentStatus(status).value),
            ("StrategyId", strategy),
            (
                "ReconciliationStatus",
                None if reconciliation is None else ReconciliationStatus(reconciliation).value,
            ),
        ):
            if value is not None:
                clauses.append(f"{name} = '{_quoted(value)}'")
        query = " AND ".join(clauses)
        rows = []
        async for execution in self.temporal.list_workflows(query, limit=limit):
            rows.append(await _listing(execution))
        return rows

    async def intent_by_exchange_order_id(self, exchange_order_id: str) -> IntentState:
        """The intent that owns an exchange order (its ExchangeOrderIds search attribute): a
        running one before a finished one, else the newest. Visibility trails the intent by a
        moment, so an order seen a second ago may not be found yet; and an intent keeps the ids
        of only its most recent ended orders (`reconcile.SETTLED_ORDER_IDS`)."""
        owner = await self._owner(exchange_order_id)
        if owner is None:
            raise IntentNotFound(f"no intent owns exchange order {exchange_order_id!r}")
        return await self.state(owner[0])

    async def stale_intents(
        self, max_age: timedelta, *, account: str | None = None
    ) -> list[StaleIntent]:
        """Running intents whose last observation of the exchange is older than `max_age`,
        oldest first (one that never saw the exchange counts from its start).

        Observation: an intent's own look at its orders (`IntentState.last_sync_at`, the
        LastSyncAt search attribute), or, while its account sync watches it, the sync's last
        completed round (`status().last_round_at`, one query per account): the rounds record
        nothing in the intents' histories. Intents whose LastSyncAt is recent enough are
        settled by visibility alone; the others are asked for their state."""
        now = datetime.now(UTC)
        cutoff = now - max_age
        clauses = ["WorkflowType = 'OrderIntent'", "ExecutionStatus = 'Running'"]
        if account is not None:
            clauses.append(f"IntentAccount = '{_quoted(account)}'")
        executions = [e async for e in self.temporal.list_workflows(" AND ".join(clauses))]
        accounts = sorted(
            {a for e in executions if (a := e.typed_search_attributes.get(INTENT_ACCOUNT))}
        )
        syncs = dict(
            zip(accounts, await asyncio.gather(*(self._sync(a) for a in accounts)), strict=True)
        )
        gate = asyncio.Semaphore(FAN_OUT)

        async def judge(execution: WorkflowExecution) -> StaleIntent | None:
            attributes = execution.typed_search_attributes
            own = attributes.get(LAST_SYNC_AT)
            if own is not None and own >= cutoff:
                return None
            intent_account = attributes.get(INTENT_ACCOUNT)
            last_round, watched_ids = syncs.get(intent_account or "", (None, None))
            intent_id = execution.id.removeprefix("intent-")
            if watched_ids is not None and intent_id in watched_ids:
                if last_round is not None and last_round >= cutoff:
                    return None
            async with gate:
                try:
                    state = await asyncio.wait_for(self.state(intent_id), STATE_READ_TIMEOUT)
                except IntentNotFound:
                    return None  # finished since visibility listed it
                except (TimeoutError, RPCError, IntentUnavailable):
                    # It cannot answer (no worker polls its queue, its task is failing): stale
                    # as far as anyone can tell, observed when visibility last said.
                    listing = await _listing(execution)
                    return StaleIntent(**listing.model_dump(), observed_at=own, watched=False)
            if state.status.is_terminal:
                return None
            seen = observed_at(state, last_round)
            if (seen or execution.start_time) >= cutoff:
                return None
            listing = (await _listing(execution)).model_dump()
            listing["status"] = state.status.value
            listing["reconciliation_status"] = state.reconciliation_status.value
            return StaleIntent(**listing, observed_at=seen, watched=state.watched)

        found = [r for r in await asyncio.gather(*(judge(e) for e in executions)) if r]
        return sorted(found, key=lambda r: r.observed_at or datetime.min.replace(tzinfo=UTC))

    async def _sync(self, account: str) -> tuple[datetime | None, set[str] | None]:
        """The account sync's last completed round, and the intents it watches when it can
        say (None: no sync, or one that does not answer `watched`)."""
        handle = self.temporal.get_workflow_handle(account_sync_id(account))
        try:
            status = await handle.query("status", result_type=AccountSyncStatus)
        except (RPCError, WorkflowQueryFailedError):
            return None, None
        try:
            watched = await handle.query("watched", result_type=dict[str, str])
        except (RPCError, WorkflowQueryFailedError):
            return status.last_round_at, None
        return status.last_round_at, set(watched)

    # --- plumbing ------------------------------------------------------------------------------

    def _handle(self, intent_id: str) -> WorkflowHandle:
        if not isinstance(intent_id, str) or not ID_RE.fullmatch(intent_id):
            raise IntentNotFound(f"{intent_id!r} is not a valid intent id")
        return self.temporal.get_workflow_handle(
            workflow_id_for(intent_id), result_type=IntentState
        )

    async def _update(self, intent_id: str, name: str, arg: object) -> IntentBrief:
        handle = self._handle(intent_id)
        try:
            return await handle.execute_update(name, arg, result_type=IntentBrief)
        except WorkflowUpdateFailedError as exc:
            raise IntentRejected(_failure_message(exc.cause)) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                # Updates cannot reach a closed workflow; say why if the intent has finished.
                finished = await self.state(intent_id)
                raise IntentRejected(
                    f"intent {intent_id} is already {finished.status.value}"
                ) from None
            raise await self._not_found(intent_id, exc, handle.id) from None

    async def _signal(self, intent_id: str, name: str, arg: object) -> None:
        handle = self._handle(intent_id)
        try:
            if arg is None:
                await handle.signal(name)
            else:
                await handle.signal(name, arg)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                finished = await self.state(intent_id)
                raise IntentRejected(
                    f"intent {intent_id} is already {finished.status.value}"
                ) from None
            raise await self._not_found(intent_id, exc, handle.id) from None

    async def _not_found(self, intent_id: str, exc: RPCError, workflow_id: str) -> Exception:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return IntentNotFound(f"no intent {intent_id!r}")
        if exc.status == RPCStatusCode.FAILED_PRECONDITION:
            # The server answers a query to a run whose workflow task is being retried with the
            # same status as a change to a finished run; only the message tells them apart.
            if "failed state" in exc.message:
                return await self._unavailable(intent_id, exc.message, workflow_id)
            return IntentRejected(f"intent {intent_id!r} has finished: {exc.message}")
        return exc

    async def _unavailable(self, intent_id: str, refusal: str, workflow_id: str) -> Exception:
        """Why the server refuses the run (its workflow task is on its third try or later),
        from its history: a try failed since the last completed task (it fails again on every
        try until repaired), or the tries timed out (a worker died) and none has completed yet.
        The history does not record every try's outcome: the worker's log has them all."""
        handle = self.temporal.get_workflow_handle(workflow_id)
        try:
            failure = last_task_failure((await handle.fetch_history()).events)
            attempt = (await handle.describe()).raw_description.pending_workflow_task.attempt
        except RPCError:
            failure, attempt = None, 0
        if failure is not None:
            reason = _first_line(failure.workflow_task_failed_event_attributes.failure.message)
            return IntentStuck(
                f"intent {intent_id!r} is stuck: its workflow task keeps failing ({reason}); "
                f"`exchange-kernel repair {intent_id}` shows why"
            )
        tries = f" (try {attempt})" if attempt else ""
        return IntentUnavailable(
            f"intent {intent_id!r} cannot answer yet: its workflow task timed out and has not "
            f"completed since{tries}; a worker stopped or is overloaded, or its tries fail "
            f"(the worker's log says which). Try again shortly. Server: {refusal}"
        )


def _validated(intent: OrderIntent | Mapping[str, Any]) -> OrderIntent:
    if isinstance(intent, OrderIntent):
        # Round trip through JSON: exactly what the worker's data converter will decode.
        return OrderIntent.model_validate_json(intent.model_dump_json(warnings=False))
    if isinstance(intent, Mapping):
        return OrderIntent.model_validate(intent)
    raise TypeError(f"submit() takes an OrderIntent (or its fields), not {type(intent).__name__}")


def _first_line(message: str, limit: int = 300) -> str:
    line = message.strip().splitlines()[0] if message.strip() else message
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failure_message(cause: BaseException | None) -> str:
    """The refusal and what caused it, e.g. an argument the workflow could not decode."""
    parts: list[str] = []
    while cause is not None and len(parts) < 5:
        message = cause.message if isinstance(cause, ApplicationError) else str(cause)
        if message and message not in parts:
            parts.append(message)
        cause = cause.__cause__
    return ": ".join(parts) or "rejected"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


async def _listing(execution: WorkflowExecution) -> IntentListing:
    attributes = execution.typed_search_attributes
    memo = await execution.memo()
    closed = execution.status not in (
        None,
        WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING,
    )
    status = attributes.get(INTENT_STATUS)
    if closed and status in (None, IntentStatus.PENDING.value):
        status = f"closed:{execution.status.name.lower()}" if execution.status else status
    return IntentListing(
        intent_id=execution.id.removeprefix("intent-"),
        account=attributes.get(INTENT_ACCOUNT),
        symbol=attributes.get(INTENT_SYMBOL),
        group_id=attributes.get(INTENT_GROUP),
        status=status,
        reconciliation_status=attributes.get(RECONCILIATION_STATUS),
        summary=memo.get("summary") if isinstance(memo, dict) else None,
        started_at=execution.start_time,
        closed_at=execution.close_time,
    )


def _adopted_type(order: ExchangeOrder) -> OrderType:
    """The intent type of an open order: a stop price makes it a stop, a limit price a limit
    (a stop-market order has a stop price and no price)."""
    if order.stop_price is not None:
        return OrderType.STOP_LIMIT if order.price is not None else OrderType.STOP_MARKET
    return OrderType.LIMIT if order.price is not None else OrderType.MARKET


def observed_at(state: IntentState, last_round_at: datetime | None) -> datetime | None:
    """When the exchange was last observed for the intent: its own last look at its orders,
    or, while its account sync watches it (and has not lost sight of the account), the sync's
    last completed round, which looks at every watched order without telling the intent."""
    live = state.live_placement
    looks = [state.last_sync_at, live.observed_at if live is not None else None]
    if state.watched and state.watch_lapsed_since is None:
        looks.append(last_round_at)
    seen = [at for at in looks if at is not None]
    return max(seen) if seen else None
