"""Bad input is refused before anything starts, with a message that names the field.

Hypothesis generates invalid intents and changes. Each is submitted three ways: as the model
(construction fails), through `IntentClient.submit` (as a mapping, and as an OrderIntent that
skipped validation via `model_construct`), and through the CLI. For each one: no workflow was
started (describe by workflow id, plus a visibility count over the whole run) and the paper
exchange received no request (its request log, before and after). Exchange-level problems
(unknown symbol, tick/step size, notional) cannot be seen from the model: those intents start
and end `rejected` naming the problem, without an order request reaching the exchange.
Modifications of terminal intents, below the filled amount or to a non-positive price are refused
and leave the intent's state as it was.

Everything runs on the real stack: a dedicated paper exchange and worker for this module (so its
request log counts only what this module causes), the session's Temporal dev server.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from temporalio.api.enums.v1 import EventType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from exchange_kernel.accounts import AccountConfig, ExchangePool
from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient, IntentRejected, IntentStuck, IntentUnavailable
from exchange_kernel.connection import TASK_QUEUE
from exchange_kernel.models import (
    IntentChange,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    intent_digest,
    workflow_id_for,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, SimServer, running_sim
from exchange_kernel.sim.admin_client import AdminClient
from exchange_kernel.worker import build_worker
from tests.conftest import eventually

T = TypeVar("T")
KEY_ENV = "EK_BAD_INPUT_KEY"
SECRET_ENV = "EK_BAD_INPUT_SECRET"
# Not "paper": the session worker runs an account sync for "paper" that would signal ours.
ACCOUNT = "bad-input"
LISTED = {"BTC/USDT", "ETH/USDT", "SOL/USDT"}  # the paper exchange's markets
runner = CliRunner()

HYPOTHESIS = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# --- the bench: a paper exchange and a worker of our own -------------------------------------


@dataclass
class Bench:
    temporal: Client
    intents: IntentClient
    sim: SimServer
    admin: AdminClient
    address: str
    loop: asyncio.AbstractEventLoop

    def on_loop(self, coroutine: Awaitable[T], timeout: float = 30) -> T:
        """Run `coroutine` on the test's event loop from the hypothesis thread."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise

    async def requests(self) -> dict[str, Any]:
        return await self.admin.requests(limit=0)


@pytest.fixture(scope="module")
async def bench(temporal_client: Client) -> AsyncIterator[Bench]:
    """The CLI's task queue, served by a worker (account ACCOUNT) on a paper exchange of ours."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, DEMO_API_KEY)
        patch.setenv(SECRET_ENV, DEMO_SECRET)
        async with running_sim(port=0) as sim, AdminClient(sim.base_url) as admin:
            accounts = {
                ACCOUNT: AccountConfig(
                    name=ACCOUNT,
                    base_url=sim.base_url,
                    api_key_env=KEY_ENV,
                    secret_env=SECRET_ENV,
                )
            }
            pool = ExchangePool(accounts)
            worker = build_worker(temporal_client, pool, TASK_QUEUE)
            task = asyncio.create_task(worker.run())
            try:
                yield Bench(
                    temporal=temporal_client,
                    intents=IntentClient(temporal_client, TASK_QUEUE),
                    sim=sim,
                    admin=admin,
                    address=temporal_client.service_client.config.target_host,
                    loop=asyncio.get_running_loop(),
                )
            finally:
                await worker.shutdown()
                await task
                await pool.close()


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            return False
        raise
    return True


async def intent_count(client: Client) -> int:
    """Intent workflows on the queue that this module's client and the CLI submit to."""
    query = f"WorkflowType = 'OrderIntent' AND TaskQueue = '{TASK_QUEUE}'"
    return (await client.count_workflows(query)).count


async def settled_count(client: Client) -> int:
    """The visibility count once earlier starts have become visible (it lags by a moment)."""
    previous = await intent_count(client)
    for _ in range(20):
        await asyncio.sleep(0.3)
        current = await intent_count(client)
        if current == previous:
            return current
        previous = current
    return previous


@asynccontextmanager
async def nothing_started(bench: Bench) -> AsyncIterator[None]:
    """Assert that the block starts no intent workflow and sends the exchange no request."""
    count = await settled_count(bench.temporal)
    before = await bench.requests()
    yield
    after = await bench.requests()
    assert after["total"] == before["total"], (before["counts"], after["counts"])
    assert await settled_count(bench.temporal) == count


def names_field(exc: ValidationError, field: str) -> bool:
    """The error points at `field`: by location, or by a message that starts with its name."""
    for error in exc.errors():
        if field in [str(part) for part in error["loc"]]:
            return True
        message = error["msg"].removeprefix("Value error, ")
        if message.startswith(f"{field}:"):
            return True
    return False


_ids = itertools.count()


def fresh_id(prefix: str = "bad") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_ids)}"


# --- strategies ----------------------------------------------------------------------------

ORDER_FIELDS = {
    "symbol",
    "side",
    "type",
    "amount",
    "price",
    "stop_price",
    "time_in_force",
    "post_only",
    "reduce_only",
}
INTENT_FIELDS = {
    "intent_id",
    "account",
    "order",
    "group_id",
    "strategy_id",
    "tags",
    "on_external_cancel",
}
ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
ODD = st.characters(blacklist_categories=("Cs",), blacklist_characters=ID_CHARS)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def _decimal_string(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


def _too_many_decimals() -> st.SearchStrategy[Any]:
    """Positive, finite, small enough, but with a non-zero digit past the 18th decimal."""
    digits = st.integers(1, 10**6).filter(lambda k: k % 10 != 0)
    places = st.integers(19, 40)
    whole = st.integers(0, 10**6)
    # Built from the digits: Decimal arithmetic would round to 28 significant digits.
    return st.builds(
        lambda w, k, n: Decimal(f"{w}.{str(k).zfill(n)}"), whole, digits, places
    ).flatmap(lambda d: st.sampled_from([d, str(d), f"{d:f}"]))


def bad_quantities() -> st.SearchStrategy[Any]:
    """Values no amount or price may take."""
    return st.one_of(
        st.sampled_from(["0", "-0", "0.000", "-1", "-0.00000001", "-1e3"]),
        st.decimals(max_value=0, allow_nan=False, allow_infinity=False, places=8),
        st.sampled_from(["NaN", "-NaN", "sNaN", "nan", "Infinity", "-Infinity", "inf", "-inf"]),
        st.sampled_from(
            [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity")]
        ),
        st.floats(),  # any float, even 0.5: binary floats are refused outright
        st.decimals(min_value=Decimal("1e15"), max_value=Decimal("1e40"), places=0),
        st.integers(min_value=10**15, max_value=10**40),
        st.integers(max_value=0),
        _too_many_decimals(),
        TEXT.filter(lambda t: not _decimal_string(t)),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def bad_symbols() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.from_regex(r"[a-z]{2,5}/[a-z]{2,5}", fullmatch=True),
        st.from_regex(r"[A-Z]{2,5}[-_ ]?[A-Z]{2,5}", fullmatch=True),  # no slash
        st.sampled_from(
            [
                "",
                "/",
                "BTC/",
                "/USDT",
                "BTC//USDT",
                "BTC/USDT/ETH",
                "BTC/USDT\n",
                " BTC/USDT",
                "BTC/USDT\u200b",  # zero-width space
                "\ufeffBTC/USDT",  # byte order mark
                "\uff22\uff34\uff23/USDT",  # full-width letters
                "BTC\uff0fUSDT",  # full-width solidus
                "B\u0301TC/USDT",  # combining accent
                "BTC/USDT\x00",
                "\u0392TC/USDT",  # Greek capital beta
                "\u0410" * 3 + "/USDT",  # Cyrillic A
                "A" * 21 + "/USDT",
                "BTC/" + "U" * 21,
            ]
        ),
        st.builds(lambda odd, s: f"BT{odd}C/{s}", ODD, st.sampled_from(["USDT", "BTC"])),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=3), max_size=2),
    )


def bad_ids() -> st.SearchStrategy[Any]:
    valid = st.text(ID_CHARS, min_size=1, max_size=20)
    return st.one_of(
        st.text(ID_CHARS, min_size=129, max_size=400),  # oversized
        st.just(""),
        st.builds(lambda a, odd, b: a + odd + b, valid, ODD, st.text(ID_CHARS, max_size=5)),
        st.builds(lambda a: a + "\n", valid),
        st.sampled_from(
            ["a b", "a/b", "a\tb", "é", "\uff49\uff44", "id\u200b", "💥", "a'b", 'a"b']
        ),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=3), max_size=2),
    )


def bad_enum(valid: set[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        TEXT.filter(lambda t: t not in valid),
        st.sampled_from(
            sorted(
                {c for v in valid for c in (v.upper(), v.lower(), v.title(), f" {v}", f"{v}\n")}
                - valid
            )
        ),
        st.integers(),
        st.none(),
    )


def unknown_names(known: set[str]) -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda n: n not in known)


def valid_intent(intent_id: str | None = None) -> dict[str, Any]:
    return {
        "intent_id": intent_id or fresh_id(),
        "account": ACCOUNT,
        "order": {
            "symbol": "BTC/USDT",
            "side": "buy",
            "type": "limit",
            "amount": "0.01",
            "price": "29000",
        },
    }


@dataclass
class Invalid:
    """An invalid submission, the field its error must name, and how it can be submitted."""

    data: dict[str, Any]
    field: str
    # model_construct keeps it invalid (not so for unknown or missing fields: construct drops
    # unknown ones, and a missing field cannot be serialised)
    constructible: bool = True


@st.composite
def invalid_intents(draw: st.DrawFn) -> Invalid:
    data = valid_intent()
    order = data["order"]
    kind = draw(
        st.sampled_from(
            [
                "amount",
                "price",
                "stop_price",
                "symbol",
                "side",
                "type",
                "time_in_force",
                "intent_id",
                "account",
                "group_id",
                "strategy_id",
                "on_external_cancel",
                "tags",
                "limit_without_price",
                "market_with_price",
                "market_with_stop",
                "limit_with_stop",
                "stop_limit_without_stop",
                "market_post_only",
                "post_only_not_gtc",
                "unknown_order_field",
                "unknown_intent_field",
                "missing",
            ]
        )
    )
    if kind in ("amount", "price"):
        order[kind] = draw(bad_quantities())
        return Invalid(data, kind)
    if kind == "stop_price":
        order.update(type="stop_limit", stop_price=draw(bad_quantities()))
        return Invalid(data, kind)
    if kind == "symbol":
        order["symbol"] = draw(bad_symbols())
        return Invalid(data, kind)
    if kind == "side":
        order["side"] = draw(bad_enum({"buy", "sell"}))
        return Invalid(data, kind)
    if kind == "type":
        order["type"] = draw(bad_enum({"market", "limit", "stop_limit"}))
        return Invalid(data, kind)
    if kind == "time_in_force":
        order["time_in_force"] = draw(bad_enum({"GTC", "IOC", "FOK"}))
        return Invalid(data, kind)
    if kind == "on_external_cancel":
        data[kind] = draw(bad_enum({"finish", "restore"}))
        return Invalid(data, kind)
    if kind in ("intent_id", "account", "group_id", "strategy_id"):
        value = draw(bad_ids())
        if kind in ("group_id", "strategy_id") and value is None:
            value = ""  # None is valid for the optional ones
        data[kind] = value
        return Invalid(data, kind)
    if kind == "tags":
        data["tags"] = draw(
            st.one_of(
                st.builds(lambda n: {f"t{i}": "v" for i in range(n)}, st.integers(33, 60)),
                st.builds(lambda k: {k: "v"}, st.text(ID_CHARS, min_size=65, max_size=80)),
                st.just({"": "v"}),
                st.builds(lambda v: {"k": v}, st.text(ID_CHARS, min_size=257, max_size=300)),
                st.builds(lambda v: {"k": v}, st.integers() | st.none() | st.booleans()),
                st.lists(st.text(max_size=3), max_size=2),
                st.integers(),
            )
        )
        return Invalid(data, "tags")
    if kind == "limit_without_price":
        order.pop("price")
        order["type"] = draw(st.sampled_from(["limit", "stop_limit"]))
        if order["type"] == "stop_limit":
            order["stop_price"] = "29500"
        if draw(st.booleans()):
            order["price"] = None
        return Invalid(data, "price")
    if kind == "market_with_price":
        order.update(type="market", price=draw(st.sampled_from(["29000", "1", "0.01"])))
        return Invalid(data, "price")
    if kind == "market_with_stop":
        order.pop("price")
        order.update(type="market", stop_price="29000")
        return Invalid(data, "stop_price")
    if kind == "limit_with_stop":
        order["stop_price"] = "29500"
        return Invalid(data, "stop_price")
    if kind == "stop_limit_without_stop":
        order["type"] = "stop_limit"
        return Invalid(data, "stop_price")
    if kind == "market_post_only":
        order.pop("price")
        order.update(type="market", post_only=True)
        return Invalid(data, "post_only")
    if kind == "post_only_not_gtc":
        order.update(post_only=True, time_in_force=draw(st.sampled_from(["IOC", "FOK"])))
        return Invalid(data, "post_only")
    if kind == "unknown_order_field":
        name = draw(unknown_names(ORDER_FIELDS))
        order[name] = draw(st.one_of(TEXT, st.integers(), st.none(), st.booleans()))
        return Invalid(data, name, constructible=False)
    if kind == "unknown_intent_field":
        name = draw(unknown_names(INTENT_FIELDS))
        data[name] = draw(st.one_of(TEXT, st.integers(), st.none(), st.booleans()))
        return Invalid(data, name, constructible=False)
    # missing: a required field left out
    where, name = draw(
        st.sampled_from(
            [
                (data, "intent_id"),
                (data, "account"),
                (data, "order"),
                (order, "symbol"),
                (order, "side"),
                (order, "amount"),
            ]
        )
    )
    where.pop(name)
    return Invalid(data, name, constructible=False)


def unvalidated(data: dict[str, Any]) -> OrderIntent:
    """The same data as an OrderIntent that skipped validation (as model_copy(update=) does)."""
    order = data["order"]
    spec = OrderSpec.model_construct(**{k: v for k, v in order.items() if k in ORDER_FIELDS})
    fields = {k: v for k, v in data.items() if k in INTENT_FIELDS and k != "order"}
    return OrderIntent.model_construct(order=spec, **fields)


# --- structurally invalid intents: refused before anything starts ---------------------------


async def test_invalid_intents_are_refused_naming_the_field_and_start_nothing(
    bench: Bench,
) -> None:
    submitted: list[Any] = []

    @settings(HYPOTHESIS, max_examples=150)
    @given(invalid_intents())
    def check(case: Invalid) -> None:
        submitted.append(case.data.get("intent_id"))
        # 1. building the model
        with pytest.raises(ValidationError) as built:
            OrderIntent.model_validate(case.data)
        assert names_field(built.value, case.field), (case.field, built.value)
        # 2. submitting the fields through IntentClient
        with pytest.raises(ValidationError) as raised:
            bench.on_loop(bench.intents.submit(case.data))
        assert names_field(raised.value, case.field), (case.field, raised.value)
        # 3. submitting an OrderIntent that skipped validation
        if case.constructible:
            with pytest.raises(ValidationError) as bypassed:
                bench.on_loop(bench.intents.submit(unvalidated(case.data)))
            assert names_field(bypassed.value, case.field), (case.field, bypassed.value)
        intent_id = case.data.get("intent_id")
        if isinstance(intent_id, str) and intent_id:
            workflow_id = workflow_id_for(intent_id)
            assert not bench.on_loop(workflow_exists(bench.temporal, workflow_id)), workflow_id

    async with nothing_started(bench):
        await asyncio.to_thread(check)
    assert len(submitted) >= 50


async def test_a_model_copy_that_broke_the_intent_is_refused_at_submit(bench: Bench) -> None:
    """`model_copy(update=...)` skips validation; submit must still refuse what it produced."""
    valid = OrderIntent.model_validate(valid_intent())
    broken = [
        ("amount", valid.order.model_copy(update={"amount": Decimal("-1")})),
        ("price", valid.order.model_copy(update={"price": Decimal("NaN")})),
        ("price", valid.order.model_copy(update={"price": None})),
        ("amount", valid.order.model_copy(update={"amount": Decimal("0.1").scaleb(-20)})),
        ("symbol", valid.order.model_copy(update={"symbol": "btc/usdt"})),
    ]
    async with nothing_started(bench):
        for field, order in broken:
            intent = valid.model_copy(update={"intent_id": fresh_id("copy"), "order": order})
            with pytest.raises(ValidationError) as raised:
                await bench.intents.submit(intent)
            assert names_field(raised.value, field), raised.value
            assert not await workflow_exists(bench.temporal, intent.workflow_id)
        for field, value in (("intent_id", "x" * 200), ("account", "bad account")):
            intent = valid.model_copy(update={field: value})
            with pytest.raises(ValidationError) as raised:
                await bench.intents.submit(intent)
            assert names_field(raised.value, field), raised.value
        with pytest.raises(TypeError, match="OrderIntent"):
            await bench.intents.submit(["not", "an", "intent"])  # type: ignore[arg-type]


# --- the CLI: exit code 2, the field named, nothing started ---------------------------------

CLI_OPTION = {
    "symbol": "--symbol",
    "side": "--side",
    "amount": "--amount",
    "price": "--price",
    "type": "--type",
    "stop_price": "--stop-price",
    "time_in_force": "--tif",
    "intent_id": "--id",
    "account": "--account",
    "group_id": "--group",
    "strategy_id": "--strategy",
    "on_external_cancel": "--on-external-cancel",
}
CLI_STRING = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def cli_bad_quantities() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["0", "-0", "-1", "-0.5", "NaN", "sNaN", "Infinity", "-inf", "1e15"]),
        st.decimals(max_value=0, allow_nan=False, allow_infinity=False, places=6).map(str),
        st.integers(min_value=10**15, max_value=10**30).map(str),
        _too_many_decimals().map(lambda d: f"{Decimal(d):f}"),
        CLI_STRING.filter(lambda t: not _decimal_string(t)).filter(lambda t: t.strip() != ""),
    )


@dataclass
class CliCase:
    options: dict[str, str]
    field: str
    extra: tuple[str, ...] = ()


@st.composite
def invalid_cli_submissions(draw: st.DrawFn) -> CliCase:
    options = {
        "--symbol": "BTC/USDT",
        "--side": "buy",
        "--amount": "0.01",
        "--price": "29000",
        "--id": fresh_id("cli"),
        "--account": ACCOUNT,
    }
    kind = draw(
        st.sampled_from(
            [
                "amount",
                "price",
                "symbol",
                "side",
                "type",
                "time_in_force",
                "intent_id",
                "account",
                "group_id",
                "strategy_id",
                "on_external_cancel",
                "limit_without_price",
                "market_with_price",
                "stop_limit_without_stop",
                "limit_with_stop",
                "unknown_option",
            ]
        )
    )
    if kind in ("amount", "price"):
        options[CLI_OPTION[kind]] = draw(cli_bad_quantities())
        return CliCase(options, kind)
    if kind == "symbol":
        value = draw(bad_symbols().filter(lambda s: isinstance(s, str) and "\x00" not in s))
        options["--symbol"] = value
        return CliCase(options, kind)
    if kind in ("side", "type", "time_in_force", "on_external_cancel"):
        valid = {
            "side": {"buy", "sell"},
            "type": {"market", "limit", "stop_limit"},
            "time_in_force": {"GTC", "IOC", "FOK"},
            "on_external_cancel": {"finish", "restore"},
        }[kind]
        options[CLI_OPTION[kind]] = draw(CLI_STRING.filter(lambda t: t not in valid))
        return CliCase(options, kind)
    if kind in ("intent_id", "account", "group_id", "strategy_id"):
        value = draw(bad_ids().filter(lambda v: isinstance(v, str) and "\x00" not in v))
        if value == "" and kind == "intent_id":
            value = " "  # an empty --id means "generate one"
        options[CLI_OPTION[kind]] = value
        return CliCase(options, kind)
    if kind == "limit_without_price":
        options.pop("--price")
        return CliCase(options, "price")
    if kind == "market_with_price":
        options["--type"] = "market"
        return CliCase(options, "price")
    if kind == "stop_limit_without_stop":
        options["--type"] = "stop_limit"
        return CliCase(options, "stop_price")
    if kind == "limit_with_stop":
        options["--stop-price"] = "29500"
        return CliCase(options, "stop_price")
    name = draw(st.from_regex(r"[a-z][a-z-]{0,10}[a-z]", fullmatch=True))
    known = {o.removeprefix("--") for o in CLI_OPTION.values()} | {
        "json",
        "address",
        "namespace",
        "post-only",
        "no-post-only",
        "help",
        "wait",
        "no-wait",
        "wait-timeout",
        "expires-at",
        "reduce-only",
        "no-reduce-only",
        "profile",
    }
    name = name if name not in known else f"{name}-x"
    return CliCase(options, f"--{name}", extra=(f"--{name}=1",))


def cli_names_field(output: str, field: str) -> bool:
    """`--stop-price`, `'--tif'`, `stop_price: ...` or `order.stop_price: ...` in the output."""
    text = " ".join(output.split())
    if field.startswith("--"):
        return field in text
    option = CLI_OPTION.get(field)
    patterns = [rf"(^|[\s.:]){re.escape(field)}:"]
    if option:
        patterns.append(re.escape(f"'{option}'"))
        patterns.append(re.escape(f"{option} "))
    return any(re.search(p, text) for p in patterns)


def invoke(args: list[str]) -> Any:
    return runner.invoke(app, args, catch_exceptions=False)


async def test_invalid_cli_submissions_exit_2_naming_the_field_and_start_nothing(
    bench: Bench,
) -> None:
    seen = 0

    @settings(HYPOTHESIS, max_examples=80)
    @given(invalid_cli_submissions())
    def check(case: CliCase) -> None:
        nonlocal seen
        seen += 1
        args = ["submit", *(f"{k}={v}" for k, v in case.options.items()), *case.extra]
        args += ["--address", bench.address]
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        assert cli_names_field(result.output, case.field), (case.field, result.output)
        intent_id = case.options.get("--id", "")
        if intent_id.strip():
            workflow_id = workflow_id_for(intent_id)
            assert not bench.on_loop(workflow_exists(bench.temporal, workflow_id)), workflow_id

    async with nothing_started(bench):
        await asyncio.to_thread(check)
    assert seen >= 30


async def test_the_checks_can_see_a_start(bench: Bench) -> None:
    """Control: a valid submission through each path is seen by the same checks."""
    count = await settled_count(bench.temporal)
    before = (await bench.requests())["total"]

    through_client = valid_intent(fresh_id("control"))
    await bench.intents.submit(through_client)
    cli_id = fresh_id("control-cli")
    result = await asyncio.to_thread(
        invoke,
        [
            *("submit", "--symbol", "BTC/USDT", "--side", "buy", "--amount", "0.01"),
            *("--price", "29000", "--id", cli_id, "--account", ACCOUNT),
            *("--address", bench.address),
        ],
    )
    assert result.exit_code == 0, result.output
    for intent_id in (through_client["intent_id"], cli_id):
        assert await workflow_exists(bench.temporal, workflow_id_for(intent_id))
        await bench.intents.wait_for(intent_id, lambda s: s.status is IntentStatus.OPEN)
        await bench.intents.cancel(intent_id)
        assert (await bench.intents.result(intent_id)).status is IntentStatus.CANCELED
    assert (await bench.requests())["total"] > before
    assert await settled_count(bench.temporal) == count + 2


# --- exchange-level problems: the intent starts, and ends rejected naming the problem -------


@dataclass
class ExchangeCase:
    order: dict[str, str]
    problem: str


@st.composite
def exchange_invalid_orders(draw: st.DrawFn) -> ExchangeCase:
    kind = draw(st.sampled_from(["symbol", "tick", "step", "notional", "max_price", "max_amount"]))
    order = {"symbol": "BTC/USDT", "side": "buy", "amount": "0.01", "price": "29000"}
    if kind == "symbol":
        symbol = draw(
            st.from_regex(r"[A-Z]{3,6}/(USDT|BTC|EUR|USD)", fullmatch=True).filter(
                lambda s: s not in LISTED
            )
        )
        order["symbol"] = symbol
        return ExchangeCase(order, f"no market {symbol}")
    if kind == "tick":
        cents = draw(st.integers(100, 2_900_000))
        sub = draw(st.integers(1, 9))
        order["price"] = f"{Decimal(cents) / 100 + Decimal(sub) / 1000:f}"
        return ExchangeCase(order, "tick size")
    if kind == "step":
        units = draw(st.integers(100, 100_000))
        sub = draw(st.integers(1, 9))
        order["amount"] = f"{Decimal(units) / 10**5 + Decimal(sub) / 10**6:f}"
        return ExchangeCase(order, "step size")
    if kind == "notional":
        order["amount"] = f"{Decimal(draw(st.integers(1, 16))) / 10**5:f}"
        return ExchangeCase(order, "minimum notional")
    if kind == "max_price":
        order["price"] = str(draw(st.integers(1_000_001, 10**8)))
        return ExchangeCase(order, "maximum price")
    order["amount"] = str(draw(st.integers(9001, 50_000)))
    order["price"] = "1"
    return ExchangeCase(order, "maximum amount")


async def test_exchange_level_problems_end_rejected_naming_the_problem(bench: Bench) -> None:
    outcomes: list[tuple[str, int]] = []

    @settings(HYPOTHESIS, max_examples=12)
    @given(exchange_invalid_orders())
    def check(case: ExchangeCase) -> None:
        intent = OrderIntent(intent_id=fresh_id("xchg"), account=ACCOUNT, order=case.order)
        before = bench.on_loop(bench.requests())
        bench.on_loop(bench.intents.submit(intent))
        final = bench.on_loop(bench.intents.result(intent.intent_id))
        after = bench.on_loop(bench.requests())
        assert final.status is IntentStatus.REJECTED, final
        assert case.problem in (final.outcome_reason or ""), final.outcome_reason
        assert final.placements == ()  # nothing was sent for it
        for path in ("POST /api/v3/order", "POST /api/v3/order/cancelReplace"):
            assert after["counts"].get(path, 0) == before["counts"].get(path, 0)
        orders = bench.on_loop(bench.admin.orders())
        prefix = f"ek-{intent_digest(intent.intent_id)}-"
        assert not [o for o in orders if o["client_order_id"].startswith(prefix)]
        outcomes.append((final.outcome_reason or "", after["total"] - before["total"]))

    await asyncio.to_thread(check)
    assert outcomes
    # market rules are loaded once per client; a rejected intent costs at most that one call
    assert max(n for _, n in outcomes) <= 1, outcomes


# --- modifications that must be refused, leaving the intent as it was ----------------------


def unchanged(before: IntentState, after: IntentState) -> None:
    assert after.desired == before.desired
    assert after.revision == before.revision
    assert after.status == before.status
    assert [p.client_order_id for p in after.placements] == [
        p.client_order_id for p in before.placements
    ]
    assert after.cancel_reason == before.cancel_reason


async def update_events(client: Client, intent_id: str) -> int:
    """Updates admitted or accepted, and modify/cancel signals, in the intent's history."""
    history = await client.get_workflow_handle(workflow_id_for(intent_id)).fetch_history()
    count = 0
    for event in history.events:
        if event.event_type in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
        ):
            count += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attributes = event.workflow_execution_signaled_event_attributes
            count += attributes.signal_name in ("modify", "cancel")
    return count


async def terminal_intents(bench: Bench) -> dict[IntentStatus, str]:
    """One filled, one cancelled, one rejected intent."""
    await bench.admin.price("BTCUSDT", "30000")
    filled = OrderIntent(
        intent_id=fresh_id("filled"),
        account=ACCOUNT,
        order=OrderSpec(symbol="BTC/USDT", side="buy", type="market", amount="0.001"),
    )
    cancelled = OrderIntent.model_validate(valid_intent(fresh_id("cancelled")))
    rejected = OrderIntent(  # off the 0.01 tick: rejected by the market rules
        intent_id=fresh_id("rejected"),
        account=ACCOUNT,
        order=OrderSpec(symbol="BTC/USDT", side="buy", amount="0.01", price="29000.005"),
    )
    for intent in (filled, cancelled, rejected):
        await bench.intents.submit(intent)
    await bench.intents.wait_for(cancelled.intent_id, lambda s: s.status is IntentStatus.OPEN)
    await bench.intents.cancel(cancelled.intent_id)
    ids = {}
    for intent in (filled, cancelled, rejected):
        final = await bench.intents.result(intent.intent_id)
        ids[final.status] = intent.intent_id
    assert set(ids) == {IntentStatus.FILLED, IntentStatus.CANCELED, IntentStatus.REJECTED}
    return ids


async def test_changes_to_terminal_intents_are_refused_and_change_nothing(bench: Bench) -> None:
    ids = await terminal_intents(bench)
    for status, intent_id in ids.items():
        before = await bench.intents.state(intent_id)
        attempts = (
            bench.intents.modify(intent_id, price="29100"),
            bench.intents.modify(intent_id, amount="0.02"),
            bench.intents.cancel(intent_id),
            bench.intents.signal_modify(intent_id, price="29100"),
            bench.intents.signal_cancel(intent_id),
        )
        for attempt in attempts:
            with pytest.raises(IntentRejected, match=f"already {status.value}"):
                await attempt
        result = await asyncio.to_thread(
            invoke, ["modify", intent_id, "--price", "29100", "--address", bench.address]
        )
        assert result.exit_code == 2, result.output
        assert f"already {status.value}" in " ".join(result.output.split())
        after = await bench.intents.state(intent_id)
        assert after == before


@pytest.fixture
async def partially_filled(bench: Bench) -> AsyncIterator[str]:
    """A resting ETH/USDT buy of 1 @ 1990 with 0.3 filled; cancelled afterwards."""
    await bench.admin.price("ETHUSDT", "2000")
    intent = OrderIntent(
        intent_id=fresh_id("partial"),
        account=ACCOUNT,
        order=OrderSpec(symbol="ETH/USDT", side="buy", amount="1", price="1990"),
    )
    await bench.intents.submit(intent)
    await bench.intents.wait_for(intent.intent_id, lambda s: s.status is IntentStatus.OPEN)
    await bench.admin.price("ETHUSDT", "1990", volume="0.3")
    await bench.admin.price("ETHUSDT", "2000")
    await bench.intents.resync(intent.intent_id)
    await bench.intents.wait_for(
        intent.intent_id,
        lambda s: s.filled == Decimal("0.3") and s.reconciliation_status.value == "in_sync",
    )
    try:
        yield intent.intent_id
    finally:
        state = await bench.intents.state(intent.intent_id)
        if not state.status.is_terminal:
            await bench.intents.cancel(intent.intent_id)
        final = await bench.intents.result(intent.intent_id)
        assert final.status is IntentStatus.CANCELED
        assert final.filled == Decimal("0.3")  # fills are kept


async def test_refused_modifications_leave_the_intent_unchanged(
    bench: Bench, partially_filled: str
) -> None:
    intent_id = partially_filled
    before = await bench.intents.state(intent_id)
    events = await update_events(bench.temporal, intent_id)

    @settings(HYPOTHESIS, max_examples=15)
    @given(
        st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("0.2999"), places=4),
        st.one_of(st.none(), st.sampled_from(["1990", "1989.5"])),
    )
    def below_filled(amount: Decimal, price: str | None) -> None:
        with pytest.raises(IntentRejected, match=r"below the 0\.3 already filled"):
            bench.on_loop(bench.intents.modify(intent_id, amount=amount, price=price))

    await asyncio.to_thread(below_filled)

    # non-positive or non-finite prices never leave the client ...
    for price in ("0", "-1", "-0.01", "NaN", "-Infinity"):
        with pytest.raises(ValidationError) as raised:
            await bench.intents.modify(intent_id, price=price)
        assert names_field(raised.value, "price")
        with pytest.raises(ValidationError):
            IntentChange(price=price)
    with pytest.raises(ValidationError) as raised:
        await bench.intents.modify(intent_id, amount="-0.5")
    assert names_field(raised.value, "amount")
    assert await update_events(bench.temporal, intent_id) == events

    # ... and the workflow refuses them too when a caller skips the client's validation
    handle = bench.temporal.get_workflow_handle(workflow_id_for(intent_id))
    for raw, field in (
        ({"price": "-1"}, "price"),
        ({"price": "0"}, "price"),
        ({"amount": "0"}, "amount"),
        ({"price": "1995", "colour": 1}, "colour"),
    ):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("modify", raw, result_type=IntentState)
        chain = failure_chain(refused.value)
        assert field in chain, chain
    # IntentClient words such a refusal with its cause (the path any unvalidated caller takes)
    with pytest.raises(IntentRejected, match=r"(?s)price.*must be positive"):
        await bench.intents._update(intent_id, "modify", {"price": "-1"})

    # exchange rules apply to changes as to new intents
    for change, problem in (
        ({"price": "1990.005"}, "tick size"),
        ({"amount": "0.50001"}, "step size"),
        ({"price": "2000000"}, "maximum price"),
    ):
        with pytest.raises(IntentRejected, match=problem):
            await bench.intents.modify(intent_id, **change)

    # the CLI refuses the same, exit code 2, naming the field
    for args, expected in (
        (["--amount", "0.1"], "below the 0.3 already filled"),
        (["--price=-1"], "price"),
        (["--price", "NaN"], "price"),
        (["--amount", "abc"], "amount"),
        (["--price", "1990.005"], "tick size"),
    ):
        result = await asyncio.to_thread(
            invoke, ["modify", intent_id, *args, "--address", bench.address]
        )
        assert result.exit_code == 2, (args, result.output)
        assert expected in " ".join(result.output.split()), (args, result.output)

    after = await bench.intents.state(intent_id)
    unchanged(before, after)
    assert after.filled == Decimal("0.3")
    assert await update_events(bench.temporal, intent_id) == events

    # A signal whose change cannot be decoded is dropped: the intent carries on unchanged.
    await handle.signal("modify", {"price": "-1"})
    await handle.signal("modify", {"amount": "0.1"})  # below filled: noted, not applied
    noted = await bench.intents.wait_for(
        intent_id, lambda s: any(a.action == "modify rejected" for a in s.recent_actions)
    )
    unchanged(before, noted)
    assert noted.status is IntentStatus.PARTIALLY_FILLED


def failure_chain(error: BaseException) -> str:
    parts: list[str] = []
    cause: BaseException | None = error
    while cause is not None:
        parts.append(str(getattr(cause, "message", None) or cause))
        cause = cause.__cause__
    return " | ".join(parts)


async def test_an_account_the_worker_does_not_know_ends_rejected_naming_it(bench: Bench) -> None:
    intent = OrderIntent.model_validate({**valid_intent(), "account": "nobody-configured"})
    before = await bench.requests()
    await bench.intents.submit(intent)
    final = await asyncio.wait_for(bench.intents.result(intent.intent_id), 30)
    assert final.status is IntentStatus.REJECTED
    assert "nobody-configured" in (final.outcome_reason or ""), final.outcome_reason
    assert (await bench.requests())["total"] == before["total"]


async def test_an_intent_whose_workflow_task_keeps_failing_is_reported_stuck(bench: Bench) -> None:
    # A hand-made start the worker cannot decode: its first workflow task fails on every try.
    intent_id = f"stuck-{uuid.uuid4().hex[:8]}"
    handle = await bench.temporal.start_workflow(
        "OrderIntent",
        {"not": "an IntentStart"},
        id=workflow_id_for(intent_id),
        task_queue=bench.intents.task_queue,
    )
    try:

        async def failed() -> bool:
            history = await handle.fetch_history()
            return any(
                e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events
            )

        await eventually("the first workflow task failing", failed)
        # Not "has finished": the server answers with the status it gives a finished run.
        with pytest.raises(IntentStuck, match=f"repair {intent_id}"):
            await asyncio.wait_for(bench.intents.cancel(intent_id), 30)
    finally:
        await handle.terminate("test done")


async def test_an_intent_whose_workflow_task_timed_out_is_unavailable_not_stuck(
    bench: Bench,
) -> None:
    # As when a worker is killed in the middle of a workflow task, twice: the task is taken and
    # never answered, times out, and so does its retry. From its third try on, the server
    # refuses queries with the answer it gives a task that keeps failing.
    intent_id = f"timed-out-{uuid.uuid4().hex[:8]}"
    queue = f"no-worker-{uuid.uuid4().hex[:8]}"
    handle = await bench.temporal.start_workflow(
        "OrderIntent",
        {"not": "read by anyone"},
        id=workflow_id_for(intent_id),
        task_queue=queue,
        task_timeout=timedelta(seconds=1),
    )

    async def take_the_task() -> None:
        taken = await bench.temporal.workflow_service.poll_workflow_task_queue(
            PollWorkflowTaskQueueRequest(
                namespace=bench.temporal.namespace,
                task_queue=TaskQueue(name=queue),
                identity="a worker about to die",
            )
        )
        assert taken.task_token

    try:
        await take_the_task()
        await take_the_task()  # its retry, once the first try timed out

        async def third_try() -> bool:
            description = await handle.describe()
            return description.raw_description.pending_workflow_task.attempt >= 3

        await eventually("the workflow task's third try", third_try)
        with pytest.raises(IntentUnavailable, match="timed out") as raised:
            await asyncio.wait_for(bench.intents.state(intent_id), 10)
        # Not "stuck": nothing is wrong with the run that a worker taking the task won't fix.
        assert not isinstance(raised.value, IntentStuck)
        # Nor a refusal: code that handles refusals must not take "try again" for one.
        assert not isinstance(raised.value, IntentRejected)
        assert "try 3" in str(raised.value)
        assert "repair" not in str(raised.value)
    finally:
        await handle.terminate("test done")
