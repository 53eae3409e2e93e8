"""Intent events: what changed between two states of an intent, as a strategy wants to hear it.

`derive(before, after, at)` compares the state before and after one step of the workflow (a
recorded action, a signal, an update, a merged observation) and names the changes: new trades
(by trade id, so a fill seen twice is one event), status moves, modifications accepted or
refused, a cancellation asked for. `record` numbers them and keeps the most recent in the state,
so the events survive continue-as-new and the numbering never starts again. Pure and
deterministic (standard library and models only): the workflow calls it after every step, and
a test can call it on any pair of states.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from exchange_kernel.models import IntentEvent, IntentEventKind, IntentState

# Events kept in the state: a watcher that falls further behind reads `gap` and the state.
KEEP_EVENTS = 32
# The note `reconcile` writes when it refuses a change (a signal's, or a judged reduction's).
CHANGE_REFUSED_NOTE = "modify rejected"

T = TypeVar("T")


def derive(before: IntentState, after: IntentState, at: datetime) -> list[IntentEvent]:
    """The events of the step from `before` to `after`, numbered after `after.event_seq`:
    fills first (a fill can end an intent), then modifications, cancellation, status."""
    found: list[dict[str, Any]] = []
    known = {fill.trade_id for fill in before.fills}
    filled = before.filled
    new_fills = [fill for fill in after.fills if fill.trade_id not in known]
    for i, fill in enumerate(new_fills):
        filled += fill.amount
        # The total as of this trade; the last one says what the step ended with (an order's
        # own filled amount can run ahead of the trades fetched so far).
        total = after.filled if i == len(new_fills) - 1 else min(filled, after.filled)
        found.append({"kind": IntentEventKind.FILL, "fill": fill, "filled": total})
    if after.revision > before.revision:
        found.append(
            {
                "kind": IntentEventKind.MODIFICATION_ACCEPTED,
                "revision": after.revision,
                "desired": after.desired,
            }
        )
    for note in appended(before.recent_actions, after.recent_actions):
        if note.action == CHANGE_REFUSED_NOTE:
            found.append({"kind": IntentEventKind.MODIFICATION_REFUSED, "reason": note.reason})
    accepted = before.accepted_revision or 0
    for refusal in appended(before.refusals, after.refusals):
        # A refused order of the original spec, or of a revision the exchange had taken
        # before, is no refused modification: the status says what became of the intent.
        if refusal.revision > accepted:
            reverted = refusal.reverted_to is not None
            found.append(
                {
                    "kind": IntentEventKind.MODIFICATION_REFUSED,
                    "reason": refusal.reason,
                    "revision": refusal.revision,
                    "reverted_to": refusal.reverted_to,
                    "desired": after.desired if reverted else None,
                }
            )
    if after.status.is_terminal and not before.status.is_terminal:
        # Changes still waiting for a judgment cannot apply to a finished intent.
        dropped = {p.number for p in before.pending_changes} - {
            p.number for p in after.pending_changes
        }
        reason = f"intent {after.intent.intent_id} is already {after.status.value}"
        found.extend(
            {"kind": IntentEventKind.MODIFICATION_REFUSED, "reason": reason} for _ in dropped
        )
    if after.cancel_reason is not None and before.cancel_reason is None:
        found.append({"kind": IntentEventKind.CANCEL_REQUESTED, "reason": after.cancel_reason})
    if after.status is not before.status:
        reason = after.outcome_reason if after.status.is_terminal else None
        found.append(
            {
                "kind": IntentEventKind.STATUS,
                "previous_status": before.status,
                "reason": reason,
            }
        )
    common = {"at": at, "intent_id": after.intent.intent_id, "status": after.status}
    return [
        IntentEvent(seq=after.event_seq + n, **{**common, "filled": after.filled, **fields})
        for n, fields in enumerate(found, start=1)
    ]


def record(before: IntentState, after: IntentState, at: datetime) -> IntentState:
    """`after` with the events of the step from `before` added to its tail (the most recent
    KEEP_EVENTS are kept) and `event_seq` moved on."""
    new = derive(before, after, at)
    if not new:
        return after
    return after.model_copy(
        update={
            "events": (*after.events, *new)[-KEEP_EVENTS:],
            "event_seq": new[-1].seq,
        }
    )


def since(state: IntentState, after: int) -> tuple[tuple[IntentEvent, ...], bool]:
    """The kept events with a seq past `after`, and whether some between `after` and them were
    dropped from the tail already (a gap). A position past the last seq (the intent was reset
    to an earlier point: `exchange-kernel repair`) is a gap too, answered with every kept
    event: their seqs were given again."""
    if after > state.event_seq:
        return state.events, True
    events = tuple(e for e in state.events if e.seq > after)
    oldest = events[0].seq if events else state.event_seq + 1
    return events, oldest > after + 1


def appended(before: Sequence[T], after: Sequence[T]) -> list[T]:
    """What `after` added to `before`, for a tail that is only ever appended to and trimmed at
    its front (`(*before, *new)[-N:]`): the shortest `new` for which the two line up."""
    for extra in range(len(after) + 1):
        overlap = len(after) - extra
        if overlap <= len(before) and list(before[len(before) - overlap :]) == list(
            after[:overlap]
        ):
            return list(after[overlap:])
    return list(after)
