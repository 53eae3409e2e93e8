"""Secret hygiene: an account's key and secret never reach Temporal, failure messages or logs.

An account with recognisable credentials (canaries) is registered at a paper exchange of its own
and given to a worker through environment variables. End-to-end scenarios run on it: place,
modify (native amend and cancel-replace), cancel, partial and full fills, a market order,
an exchange rejection (insufficient funds), an authentication failure (the right key with a
wrong secret), and retried failures (5xx, 429, a dropped response). Meanwhile every log record
(every logger at DEBUG) and everything written to file descriptors 1 and 2 is captured. Then
every workflow history is exported (payloads, memos, search attributes and failures decoded),
and the canaries are searched for everywhere. The ccxt exceptions that become failure messages
are provoked directly too, and searched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from google.protobuf.json_format import MessageToJson
from temporalio.client import Client, WorkflowHistory

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.activities.errors import to_application_error
from exchange_kernel.client import IntentClient
from exchange_kernel.models import IntentState, IntentStatus, OrderIntent, OrderSpec
from exchange_kernel.sim import SimServer, binance_client, running_sim
from exchange_kernel.sim.admin_client import AdminClient
from exchange_kernel.worker import build_worker

CANARY_KEY = "KEY-ek-canary-7f3a9c1e5b2d4086"
CANARY_SECRET = "SECRET-ek-canary-e41b7d0c93a6f258"
WRONG_SECRET = "SECRET-ek-canary-wrong-5c2e8a1f"  # also a secret: the one the worker was given
KEY_ENV = "EK_CANARY_KEY"
SECRET_ENV = "EK_CANARY_SECRET"
WRONG_SECRET_ENV = "EK_CANARY_WRONG_SECRET"
# A value of the same shape put where it does not belong, to prove the scan can find one.
CONTROL = "KEY-ek-control-2b9d6e4f1a7c3058"


def _forms(value: str) -> set[str]:
    """The value, its distinctive tail, and encodings it could be hidden in."""
    raw = value.encode()
    return {
        value,
        value.rsplit("-", 1)[-1],
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        raw.hex(),
    }


NEEDLES = {form for secret in (CANARY_KEY, CANARY_SECRET, WRONG_SECRET) for form in _forms(secret)}
CONTROL_NEEDLES = _forms(CONTROL)


def leaks(text: str, needles: Iterable[str] = NEEDLES) -> list[str]:
    return sorted(n for n in needles if n in text)


# --- decoding everything Temporal stores ----------------------------------------------------


def _maybe_base64(text: str) -> str | None:
    if len(text) < 4 or len(text) % 4:
        return None
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def strings_of(data: Any) -> Iterator[str]:
    """Every string in a JSON document, and the decoded text of every base64 payload in it."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield str(key)
            yield from strings_of(value)
    elif isinstance(data, list):
        for item in data:
            yield from strings_of(item)
    elif isinstance(data, str):
        yield data
        decoded = _maybe_base64(data)
        if decoded is not None:
            yield decoded
            try:
                yield from strings_of(json.loads(decoded))
            except ValueError:
                pass
    elif data is not None:
        yield str(data)


def history_text(history: WorkflowHistory) -> str:
    return "\n".join(strings_of(history.to_json_dict()))


def failure_messages(data: Any) -> Iterator[str]:
    """The message and stack trace of every failure (and its causes) in a history."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "failure" and isinstance(value, dict):
                cause: Any = value
                while isinstance(cause, dict):
                    yield f"{cause.get('message', '')}\n{cause.get('stackTrace', '')}"
                    cause = cause.get("cause")
            yield from failure_messages(value)
    elif isinstance(data, list):
        for item in data:
            yield from failure_messages(item)


# --- capturing logs and file descriptors ----------------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, record: logging.LogRecord) -> str:
        """The formatted line with its traceback, and every attribute (args, extras)."""
        return f"{self.format(record)}\n{record.__dict__!r}"


@contextmanager
def every_log_record() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    names = ["", "temporalio", "exchange_kernel", "ccxt", "aiohttp", "asyncio"]
    levels = {name: logging.getLogger(name).level for name in names}
    root.addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@dataclass
class Output:
    text: str = ""


@contextmanager
def file_descriptors() -> Iterator[Output]:
    """Everything written to fds 1 and 2 (the Rust core's own log lines go there)."""
    output = Output()
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield output
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            output.text = sink.read().decode(errors="replace")


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    intent_ids: list[str] = field(default_factory=list)
    finals: dict[str, IntentState] = field(default_factory=dict)
    histories: dict[str, str] = field(default_factory=dict)
    history_failures: list[str] = field(default_factory=list)
    described: dict[str, str] = field(default_factory=dict)  # memo, attributes, raw description
    pending_failures: list[str] = field(default_factory=list)  # retried attempts' failures
    queried: dict[str, str] = field(default_factory=dict)
    records: list[tuple[str, str]] = field(default_factory=list)  # (logger, text)
    fd_output: str = ""
    ccxt_messages: dict[str, list[str]] = field(default_factory=dict)
    control_history: str = ""


def accounts_at(base_url: str) -> dict[str, AccountConfig]:
    common = {"base_url": base_url, "api_key_env": KEY_ENV}
    return {
        "canary": AccountConfig(name="canary", secret_env=SECRET_ENV, **common),
        "canary-replace": AccountConfig(
            name="canary-replace",
            secret_env=SECRET_ENV,
            options={"has": {"editOrder": False}},
            **common,
        ),
        "canary-wrong-secret": AccountConfig(
            name="canary-wrong-secret", secret_env=WRONG_SECRET_ENV, **common
        ),
    }


def intent(account: str, tags: dict[str, str] | None = None, **order: Any) -> OrderIntent:
    spec = {"symbol": "BTC/USDT", "side": "buy", "amount": "0.01", "price": "29000", **order}
    return OrderIntent(
        intent_id=f"canary-{uuid.uuid4().hex[:10]}",
        account=account,
        order=OrderSpec(**spec),
        tags=tags or {},
    )


def resting(state: IntentState) -> bool:
    return state.status is IntentStatus.OPEN and state.reconciliation_status.value == "in_sync"


class Scenarios:
    def __init__(self, intents: IntentClient, admin: AdminClient, run: Run) -> None:
        self.intents = intents
        self.admin = admin
        self.run = run

    async def submit(self, item: OrderIntent) -> str:
        self.run.intent_ids.append(item.intent_id)
        await self.intents.submit(item)
        return item.intent_id

    async def final(self, intent_id: str, status: IntentStatus) -> IntentState:
        state = await asyncio.wait_for(self.intents.result(intent_id), 60)
        assert state.status is status, state
        self.run.finals[intent_id] = state
        return state

    async def watch_retries(self, intent_id: str, until: Any) -> None:
        """Wait for `until`, recording the failures of retried exchange calls on the way."""
        handle = self.intents.temporal.get_workflow_handle(f"intent-{intent_id}")
        async with asyncio.timeout(60):
            while True:
                description = await handle.describe()
                for pending in description.raw_description.pending_activities:
                    if pending.HasField("last_failure"):
                        self.run.pending_failures.append(MessageToJson(pending.last_failure))
                if until(await self.intents.state(intent_id)):
                    return
                await asyncio.sleep(0.05)

    async def place_modify_cancel(self, account: str) -> None:
        item = await self.submit(intent(account))
        await self.intents.wait_for(item, resting)
        await self.intents.modify(item, price="29100")
        await self.intents.wait_for(
            item, lambda s: resting(s) and s.placements[-1].price == Decimal("29100")
        )
        await self.intents.modify(item, amount="0.02")
        await self.intents.wait_for(
            item, lambda s: resting(s) and s.placements[-1].amount == Decimal("0.02")
        )
        await self.intents.cancel(item, "canary scenario done")
        await self.final(item, IntentStatus.CANCELED)

    async def partial_then_full_fill(self) -> None:
        await self.admin.price("ETHUSDT", "2000")
        item = await self.submit(intent("canary", symbol="ETH/USDT", amount="0.5", price="1990"))
        await self.intents.wait_for(item, resting)
        await self.admin.price("ETHUSDT", "1990", volume="0.2")
        await self.intents.resync(item)
        await self.intents.wait_for(item, lambda s: s.filled == Decimal("0.2"))
        await self.admin.price("ETHUSDT", "1985")
        await self.intents.resync(item)
        final = await self.final(item, IntentStatus.FILLED)
        assert final.filled == Decimal("0.5")

    async def market_order(self) -> None:
        item = await self.submit(
            intent("canary", symbol="SOL/USDT", side="sell", type="market", amount="1", price=None)
        )
        await self.final(item, IntentStatus.FILLED)

    async def insufficient_funds(self) -> None:
        item = await self.submit(intent("canary", side="sell", amount="200", price="40000"))
        final = await self.final(item, IntentStatus.REJECTED)
        assert "InsufficientFunds" in (final.outcome_reason or "")

    async def wrong_secret(self) -> None:
        item = await self.submit(intent("canary-wrong-secret"))
        final = await self.final(item, IntentStatus.REJECTED)
        assert "AuthenticationError" in (final.outcome_reason or "")

    async def retried_failures(self) -> None:
        """A 500 and a 429 on placement, a dropped response, a 503 on the cancel."""
        for faults in (
            {"error_500": 1.0, "endpoints": ["POST /api/v3/order"], "max_faults": 1},
            {
                "rate_limit_429": 1.0,
                "retry_after": 1,
                "endpoints": ["POST /api/v3/order"],
                "max_faults": 1,
            },
            {"drop_response": 1.0, "endpoints": ["POST /api/v3/order"], "max_faults": 1},
        ):
            await self.admin.set_faults(**faults)
            item = await self.submit(intent("canary"))
            await self.watch_retries(item, resting)
            injected = (await self.admin.faults())["injected"]
            assert sum(injected.values()) == 1, injected
            await self.admin.set_faults(
                error_503=1.0, endpoints=["DELETE /api/v3/order"], max_faults=1
            )
            await self.intents.signal_cancel(item)
            await self.watch_retries(item, lambda s: s.status.is_terminal)
            await self.final(item, IntentStatus.CANCELED)
            await self.admin.set_faults()


async def provoke_ccxt_errors(sim: SimServer, admin: AdminClient) -> dict[str, list[str]]:
    """The messages of the ccxt exceptions the activities turn into failures, with the canaries."""
    messages: dict[str, list[str]] = {}

    def keep(exc: Exception) -> None:
        texts = [str(exc), repr(exc), to_application_error(exc).message]
        for linked in (exc.__cause__, exc.__context__):
            if linked is not None:
                texts += [str(linked), repr(linked)]
        messages.setdefault(type(exc).__name__, []).extend(texts)

    good = binance_client(sim.base_url, CANARY_KEY, CANARY_SECRET)
    wrong = binance_client(sim.base_url, CANARY_KEY, WRONG_SECRET)
    try:
        await good.load_markets()
        await wrong.load_markets()
        order = ("BTC/USDT", "limit", "buy", "0.01", "29000")
        attempts: list[tuple[dict[str, Any] | None, Any]] = [
            ({"error_500": 1.0, "max_faults": 1}, lambda: good.fetch_balance()),
            ({"error_503": 1.0, "max_faults": 1}, lambda: good.fetch_open_orders("BTC/USDT")),
            ({"rate_limit_429": 1.0, "max_faults": 1}, lambda: good.create_order(*order)),
            (
                {"drop_response": 1.0, "max_faults": 1},
                lambda: good.create_order(*order, {"clientOrderId": "canary-drop"}),
            ),
            (None, lambda: wrong.create_order(*order)),
            (None, lambda: wrong.fetch_order(None, "BTC/USDT", {"clientOrderId": "x"})),
            (None, lambda: good.fetch_order(None, "BTC/USDT", {"clientOrderId": "nope"})),
            (None, lambda: good.cancel_order(None, "BTC/USDT", {"clientOrderId": "nope"})),
            (None, lambda: good.create_order("BTC/USDT", "limit", "sell", "200", "40000")),
            (None, lambda: good.create_order("BTC/USDT", "limit", "buy", "0.0001", "29000")),
        ]
        for faults, call in attempts:
            await admin.set_faults(**(faults or {}))
            try:
                await call()
            except ccxt.BaseError as exc:
                keep(exc)
            else:
                pytest.fail(f"expected an error from {faults}")
        # a timeout: the exchange answers slower than the client waits
        await admin.set_faults(latency_ms=[1500, 1500], max_faults=0)
        good.timeout = 300
        try:
            await good.fetch_balance()
        except ccxt.BaseError as exc:
            keep(exc)
    finally:
        await admin.set_faults()
        await good.close()
        await wrong.close()
    return messages


@asynccontextmanager
async def canary_worker(client: Client, base_url: str) -> AsyncIterator[IntentClient]:
    task_queue = f"secrets-{uuid.uuid4().hex[:8]}"
    pool = ExchangePool(accounts_at(base_url))
    worker = build_worker(client, pool, task_queue)
    task = asyncio.create_task(worker.run())
    try:
        yield IntentClient(client, task_queue)
    finally:
        await worker.shutdown()
        await task
        await pool.close()


async def collect(intents: IntentClient, run: Run) -> None:
    for intent_id in run.intent_ids:
        handle = intents.temporal.get_workflow_handle(f"intent-{intent_id}")
        history = await handle.fetch_history()
        run.histories[intent_id] = history_text(history)
        run.history_failures.extend(failure_messages(history.to_json_dict()))
        description = await handle.describe()
        memo = await description.memo()
        attributes = {k.name: v for k, v in description.typed_search_attributes}
        run.described[intent_id] = "\n".join(
            [
                json.dumps(memo, default=str),
                json.dumps(attributes, default=str),
                # payloads decoded, as for histories
                *strings_of(json.loads(MessageToJson(description.raw_description))),
            ]
        )
        state = await intents.state(intent_id)
        run.queried[intent_id] = json.dumps(state.report(), default=str)


@pytest.fixture(scope="module")
async def canary_run(temporal_client: Client) -> Run:
    run = Run()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, CANARY_KEY)
        patch.setenv(SECRET_ENV, CANARY_SECRET)
        patch.setenv(WRONG_SECRET_ENV, WRONG_SECRET)
        async with (
            running_sim(port=0, accounts=[f"{CANARY_KEY}:{CANARY_SECRET}"]) as sim,
            AdminClient(sim.base_url) as admin,
        ):
            with file_descriptors() as output, every_log_record() as handler:
                os.write(2, b"fd-capture-marker\n")  # proves the capture works
                async with canary_worker(temporal_client, sim.base_url) as intents:
                    scenarios = Scenarios(intents, admin, run)
                    await admin.price("BTCUSDT", "30000")
                    await scenarios.place_modify_cancel("canary")
                    await scenarios.place_modify_cancel("canary-replace")
                    await scenarios.partial_then_full_fill()
                    await scenarios.market_order()
                    await scenarios.insufficient_funds()
                    await scenarios.wrong_secret()
                    await scenarios.retried_failures()
                    await collect(intents, run)
                run.ccxt_messages = await provoke_ccxt_errors(sim, admin)
            run.records = [(r.name, handler.text(r)) for r in handler.records]
            run.fd_output = output.text

            # Control, outside the capture: a value put in a tag *is* found by the same scan.
            async with canary_worker(temporal_client, sim.base_url) as intents:
                control = intent("canary", tags={"note": CONTROL}, price="28000")
                await intents.submit(control)
                await intents.wait_for(control.intent_id, resting)
                await intents.cancel(control.intent_id)
                await intents.result(control.intent_id)
                history = await intents.temporal.get_workflow_handle(
                    control.workflow_id
                ).fetch_history()
                run.control_history = history_text(history)
    return run


# --- the checks ---------------------------------------------------------------------------------


def test_the_scan_finds_a_value_that_is_there(canary_run: Run) -> None:
    """The history scan decodes payloads: a tag value shows up (the control)."""
    assert leaks(canary_run.control_history, CONTROL_NEEDLES), "the scan cannot see payloads"
    # and every scenario really ran through the canary account
    statuses = {state.status for state in canary_run.finals.values()}
    assert statuses == {IntentStatus.CANCELED, IntentStatus.FILLED, IntentStatus.REJECTED}
    assert len(canary_run.histories) == len(canary_run.intent_ids) >= 9


def test_no_secret_in_workflow_histories(canary_run: Run) -> None:
    """Inputs, results, signals, updates, activity arguments and results, memos, attributes."""
    for intent_id, text in canary_run.histories.items():
        assert "canary" in text  # the account name is there: the scan reads the payloads
        assert not leaks(text), (intent_id, leaks(text))


def test_no_secret_in_memos_search_attributes_or_state(canary_run: Run) -> None:
    for intent_id, text in canary_run.described.items():
        assert "IntentAccount" in text
        assert not leaks(text), (intent_id, leaks(text))
    for intent_id, text in canary_run.queried.items():
        assert not leaks(text), (intent_id, leaks(text))


def test_no_secret_in_failure_messages(canary_run: Run) -> None:
    """Failures recorded in histories, and those of retried attempts (pending activities)."""
    recorded = "\n".join(canary_run.history_failures)
    retried = "\n".join(canary_run.pending_failures)
    # the failures really happened: an exchange refusal, a bad signature, retried network errors
    assert "InsufficientFunds" in recorded and "AuthenticationError" in recorded
    assert "ExchangeNotAvailable" in retried  # the 500 and the 503
    assert "DDoSProtection" in retried or "RateLimitExceeded" in retried  # the 429
    assert "canary-drop" not in retried
    assert not leaks(recorded), leaks(recorded)
    assert not leaks(retried), leaks(retried)


def test_ccxt_exception_messages_carry_no_key(canary_run: Run) -> None:
    """What ccxt puts in the messages that become failures: URLs and bodies, never headers."""
    messages = canary_run.ccxt_messages
    expected = {
        "ExchangeNotAvailable",  # 500, 503
        "DDoSProtection",  # 429
        "AuthenticationError",  # wrong secret
        "OrderNotFound",
        "InsufficientFunds",
        "BadRequest",  # filter failure
        "RequestTimeout",
    }
    assert expected <= set(messages), sorted(messages)
    # the dropped response: some network-family error, whatever ccxt calls it
    assert len(messages["ExchangeNotAvailable"]) + len(messages.get("NetworkError", [])) >= 3
    for name, texts in messages.items():
        for text in texts:
            assert not leaks(text), (name, text)


def test_no_secret_in_worker_logs(canary_run: Run) -> None:
    """Every log record except ccxt's own DEBUG request dumps (see the next test)."""
    records = [(name, text) for name, text in canary_run.records if not name.startswith("ccxt")]
    names = {name for name, _ in records}
    assert any(name.startswith("temporalio") for name in names), names
    joined = "\n".join(text for _, text in records)
    assert "Completing activity as failed" in joined  # retried and refused calls were logged
    for name, text in records:
        assert not leaks(text), (name, text)


def test_no_secret_on_stdout_or_stderr(canary_run: Run) -> None:
    assert "fd-capture-marker" in canary_run.fd_output
    assert not leaks(canary_run.fd_output), leaks(canary_run.fd_output)


def test_no_key_in_ccxt_debug_log(canary_run: Run) -> None:
    records = [(name, text) for name, text in canary_run.records if name.startswith("ccxt")]
    assert records  # ccxt logged at DEBUG during the run
    for name, text in records:
        assert not leaks(text), (name, leaks(text))
