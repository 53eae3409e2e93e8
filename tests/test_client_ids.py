"""Client order ids in each exchange's form, as the workflow makes them, and back to the intent.

The rules table itself (patterns, certified exchanges, special forms) is tested in
tests/test_accounts.py; here: the ids the reconciler generates for an account's exchange, the
mapping from an id back to its intent for every form, and that recorded histories (binance, the
paper exchange) still produce exactly the ids they recorded.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import (
    Interceptor,
    Replayer,
    StartActivityInput,
    UnsandboxedWorkflowRunner,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from exchange_kernel import client_ids, reconcile
from exchange_kernel.models import (
    ID_RE,
    AmendRequest,
    IntentState,
    MarketRules,
    OrderIntent,
    OrderLookup,
    OrderRequest,
    OrderSpec,
    client_order_id,
    intent_digest,
)
from exchange_kernel.worker.run import WORKFLOWS

NOW = datetime(2025, 1, 1, tzinfo=UTC)
EXCHANGES = [*sorted(client_ids.RULES), "someexchange"]
# The intents' histories (the groups' and the account sync's place no orders themselves).
HISTORIES = [
    path
    for path in sorted((Path(__file__).parent / "histories").glob("*.json"))
    if not path.stem.startswith(("group_", "account_sync"))
]
intent_ids = st.from_regex(ID_RE, fullmatch=True)


def state_for(intent_id: str, exchange: str | None) -> IntentState:
    spec = OrderSpec(symbol="BTC/USDT", side="buy", amount="1", price="100")
    intent = OrderIntent(intent_id=intent_id, account="main", order=spec)
    rules = MarketRules(symbol="BTC/USDT", exchange=exchange)
    return IntentState(intent=intent, desired=spec, rules=rules)


def workflow_ids(intent_id: str, exchange: str | None, count: int) -> list[str]:
    """The client order ids the reconciler gives placements 0..count-1 (each one never reaches
    the exchange, so the next plan places the amount again under the next number)."""
    state = state_for(intent_id, exchange)
    ids = []
    for number in range(count):
        action = reconcile.plan(state, NOW)
        assert isinstance(action, reconcile.Place), action
        assert action.placement.number == number
        ids.append(action.placement.client_order_id)
        state = reconcile.begin(state, action, NOW)
        state = reconcile.record(state, action, reconcile.Observed(order=None), NOW)
    return ids


# --- the workflow's ids, per exchange ------------------------------------------------------------


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_workflow_ids_fit_the_rule_and_map_back_to_the_intent(exchange: str) -> None:
    rule = client_ids.rule_for(exchange)
    intent_id = "grid-btc-29900"
    ids = workflow_ids(intent_id, exchange, 40)
    assert len(set(ids)) == len(ids)
    owners = client_ids.Owners()
    owners.add(intent_id, exchange)
    owners.add("someone-else", exchange)
    for number, cid in enumerate(ids):
        assert rule.accepts(cid), (exchange, cid)
        assert cid == client_ids.client_order_id_for(exchange, intent_id, number)
        assert client_ids.looks_ours(cid, exchange)
        assert client_ids.belongs_to(cid, intent_id, number, exchange)
        assert not client_ids.belongs_to(cid, "someone-else", number, exchange)
        assert not client_ids.belongs_to(cid, intent_id, number + 1, exchange)
        assert client_ids.placement_of(cid, intent_id, exchange, up_to=len(ids)) == number
        assert client_ids.placement_of(cid, "someone-else", exchange, up_to=len(ids)) is None
        assert owners.owner(cid) == (intent_id, number)
        readable = client_ids.form_of(exchange).readable
        assert (client_ids.parse(cid) is not None) == readable
        if readable:
            assert client_ids.parse(cid) == (intent_digest(intent_id), number)


@pytest.mark.parametrize("exchange", EXCHANGES)
@given(intent_id=intent_ids, count=st.integers(min_value=1, max_value=6))
def test_any_intent_id_maps_back_from_every_placement(
    exchange: str, intent_id: str, count: int
) -> None:
    owners = client_ids.Owners()
    owners.add(intent_id, exchange)
    for number, cid in enumerate(workflow_ids(intent_id, exchange, count)):
        assert client_ids.rule_for(exchange).accepts(cid)
        assert owners.owner(cid) == (intent_id, number)
        assert owners.owner_of_key(client_ids.key_of(cid)) == intent_id


def test_forms_per_exchange_as_documented() -> None:
    intent_id = "a"
    digest = intent_digest(intent_id)
    assert workflow_ids(intent_id, "binance", 2) == [f"ek-{digest}-0", f"ek-{digest}-1"]
    assert workflow_ids(intent_id, "okx", 1) == [f"ek{digest}n0"]
    assert workflow_ids(intent_id, "gate", 1) == [f"t-ek-{digest}-0"]
    (hyper,) = workflow_ids(intent_id, "hyperliquid", 1)
    assert hyper.startswith("0x") and len(hyper) == 34
    for exchange in ("kraken", "coinbase", "coinbaseexchange"):
        (cid,) = workflow_ids(intent_id, exchange, 1)
        assert uuid.UUID(cid).version == 4


# --- binance and old histories: unchanged --------------------------------------------------------


@given(intent_id=intent_ids)
def test_rules_without_an_exchange_give_the_ids_they_always_gave(intent_id: str) -> None:
    # A MarketRules decoded from a history recorded before the field existed.
    old = MarketRules.model_validate_json('{"symbol": "BTC/USDT", "tick_size": "0.01"}')
    assert old.exchange is None
    spec = OrderSpec(symbol="BTC/USDT", side="buy", amount="1", price="100")
    state = IntentState(
        intent=OrderIntent(intent_id=intent_id, account="main", order=spec),
        desired=spec,
        rules=old,
    )
    action = reconcile.plan(state, NOW)
    assert isinstance(action, reconcile.Place)
    expected = f"ek-{intent_digest(intent_id)}-0"
    assert action.placement.client_order_id == expected == client_order_id(intent_id, 0)
    # ... and binance, the paper exchange's dialect, spells them the same way.
    assert workflow_ids(intent_id, "binance", 3) == workflow_ids(intent_id, None, 3)
    assert workflow_ids(intent_id, None, 3) == [client_order_id(intent_id, n) for n in range(3)]


def _recorded(history: dict[str, Any]) -> list[tuple[str, str]]:
    """(activity, client order id) of every exchange call the history scheduled."""
    calls = []
    for event in history["events"]:
        attributes = event.get("activityTaskScheduledEventAttributes")
        if attributes is None:
            continue
        name = attributes["activityType"]["name"]
        data = json.loads(base64.b64decode(attributes["input"]["payloads"][0]["data"]))
        cid = data.get("client_order_id") or (data.get("order") or {}).get("client_order_id")
        if cid is not None:
            calls.append((name, cid))
    return calls


CAPTURED: list[tuple[str, str]] = []


class _Outbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> Any:
        (arg,) = input.args
        if isinstance(arg, OrderRequest | OrderLookup):
            CAPTURED.append((input.activity, arg.client_order_id))
        elif isinstance(arg, AmendRequest):
            CAPTURED.append((input.activity, arg.order.client_order_id))
        return super().start_activity(input)


class _Inbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))


class _CaptureActivities(Interceptor):
    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _Inbound


# A held stop cancelled before it triggered: it never sent an order (its replay must not either);
# an account sync only observes.
NO_ORDER_CALLS = {"held_stop_cancelled", "sync_unwatch_with_a_rounds_result"}


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_histories_replay_with_the_same_client_order_ids(path: Path) -> None:
    text = path.read_text()
    recorded = _recorded(json.loads(text))
    scenario = path.stem.split(".")[0]  # x.regular-rules: recorded before local market rules
    assert recorded or scenario in NO_ORDER_CALLS, "a history with no exchange order call"
    assert all(cid.startswith("ek-") for _, cid in recorded)
    CAPTURED.clear()
    replayer = Replayer(
        workflows=WORKFLOWS,
        data_converter=pydantic_data_converter,
        interceptors=[_CaptureActivities()],
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    await replayer.replay_workflow(WorkflowHistory.from_json(f"intent-{path.stem}", text))
    assert CAPTURED == recorded


# --- recognising ids: readable and opaque forms --------------------------------------------------


def test_parse_reads_every_readable_form_and_nothing_else() -> None:
    digest = intent_digest("x")
    for cid in (f"ek-{digest}-12", f"ek{digest}n12", f"t-ek-{digest}-12"):
        assert client_ids.parse(cid) == (digest, 12)
        assert client_ids.looks_ours(cid) and client_ids.looks_ours(cid, "kraken")
        assert client_ids.key_of(cid) == digest
    for cid in (
        f"ek-{digest}-012",  # never generated: the number has no leading zero
        f"ek-{digest}-",
        f"ek-{digest[:-1]}-1",
        f"EK-{digest}-1",
        f"x-ek-{digest}-1",
        "ek-manual-order",
        "my-order-1",
        "",
    ):
        assert client_ids.parse(cid) is None, cid
        assert not client_ids.looks_ours(cid, "binance"), cid


def test_opaque_ids_are_only_a_shape_until_an_intent_claims_them() -> None:
    ours = client_ids.client_order_id_for("kraken", "i-1", 0)
    theirs = str(uuid.uuid4())  # placed by someone else, also a version-4 UUID
    for cid in (ours, theirs):
        assert client_ids.is_opaque(cid) and client_ids.is_opaque(cid, "kraken")
        assert client_ids.looks_ours(cid, "kraken")
        assert not client_ids.looks_ours(cid, "binance")  # not binance's form
    owners = client_ids.Owners()
    owners.add("i-1", "kraken")
    assert owners.owner(ours) == ("i-1", 0)
    assert owners.owner(ours.upper()) == ("i-1", 0)
    assert owners.owner(theirs) is None
    hyper = client_ids.client_order_id_for("hyperliquid", "i-1", 0)
    assert client_ids.is_opaque(hyper, "hyperliquid") and not client_ids.is_opaque(hyper, "kraken")
    # Not registered under its exchange: not recognised.
    assert owners.owner(hyper) is None


def test_a_lookup_changes_nothing() -> None:
    """What the account sync's `owners` query uses: a query must leave the workflow's state
    as it found it (a replay runs no queries)."""
    for exchange in ("coinbase", None):
        owners = client_ids.Owners(window=4)
        owners.add("i-1", exchange, placement=2)
        ids = [client_ids.client_order_id_for(exchange or "binance", "i-1", n) for n in range(12)]
        assert owners.lookup(ids[6]) == ("i-1", 6)
        assert owners.placement("i-1") == 2 and owners.key("i-1") == owners.key("i-1")
        key_before = owners.key("i-1")
        assert owners.lookup(ids[6]) == ("i-1", 6)
        assert owners.key("i-1") == key_before
        if exchange is not None:
            assert owners.lookup(ids[10]) is None  # the horizon did not move
        assert owners.owner(ids[6]) == ("i-1", 6)
        assert owners.placement("i-1") == 6


def test_owners_follow_an_opaque_intent_beyond_its_first_window() -> None:
    owners = client_ids.Owners(window=4)
    owners.add("i-1", "coinbase", placement=2)
    ids = [client_ids.client_order_id_for("coinbase", "i-1", n) for n in range(20)]
    assert owners.owner(ids[6]) == ("i-1", 6)  # 2 + window
    assert owners.owner(ids[11]) is None  # beyond 6 + 4
    assert owners.owner(ids[10]) == ("i-1", 10)  # seen 6: the window moved
    assert owners.owner(ids[14]) == ("i-1", 14)
    assert owners.placement("i-1") == 14
    assert owners.key("i-1") == ids[14]
    assert owners.owner_of_key(ids[14]) == "i-1"
    # Registered again with its live placement (a new watch): recognised from there.
    owners.add("i-1", "coinbase", placement=19)
    assert owners.owner(ids[19]) == ("i-1", 19)
    owners.discard("i-1")
    assert "i-1" not in owners
    assert all(owners.owner(cid) is None for cid in ids)
    assert owners.owner_of_key(ids[14]) is None


def test_owners_of_readable_intents_and_old_watchers() -> None:
    owners = client_ids.Owners()
    owners.add("i-1", "okx")
    owners.add("i-2")  # a watch signal recorded before the exchange was sent: kernel form
    assert owners.owner(client_ids.client_order_id_for("okx", "i-1", 3)) == ("i-1", 3)
    assert owners.owner(client_order_id("i-2", 5)) == ("i-2", 5)
    assert owners.owner(client_order_id("i-3", 0)) is None  # not watched
    assert owners.key("i-1") == intent_digest("i-1")
    assert owners.owner_of_key(intent_digest("i-2")) == "i-2"
    assert owners.exchange("i-1") == "okx" and owners.exchange("i-2") is None
    owners.discard("i-1")
    assert owners.owner(client_ids.client_order_id_for("okx", "i-1", 3)) is None
    owners.discard("i-1")  # twice: no error


def test_an_adopted_order_does_not_belong_to_its_intent() -> None:
    # The intent watches only when its live placement carries its own id (`_watch`).
    assert not client_ids.belongs_to("manual-123", "adopted-1", 0, "binance")
    assert not client_ids.belongs_to(client_order_id("other", 0), "adopted-1", 0, None)
    assert client_ids.belongs_to(client_order_id("adopted-1", 0), "adopted-1", 0, None)
