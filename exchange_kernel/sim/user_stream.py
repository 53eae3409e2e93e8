"""The user-data stream: an account's events pushed to the WebSocket API connections that
subscribed to it, through the stream faults.

The engine hands every account's events to `UserStreams.publish` as they happen (see
`exchange_kernel.sim.engine`); each subscribed connection gets them wrapped as Binance's WebSocket
API wraps them, `{"subscriptionId": n, "event": {...}}`, in order. A connection writes from its
own queue, so a delayed event holds back what comes after it on that connection, as a slow link
would, and nothing is ever reordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from exchange_kernel.sim import errors, wire
from exchange_kernel.sim.faults import (
    STREAM_DISCONNECT,
    STREAM_DROP_EVENT,
    STREAM_TERMINATE,
    FaultInjector,
)
from exchange_kernel.sim.model import (
    AccountEvent,
    BalanceAdjustment,
    BalancePosition,
    Execution,
)

# Close code when the sim itself stops (1001: going away).
CLOSE_GOING_AWAY = 1001
_CLOSE = "close"
_ABORT = "abort"


def render(event: AccountEvent) -> dict[str, Any]:
    """Binance's JSON for one account event."""
    if isinstance(event, Execution):
        return wire.execution_report(event)
    if isinstance(event, BalancePosition):
        return wire.outbound_account_position(event)
    if isinstance(event, BalanceAdjustment):
        return wire.balance_update(event)
    raise TypeError(f"not an account event: {event!r}")


@dataclass(eq=False)
class StreamConnection:
    """One WebSocket API connection: its subscriptions and its ordered, possibly delayed,
    outgoing messages (answers and events alike)."""

    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    # subscriptionId -> the api key of the account it streams.
    subscriptions: dict[int, str] = field(default_factory=dict)
    closing: bool = False
    _next_subscription_id: int = 0
    _last_due: float = 0.0
    _queue: asyncio.Queue[tuple[float, str]] = field(default_factory=asyncio.Queue)

    def subscribe(self, api_key: str) -> int:
        if api_key in self.subscriptions.values():
            raise errors.subscription_already_active()
        subscription_id = self._next_subscription_id
        self._next_subscription_id += 1
        self.subscriptions[subscription_id] = api_key
        return subscription_id

    def send(self, message: dict[str, Any], delay: float = 0.0) -> None:
        if self.closing:
            return
        self._enqueue(json.dumps(message), delay)

    def close(self) -> None:
        """Close (with a close frame) once what is queued has gone out."""
        if not self.closing:
            self._enqueue(_CLOSE, 0.0)
            self.closing = True

    def abort(self) -> None:
        """Drop the TCP connection, no close frame: what a network failure looks like."""
        if not self.closing:
            self._enqueue(_ABORT, 0.0)
            self.closing = True

    def _enqueue(self, text: str, delay: float) -> None:
        # Never earlier than what is already queued: delays hold back, they do not reorder.
        due = max(time.monotonic() + delay, self._last_due)
        self._last_due = due
        self._queue.put_nowait((due, text))

    async def write(self) -> None:
        """Run for the connection's life: send what is queued when it is due."""
        while True:
            due, text = await self._queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if text == _ABORT:
                if self.transport is not None:
                    self.transport.abort()
                return
            if text == _CLOSE:
                await self.ws.close()
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return


@dataclass(eq=False)
class UserStreams:
    """Every open WebSocket API connection of one sim, and what reaches them."""

    faults: FaultInjector
    clock: Callable[[], int]
    connections: set[StreamConnection] = field(default_factory=set)

    def publish(self, api_key: str, events: list[AccountEvent]) -> None:
        """The engine's listener: one account's events of one change, in order."""
        targets = [
            (connection, subscription_id)
            for connection in self.connections
            for subscription_id, key in connection.subscriptions.items()
            if key == api_key and not connection.closing
        ]
        if not targets:
            return
        for event in events:
            body = render(event)
            for connection, subscription_id in targets:
                if connection.closing:
                    continue
                fate = self.faults.stream_fate()
                if fate == STREAM_TERMINATE:
                    self.terminate(connection)
                elif fate == STREAM_DISCONNECT:
                    connection.abort()
                elif fate != STREAM_DROP_EVENT:
                    connection.send(
                        {"subscriptionId": subscription_id, "event": body},
                        self.faults.stream_delay(),
                    )

    def terminate(self, connection: StreamConnection) -> None:
        """End every subscription of the connection (`eventStreamTerminated`), then close it."""
        for subscription_id in list(connection.subscriptions):
            self.end(connection, subscription_id)
        connection.close()

    def end(self, connection: StreamConnection, subscription_id: int) -> None:
        connection.subscriptions.pop(subscription_id, None)
        event = wire.event_stream_terminated(self.clock())
        connection.send({"subscriptionId": subscription_id, "event": event})

    def terminate_all(self) -> None:
        for connection in list(self.connections):
            self.terminate(connection)

    async def shutdown(self) -> None:
        """The server stops: close every connection at once."""
        for connection in list(self.connections):
            connection.closing = True
            with contextlib.suppress(Exception):
                await connection.ws.close(code=CLOSE_GOING_AWAY)
