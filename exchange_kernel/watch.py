"""`IntentClient.watch`: the events of one intent, a group, an account or a strategy as they
happen, without polling the state.

Built on Temporal alone. Each followed intent is one loop of its workflow's `changes` update, a
long poll that answers as soon as the intent records an event (or empty after half a minute,
or at once when the run continues as new or ends: it is asked again). A closed intent's last
events come from its result (the final state). The intents of a group, an account or a
strategy are found through visibility: one list when the watch starts, then one every
RELIST_EVERY for intents started since; each is followed until it ends. The cost is a long
poll per followed intent and a list per interval, not a query per intent per interval.

Delivery is at least once: an event is (intent_id, seq), seqs rise by one per intent, and
`IntentWatch.cursor` (after each event) resumes a later watch after the events already
yielded. A watcher that falls more than `events.KEEP_EVENTS` behind an intent misses events:
`IntentWatch.gap` says so for the next event yielded (read the intent's state then).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import (
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel.client import (
    IntentClient,
    IntentNotFound,
    IntentRejected,
    _failure_message,
    _quoted,
)
from exchange_kernel.events import since
from exchange_kernel.models import IntentEvent, IntentEvents, IntentState

# How often the intents of a group, account or strategy are listed again for new ones.
RELIST_EVERY = timedelta(seconds=1.5)
# Visibility trails a workflow's start and close by a moment: each list reaches back this far.
VISIBILITY_LAG = timedelta(seconds=10)
# A finished intent stays in the cursor this long after the cursor's list time has passed its
# end (so that a resumed watch does not follow it again from its first kept event).
FORGET_AFTER = timedelta(minutes=2)
# A running intent whose update could not be delivered (a run continuing as new) is asked
# again after this.
RETRY_AFTER = 0.2
# ... or after this when it has too many updates in flight (or the server is busy).
BUSY_RETRY_AFTER = 1.0
# Events read ahead of the consumer.
READ_AHEAD = 1000

SELECTORS = {
    "group_id": "IntentGroup",
    "account": "IntentAccount",
    "strategy_id": "StrategyId",
}


class WatchCursor:
    """Where a watch stands: per intent the last seq yielded, the intents already followed to
    their end, and for a group, account or strategy the time from which an intent that ended
    may not have been seen (`since`). Opaque to callers: `encode` / `decode`."""

    def __init__(
        self,
        seqs: dict[str, int] | None = None,
        done: dict[str, datetime] | None = None,
        since: datetime | None = None,
    ) -> None:
        self.seqs = dict(seqs or {})
        self.done = dict(done or {})
        self.since = since

    def encode(self) -> str:
        data = {
            "v": 1,
            "seqs": self.seqs,
            "done": {k: v.isoformat() for k, v in self.done.items()},
            "since": None if self.since is None else self.since.isoformat(),
        }
        raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> WatchCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = json.loads(raw)
            if data.get("v") != 1:
                raise ValueError(f"version {data.get('v')!r}")
            seqs = {str(k): int(v) for k, v in data["seqs"].items()}
            done = {str(k): datetime.fromisoformat(v) for k, v in data["done"].items()}
            since_ = data.get("since")
            return cls(seqs, done, None if since_ is None else datetime.fromisoformat(since_))
        except (binascii.Error, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a watch cursor ({exc}): {text[:40]!r}") from None


@dataclass
class _Event:
    event: IntentEvent
    gap: bool


@dataclass
class _Done:
    intent_id: str


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _End:
    pass


class IntentWatch:
    """An async iterator of `IntentEvent`s (from `IntentClient.watch`). After each event,
    `cursor` resumes a later watch after it and `gap` says whether events of its intent before
    it were dropped unread. Watching one intent ends after its last event; a group, account or
    strategy is watched until the iteration stops (`aclose`, or `async with`).

    Closing leaves the long polls in flight to answer into nothing (the Temporal client cannot
    cancel a call): a process that exits right after may abort at interpreter shutdown when
    one answers then (temporalio/sdk-python#300); `exchange-kernel watch` exits without it."""

    def __init__(
        self,
        intents: IntentClient,
        *,
        intent_id: str | None = None,
        group_id: str | None = None,
        account: str | None = None,
        strategy_id: str | None = None,
        cursor: str | None = None,
        include_finished: bool = False,
    ) -> None:
        chosen = {
            name: value
            for name, value in (
                ("intent_id", intent_id),
                ("group_id", group_id),
                ("account", account),
                ("strategy_id", strategy_id),
            )
            if value is not None
        }
        if len(chosen) != 1:
            raise ValueError(
                "watch one of intent_id=, group_id=, account= or strategy_id= (exactly one), "
                f"got {', '.join(chosen) or 'none'}"
            )
        [(self._selector, self._value)] = chosen.items()
        self._intents = intents
        self._position = WatchCursor.decode(cursor) if cursor else WatchCursor()
        self._include_finished = include_finished
        self._queue: asyncio.Queue[_Event | _Done | _Failed | _End] = asyncio.Queue(READ_AHEAD)
        self._tasks: set[asyncio.Task[None]] = set()
        self._followed: set[str] = set()
        self._iterating = False
        self._created_at = datetime.now(UTC)  # a fresh watch: intents that end from now on
        self.gap = False

    @property
    def cursor(self) -> str:
        """Resumes a watch after the events yielded so far (pass it as `cursor=`)."""
        return self._position.encode()

    def __aiter__(self) -> AsyncIterator[IntentEvent]:
        if self._iterating:
            raise RuntimeError("a watch is iterated once; start another with the cursor")
        self._iterating = True
        return self._events()

    async def __aenter__(self) -> IntentWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following (the long polls in flight answer into nothing)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._tasks.clear()

    async def _events(self) -> AsyncIterator[IntentEvent]:
        if self._selector == "intent_id":
            self._spawn(self._one(self._value))
        else:
            self._spawn(self._discover())
        try:
            while True:
                item = await self._queue.get()
                match item:
                    case _Event(event=event, gap=gap):
                        self._position.seqs[event.intent_id] = event.seq
                        self.gap = gap
                        yield event
                    case _Done(intent_id=intent_id):
                        self._position.done[intent_id] = datetime.now(UTC)
                        self._position.seqs.pop(intent_id, None)
                        self._forget()
                    case _Failed(error=error):
                        raise error
                    case _End():
                        return
        finally:
            await self.aclose()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(self._guarded(coroutine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coroutine: Any) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._queue.put(_Failed(exc))

    # --- one intent ----------------------------------------------------------------------------

    async def _one(self, intent_id: str) -> None:
        if intent_id not in self._position.done:
            await self._follow(intent_id, self._position.seqs.get(intent_id, 0))
        await self._queue.put(_End())

    async def _follow(self, intent_id: str, after: int) -> None:
        """Long-poll the intent's `changes` until its run ends, then read its final events."""
        handle = self._intents._handle(intent_id)
        while True:
            try:
                batch = await handle.execute_update("changes", after, result_type=IntentEvents)
            except WorkflowUpdateFailedError as exc:
                # Refused: a worker older than the `changes` update serves the intent.
                reason = _failure_message(exc.cause)
                raise IntentRejected(f"intent {intent_id} cannot be watched: {reason}") from None
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
                _cancelled_yet()  # the client turns a cancellation into its own error
                # Closed (or continuing as new, busy, or not there at all): its description
                # says.
                delay = await self._retry_after(handle, intent_id, exc)
                if delay is None:
                    break
                await asyncio.sleep(delay)
                continue
            await self._put(batch.events, batch.gap)
            after = batch.last_seq
            if batch.finished:
                break
        final = await self._final_state(handle)
        if final is not None:
            found, gap = since(final, after)
            await self._put(found, gap)
        await self._queue.put(_Done(intent_id))

    async def _put(self, found: tuple[IntentEvent, ...], gap: bool) -> None:
        for i, event in enumerate(found):
            await self._queue.put(_Event(event, gap and i == 0))

    async def _retry_after(
        self, handle: WorkflowHandle, intent_id: str, error: Exception
    ) -> float | None:
        """How long to wait before asking a running intent again, or None if it has closed."""
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise IntentNotFound(f"no intent {intent_id!r}") from None
            raise
        if description.status != WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
            return None
        if not isinstance(error, RPCError) or error.status in (
            RPCStatusCode.NOT_FOUND,  # the run it reached had just continued as new
            RPCStatusCode.FAILED_PRECONDITION,
            RPCStatusCode.ABORTED,
        ):
            return RETRY_AFTER
        if error.status in (
            # Too many updates in flight on the workflow, or the server is busy.
            RPCStatusCode.RESOURCE_EXHAUSTED,
            RPCStatusCode.UNAVAILABLE,
            RPCStatusCode.DEADLINE_EXCEEDED,
        ):
            return BUSY_RETRY_AFTER
        raise error

    async def _final_state(self, handle: WorkflowHandle) -> IntentState | None:
        """The intent's final state: its result, else (terminated, failed) its last state."""
        try:
            return await handle.result()
        except WorkflowFailureError:
            pass
        try:
            return await handle.query("state", result_type=IntentState)
        except (RPCError, WorkflowQueryFailedError):
            return None  # no worker can read it: its events end here

    # --- a group, an account, a strategy -------------------------------------------------------

    async def _discover(self) -> None:
        base = (
            f"WorkflowType = 'OrderIntent' AND {SELECTORS[self._selector]} = "
            f"'{_quoted(self._value)}'"
        )
        position = self._position
        # Followed again: what the cursor had not seen to the end.
        for intent_id, seq in list(position.seqs.items()):
            self._start(intent_id, seq)
        if self._include_finished:
            query = base
        else:
            # Running, or ended since the cursor's list time (or since the watch was made):
            # an intent that ended before is not followed, whenever it started.
            ended_since = position.since or self._created_at
            base = f"{base} AND (ExecutionStatus = 'Running' OR CloseTime > '{_time(ended_since)}')"
            query = base
        while True:
            listed_at = datetime.now(UTC)
            async for execution in self._intents.temporal.list_workflows(query):
                self._start(execution.id.removeprefix("intent-"), 0)
            position.since = listed_at - VISIBILITY_LAG
            await asyncio.sleep(RELIST_EVERY.total_seconds())
            # From now on only intents started since: the running ones are followed already.
            query = f"{base} AND StartTime > '{_time(position.since)}'"

    def _start(self, intent_id: str, seq: int) -> None:
        if intent_id in self._followed or intent_id in self._position.done:
            return
        self._followed.add(intent_id)
        self._position.seqs.setdefault(intent_id, seq)
        self._spawn(self._member(intent_id, seq))

    async def _member(self, intent_id: str, seq: int) -> None:
        try:
            await self._follow(intent_id, seq)
        except IntentNotFound:  # gone from the namespace (retention): nothing to follow
            await self._queue.put(_Done(intent_id))

    def _forget(self) -> None:
        """Drop intents that ended well before the cursor's list time: a resumed watch does not
        list them (they ended before `since`), so the cursor need not carry them."""
        since_ = self._position.since
        if since_ is None:
            return
        done = self._position.done
        for intent_id in [i for i, at in done.items() if at < since_ - FORGET_AFTER]:
            del done[intent_id]


def _cancelled_yet() -> None:
    """Raise CancelledError if this task is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
