"""Activities that talk to Temporal itself, not to an exchange: the kill switch's reach.

The kill switch lives in each account's sync workflow (its memo `halts`, scope -> reason; "*"
is the whole account). Workflows cannot read another workflow, so these activities do it with
the worker's own Temporal client:

- `account_halt`: the halt in force for an intent's account and symbol, read when the intent
  loads its market rules (a halt set between a client's check and the workflow's start still
  holds: the intent's first order is refused while halted).
- `signal_account_intents`: a signal to every running intent of an account (a symbol), found in
  visibility, so that a halt reaches the intents the sync does not watch (adopted orders,
  intents whose watch was refused, intents still loading their rules).
"""

from __future__ import annotations

from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from exchange_kernel.models import IntentSignal, MarketRequest, account_sync_id


class KernelActivities:
    def __init__(self, client: Client) -> None:
        self.client = client

    def all(self) -> list[Any]:
        return [self.account_halt, self.signal_account_intents]

    @activity.defn
    async def account_halt(self, request: MarketRequest) -> str | None:
        """The reason `request.symbol` of `request.account` is halted, or None."""
        handle = self.client.get_workflow_handle(account_sync_id(request.account))
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None  # no sync workflow: no kill switch was ever set
            raise
        memo = await description.memo()
        halts = memo.get("halts") if isinstance(memo, dict) else None
        if not isinstance(halts, dict):
            return None
        reason = halts.get(request.symbol) or halts.get("*")
        return str(reason) if reason is not None else None

    @activity.defn
    async def signal_account_intents(self, request: IntentSignal) -> int:
        """Signal every running intent of the account (of `symbol`, if given); how many."""
        query = (
            "WorkflowType = 'OrderIntent' AND ExecutionStatus = 'Running' "
            f"AND IntentAccount = '{request.account}'"
        )
        if request.symbol is not None:
            query += f" AND IntentSymbol = '{request.symbol}'"
        sent = 0
        async for execution in self.client.list_workflows(query):
            handle = self.client.get_workflow_handle(execution.id)
            try:
                await handle.signal(request.signal, request.arg)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                continue  # finished meanwhile
            sent += 1
        activity.logger.info("%s sent to %d intent(s) of %s", request.signal, sent, request.account)
        return sent
